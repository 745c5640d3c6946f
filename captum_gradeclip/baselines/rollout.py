"""Attention rollout (Abnar & Zuidema, 2020)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from captum._utils.typing import TargetType
from torch import Tensor

from ..adapters.base import TokenLayout
from ..token_attribution import LayerSpec, TokenAttribution
from ._common import attention_forward, last_layer_first, query_row, recorded_attention, \
    target_columns


class AttentionRollout(TokenAttribution):
    r"""Attention rollout: head-averaged attention plus identity, row-normalised, multiplied through the layers.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020 (https://arxiv.org/abs/2005.00928).
    For the explained blocks :math:`l = 1..L` in execution order,

    .. math::

        \hat A_l = \operatorname{rownorm}\Big(\tfrac{1}{H}\sum_h A_l^{(h)} + I\Big),\qquad
        R = \hat A_L \hat A_{L-1} \cdots \hat A_1,\qquad m_i = R_{p, i}

    for the pooling query :math:`p` and the explained tokens :math:`i`. (Softmax rows sum to one, so
    :math:`\hat A = (A + I) / 2`.) Only the query's row is propagated, from the last layer down, which costs
    :math:`O(L^2)` per layer. Probabilities are recomputed from q and k and checked against each module's
    output. Class-agnostic: the map does not depend on ``target``.

    The Grad-ECLIP authors' "rollout" used the last layer only (``layers=[last block]``), which is raw
    attention averaged with the identity.

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer.
        layers (nn.Module or list of nn.Module, optional): blocks (or attention modules) of the scorer's tower.
            Default: every block.
        device_ids (list of int, optional): kept for Captum's signature. Default: None

    Examples::

        >>> heat = AttentionRollout(scorer).attribute(images)    # (N, 1, h, w)
    """

    def __init__(self, forward_func: Callable, layers: LayerSpec = None,
                 device_ids: Optional[List[int]] = None) -> None:
        super().__init__(forward_func, layers, device_ids)
        self.attention_modules = self.tower.resolve(self.blocks)

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        scores, records = attention_forward(self.forward_func, inputs, extra, self.attention_modules)
        target_columns(scores, target, required=False)

        def normalized() -> Iterator[Tensor]:
            for rec in last_layer_first(records):
                probs, _ = recorded_attention(rec, layout)
                a = probs.mean(dim=1)
                a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
                yield a / a.sum(dim=-1, keepdim=True)

        return query_row(layout, normalized())
