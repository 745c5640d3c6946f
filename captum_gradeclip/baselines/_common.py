"""Shared machinery of the baselines: scorer checks, hooks, recomputed attention, token layouts, outputs.

Nothing here knows model names: towers (:mod:`captum_gradeclip.adapters`) say which blocks exist, which token
is the pooling query and which tokens are reported; attention adapters give q, k, v and the output projection
of an attention module from the arguments it received. Attention probabilities are never read from the model
(open_clip and HuggingFace modules do not return them): they are recomputed from q and k, and the
recomputation is checked against the module's own output.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from captum.attr._utils.attribution import GradientAttribution
from torch import Tensor, nn

from ..adapters.attention import AttentionAdapter, attention_adapter, full_width
from ..adapters.base import TokenLayout, Tower
from ..errors import LayerNotExecutedError, UnsupportedModelError
from ..hooking import calling_thread_only, check_runs, model_lock
from ..targets import single_input, target_columns as _target_columns

LayerSpec = Union[nn.Module, Sequence[nn.Module], None]
Hook = Tuple[nn.Module, str, Callable]  # (module, "pre" | "post", hook taking (module, args, kwargs[, output]))


# ---------------------------------------------------------------------------------------------- scorer, layers
def scorer_tower(forward_func: Any, method: str) -> Tower:
    """The tower of a captum_gradeclip scorer, or a TypeError that says what to pass."""
    tower = getattr(forward_func, "tower", None)
    if not isinstance(tower, Tower) or not callable(getattr(forward_func, "score", None)):
        raise TypeError(
            f"{method} needs a scorer built by captum_gradeclip (ImageTextSimilarity or TextImageSimilarity) as "
            f"forward_func, got {type(forward_func).__name__}; wrap your model, e.g. "
            "ImageTextSimilarity(model, tokens)")
    return tower


def as_module_list(layer: LayerSpec) -> Optional[List[nn.Module]]:
    """None, one module, or a sequence of modules, as a list (None stays None)."""
    if layer is None:
        return None
    if isinstance(layer, nn.Module) and not isinstance(layer, (nn.ModuleList, nn.Sequential)):
        return [layer]
    out = list(layer)
    if not out:
        raise ValueError("layer must name at least one block or attention module")
    return out


def explained_blocks(forward_func: Any, method: str, layers: LayerSpec, last_only: bool = False) -> List[nn.Module]:
    """The blocks given as ``layers``, or the scorer tower's default: every block (the last one with ``last_only``)."""
    tower = scorer_tower(forward_func, method)
    blocks = as_module_list(layers)
    if blocks is None:
        blocks = tower.blocks()[-1:] if last_only else tower.blocks()
    return blocks


def batch_first_of(tower: Tower, block: nn.Module) -> bool:
    """Whether the block's token tensors are (N, L, D) (True) or (L, N, D), read from its attention module."""
    return bool(getattr(attention_adapter(tower.attention_of(block)), "batch_first", True))


# ------------------------------------------------------------------------------------------------------ targets
def target_columns(scores: Tensor, target: TargetType, required: bool = True) -> Optional[Tensor]:
    """Captum's target semantics as one column index per example, ``(N,)``, validated like GradECLIP.

    With ``required=False`` (class-agnostic methods) a None target is accepted whatever the number of columns,
    and None is returned.
    """
    if target is None and not required:
        return None
    return _target_columns(scores, target)


def selected_scores(scores: Tensor, cols: Tensor) -> Tensor:
    """``scores[n, cols[n]]``: the explained similarity of each example, ``(N,)``."""
    if scores.dim() != 2:
        raise ValueError(f"the scorer must return (N, T) similarities, got shape {tuple(scores.shape)}")
    return scores.gather(1, cols[:, None].to(scores.device))[:, 0]


def probe_gradients(scores: Tensor, target: TargetType, probes: Sequence[Tensor]) -> List[Tensor]:
    """Float32 gradients of each example's explained similarity w.r.t. the zero probes (zeros where unused)."""
    chosen = selected_scores(scores, target_columns(scores, target))
    if chosen.requires_grad:  # examples are independent: the sum gives per-example gradients
        grads = torch.autograd.grad(chosen.sum(), list(probes), allow_unused=True)
    else:  # pragma: no cover - every probed layer is upstream of the score
        grads = (None,) * len(probes)
    return [torch.zeros_like(p, dtype=torch.float32) if g is None else g.float() for p, g in zip(probes, grads)]


# -------------------------------------------------------------------------------------------------------- hooks
@contextmanager
def hooked(hooks: Sequence[Hook]) -> Iterator[None]:
    """Register the given hooks for the duration of a ``with`` block; every hook is removed, even on error."""
    handles = []
    try:
        for module, kind, fn in hooks:
            fn = calling_thread_only(fn)  # forwards of other threads through these modules are not this call's
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def run_hooked(forward_func: Callable, inputs: Tensor, extra: Tuple[Any, ...], hooks: Sequence[Hook]) -> Tensor:
    """Run the scorer once under ``no_grad`` with the given hooks; every hook is removed, even on error.

    Hooks that need a graph call ``torch.set_grad_enabled(True)`` themselves: the graph then starts at the
    first hooked layer, and the surrounding ``no_grad`` restores the caller's grad mode on exit.
    """
    with hooked(hooks), torch.no_grad():
        return forward_func(inputs, *extra)


def first_tensor_position(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[str, Any]:
    """Where the hidden states are among a block's arguments: ("arg", index) or ("kw", name)."""
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            return "arg", i
    for name, a in kwargs.items():
        if isinstance(a, Tensor):
            return "kw", name
    raise LayerNotExecutedError("the explained block received no tensor input")


@dataclass
class AttentionRecord:
    """What the hooks saw of one attention module during one forward pass."""

    adapter: AttentionAdapter
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    output: Optional[Tensor] = None  # the module's output y, batch first, detached
    runs: int = 0
    order: int = -1  # execution order among the recorded modules
    extra: Dict[str, Any] = field(default_factory=dict)


HookBody = Callable[[AttentionRecord, nn.Module, Tuple[Any, ...], Dict[str, Any], Any], Any]


def record_io(rec: AttentionRecord, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any],
              output: Any) -> None:
    """Hook body that records the inputs and the detached output of an attention module (nothing is changed)."""
    rec.args, rec.kwargs = args, kwargs
    rec.output = rec.adapter.output_tensor(output).detach()


def attention_hooks(modules: Sequence[nn.Module], body: HookBody = record_io
                    ) -> Tuple[List[AttentionRecord], List[Hook]]:
    """Post hooks that count each module's runs and execution order, then return ``body(rec, module, ...)``."""
    records = [AttentionRecord(attention_adapter(m)) for m in modules]
    counter = [0]

    def make(rec: AttentionRecord) -> Callable:
        def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
            rec.runs += 1
            rec.order, counter[0] = counter[0], counter[0] + 1
            return body(rec, module, args, kwargs, output)
        return hook

    return records, [(m, "post", make(r)) for m, r in zip(modules, records)]


def attention_forward(forward_func: Callable, inputs: Tensor, extra: Tuple[Any, ...], modules: Sequence[nn.Module],
                      body: HookBody = record_io) -> Tuple[Tensor, List[AttentionRecord]]:
    """The scorer's output and the records of :func:`attention_hooks`; every module must run exactly once."""
    records, hooks = attention_hooks(modules, body)
    scores = run_hooked(forward_func, inputs, extra, hooks)
    check_runs(modules, [r.runs for r in records])
    return scores, records


def last_layer_first(records: Sequence[AttentionRecord]) -> List[AttentionRecord]:
    """The records in reverse execution order (last layer first)."""
    return sorted(records, key=lambda r: r.order, reverse=True)


# ------------------------------------------------------------------------------------------------- attention
def attention_probs(adapter: AttentionAdapter, q: Tensor, k: Tensor, allowed: Optional[Tensor],
                    bias: Optional[Tensor] = None) -> Tensor:
    """Softmax attention ``(N, H, L, L)`` recomputed from q and k: ``softmax(logits + bias + mask)`` (``bias``: the
    adapter's :meth:`~captum_gradeclip.adapters.attention.AttentionAdapter.logit_bias`)."""
    logits = adapter.logits(q, k)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None].to(logits.device), float("-inf"))
    return logits.softmax(dim=-1)


def output_from_probs(adapter: AttentionAdapter, probs: Tensor, v: Tensor) -> Tensor:
    """The module output ``y = project(A @ v)`` (heads concatenated before the projection), ``(N, L, D)``."""
    return adapter.project(full_width(torch.matmul(probs, v)))


def check_recomputed(y_new: Tensor, y_old: Tensor, rows: Tensor, module: nn.Module) -> None:
    """The recomputed output equals the module's own on the rows that reach the pooling query.

    Raises:
        RuntimeError: when they differ (dropout in training mode, a mask the tower does not describe, or an
            attention variant the adapter does not reproduce).
    """
    rows = rows.to(y_old.device)
    if not bool(rows.any()):
        return
    a, b = y_new.detach().float()[rows], y_old.detach().float()[rows]
    tol = 1e-4 if y_old.dtype in (torch.float32, torch.float64) else 2e-2
    err = (a - b).abs().max()
    if not torch.isfinite(err) or err > tol * b.abs().max().clamp_min(1.0):
        raise RuntimeError(
            f"the attention recomputed from q and k of {type(module).__name__} does not reproduce the module's "
            f"output (max difference {float(err):.3g}); is the model in training mode with attention dropout, "
            "or does it use an attention mask or variant that the adapter does not know?")


def probe_attention(allowed: Optional[Tensor], rows: Callable[[Tensor], Tensor]) -> HookBody:
    """Hook body that puts the attention probabilities of a module into the graph, with a zero probe added.

    The module's output is replaced by ``y = project((A + probe) v)`` with ``A = softmax(q k^T scale + mask)``
    recomputed from the module's own inputs (``allowed``: the boolean mask, broadcastable to ``(N, Lq, Lk)``).
    ``rows(y)`` is the ``(N, Lq)`` boolean mask of the query rows checked against the module's own output and
    replaced; the other rows keep the module's output. The record's ``extra`` holds ``probs`` (detached) and
    ``probe`` (the gradient w.r.t. it is the gradient w.r.t. ``A``), appended to lists when the module runs
    several times. Grad mode is switched on (``run_hooked``'s ``no_grad`` restores it).
    """
    def body(rec: AttentionRecord, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any],
             output: Any) -> Any:
        adapter = rec.adapter
        torch.set_grad_enabled(True)
        y_old = adapter.output_tensor(output)
        q, k, v = adapter.qkv(args, kwargs)
        probs = attention_probs(adapter, q, k, allowed, adapter.logit_bias(args, kwargs))
        probe = torch.zeros_like(probs, requires_grad=True)
        y_new = output_from_probs(adapter, probs + probe, v).to(y_old.dtype)
        live = rows(y_new).to(y_new.device)
        check_recomputed(y_new, y_old, live, module)
        rec.extra.setdefault("probs", []).append(probs.detach())
        rec.extra.setdefault("probe", []).append(probe)
        return adapter.replace_output(output, torch.where(live[..., None], y_new, y_old.detach()))

    return body


def recorded_attention(rec: AttentionRecord, layout: TokenLayout, check: bool = True) -> Tuple[Tensor, Tensor]:
    """Attention probabilities ``(N, H, L, L)`` and values ``(N, H, L, d)`` of a recorded module, float32."""
    with torch.no_grad():
        q, k, v = rec.adapter.qkv(rec.args, rec.kwargs)
        probs = attention_probs(rec.adapter, q, k, layout.allowed, rec.adapter.logit_bias(rec.args, rec.kwargs))
        if check and rec.output is not None:
            y = output_from_probs(rec.adapter, probs, v)
            check_recomputed(y, rec.output, live_rows(layout, y.shape[0], y.shape[1]), rec.adapter.module)
        return probs.float(), v


# ------------------------------------------------------------------------------------------------------ tokens
def query_weights(layout: TokenLayout, n: int, length: int, device: torch.device) -> Tensor:
    """``(N, L)`` weights of the pooling query: one-hot at ``layout.query``, or the mean over ``query_mask``."""
    if layout.query_mask is not None:
        w = layout.query_mask.float().to(device)
        return w / w.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return torch.nn.functional.one_hot(layout.query.to(device), length).float()


def query_row(layout: TokenLayout, matrices: Iterable[Tensor], residual: bool = False) -> Tensor:
    """The query's row through ``(N, L, L)`` matrices, last first: ``row @ A`` (residual: ``row + row @ A``)."""
    row: Optional[Tensor] = None
    for a in matrices:
        if row is None:
            row = query_weights(layout, a.shape[0], a.shape[-1], a.device)
        step = torch.einsum("nq,nqk->nk", row, a)
        row = row + step if residual else step
    assert row is not None
    return row


def live_rows(layout: TokenLayout, n: int, length: int) -> Tensor:
    """``(N, L)`` token rows that can reach the pooling query (everything but padding after a causal query)."""
    device = layout.report_mask.device
    rows = layout.lam_mask | layout.report_mask | (query_weights(layout, n, length, device) > 0)
    return rows.to(torch.bool)


# ------------------------------------------------------------------------------------------------- base class
class TokenAttribution(LayerAttribution, GradientAttribution):
    """Base of the baselines: a Captum layer attribution on a captum_gradeclip scorer.

    Subclasses set :attr:`text_supported` and implement :meth:`_token_map`, which returns ``(N, L)`` scores over
    token positions; the base class validates inputs, zeroes everything outside the reported tokens and shapes
    the result as ``(N, 1, h, w)`` (image) or ``(N, L)`` (text).
    """

    text_supported: bool = True

    def __init__(self, forward_func: Callable, blocks: List[nn.Module],
                 device_ids: Optional[List[int]] = None) -> None:
        tower = scorer_tower(forward_func, type(self).__name__)
        if not tower.has_attention:
            raise UnsupportedModelError(
                f"{type(self).__name__} reads attention layers; the {tower.side} tower of "
                f"{type(tower.model).__name__} has none (its last feature map is averaged into the embedding): use "
                "GradECLIP (Grad-CAM on that feature map, lambda = 1) or captum.attr.LayerGradCam on the scorer")
        if tower.side != "image" and not self.text_supported:
            raise ValueError(f"{type(self).__name__} explains images only: pass an ImageTextSimilarity scorer")
        LayerAttribution.__init__(self, forward_func, blocks if len(blocks) > 1 else blocks[0], device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.tower: Tower = tower

    def _run(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType,
             additional_forward_args: Any) -> Union[Tensor, Tuple[Tensor, ...]]:
        x, is_tuple = single_input(inputs, type(self).__name__)
        extra = tuple(_format_additional_forward_args(additional_forward_args) or ())
        self.tower.validate(x, *extra)
        if x.shape[0] == 0:  # an empty batch: an empty result of the right shape
            layout = self.tower.layout(x, *extra)
            out = self._shape(torch.zeros(0, layout.report_mask.shape[1], device=x.device), layout)
            return (out,) if is_tuple else out
        # one call at a time per model: hooks fire for every forward through a module (see captum_gradeclip.hooking)
        with model_lock(self.tower.model), torch.inference_mode(False):
            layout = self.tower.layout(x, *extra)
            values = self._token_map(x, extra, layout, target)
        out = self._shape(values.detach(), layout)
        return (out,) if is_tuple else out

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        """The method itself: ``(N, L)`` scores over the explained tower's tokens (each baseline defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _token_map")  # pragma: no cover

    def _shape(self, values: Tensor, layout: TokenLayout) -> Tensor:
        values = values.float() * layout.report_mask.to(values.device)
        if layout.grid is None:
            return values
        h, w = layout.grid
        if values.shape[0] == 0:
            return values.new_zeros(0, 1, h, w)
        keep = layout.report_mask[0]
        return values[:, keep].reshape(values.shape[0], 1, h, w)
