"""The pooled tail: one explained layer in a tower whose query row is finished by a known tail."""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import Tensor, nn

from ..adapters.base import TokenLayout
from ..token_attribution import Hook
from .backward import Backward
from .base import ForwardRecord, GradientRoute, RouteSetup
from .recording import keep_block_input_row, keep_query_row


class PooledTailRoute(GradientRoute):
    """One explained attention module whose tower gives the path from its output row at the query to the embedding
    (``Tower.pooled_tail``): no graph over the sequence; the forward records the block's input row and the module's
    output row at the query, and the gradients come from that one-row path.

    Args:
        setup (RouteSetup): see :class:`GradientRoute`.
        backward (Backward): see :class:`GradientRoute`.
        block (nn.Module): the block of the explained module (its input row at the query is recorded).
        tail (callable): ``tail(x_row, y_row) -> embedding``.
    """

    name = "pooled_tail"

    def __init__(self, setup: RouteSetup, backward: Backward, block: nn.Module,
                 tail: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(setup, backward)
        self.block = block
        self.tail = tail

    @classmethod
    def build(cls, setup: RouteSetup, layout: TokenLayout, backward: Backward) -> Optional["PooledTailRoute"]:
        if len(setup.modules) != 1:
            return None
        module = setup.modules[0]
        tail = setup.tower.pooled_tail(module)
        if tail is None:
            return None
        block = next(b for b in setup.tower.blocks() if any(m is module for m in b.modules()))
        return cls(setup, backward, block, tail)

    def hooks(self, record: ForwardRecord, layout: TokenLayout) -> List[Hook]:
        return self.explained_hooks(record, lambda rec: keep_query_row(rec, layout, self.setup.single_head)) + \
            [(self.block, "pre", keep_block_input_row(record, layout, keep_graph=False))]

    def gradients(self, record: ForwardRecord, columns: Tensor, layout: TokenLayout) -> Optional[List[Tensor]]:
        rec = record.layers[0]
        dtype = next(rec.adapter.module.parameters()).dtype
        x_row = record.block_in[:, 0].to(dtype)

        def path(y: Tensor) -> Tensor:  # the attention output row (N, 1, D) -> the embedding
            return self.tail(x_row, y[:, 0])

        return self.backward.row_path_gradients(path, [rec.y_query.to(dtype)], record.scores, columns)
