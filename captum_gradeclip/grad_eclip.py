"""Grad-ECLIP as a Captum ``LayerAttribution``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from captum.attr._utils.attribution import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .adapters.attention import AttentionAdapter, attention_adapter, attention_output_at, full_width, \
    is_attention_module, single_head_output
from .adapters.base import RowTail, TokenLayout, Tower
from .errors import LayerNotExecutedError, UnsupportedModelError
from .hooking import calling_thread_only, check_runs, model_lock
from .targets import check_target, index_tensor, single_input, target_columns

LayerSpec = Union[nn.Module, Sequence[nn.Module], None]

# automatic chunk_size: targets per batched backward, and token rows (targets x rows each) per batched backward
_AUTO_MAX_TARGETS = 32
_AUTO_MAX_ROWS = 4096

#: How the maps of several explained layers are combined (``GradECLIP(..., layer_rule=...)``):
#: ``"sum_then_relu"``: ReLU(sum over layers of m_l); ``"relu_then_sum"``: sum over layers of ReLU(m_l).
LAYER_RULES = ("sum_then_relu", "relu_then_sum")
#: The paper's rule on each side, used when ``layer_rule`` is None.
PAPER_LAYER_RULES = {"image": "relu_then_sum", "text": "sum_then_relu"}


@dataclass
class _Record:
    """What the hooks saw of one explained attention module during one forward pass."""

    adapter: AttentionAdapter
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    rows: int = 0  # token rows of the module's output (N x L)
    probe: Optional[Tensor] = None  # zero tensor added at the query row: its gradient is dS/dy_query
    y_query: Optional[Tensor] = None  # fast path: the output row at the query
    block_in: Optional[Tensor] = None  # fast path: the block's input row at the query
    qkv: Optional[Tuple[Tensor, Tensor, Tensor]] = None  # row tail: q, k, v already computed (shared with _maps)


@dataclass
class _Fast:
    """A fast path: no graph over the sequence; the gradients come from the query row's path after ``block``.

    ``tail``: the pooled tail after the last block's attention; without ``cut``, that attention is the only
    explained layer. ``cut``: several explained layers with a pooled tail (image towers): the graph runs over the
    sequence from the first explained layer up to the last block's attention input, and the last block's query
    row is re-computed from that input (the other rows of the last block do not reach the embedding).
    ``row``: the row tail over every block from ``block`` on; ``slots[j]`` is the index of the explained layer
    whose module is ``row.attentions[j]`` (None for blocks that are re-run but not explained).
    """

    block: nn.Module  # its input row at the query is recorded (in the record of explained layer `first`)
    first: int
    tail: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    row: Optional[RowTail] = None
    slots: List[Optional[int]] = field(default_factory=list)
    cut: bool = False
    last: Optional[nn.Module] = None  # cut: the last block's attention module (records[str(first)] or "cut")


def _first_tensor(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            return a
    raise LayerNotExecutedError("the explained block received no tensor input")


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that a device (or the host) ran out of memory."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _transform_limit(error: BaseException) -> bool:
    """Whether ``error`` is a limitation of the batched backward or of ``torch.func``'s transforms (an op without a
    batching rule, an ``autograd.Function`` without ``setup_context``), which an unbatched backward can run."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("vmap", "batching rule", "batched", "functorch", "setup_context", "torch.func"))


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled()


def combine_layer_maps(per_layer: Sequence[Tensor], layer_rule: str) -> Tensor:
    r"""Combine the signed maps :math:`m_l` of the explained layers into one non-negative map.

    Args:
        per_layer (sequence of Tensor): one signed map per explained layer, all of the same shape.
        layer_rule (str): ``"sum_then_relu"``: :math:`\max(0, \sum_l m_l)` (the paper's text rule: layers whose
            contributions have opposite signs cancel, and the map can be zero everywhere);
            ``"relu_then_sum"``: :math:`\sum_l \max(0, m_l)` (the paper's image rule: every layer's positive
            part counts). The two agree when one layer is explained.

    Returns:
        Tensor: the combined map, of the shape of one layer's map, non-negative.

    Examples::

        >>> combine_layer_maps([torch.tensor([1., -2.]), torch.tensor([-1., 3.])], "sum_then_relu")
        tensor([0., 1.])
        >>> combine_layer_maps([torch.tensor([1., -2.]), torch.tensor([-1., 3.])], "relu_then_sum")
        tensor([1., 3.])
    """
    if not per_layer:
        raise ValueError("combine_layer_maps needs the map of at least one layer")
    if layer_rule == "relu_then_sum":
        return sum(F.relu(m) for m in per_layer)
    if layer_rule == "sum_then_relu":
        return F.relu(sum(per_layer))
    raise ValueError(f"layer_rule must be one of {LAYER_RULES}, got {layer_rule!r}")


def _masked_minmax(s: Tensor, mask: Tensor) -> Tensor:
    """Min-max normalise ``s`` (..., L) over ``mask`` along the last axis; zero outside the mask; 1 where max == min."""
    inf = torch.finfo(s.dtype).max
    lo = s.masked_fill(~mask, inf).amin(dim=-1, keepdim=True)
    hi = s.masked_fill(~mask, -inf).amax(dim=-1, keepdim=True)
    span = hi - lo
    lam = torch.where(span > 0, (s - lo) / span.clamp_min(torch.finfo(s.dtype).tiny), torch.ones_like(s))
    return lam * mask


class GradECLIP(LayerAttribution, GradientAttribution):
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

    Errors in the backward pass reach the caller as themselves; a batched backward that runs out of memory is
    retried with half the targets (with a warning), and a single target that does not fit raises the
    out-of-memory error itself.

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

    Examples::

        >>> scorer = ImageTextSimilarity(model, tokens)
        >>> ge = GradECLIP(scorer, model.visual.transformer.resblocks[-1])
        >>> heat = ge.attribute(images, target=0)            # (N, 1, h, w)
        >>> heat_px = LayerAttribution.interpolate(heat, images.shape[-2:], "bilinear")
        >>> every = ge.attribute_all(images)                 # (N, T, h, w): every text, one forward pass
        >>> words = GradECLIP(tscorer, layer_rule="relu_then_sum").attribute(tokens, target=0)  # no cancelling
    """

    def __init__(self, forward_func: Callable, layer: LayerSpec = None, device_ids: Optional[List[int]] = None,
                 *, single_head: bool = False, chunk_size: Optional[int] = None,
                 layer_rule: Optional[str] = None) -> None:
        tower = getattr(forward_func, "tower", None)
        if not isinstance(tower, Tower) or not callable(getattr(forward_func, "score", None)):
            raise TypeError(
                "GradECLIP needs a scorer built by captum_gradeclip (ImageTextSimilarity or TextImageSimilarity)"
                f" as forward_func, got {type(forward_func).__name__}; wrap your model, e.g. "
                "ImageTextSimilarity(model, tokens)")
        if layer is None:
            blocks = tower.default_layers()
        elif isinstance(layer, nn.Module) and not isinstance(layer, (nn.ModuleList, nn.Sequential)):
            blocks = [layer]
        else:
            blocks = list(layer)
        if not blocks:
            raise ValueError("layer must name at least one block or attention module")
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}")
        if layer_rule is not None and layer_rule not in LAYER_RULES:
            raise ValueError(f"layer_rule must be None (the paper's rule for the side: {PAPER_LAYER_RULES}) or one of "
                             f"{LAYER_RULES}, got {layer_rule!r}")
        LayerAttribution.__init__(self, forward_func, blocks if len(blocks) > 1 else blocks[0], device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.tower: Tower = tower
        self.attention_modules: List[nn.Module] = tower.resolve(blocks)
        self.single_head = bool(single_head)
        self.chunk_size = chunk_size
        self.layer_rule: str = layer_rule if layer_rule is not None else PAPER_LAYER_RULES[tower.side]
        self._warned: Set[str] = set()  # messages of _warn_once (calls run under the model's lock)

    def _warn_once(self, message: str) -> None:
        """A RuntimeWarning the first time this explainer meets ``message``."""
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

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
        x, is_tuple = single_input(inputs, "GradECLIP")

        def select(scores: Tensor) -> Tensor:
            return target_columns(scores, target)[:, None]

        with model_lock(self.tower.model):  # one call at a time per model (see captum_gradeclip.hooking)
            maps = self._attribute(x, additional_forward_args, select)[:, 0]
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
        x, _ = single_input(inputs, "GradECLIP")

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
            return self._attribute(x, additional_forward_args, select)

    # ------------------------------------------------------------------------------------------------------
    def _attribute(self, inputs: Tensor, additional_forward_args: Any,
                   select: Callable[[Tensor], Tensor], may_crop: bool = True) -> Tensor:
        extra = _format_additional_forward_args(additional_forward_args) or ()
        tower = self.tower
        tower.validate(inputs, *extra)
        if may_crop:  # once per call (the cropped call below comes back here)
            tower.check_values(inputs)
        if inputs.shape[0] == 0:
            return self._empty(inputs, extra, select)
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
            maps = self._attribute(inputs[:, :crop], extra or None, select, may_crop=False)
            return F.pad(maps, (0, full - crop))
        with torch.inference_mode(False):
            layout = tower.layout(inputs, *extra, single_head=self.single_head)
            fast = self._fast_path(layout)
            records = self._forward(inputs, extra, layout, fast)
            scores = records.pop("__scores__")
            embedding = records.pop("__embedding__")
            if scores.dim() != 2:
                raise ValueError(f"the scorer must return (N, T) similarities, got shape {tuple(scores.shape)}")
            columns = select(scores)  # (N, K)
            grads = self._gradients(scores, embedding, columns, records, fast, layout)
            if grads is None:  # the fast path did not reproduce the forward pass: differentiate the whole forward
                records = self._forward(inputs, extra, layout, None)
                scores = records.pop("__scores__")
                embedding = records.pop("__embedding__")
                grads = self._gradients(scores, embedding, columns, records, None, layout)
            return self._maps(records, grads, layout)

    def _empty(self, inputs: Tensor, extra: Tuple[Any, ...], select: Callable[[Tensor], Tensor]) -> Tensor:
        """The result of an empty batch (N = 0): ``(0, K, h, w)`` or ``(0, K, L)``, the targets validated as usual."""
        columns = select(torch.zeros(0, self.forward_func.num_targets, device=inputs.device))  # (0, K)
        layout = self.tower.layout(inputs, *extra, single_head=self.single_head)
        if layout.grid is not None:
            size = tuple(layout.grid)
        else:
            size = (layout.report_mask.shape[1] if layout.positions is None else layout.positions.numel(),)
        return torch.zeros((0, columns.shape[1]) + size, device=inputs.device)

    def _fast_path(self, layout: TokenLayout) -> Optional[_Fast]:
        """The pooled tail (one explained layer in the last block) or the row tail (causal towers), if any."""
        modules = self.attention_modules
        if len(modules) == 1:
            tail = self.tower.pooled_tail(modules[0])
            if tail is not None:
                block = next(b for b in self.tower.blocks() if any(m is modules[0] for m in b.modules()))
                return _Fast(block=block, first=0, tail=tail)
        if self.single_head or layout.query_mask is not None:
            return None
        row = self.tower.row_tail(modules, single_head=self.single_head)
        if row is None:
            return self._cut_path()
        index = {id(m): i for i, m in enumerate(modules)}
        slots = [index.get(id(m)) for m in row.attentions]
        if slots[0] is None or sum(s is not None for s in slots) != len(modules):
            return None  # the tail must start at an explained layer and hold all of them
        return _Fast(block=row.block, first=slots[0], row=row, slots=slots)

    def _cut_path(self) -> Optional[_Fast]:
        """Several explained layers (or one before the last block) in a tower with a pooled tail: cut the graph at
        the last block's attention input."""
        blocks = self.tower.blocks()
        try:
            last = self.tower.attention_of(blocks[-1])
        except UnsupportedModelError:
            return None
        tail = self.tower.pooled_tail(last)
        if tail is None or not is_attention_module(last):
            return None
        first = next((i for i, m in enumerate(self.attention_modules) if m is last), -1)
        return _Fast(block=blocks[-1], first=first, tail=tail, cut=True, last=last)

    @staticmethod
    def _queries(layout: TokenLayout, n: int, length: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Query positions (N, Q) and their 0/1 weights (N, Q): one pooling query, or every masked token."""
        if layout.query_mask is None:
            return layout.query.reshape(n, 1), torch.ones(n, 1, device=device)
        pos = torch.arange(length, device=device).expand(n, length)
        return pos, layout.query_mask.float()

    def _forward(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                 fast: Optional[_Fast]) -> Dict[str, Any]:
        """Run the scorer once with hooks on the explained layers; no graph before the first of them (no graph
        at all on a fast path). The row tail also records the inputs of the blocks it re-runs unexplained, as
        ``records["row<j>"]``."""
        records: Dict[str, Any] = {str(i): _Record(attention_adapter(m)) for i, m in enumerate(self.attention_modules)}
        if fast is not None and fast.row is not None:
            for j, (module, slot) in enumerate(zip(fast.row.attentions, fast.slots)):
                if slot is None:
                    records[f"row{j}"] = _Record(attention_adapter(module))
        cut = fast is not None and fast.cut
        if cut:
            if fast.first < 0:
                records["cut"] = _Record(attention_adapter(fast.last))
            last = records[str(fast.first) if fast.first >= 0 else "cut"]
        handles = []
        # hooks fire for every thread's forward through a module: each records only this call's thread (and the
        # model's lock, held by the caller, keeps other calls of this package out)

        def pre_hook(rec: _Record) -> Callable:
            def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
                rec.args, rec.kwargs = args, kwargs
                if cut and rec is last:
                    torch.set_grad_enabled(False)  # nothing after this input needs a graph (restored by no_grad())
            return calling_thread_only(hook)

        def out_hook(rec: _Record) -> Callable:
            def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
                rec.runs += 1
                adapter = rec.adapter
                y = adapter.output_tensor(output)
                replaced = False
                if self.single_head:  # q, k, v from the attention module's own inputs (this hook may sit on a
                    q, k, v = adapter.qkv(rec.args, rec.kwargs)  # submodule such as the output projection)
                    y = single_head_output(adapter, q, k, v, layout.allowed).to(y.dtype)
                    replaced = True
                n, length = y.shape[0], y.shape[1]
                rec.rows = n * length
                if cut and rec is last:
                    return None  # its query row is re-computed with a graph in _cut_gradients
                pos, weight = self._queries(layout, n, length, y.device)
                rows = torch.arange(n, device=y.device)[:, None]
                if fast is not None and not cut:
                    rec.y_query = y[rows, pos].detach()
                    return adapter.replace_output(output, y) if replaced else None
                if not torch.is_grad_enabled():
                    torch.set_grad_enabled(True)  # restored when the surrounding no_grad() exits
                    y = y.detach()
                probe = torch.zeros(n, pos.shape[1], y.shape[-1], dtype=y.dtype, device=y.device,
                                    requires_grad=True)
                onehot = pos[..., None] == torch.arange(length, device=y.device)  # (N, Q, L), no device sync
                scatter = onehot.to(y.dtype) * weight[..., None].to(y.dtype)
                rec.probe = probe
                return adapter.replace_output(output, y + torch.einsum("nql,nqd->nld", scatter, probe))
            return calling_thread_only(hook)

        def block_hook(rec: _Record) -> Callable:
            def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
                x = _first_tensor(args, kwargs)
                pos, _ = self._queries(layout, x.shape[0], x.shape[1], x.device)
                row = x[torch.arange(x.shape[0], device=x.device)[:, None], pos]
                rec.block_in = row if cut else row.detach()  # cut: keeps the graph back to earlier layers
            return calling_thread_only(hook)

        try:
            for i, module in enumerate(self.attention_modules):
                rec = records[str(i)]
                handles.append(module.register_forward_pre_hook(pre_hook(rec), with_kwargs=True))
                handles.append(rec.adapter.output_module.register_forward_hook(out_hook(rec), with_kwargs=True))
            if fast is not None:
                for j, module in enumerate(fast.row.attentions if fast.row is not None else []):
                    if f"row{j}" in records:
                        handles.append(module.register_forward_pre_hook(pre_hook(records[f"row{j}"]),
                                                                        with_kwargs=True))
                if cut and fast.first < 0:
                    handles.append(fast.last.register_forward_pre_hook(pre_hook(last), with_kwargs=True))
                handles.append(fast.block.register_forward_pre_hook(
                    block_hook(last if cut else records[str(fast.first)]), with_kwargs=True))
            with torch.no_grad():  # the scorer's forward, split at the embedding
                embedding = self.forward_func.embed(inputs, *extra)
                scores = self.forward_func.score(embedding)
        finally:
            for h in handles:
                h.remove()
        check_runs(self.attention_modules, [records[str(i)].runs for i in range(len(self.attention_modules))])
        records["__scores__"] = scores
        records["__embedding__"] = embedding
        return records

    def _chunks(self, k: int, rows: int) -> List[slice]:
        """Slices of the K targets that share one batched backward; ``rows``: token rows each target's backward
        runs over (N for the fast paths, N x L for a backward over whole sequences)."""
        size = self.chunk_size or max(1, min(_AUTO_MAX_TARGETS, _AUTO_MAX_ROWS // max(rows, 1)))
        return [slice(j, min(j + size, k)) for j in range(0, k, size)]

    def _chunked(self, k: int, rows: int, run: Callable[[slice, bool], Any]) -> Iterator[Any]:
        """``run(part, last)`` for the slices of :meth:`_chunks`, in order. A chunk that runs out of memory is
        retried in halves (with a warning; the graph is still whole, see :meth:`_vjp`); a single target that does
        not fit raises the out-of-memory error itself."""
        parts = self._chunks(k, rows)
        while parts:
            part = parts.pop(0)
            try:
                result = run(part, part.stop == k)
            except RuntimeError as error:
                size = part.stop - part.start
                if not _out_of_memory(error) or size == 1:
                    raise
                half = part.start + (size + 1) // 2
                warnings.warn(f"out of memory in a batched backward of {size} targets; retrying {half - part.start}"
                              f" at a time (pass chunk_size={half - part.start} or less to start there)",
                              RuntimeWarning, stacklevel=2)
                parts[:0] = [slice(part.start, half), slice(half, part.stop)]
                continue
            yield result

    def _vjp(self, outputs: Tensor, wrt: List[Tensor], vectors: Tensor, retain: bool) -> List[Tensor]:
        """B vector-Jacobian products at once: ``vectors`` ``(B, *outputs.shape)``; a list of ``(B, *t.shape)``.

        The batched backward keeps the graph whatever ``retain`` says, so that a failure can be retried on it:
        an op that the batched backward cannot run (no batching rule) is retried one vector at a time, and an
        out-of-memory error is retried by :meth:`_chunked` in smaller chunks (the graph is freed when the caller
        drops it). Any other error is the model's own and reaches the caller as itself. ``retain``: whether the
        caller needs the graph after this call (only the one-vector-at-a-time retry may free it)."""
        b = vectors.shape[0]
        try:
            grads = torch.autograd.grad(outputs, wrt, grad_outputs=vectors, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
        except RuntimeError as error:
            if _out_of_memory(error) or not _transform_limit(error):
                raise
            per = [torch.autograd.grad(outputs, wrt, grad_outputs=v, retain_graph=retain or j < b - 1,
                                       allow_unused=True)
                   for j, v in enumerate(vectors)]
            grads = tuple(torch.stack([p[i] if p[i] is not None else torch.zeros_like(wrt[i]) for p in per])
                          for i in range(len(wrt)))
        return [g if g is not None else torch.zeros((b,) + tuple(t.shape), dtype=t.dtype, device=t.device)
                for g, t in zip(grads, wrt)]

    def _pull_back(self, k: int, e: int, n: int, rows: int, leaves: List[Tensor],
                   targets_to_leaves: Callable[[Tensor, bool], Sequence[Tensor]],
                   targets_to_embedding: Callable[[Tensor, bool], Tensor],
                   embedding_to_leaves: Callable[[Tensor, bool], Sequence[Tensor]]) -> List[Tensor]:
        """d S[n, columns[n, k]] / d ``leaves`` for every target k: a list of ``(K, *leaf.shape)``.

        The gradients all pass through the embedding ``f`` ``(N, E)``. With K <= E, batched pull-backs of the K
        targets' unit vectors run from the chosen similarities (``targets_to_leaves``). With more targets than
        embedding dimensions (zero-shot over many classes), the targets' gradients at ``f`` are taken first
        (``targets_to_embedding``: the scorer's cosine only), the E unit vectors of ``f`` are pulled back through
        the network (``embedding_to_leaves``: its Jacobian) and the two are contracted: min(K, E) pull-backs
        through the network either way. Each callable takes a chunk of cotangents ``(c, N, K or E)`` and whether
        it is the last chunk (the graph may then be freed). ``rows``: token rows one pull-back runs over (for the
        automatic chunk size).
        """
        def unit_vectors(count: int, dtype: torch.dtype) -> Tensor:  # (count, N, count)
            return torch.eye(count, dtype=dtype, device=leaves[0].device)[:, None, :].expand(count, n, count)

        eye = unit_vectors(k, torch.float32)
        if k <= e:
            chunks = list(self._chunked(k, rows, lambda part, last: targets_to_leaves(eye[part], last)))
            return [torch.cat([c[i] for c in chunks], dim=0) for i in range(len(leaves))]
        at_embedding = torch.cat(list(self._chunked(k, n, lambda part, last: targets_to_embedding(eye[part], last))
                                      )).float()  # (K, N, E)
        basis = unit_vectors(e, leaves[0].dtype)
        sums = [torch.zeros((k,) + tuple(t.shape), dtype=torch.float32, device=t.device) for t in leaves]
        for part, grads in self._chunked(e, rows, lambda part, last: (part, embedding_to_leaves(basis[part], last))):
            for acc, g in zip(sums, grads):  # J^T u_k, in float32
                acc += torch.einsum("kne,en...->kn...", at_embedding[:, :, part], g.float())
        return [acc.to(t.dtype) for acc, t in zip(sums, leaves)]

    def _target_gradients(self, embedding: Tensor, columns: Tensor, wrt: List[Tensor], rows: int) -> List[Tensor]:
        """:meth:`_pull_back` through the autograd graph that the forward pass built (``wrt``: its probes)."""
        k = columns.shape[1]
        n, e = embedding.shape
        if not embedding.requires_grad:  # nothing explained reaches the embedding
            return [torch.zeros((k,) + tuple(t.shape), dtype=t.dtype, device=t.device) for t in wrt]

        def targets_to_embedding(vectors: Tensor, last: bool) -> Tensor:  # through the scorer only
            leaf = embedding.detach().requires_grad_(True)
            return self._vjp(self.forward_func.score(leaf).gather(1, columns), [leaf], vectors, False)[0]

        with torch.enable_grad():
            chosen = self.forward_func.score(embedding).gather(1, columns)  # (N, K)
            return self._pull_back(
                k, e, n, rows, wrt,
                lambda vectors, last: self._vjp(chosen, wrt, vectors.to(chosen.dtype), not last),
                targets_to_embedding,
                lambda vectors, last: self._vjp(embedding, wrt, vectors.to(embedding.dtype), not last))

    @staticmethod
    def _reproduces(tail_scores: Tensor, scores: Tensor, low_precision: bool) -> bool:
        """Self-check of a fast path: the query's path must reproduce the forward's similarities (up to rounding;
        ``low_precision``: the forward ran under autocast)."""
        tol = 1e-4 if tail_scores.dtype == torch.float32 and not low_precision else 3e-2
        return tail_scores.shape == scores.shape and \
            torch.allclose(tail_scores.detach(), scores.detach().to(tail_scores.dtype), atol=tol)

    def _gradients(self, scores: Tensor, embedding: Tensor, columns: Tensor, records: Dict[str, Any],
                   fast: Optional[_Fast], layout: TokenLayout) -> Optional[List[Tensor]]:
        """dS/dy at the query rows for every explained layer: a list of (K, N, Q, D); None when the fast path
        fails its self-check."""
        recs = [records[str(i)] for i in range(len(self.attention_modules))]
        if fast is not None and fast.row is not None:
            return self._row_gradients(scores, columns, records, fast, layout)
        if fast is not None and fast.cut:
            return self._cut_gradients(scores, columns, records, fast, layout)
        if fast is not None:
            rec = recs[0]
            dtype = next(rec.adapter.module.parameters()).dtype
            x_row = rec.block_in[:, 0].to(dtype)

            def path(y: Tensor) -> Tensor:  # the attention output row (N, 1, D) -> the embedding
                return fast.tail(x_row, y[:, 0])

            return self._row_path_gradients(path, [rec.y_query.to(dtype)], scores, columns)
        return self._target_gradients(embedding, columns, [r.probe for r in recs], max(r.rows for r in recs))

    def _cut_gradients(self, scores: Tensor, columns: Tensor, records: Dict[str, Any], fast: _Fast,
                       layout: TokenLayout) -> Optional[List[Tensor]]:
        """dS/dy for several explained layers when the graph was cut at the last block's attention input: the last
        block's query row is re-computed from that input (keys and values of every row, with their graph back to
        the earlier explained layers) and finished by the pooled tail."""
        assert fast.tail is not None
        rec = records[str(fast.first) if fast.first >= 0 else "cut"]
        adapter = rec.adapter
        recs = [records[str(i)] for i in range(len(self.attention_modules))]
        with torch.enable_grad():
            q, k, v = adapter.qkv(rec.args, rec.kwargs)  # (N, H, L, d)
            n = q.shape[0]
            pos, _ = self._queries(layout, n, q.shape[2], q.device)
            y = adapter.project(self._output_at(adapter, q, k, v, pos, layout))  # (N, 1, D): the output at the query
            if fast.first >= 0:
                rec.probe = torch.zeros_like(y, requires_grad=True)
                y = y + rec.probe
            tail_embedding = fast.tail(rec.block_in[:, 0], y[:, 0])
            if not self._reproduces(self.forward_func.score(tail_embedding), scores, _autocast_on(q.device)):
                return None
        rec.qkv = (q.detach(), k.detach(), v.detach())  # shared with _maps
        return self._target_gradients(tail_embedding, columns, [r.probe for r in recs], max(r.rows for r in recs))

    def _row_gradients(self, scores: Tensor, columns: Tensor, records: Dict[str, Any], fast: _Fast,
                       layout: TokenLayout) -> Optional[List[Tensor]]:
        """dS/dy from a graph over the query row only (causal towers): the row is re-run from the first explained
        block to the embedding, attending to the recorded keys and values of the other rows, with a zero probe
        at the output of every explained attention module."""
        row = fast.row
        assert row is not None
        recs = [records[str(s)] if s is not None else records[f"row{j}"] for j, s in enumerate(fast.slots)]
        first = recs[0]
        x = first.block_in  # (N, 1, C)
        n, device = x.shape[0], x.device
        rows = torch.arange(n, device=device)
        query = layout.query.reshape(n)
        with torch.no_grad():
            for rec in recs[1:]:  # keys and values of every row; the query row's own are recomputed below
                rec.qkv = rec.adapter.qkv(rec.args, rec.kwargs)
            length = recs[-1].qkv[1].shape[2] if len(recs) > 1 else 0
            own = (query[:, None] == torch.arange(length, device=device))[:, None, :, None]  # (N, 1, L, 1)
            allowed = None if layout.allowed is None else layout.allowed[rows, query][:, None, :]  # (N, 1, L)
        dtype = next(row.block.parameters()).dtype
        x_row = x.to(dtype)
        kv = [None] + [(rec.qkv[1].to(dtype), rec.qkv[2].to(dtype)) for rec in recs[1:]]

        def path(*probes: Tensor) -> Tensor:  # one zero probe (N, 1, D) per explained layer -> the embedding
            x = x_row
            for j, (rec, slot) in enumerate(zip(recs, fast.slots)):
                if j == 0:
                    y = first.y_query.to(dtype)
                else:
                    adapter = rec.adapter
                    q1, k1, v1 = adapter.row_qkv(row.pre(j, x))  # (N, H, 1, d)
                    kk = torch.where(own, k1, kv[j][0])
                    vv = torch.where(own, v1, kv[j][1])
                    y = adapter.project(attention_output_at(adapter, q1, kk, vv, allowed))
                if slot is not None:
                    y = y + probes[slot]
                x = row.post(j, x, y)
            return row.head(x[:, 0])

        width = first.y_query.shape[-1]
        zeros = [torch.zeros(n, 1, width, dtype=dtype, device=device) for _ in self.attention_modules]
        return self._row_path_gradients(path, zeros, scores, columns)

    def _row_path_gradients(self, path: Callable[..., Tensor], leaves: List[Tensor], scores: Tensor,
                            columns: Tensor) -> Optional[List[Tensor]]:
        """Gradients on a fast path whose graph holds one row per example (the pooled tail, the row tail).

        ``path(*leaves)`` maps the leaves (``(N, Q, D)`` each: what is differentiated) to the embedding
        ``(N, E)``. It runs once; its vector-Jacobian products for all targets of a chunk come from
        ``torch.func.vmap`` over ``torch.func.vjp``, whose batching rules keep one kernel per op whatever the
        number of targets (the ``is_grads_batched`` prototype loops over targets in several backward ops). With
        more targets than embedding dimensions, the E unit vectors of the embedding are pulled back instead (its
        Jacobian) and contracted with the targets' gradients at the embedding. The path is first checked against
        the forward's similarities (None: it does not reproduce the model; the caller falls back to the full
        backward). Under autocast it runs in the weights' own precision: it is small, and autocast would
        otherwise keep low-precision copies of its weights for the backward.
        """
        from torch.func import vjp, vmap
        device = scores.device
        low_precision = _autocast_on(device)
        k = columns.shape[1]
        n = scores.shape[0]
        try:
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                embedding, pull = vjp(path, *leaves)
                if not self._reproduces(self.forward_func.score(embedding), scores, low_precision):
                    return None
                _, pull_scores = vjp(lambda f: self.forward_func.score(f).gather(1, columns), embedding)
                return self._pull_back(
                    k, embedding.shape[1], n, n, leaves,
                    lambda vectors, last: vmap(pull)(vmap(pull_scores)(vectors)[0].to(embedding.dtype)),
                    lambda vectors, last: vmap(pull_scores)(vectors)[0],
                    lambda vectors, last: vmap(pull)(vectors))
        except RuntimeError as error:  # e.g. an autograd.Function without setup_context after the explained layer
            if _out_of_memory(error) or not _transform_limit(error):
                raise
            self._warn_once(f"the fast path of GradECLIP cannot run through this model with torch.func ({error}); "
                       "using the full backward instead (the same maps, slower). An autograd.Function after the "
                       "explained layer needs setup_context (and generate_vmap_rule=True) for the fast path")
            return None

    def _maps(self, records: Dict[str, Any], grads: List[Tensor], layout: TokenLayout) -> Tensor:
        per_layer = []
        for i in range(len(self.attention_modules)):
            rec: _Record = records[str(i)]
            adapter = rec.adapter
            with torch.no_grad():
                q, k, v = rec.qkv if rec.qkv is not None else adapter.qkv(rec.args, rec.kwargs)
                n = q.shape[0]
                pos, weight = self._queries(layout, n, q.shape[2], q.device)
                rows = torch.arange(n, device=q.device)[:, None]
                g = self._channel_weights(adapter, grads[i], q, k, v, pos, layout)  # (K, N, Q, C) float32
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
        total = total.transpose(0, 1) * layout.report_mask[:, None, :]  # (N, K, L)
        if layout.grid is None:
            return total if layout.positions is None else total[:, :, layout.positions]
        h, w = layout.grid
        # the h*w reported positions in order, found without a boolean index (which would sync with the device)
        keep = torch.argsort((~layout.report_mask[0]).to(torch.uint8), stable=True)[:h * w]
        return total[:, :, keep].reshape(total.shape[0], total.shape[1], h, w)

    @staticmethod
    def _output_at(adapter: AttentionAdapter, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, layout: TokenLayout
                   ) -> Tensor:
        """Attention output ``o`` (heads concatenated, ``(N, Q, C)``) of the queries at ``pos`` ``(N, Q)``, with the
        layout's attention mask."""
        rows = torch.arange(q.shape[0], device=q.device)[:, None]
        allowed = None if layout.allowed is None else layout.allowed[rows, pos]
        return attention_output_at(adapter, q.transpose(1, 2)[rows, pos].transpose(1, 2), k, v, allowed)

    def _channel_weights(self, adapter: AttentionAdapter, dy: Tensor, q: Tensor, k: Tensor, v: Tensor,
                         pos: Tensor, layout: TokenLayout) -> Tensor:
        """g = dS/do at the queries: the gradient at the module output pulled back through its projection."""
        n = q.shape[0]
        param = next(adapter.module.parameters(), v)  # a module without weights (a global pool): the values' dtype
        if adapter.linear_projection:
            o = torch.zeros(n, pos.shape[1], full_width(v).shape[-1], dtype=param.dtype, device=v.device)
        else:
            o = self._output_at(adapter, q, k, v, pos, layout).to(param.dtype)
        with torch.enable_grad():
            o = o.detach().requires_grad_(True)
            y = adapter.project(o)
            (g,) = torch.autograd.grad(y, o, grad_outputs=dy.to(y.dtype), is_grads_batched=True)
        return g.float()
