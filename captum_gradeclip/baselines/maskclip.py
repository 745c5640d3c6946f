"""MaskCLIP-style dense image-text similarity (Zhou, Loy & Dai, ECCV 2022)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor, nn

from ..adapters.attention import attention_adapter, full_width
from ..adapters.base import TokenLayout
from ..errors import UnsupportedModelError
from ..hooking import check_runs
from ..token_attribution import TokenAttribution, first_tensor, run_hooked, scorer_tower
from ._common import batch_first_of, query_weights, target_columns


class MaskCLIPSimilarity(TokenAttribution):
    r"""MaskCLIP-style dense similarity of every patch with the target text (image side only).

    Zhou, Loy & Dai, "Extract Free Dense Labels from CLIP", ECCV 2022 (https://arxiv.org/abs/2112.01071):
    in the last attention layer the query-key attention is skipped and every token keeps its own value. For
    the last block, with :math:`x_i` its input tokens, :math:`v_i` the value projection (of the pre-norm
    tokens, as the attention module receives them) and :math:`\text{project}` the module's output projection
    (:math:`W_O v_i + b_O`):

    .. math::

        y_i = x_i + \text{project}(v_i),\qquad
        h_i = y_i + \text{MLP}(\text{norm}_2(y_i)),\qquad
        f_i = \text{proj}(\text{norm}_{post}(h_i))

        m_i = \operatorname{ReLU}\big(\cos(f_i, t)\big)

    with :math:`t` the target text embedding. That is, the last block's residual and MLP path are kept
    (layer scales included), then the tower's final norm and projection: the path the class token takes to
    the embedding, with its attention output replaced by the patch's own projected value. This is the dense
    feature of the Grad-ECLIP authors' MaskCLIP baseline (paper-notes §5.3). Their map also multiplies by
    the key similarity :math:`\cos(\tilde k_p, \tilde k_i)` with :math:`\tilde k = W_O k + b_O` (not min-max
    normalised); ``key_similarity=True`` gives :math:`\operatorname{ReLU}(\cos(f_i, t)\cdot\cos(\tilde k_p,
    \tilde k_i))`. The original MaskCLIP paper also drops the residual and MLP of the last block; that
    variant is not computed here.

    The tail after the last attention module comes from the tower adapter (``Tower.pooled_tail``); towers
    without one raise :class:`~captum_gradeclip.UnsupportedModelError`. Every call checks that this tail, fed
    the class token's real attention output, gives back the scorer's similarities (a RuntimeError otherwise).

    Args:
        forward_func (ImageTextSimilarity): the image scorer.
        device_ids (list of int, optional): kept for Captum's signature. Default: None
        key_similarity (bool, optional): multiply by the key similarity as the Grad-ECLIP authors do.
            Default: False

    Examples::

        >>> heat = MaskCLIPSimilarity(scorer).attribute(images, target=0)    # (N, 1, h, w)
    """

    text_supported = False

    def __init__(self, forward_func: Callable, device_ids: Optional[List[int]] = None, *,
                 key_similarity: bool = False) -> None:
        tower = scorer_tower(forward_func, type(self).__name__)
        block = tower.blocks()[-1]
        super().__init__(forward_func, [block], device_ids)
        self.block = block
        self.attention = self.tower.resolve([block])[0]
        self.tail = self.tower.pooled_tail(self.attention)
        if self.tail is None:
            raise UnsupportedModelError(
                f"MaskCLIPSimilarity needs the path from the last attention module to the embedding, which the "
                f"{type(self.tower).__name__} adapter does not provide")
        self.key_similarity = bool(key_similarity)
        self._batch_first = batch_first_of(self.tower, block)

    @log_usage()
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType = None,
                  additional_forward_args: Any = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""Per-patch similarity with the target text.

        Args:
            inputs (Tensor or tuple of one Tensor): images ``(N, 3, H, W)``.
            target (int, tuple, Tensor or list, optional): the scorer's text column (Captum semantics); None
                only for a one-column scorer. Default: None
            additional_forward_args (Any, optional): extra scorer arguments. Default: None

        Returns:
            *Tensor* or *tuple[Tensor]*: ``(N, 1, h, w)``, non-negative.
        """
        return self._run(inputs, target, additional_forward_args)

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        seen: Dict[str, Any] = {"block": 0, "attn": 0}

        def block_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            x = first_tensor(args, kwargs)
            seen["x"] = (x if self._batch_first else x.transpose(0, 1)).detach()
            seen["block"] += 1

        adapter = attention_adapter(self.attention)

        def attn_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
            seen["args"], seen["kwargs"] = args, kwargs
            seen["y"] = adapter.output_tensor(output).detach()
            seen["attn"] += 1

        scores = run_hooked(self.forward_func, inputs, extra,
                            [(self.block, "pre", block_hook), (self.attention, "post", attn_hook)])
        check_runs([self.block, self.attention], [seen["block"], seen["attn"]])
        cols = target_columns(scores, target)
        with torch.no_grad():
            self._check_tail(seen["x"], seen["y"], scores, layout)
            _, k, v = adapter.qkv(seen["args"], seen["kwargs"])
            dense = self.tail(seen["x"], adapter.project(full_width(v)))  # (N, L, E)
            sims = self.forward_func.score(dense)  # (N, L, T) cosines with the fixed texts
            sim = sims.gather(2, cols.to(sims.device)[:, None, None].expand(-1, sims.shape[1], 1))[..., 0]
            if self.key_similarity:
                kk = adapter.project(full_width(k)).float()
                w = query_weights(layout, kk.shape[0], kk.shape[1], kk.device)
                kq = torch.einsum("nl,nld->nd", w, kk)
                sim = sim * F.cosine_similarity(kq[:, None], kk, dim=-1)
            return torch.relu(sim)

    def _check_tail(self, x: Tensor, y: Tensor, scores: Tensor, layout: TokenLayout) -> None:
        """The tower's tail, fed the query's own attention output, must give back the scorer's similarities."""
        w = query_weights(layout, x.shape[0], x.shape[1], x.device).to(x.dtype)
        if layout.query_mask is not None:  # pragma: no cover - no average-pooled tower has a tail yet
            return
        again = self.forward_func.score(self.tail(torch.einsum("nl,nld->nd", w, x), torch.einsum("nl,nld->nd", w, y)))
        if not torch.allclose(again.float(), scores.float(), atol=1e-4, rtol=1e-3):
            raise RuntimeError(
                f"the {type(self.tower).__name__} adapter's path from the last attention module to the embedding "
                f"(Tower.pooled_tail) does not reproduce the scorer (max difference "
                f"{float((again.float() - scores.float()).abs().max()):.3g}); MaskCLIPSimilarity cannot be computed")
