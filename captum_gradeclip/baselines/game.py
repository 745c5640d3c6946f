"""Gradient-weighted attention relevance of Chefer et al. (2021), "GAME"."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor, nn

from ..adapters.base import TokenLayout
from ._common import AttentionRecord, LayerSpec, TokenAttribution, as_module_list, attention_probs, check_recomputed, \
    check_runs, live_rows, output_from_probs, query_weights, run_hooked, scorer_tower, selected_scores, \
    target_columns
from ..adapters.attention import attention_adapter


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
        tower = scorer_tower(forward_func, type(self).__name__)
        blocks = as_module_list(layers) or tower.blocks()
        super().__init__(forward_func, blocks, device_ids)
        self.attention_modules = self.tower.resolve(blocks)

    @log_usage()
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType = None,
                  additional_forward_args: Any = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""The query's row of the gradient-weighted relevance over the explained tokens.

        Args:
            inputs (Tensor or tuple of one Tensor): images ``(N, 3, H, W)`` or token ids ``(N, L)``.
            target (int, tuple, Tensor or list, optional): the scorer's column to explain (Captum semantics);
                None only for a one-column scorer. Default: None
            additional_forward_args (Any, optional): extra scorer arguments (HF attention mask).

        Returns:
            *Tensor* or *tuple[Tensor]*: ``(N, 1, h, w)`` for images, ``(N, L)`` for text (zero outside words);
            non-negative.
        """
        return self._run(inputs, target, additional_forward_args)

    def _forward(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout
                 ) -> Tuple[Tensor, List[AttentionRecord]]:
        """The scorer's output with A in the graph of every explained layer (records hold A and the probe)."""
        records = [AttentionRecord(attention_adapter(m)) for m in self.attention_modules]
        counter = [0]

        def make(rec: AttentionRecord) -> Callable:
            def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
                rec.runs += 1
                rec.order, counter[0] = counter[0], counter[0] + 1
                adapter = rec.adapter
                torch.set_grad_enabled(True)  # restored when run_hooked's no_grad() exits
                y_old = adapter.output_tensor(output)
                q, k, v = adapter.qkv(args, kwargs)
                probs = attention_probs(adapter, q, k, layout.allowed)
                probe = torch.zeros_like(probs, requires_grad=True)
                y_new = output_from_probs(adapter, probs + probe, v).to(y_old.dtype)
                rows = live_rows(layout, y_new.shape[0], y_new.shape[1]).to(y_new.device)
                check_recomputed(y_new, y_old, rows, module)
                rec.extra["probs"], rec.extra["probe"] = probs.detach(), probe
                return adapter.replace_output(output, torch.where(rows[..., None], y_new, y_old.detach()))
            return hook

        scores = run_hooked(self.forward_func, inputs, extra,
                            [(m, "post", make(r)) for m, r in zip(self.attention_modules, records)])
        check_runs(self.attention_modules, [r.runs for r in records])
        return scores, records

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        scores, records = self._forward(inputs, extra, layout)
        cols = target_columns(scores, target)
        chosen = selected_scores(scores, cols)  # examples are independent: the sum gives per-example gradients
        probes = [r.extra["probe"] for r in records]
        if chosen.requires_grad:
            grads = torch.autograd.grad(chosen.sum(), probes, allow_unused=True)
        else:  # pragma: no cover - every explained layer is upstream of the score
            grads = (None,) * len(probes)
        row: Optional[Tensor] = None
        for i in sorted(range(len(records)), key=lambda j: records[j].order, reverse=True):  # last layer first
            probs = records[i].extra["probs"].float()
            g = torch.zeros_like(probs) if grads[i] is None else grads[i].float()
            a = (g * probs).clamp(min=0).mean(dim=1)  # (N, L, L)
            if row is None:
                row = query_weights(layout, a.shape[0], a.shape[-1], a.device)
            row = row + torch.einsum("nq,nqk->nk", row, a)
        assert row is not None
        return row
