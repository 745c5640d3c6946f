"""Shared machinery of the baselines: attention records and probes, recomputed attention, query rows.

The template they follow (scorer check, layers, hooks, run counting, output shaping) is
:mod:`captum_gradeclip.token_attribution`.

Nothing here knows model names: towers (:mod:`captum_gradeclip.adapters`) say which blocks exist, which token
is the pooling query and which tokens are reported; attention adapters give q, k, v and the output projection
of an attention module from the arguments it received. Attention probabilities are never read from the model
(open_clip and HuggingFace modules do not return them): they are recomputed from q and k, and the
recomputation is checked against the module's own output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..adapters.attention import AttentionAdapter, attention_adapter, full_width
from ..adapters.base import TokenLayout, Tower
from ..hooking import check_runs
from ..targets import target_columns as _target_columns
from ..token_attribution import Hook, run_hooked


# ---------------------------------------------------------------------------------------------- layers
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
