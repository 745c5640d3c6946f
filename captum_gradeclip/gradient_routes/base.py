"""The interface of a gradient route and the typed records of one forward pass.

Grad-ECLIP needs ``dS/dy``, the gradient of the explained similarities at the output ``y`` of every explained
attention module, at the pooling query's rows only. A *gradient route* is one way of getting it: what its hooks
record during the scorer's forward pass (:meth:`GradientRoute.hooks`, into a :class:`ForwardRecord`), and how it
returns the gradients from that record (:meth:`GradientRoute.gradients`). The routes differ in cost, never in the
maps: a fast route that cannot reproduce the forward pass returns None and the caller takes the full backward.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..adapters.attention import AttentionAdapter, attention_adapter, attention_output_at, single_head_output
from ..adapters.base import TokenLayout, Tower
from ..hooking import check_runs
from ..token_attribution import Hook, first_tensor, hooked
from .backward import Backward


@dataclass
class LayerRecord:
    """What the hooks saw of one attention module during one forward pass."""

    adapter: AttentionAdapter
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    rows: int = 0  # token rows of the module's output (N x L)
    probe: Optional[Tensor] = None  # zero tensor added at the query rows: its gradient is dS/dy there
    y_query: Optional[Tensor] = None  # one-row routes: the output row at the query, detached
    qkv: Optional[Tuple[Tensor, Tensor, Tensor]] = None  # q, k, v already computed by a route (shared with the maps)


@dataclass
class ForwardRecord:
    """One forward pass of the scorer as a route recorded it.

    Attributes:
        layers: one record per explained attention module, in the explainer's order.
        scores: the scorer's similarities ``(N, T)``.
        embedding: the explained tower's embedding ``(N, E)`` (in the graph on the full backward).
        block_in: the input row ``(N, 1, C)`` at the query of the block where a one-row route starts.
    """

    layers: List[LayerRecord]
    scores: Optional[Tensor] = None
    embedding: Optional[Tensor] = None
    block_in: Optional[Tensor] = None


@dataclass(frozen=True)
class RouteSetup:
    """What the routes need of an explainer: its scorer, tower, explained attention modules and variant."""

    forward_func: Any
    tower: Tower
    modules: Sequence[nn.Module]
    single_head: bool


@dataclass(frozen=True)
class RouteReport:
    """Which gradient route made the maps of one call (``GradECLIP(..., on_route=...)``).

    Attributes:
        chosen: the route chosen for the call (``"backward"``, ``"pooled_tail"``, ``"cut"`` or ``"row_tail"``).
        used: the route whose gradients made the maps: ``chosen``, or ``"backward"`` when a fast route failed its
            self-check (its path did not reproduce the forward's similarities) or could not run with
            ``torch.func``.
        vjp_batches: how many vectors each batched vector-Jacobian product through the forward's autograd graph
            carried, in order (the chunks of targets, or of embedding dimensions when there are more targets than
            embedding dimensions). One-row routes pull back with ``torch.func`` instead and add nothing here.
    """

    chosen: str
    used: str
    vjp_batches: Tuple[int, ...] = ()

    @property
    def fell_back(self) -> bool:
        """Whether a fast route was chosen but the full backward made the maps."""
        return self.used != self.chosen


def query_positions(layout: TokenLayout, n: int, length: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Query positions ``(N, Q)`` and their 0/1 weights ``(N, Q)``: one pooling query, or every masked token."""
    if layout.query_mask is None:
        return layout.query.reshape(n, 1), torch.ones(n, 1, device=device)
    pos = torch.arange(length, device=device).expand(n, length)
    return pos, layout.query_mask.float()


def query_output(adapter: AttentionAdapter, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, layout: TokenLayout
                 ) -> Tensor:
    """Attention output ``o`` (heads concatenated, ``(N, Q, C)``) of the queries at ``pos`` ``(N, Q)``, with the
    layout's attention mask."""
    rows = torch.arange(q.shape[0], device=q.device)[:, None]
    allowed = None if layout.allowed is None else layout.allowed[rows, pos]
    return attention_output_at(adapter, q.transpose(1, 2)[rows, pos].transpose(1, 2), k, v, allowed)


class GradientRoute(abc.ABC):
    """One way of getting ``dS/dy`` at the query rows of the explained layers.

    A route is built for one call (:meth:`build`, None where it does not apply to the tower, layers or inputs),
    records the forward pass through its hooks (:meth:`forward`), then returns the gradients (:meth:`gradients`).

    Args:
        setup (RouteSetup): the explainer's scorer, tower, explained modules and variant.
        backward (Backward): the call's backward machinery (chunking, batched pull-backs, self-check).
    """

    #: The route's name, as ``GradECLIP(gradient_route=...)`` takes it.
    name: ClassVar[str] = ""

    def __init__(self, setup: RouteSetup, backward: Backward) -> None:
        self.setup = setup
        self.backward = backward

    @classmethod
    @abc.abstractmethod
    def build(cls, setup: RouteSetup, layout: TokenLayout, backward: Backward) -> Optional["GradientRoute"]:
        """The route for this call, or None where it does not apply."""

    def new_record(self) -> ForwardRecord:
        """An empty record of the forward pass, one layer record per explained module."""
        return ForwardRecord([LayerRecord(attention_adapter(m)) for m in self.setup.modules])

    @abc.abstractmethod
    def hooks(self, record: ForwardRecord, layout: TokenLayout) -> List[Hook]:
        """The forward hooks that fill ``record`` (registered only for the forward pass)."""

    @abc.abstractmethod
    def gradients(self, record: ForwardRecord, columns: Tensor, layout: TokenLayout) -> Optional[List[Tensor]]:
        """``dS/dy`` at the query rows, one ``(K, N, Q, D)`` per explained layer, for the ``(N, K)`` ``columns``;
        None when a fast route does not reproduce the forward pass (the caller then takes the full backward)."""

    def forward(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout) -> ForwardRecord:
        """Run the scorer once with this route's hooks (split at the embedding, under ``no_grad``: a hook that needs
        a graph switches it on); every explained module must run exactly once."""
        record = self.new_record()
        scorer = self.setup.forward_func
        with hooked(self.hooks(record, layout)), torch.no_grad():
            record.embedding = scorer.embed(inputs, *extra)
            record.scores = scorer.score(record.embedding)
        check_runs(self.setup.modules, [r.runs for r in record.layers])
        return record

    def explained_hooks(self, record: ForwardRecord, output_hook: Callable[[LayerRecord], Callable],
                        stop_graph: Optional[LayerRecord] = None) -> List[Hook]:
        """A pre-hook that records the inputs of every explained module and ``output_hook(rec)`` on its adapter's
        output module (``stop_graph``: the record whose input ends the graph, see :func:`record_inputs`)."""
        hooks: List[Hook] = []
        for module, rec in zip(self.setup.modules, record.layers):
            hooks.append((module, "pre", record_inputs(rec, stop_graph=rec is stop_graph)))
            hooks.append((rec.adapter.output_module, "post", output_hook(rec)))
        return hooks


# ------------------------------------------------------------------------------------------------ hook bodies
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
