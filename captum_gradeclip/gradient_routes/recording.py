"""The hook bodies the gradient routes record a forward pass with (see :meth:`GradientRoute.hooks`).

Each takes the record it fills (:class:`~captum_gradeclip.gradient_routes.base.LayerRecord` or
:class:`~captum_gradeclip.gradient_routes.base.ForwardRecord`) and returns a forward hook or pre-hook body;
:func:`~captum_gradeclip.token_attribution.hooked` registers them for one forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from ..adapters.attention import single_head_output
from ..adapters.base import TokenLayout
from ..token_attribution import first_tensor
from .queries import query_positions

if TYPE_CHECKING:  # the records import this module's hooks through GradientRoute
    from .base import ForwardRecord, LayerRecord


def record_inputs(rec: LayerRecord, stop_graph: bool = False) -> Callable:
    """Pre-hook body: keep the arguments an attention module receives (``stop_graph``: nothing after this input
    needs a graph; grad mode is switched off, and the forward's ``no_grad`` restores the caller's mode)."""
    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        rec.args, rec.kwargs = args, kwargs
        if stop_graph:
            torch.set_grad_enabled(False)
    return hook


def seen_output(rec: LayerRecord, output: Any, layout: TokenLayout, single_head: bool) -> Tuple[Tensor, bool]:
    """Count a run of the module and return its output ``y`` (batch first), re-computed as one head over the full
    width with ``single_head`` (then True: the module's output must be replaced by it)."""
    rec.runs += 1
    adapter = rec.adapter
    y = adapter.output_tensor(output)
    replaced = False
    if single_head:  # q, k, v from the attention module's own inputs (the hook may sit on a submodule such as
        q, k, v = adapter.qkv(rec.args, rec.kwargs)  # the output projection)
        y = single_head_output(adapter, q, k, v, layout.allowed).to(y.dtype)
        replaced = True
    rec.rows = y.shape[0] * y.shape[1]
    return y, replaced


def count_runs(rec: LayerRecord) -> Callable:
    """Output hook body that only counts the module's runs (and its token rows); the output is unchanged."""
    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
        rec.runs += 1
        y = rec.adapter.output_tensor(output)
        rec.rows = y.shape[0] * y.shape[1]
    return hook


def keep_query_row(rec: LayerRecord, layout: TokenLayout, single_head: bool) -> Callable:
    """Output hook body of the one-row routes: keep the output row at the query, detached."""
    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
        y, replaced = seen_output(rec, output, layout, single_head)
        pos, _ = query_positions(layout, y.shape[0], y.shape[1], y.device)
        rec.y_query = y[torch.arange(y.shape[0], device=y.device)[:, None], pos].detach()
        return rec.adapter.replace_output(output, y) if replaced else None
    return hook


def add_probe(rec: LayerRecord, layout: TokenLayout, single_head: bool) -> Callable:
    """Output hook body of the routes that differentiate the forward's own graph: a zero probe ``(N, Q, D)`` is
    added at the query rows of the output (its gradient is ``dS/dy`` there); the graph starts here."""
    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
        y, _ = seen_output(rec, output, layout, single_head)
        n, length = y.shape[0], y.shape[1]
        pos, weight = query_positions(layout, n, length, y.device)
        if not torch.is_grad_enabled():
            torch.set_grad_enabled(True)  # restored when the forward's no_grad() exits
            y = y.detach()
        probe = torch.zeros(n, pos.shape[1], y.shape[-1], dtype=y.dtype, device=y.device, requires_grad=True)
        onehot = pos[..., None] == torch.arange(length, device=y.device)  # (N, Q, L), no device sync
        scatter = onehot.to(y.dtype) * weight[..., None].to(y.dtype)
        rec.probe = probe
        return rec.adapter.replace_output(output, y + torch.einsum("nql,nqd->nld", scatter, probe))
    return hook


def keep_block_input_row(record: ForwardRecord, layout: TokenLayout, keep_graph: bool) -> Callable:
    """Pre-hook body on a block: keep its input row at the query in ``record.block_in`` (``keep_graph``: with its
    graph back to earlier explained layers, else detached)."""
    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        x = first_tensor(args, kwargs)
        pos, _ = query_positions(layout, x.shape[0], x.shape[1], x.device)
        row = x[torch.arange(x.shape[0], device=x.device)[:, None], pos]
        record.block_in = row if keep_graph else row.detach()
    return hook
