"""Raw attention: the pooling query's softmax attention row in one block, heads averaged."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..adapters.base import TokenLayout, Tower
from ..token_attribution import TokenAttribution
from ._common import attention_forward, query_row, recorded_attention, target_columns


class RawAttention(TokenAttribution):
    r"""Raw attention of the pooling query (class token, or EOS token of the text tower) in one block.

    .. math::

        m_i = \frac{1}{H} \sum_h A^{(h)}_{p, i},\qquad
        A^{(h)} = \operatorname{softmax}\big(q^{(h)} k^{(h)\top} \cdot \text{scale} + \text{mask}\big)

    for the explained tokens :math:`i` (patches, or the words of a caption). The probabilities are recomputed
    from the attention module's q and k (the modules do not return them) and checked against the module's
    output. Class-agnostic: the map does not depend on ``target``.

    The Grad-ECLIP authors' "self-attention" baseline takes the same row from their single-head re-run of the
    last block; this class explains the unmodified model (heads averaged).

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer.
        layer (nn.Module, optional): a block (or its attention module) of the scorer's tower.
            Default: the last block.
        device_ids (list of int, optional): kept for Captum's signature. Default: None

    Examples::

        >>> heat = RawAttention(scorer).attribute(images)    # (N, 1, h, w)
    """

    def __init__(self, forward_func: Callable, layer: Optional[nn.Module] = None,
                 device_ids: Optional[List[int]] = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        if len(self.blocks) != 1:
            raise ValueError("RawAttention explains one layer; use AttentionRollout for several")
        self.attention_modules = self.tower.resolve(self.blocks)

    def _default_blocks(self, tower: Tower) -> List[nn.Module]:
        return tower.blocks()[-1:]  # the last block

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        scores, records = attention_forward(self.forward_func, inputs, extra, self.attention_modules)
        target_columns(scores, target, required=False)
        probs, _ = recorded_attention(records[0], layout)
        return query_row(layout, [probs.mean(dim=1)])
