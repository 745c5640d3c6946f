"""The full backward: differentiate the forward's own graph from the first explained layer to the embedding."""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

from ..adapters.base import TokenLayout
from ..token_attribution import Hook
from .backward import Backward
from .base import ForwardRecord, GradientRoute, RouteSetup
from .recording import add_probe


class FullBackwardRoute(GradientRoute):
    """Every tower, every choice of layers: a zero probe at the query rows of each explained module's output, and
    batched pull-backs of the targets through the graph the forward built (over whole sequences, from the first
    explained layer on). The reference the fast routes fall back to."""

    name = "backward"

    @classmethod
    def build(cls, setup: RouteSetup, layout: TokenLayout, backward: Backward) -> Optional["FullBackwardRoute"]:
        return cls(setup, backward)

    def hooks(self, record: ForwardRecord, layout: TokenLayout) -> List[Hook]:
        return self.explained_hooks(record, lambda rec: add_probe(rec, layout, self.setup.single_head))

    def gradients(self, record: ForwardRecord, columns: Tensor, layout: TokenLayout) -> Optional[List[Tensor]]:
        return self.backward.target_gradients(record.embedding, columns, [r.probe for r in record.layers],
                                              max(r.rows for r in record.layers))
