"""Gradient-weighted attention relevance of Chefer et al. (2021), "GAME"."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

from captum._utils.typing import TargetType
from torch import Tensor

from ..adapters.base import TokenLayout
from ..token_attribution import LayerSpec, TokenAttribution
from ._common import AttentionRecord, attention_forward, last_layer_first, live_rows, \
    probe_attention, probe_gradients, query_row


class GradientWeightedAttention(TokenAttribution):
    r"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, "GAME").

    "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
    (https://arxiv.org/abs/2103.15679), self-attention rule. With :math:`A_l` the softmax attention of
    explained block :math:`l` (heads ``(H, L, L)``) and :math:`S` the explained similarity:

    .. math::

        R = I,\qquad
        R \leftarrow R + \bar A_l R \quad (l = 1..L \text{ in execution order}),\qquad
        \bar A_l = \tfrac{1}{H}\sum_h \big(\nabla_{A_l^{(h)}} S \odot A_l^{(h)}\big)^+

        m_i = R_{p, i}

    for the pooling query :math:`p` and the explained tokens :math:`i`. Only the query's row is propagated
    (from the last layer down).

    **How the gradient w.r.t. the attention probabilities is obtained without patching the model:** a forward
    hook on each explained attention module recomputes :math:`A = \operatorname{softmax}(q k^\top\cdot
    \text{scale} + \text{mask})` from the module's own inputs (through its adapter), adds a zero probe
    tensor to it, and replaces the module's output by :math:`y = \text{project}(A v)` computed from that
    :math:`A`. The recomputed output is checked numerically against the module's own on every row that
    reaches the pooling query (so the model's function, and the similarity, are unchanged); rows that cannot
    reach the query (padding after a causal query) keep the module's own output. :math:`\nabla_A S` is the
    gradient w.r.t. the probe: it includes every path, through later layers' attention too.

    The Grad-ECLIP authors' GAME baseline used the last layer only (``layers=[last block]``) and CLIP's
    ``logits_per_image``; this class explains the cosine similarity of the scorer.

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer.
        layers (nn.Module or list of nn.Module, optional): blocks (or attention modules) of the scorer's tower.
            Default: every block.
        device_ids (list of int, optional): kept for Captum's signature. Default: None

    Examples::

        >>> heat = GradientWeightedAttention(scorer).attribute(images, target=0)    # (N, 1, h, w)
    """

    def __init__(self, forward_func: Callable, layers: LayerSpec = None,
                 device_ids: Optional[List[int]] = None) -> None:
        super().__init__(forward_func, layers, device_ids)
        self.attention_modules = self.tower.resolve(self.blocks)

    def _forward(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout
                 ) -> Tuple[Tensor, List[AttentionRecord]]:
        """The scorer's output with A in the graph of every explained layer (records hold A and the probe)."""
        probed = probe_attention(layout.allowed, lambda y: live_rows(layout, y.shape[0], y.shape[1]))
        return attention_forward(self.forward_func, inputs, extra, self.attention_modules, probed)

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        scores, records = self._forward(inputs, extra, layout)
        grads = probe_gradients(scores, target, [r.extra["probe"][0] for r in records])
        for rec, grad in zip(records, grads):
            rec.extra["grad"] = grad

        def relevance() -> Iterator[Tensor]:
            for rec in last_layer_first(records):
                yield (rec.extra["grad"] * rec.extra["probs"][0].float()).clamp(min=0).mean(dim=1)  # (N, L, L)

        return query_row(layout, relevance(), residual=True)
