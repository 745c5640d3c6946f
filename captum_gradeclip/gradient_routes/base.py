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

from ..adapters.attention import AttentionAdapter, attention_adapter
from ..adapters.base import TokenLayout, Tower
from ..hooking import check_runs
from ..token_attribution import Hook, hooked
from .backward import Backward
from .recording import record_inputs


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
        output module (``stop_graph``: the record whose input ends the graph, see
        :func:`~captum_gradeclip.gradient_routes.recording.record_inputs`)."""
        hooks: List[Hook] = []
        for module, rec in zip(self.setup.modules, record.layers):
            hooks.append((module, "pre", record_inputs(rec, stop_graph=rec is stop_graph)))
            hooks.append((rec.adapter.output_module, "post", output_hook(rec)))
        return hooks
