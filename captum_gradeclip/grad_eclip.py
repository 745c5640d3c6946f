"""Grad-ECLIP as a Captum ``LayerAttribution``: the public class, its docstrings and the formula.

How the gradients ``dS/dy`` at the explained layers are obtained is :mod:`captum_gradeclip.gradient_routes`; the
steps every token attribution shares (scorer check, layers, hooks, output shaping) are
:mod:`captum_gradeclip.token_attribution`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor, nn

from .adapters.attention import AttentionAdapter, full_width
from .adapters.base import TokenLayout, Tower
from .gradient_routes import AUTO_MAX_ROWS, ROUTE_NAMES, Backward, FullBackwardRoute, LayerRecord, RouteReport, \
    RouteSetup, choose_route, query_output, query_positions
from .hooking import model_lock
from .layer_rules import LAYER_RULES, PAPER_LAYER_RULES, combine_layer_maps
from .targets import check_target, index_tensor, target_columns
from .token_attribution import LayerSpec, TokenAttribution, shape_token_maps

__all__ = ["GradECLIP", "LAYER_RULES", "PAPER_LAYER_RULES", "combine_layer_maps"]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _masked_minmax(s: Tensor, mask: Tensor) -> Tensor:
    """Min-max normalise ``s`` (..., L) over ``mask`` along the last axis; zero outside the mask; 1 where max == min."""
    inf = torch.finfo(s.dtype).max
    lo = s.masked_fill(~mask, inf).amin(dim=-1, keepdim=True)
    hi = s.masked_fill(~mask, -inf).amax(dim=-1, keepdim=True)
    span = hi - lo
    lam = torch.where(span > 0, (s - lo) / span.clamp_min(torch.finfo(s.dtype).tiny), torch.ones_like(s))
    return lam * mask


class GradECLIP(TokenAttribution):
    r"""Grad-ECLIP: gradient-based explanations of CLIP's image-text similarity.

    Zhao et al., "Gradient-based Visual Explanation for Transformer-based CLIP", ICML 2024
    (https://proceedings.mlr.press/v235/zhao24p.html), and "Grad-ECLIP: Gradient-based Visual and Textual
    Explanations for CLIP" (https://arxiv.org/abs/2502.18816).

    For an explained attention layer with pooling query :math:`p` (the class token of a ViT, the EOS token of
    the text tower), attention output :math:`o` before the output projection, values :math:`v_i` and the
    similarity :math:`S = \cos(f_I, f_T)`:

    .. math::

        g = \frac{\partial S}{\partial o_p},\qquad
        \lambda_i = \operatorname{minmax}_i \cos(q_p, k_i),\qquad
        m_i = \lambda_i \sum_c g_c\, v_{i,c}

    with q, k, v of full width (heads concatenated). Several layers are combined by ``layer_rule``: by default
    as the authors do, ReLU per layer, then the sum over layers on the image side
    (:math:`\sum_l \max(0, m^{(l)})`), and the sum over layers, then ReLU on the text side
    (:math:`\max(0, \sum_l m^{(l)})`). By default the unmodified model is
    explained; ``single_head=True`` reproduces the authors' released code, which re-runs each explained
    block's attention as one head over the full width (and, on the text side, normalises :math:`\lambda` over
    every context position, padding included).

    Image towers without a pooling attention (ConvNeXt, FastViT, Swin) average their last feature map :math:`A`:
    read as an attention with a zero query (uniform weights, :math:`v_i = A_i`), the same formula gives
    :math:`g = \partial S / \partial \bar A`, :math:`\lambda_i = 1` and :math:`m_i = \mathrm{ReLU}(\sum_c g_c
    A_{i,c})`: Grad-CAM of :math:`S` on the last feature map, times its number of positions (``docs/method.md``).

    Threads: one explainer, or several explainers of this package on one model, may be called from several
    threads at once and give exactly the sequential maps. Each call holds the model's re-entrant lock
    (:func:`~captum_gradeclip.hooking.model_lock`) from validation to the maps, and its hooks record only the
    calling thread's forward, so calls on one model run one at a time (use one model copy per worker for
    parallel work). A lock rather than per-thread records alone: on CUDA the autograd engine runs backward work
    on its own device threads.

    The gradients ``dS/dy`` come from one of several gradient routes (``gradient_route``), which differ in
    cost, never in the maps. Errors in the backward pass reach the caller as themselves; a batched backward
    that runs out of memory is retried with half the targets (with a warning), and a single target that does
    not fit raises the out-of-memory error itself.

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer whose output columns are
            explained; it tells which tower (image or text) and which tokens are explained.
        layer (nn.Module or list of nn.Module, optional): transformer blocks (or their attention modules) of
            the explained tower. Default: the last block on the image side, the last 8 on the text side
            (see :func:`~captum_gradeclip.default_layers`).
        device_ids (list of int, optional): kept for Captum's signature; DataParallel is not supported.
            Default: None
        single_head (bool, optional): reproduce the authors' released code. Default: False
        chunk_size (int, optional): how many targets share one batched backward pass in
            :meth:`attribute_all`. The memory of a batched backward grows with it: each target holds the
            gradients of every token it back-propagates through. Default: None, automatic: up to 32 targets,
            fewer where the backward runs over whole sequences (several explained layers, or towers without a
            fast path), so that one batched backward covers at most 4,096 token rows, about a forward pass of
            20 ViT-B/16 images at 224 px
        layer_rule (str, optional): how the maps of several explained layers are combined:
            ``"sum_then_relu"`` (sum the layers' signed maps, then ReLU: layers can cancel, and a word or patch
            whose layers disagree gets zero, possibly every one of them) or ``"relu_then_sum"`` (ReLU each
            layer's map, then sum: every layer's positive evidence counts). Both agree for one explained layer.
            Default: None, the paper's rule for the side: ``"relu_then_sum"`` for images,
            ``"sum_then_relu"`` for text (the resolved rule is stored in :attr:`layer_rule`)
        gradient_route (str, optional): how ``dS/dy`` is obtained (``docs/performance.md``, "Gradient routes";
            :mod:`captum_gradeclip.gradient_routes`): ``"auto"`` (the fastest route that applies, falling back to
            the full backward when a fast route's self-check fails), ``"backward"`` (always the full backward),
            ``"pooled_tail"``, ``"cut"`` or ``"row_tail"`` (that route; a ValueError at the call where it does not
            apply). The maps are the same on every route. Default: ``"auto"``
        on_route (callable, optional): called after each call that runs the model with a
            :class:`~captum_gradeclip.gradient_routes.RouteReport` (the route chosen, the route that made the maps,
            the sizes of the batched backward passes), in the calling thread while it holds the model's lock; for
            tests, logging and profiling.
            Default: None
        max_rows_per_backward (int, optional): the budget of token rows per batched backward of the automatic
            ``chunk_size``. Default: 4096

    Examples::

        >>> scorer = ImageTextSimilarity(model, tokens)
        >>> ge = GradECLIP(scorer, model.visual.transformer.resblocks[-1])
        >>> heat = ge.attribute(images, target=0)            # (N, 1, h, w)
        >>> heat_px = LayerAttribution.interpolate(heat, images.shape[-2:], "bilinear")
        >>> every = ge.attribute_all(images)                 # (N, T, h, w): every text, one forward pass
        >>> words = GradECLIP(tscorer, layer_rule="relu_then_sum").attribute(tokens, target=0)  # no cancelling
    """

    attention_required = False  # towers without attention: Grad-CAM on their last feature map

    def __init__(self, forward_func: Callable, layer: LayerSpec = None, device_ids: Optional[List[int]] = None,
                 *, single_head: bool = False, chunk_size: Optional[int] = None, layer_rule: Optional[str] = None,
                 gradient_route: str = "auto", on_route: Optional[Callable[[RouteReport], None]] = None,
                 max_rows_per_backward: int = AUTO_MAX_ROWS) -> None:
        super().__init__(forward_func, layer, device_ids)  # the scorer's tower and the explained blocks
        if chunk_size is not None and not _positive_int(chunk_size):
            raise ValueError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}")
        if not _positive_int(max_rows_per_backward):
            raise ValueError(f"max_rows_per_backward must be a positive int, got {max_rows_per_backward!r}")
        if layer_rule is not None and layer_rule not in LAYER_RULES:
            raise ValueError(f"layer_rule must be None (the paper's rule for the side: {PAPER_LAYER_RULES}) or one of "
                             f"{LAYER_RULES}, got {layer_rule!r}")
        if gradient_route not in ROUTE_NAMES:
            raise ValueError(f"gradient_route must be one of {ROUTE_NAMES}, got {gradient_route!r}")
        tower = self.tower
        self.attention_modules: List[nn.Module] = tower.resolve(self.blocks)
        self.single_head = bool(single_head)
        self.chunk_size = chunk_size
        self.max_rows_per_backward = max_rows_per_backward
        self.layer_rule: str = layer_rule if layer_rule is not None else PAPER_LAYER_RULES[tower.side]
        self.gradient_route = gradient_route
        self.on_route = on_route
        self._routes = RouteSetup(forward_func, tower, tuple(self.attention_modules), self.single_head)
        self._warned: Set[str] = set()  # messages of _warn_once (calls run under the model's lock)

    def _default_blocks(self, tower: Tower) -> List[nn.Module]:
        return tower.default_layers()  # see captum_gradeclip.default_layers

    def _warn_once(self, message: str) -> None:
        """A RuntimeWarning the first time this explainer meets ``message``."""
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=7)  # at the caller of attribute*

    # ------------------------------------------------------------------------------------------------------
    @log_usage()
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType = None,
                  additional_forward_args: Any = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""Grad-ECLIP maps of one target per example.

        Args:
            inputs (Tensor or tuple of one Tensor): images ``(N, 3, H, W)`` for an image scorer, token ids
                ``(N, L)`` for a text scorer. A tuple gives a tuple back (as Captum's metrics expect).
            target (int, tuple, Tensor or list, optional): the scorer's output column to explain, with
                Captum's semantics: one int for every example, or a list / 1-D tensor of N ints (one per
                example). May be None only when the scorer has a single column. Default: None
            additional_forward_args (Any, optional): extra scorer arguments (the attention mask of HF text).
                Default: None

        Returns:
            Tensor or tuple[Tensor]: the **attributions**, non-negative raw scores: ``(N, 1, h, w)`` on the
            patch grid for images (ready for ``LayerAttribution.interpolate``), ``(N, L)`` over token
            positions for text (zero at the start and end tokens and at padding). A 1-tuple when ``inputs``
            is a tuple.

        Examples::

            >>> heat = GradECLIP(scorer).attribute(images, target=[0, 1])
        """
        x, extra, is_tuple = self._inputs(inputs, additional_forward_args)

        def select(scores: Tensor) -> Tensor:
            return target_columns(scores, target)[:, None]

        with model_lock(self.tower.model):  # one call at a time per model (see captum_gradeclip.hooking)
            maps = self._attribute(x, extra, select)[:, 0]
        if self.tower.side == "image":
            maps = maps[:, None]
        return (maps,) if is_tuple else maps

    @log_usage()
    def attribute_all(self, inputs: Union[Tensor, Tuple[Tensor, ...]],
                      targets: Union[None, int, Sequence[int], Tensor] = None,
                      additional_forward_args: Any = None) -> Tensor:
        r"""Grad-ECLIP maps of many targets from ONE forward pass.

        Equal to stacking ``attribute(inputs, target=k)`` for every ``k`` in ``targets``, but the forward pass
        is shared and the gradients of all targets come from batched backward passes (``chunk_size`` targets
        at a time).

        Args:
            inputs (Tensor): images ``(N, 3, H, W)`` or token ids ``(N, L)``.
            targets (sequence of int or 1-D Tensor, optional): the scorer's columns to explain, the same for
                every example. Default: every column.
            additional_forward_args (Any, optional): extra scorer arguments. Default: None

        Returns:
            Tensor: ``(N, K, h, w)`` for images, ``(N, K, L)`` for text, non-negative.

        Examples::

            >>> maps = GradECLIP(scorer).attribute_all(images)            # all texts of the scorer
            >>> maps = GradECLIP(scorer).attribute_all(images, [0, 3])    # two of them
        """
        x, extra, _ = self._inputs(inputs, additional_forward_args)

        def select(scores: Tensor) -> Tensor:
            # validated on the host before anything touches the device (no syncs in the hot path)
            cols = list(range(scores.shape[1])) if targets is None \
                else torch.as_tensor(targets).reshape(-1).tolist()
            if not cols or not all(isinstance(c, int) for c in cols):
                raise ValueError(f"targets must be a non-empty sequence of ints, got {targets!r}")
            for c in cols:
                check_target(scores, c)
            index = index_tensor([c % scores.shape[1] for c in cols], scores.device)
            return index[None, :].expand(scores.shape[0], -1)

        with model_lock(self.tower.model):
            return self._attribute(x, extra, select)

    def _attribute(self, inputs: Tensor, extra: Tuple[Any, ...], select: Callable[[Tensor], Tensor],
                   may_crop: bool = True) -> Tensor:
        tower = self.tower
        tower.validate(inputs, *extra)
        if may_crop:  # once per call (the cropped call below comes back here)
            tower.check_values(inputs)
        if inputs.shape[0] == 0:  # an empty batch: (0, K, h, w) or (0, K, L), the targets validated as usual
            columns = select(torch.zeros(0, self.forward_func.num_targets, device=inputs.device))  # (0, K)
            layout = tower.layout(inputs, *extra, single_head=self.single_head)
            empty = torch.zeros(0, columns.shape[1], layout.report_mask.shape[1], device=inputs.device)
            return self._shape_maps(empty, layout)
        if tower.root.training:
            warnings.warn(f"the {tower.side} tower is in training mode: dropout or patch dropout can make the maps "
                          "random; call model.eval() first (GradECLIP never changes the mode itself)",
                          stacklevel=3)
        crop = None if self.single_head or not may_crop else tower.crop_length(inputs, *extra)
        if crop is not None and crop < inputs.shape[1]:
            # causal text: positions after the last query cannot change anything; explain the shorter sequence
            # (exactly the same maps, a fraction of the cost) and pad the maps with zeros
            full = inputs.shape[1]
            extra = tuple(e[:, :crop] if isinstance(e, Tensor) and e.dim() == 2 and e.shape == inputs.shape else e
                          for e in extra)
            maps = self._attribute(inputs[:, :crop], extra, select, may_crop=False)
            return F.pad(maps, (0, full - crop))
        with torch.inference_mode(False):
            layout = tower.layout(inputs, *extra, single_head=self.single_head)
            backward = Backward(self.forward_func.score, self.chunk_size, self.max_rows_per_backward, self._warn_once)
            chosen = route = choose_route(self._routes, layout, backward, self.gradient_route)
            record = route.forward(inputs, extra, layout)
            if record.scores.dim() != 2:
                raise ValueError(f"the scorer must return (N, T) similarities, got shape {tuple(record.scores.shape)}")
            columns = select(record.scores)  # (N, K)
            grads = route.gradients(record, columns, layout)
            if grads is None:  # a fast route did not reproduce the forward pass: differentiate the whole forward
                route = FullBackwardRoute(self._routes, backward)
                record = route.forward(inputs, extra, layout)
                grads = route.gradients(record, columns, layout)
            maps = self._maps(record.layers, grads, layout)
        if self.on_route is not None:
            self.on_route(RouteReport(chosen.name, route.name, tuple(backward.batches)))
        return maps

    def _maps(self, records: List[LayerRecord], grads: List[Tensor], layout: TokenLayout) -> Tensor:
        """The Grad-ECLIP maps ``(N, K, h, w)`` or ``(N, K, L)`` from the layers' records and ``dS/dy``."""
        per_layer = []
        for rec, dy in zip(records, grads):
            adapter = rec.adapter
            with torch.no_grad():
                q, k, v = rec.qkv if rec.qkv is not None else adapter.qkv(rec.args, rec.kwargs)
                n = q.shape[0]
                pos, weight = query_positions(layout, n, q.shape[2], q.device)
                rows = torch.arange(n, device=q.device)[:, None]
                g = self._channel_weights(adapter, dy, q, k, v, pos, layout)  # (K, N, Q, C) float32
                vf = full_width(v).float()  # float32 for the reductions
                lam_mask = layout.lam_mask[:, None, :].expand(n, pos.shape[1], vf.shape[1])
                if adapter.spatial_weight:  # q only at the query rows
                    qf, kf = full_width(q)[rows, pos].float(), full_width(k).float()
                    eps = 1e-8
                    sim = torch.einsum("nqc,nlc->nql", qf / qf.norm(dim=-1, keepdim=True).clamp_min(eps),
                                       kf / kf.norm(dim=-1, keepdim=True).clamp_min(eps))  # cos(q_p, k_i)
                    lam = _masked_minmax(sim, lam_mask)
                else:  # a uniform pooling: no query-key similarity, lambda = 1 on the explained positions
                    lam = lam_mask.float()
                lam = lam * weight[..., None]  # (N, Q, L)
                per_layer.append(torch.einsum("knqc,nlc,nql->knl", g, vf, lam))
        total = combine_layer_maps(per_layer, self.layer_rule)
        return self._shape_maps(total.transpose(0, 1), layout)  # from (N, K, L)

    @staticmethod
    def _shape_maps(values: Tensor, layout: TokenLayout) -> Tensor:
        """``(N, K, L)`` maps as the result: on the patch grid, or at the text positions the tower reports."""
        out = shape_token_maps(values, layout)
        return out if layout.grid is not None or layout.positions is None else out[:, :, layout.positions]

    def _channel_weights(self, adapter: AttentionAdapter, dy: Tensor, q: Tensor, k: Tensor, v: Tensor,
                         pos: Tensor, layout: TokenLayout) -> Tensor:
        """g = dS/do at the queries: the gradient at the module output pulled back through its projection."""
        n = q.shape[0]
        param = next(adapter.module.parameters(), v)  # a module without weights (a global pool): the values' dtype
        if adapter.linear_projection:
            o = torch.zeros(n, pos.shape[1], full_width(v).shape[-1], dtype=param.dtype, device=v.device)
        else:
            o = query_output(adapter, q, k, v, pos, layout).to(param.dtype)
        with torch.enable_grad():
            o = o.detach().requires_grad_(True)
            y = adapter.project(o)
            (g,) = torch.autograd.grad(y, o, grad_outputs=dy.to(y.dtype), is_grads_batched=True)
        return g.float()
