"""The cut path: several explained image layers (or one before the last block) in a tower with a pooled tail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from ..adapters.attention import attention_adapter, is_attention_module
from ..adapters.base import TokenLayout
from ..errors import UnsupportedModelError
from ..token_attribution import Hook
from .backward import Backward, autocast_on, reproduces
from .base import ForwardRecord, GradientRoute, LayerRecord, RouteSetup
from .queries import query_output, query_positions
from .recording import add_probe, count_runs, keep_block_input_row, record_inputs


@dataclass
class CutRecord(ForwardRecord):
    """The forward of the cut path: ``last`` records the last block's attention module (one of ``layers`` when it
    is explained); ``block_in`` is that block's input row at the query, with its graph."""

    last: Optional[LayerRecord] = None


class CutPathRoute(GradientRoute):
    """Only the last block's query row reaches the embedding: the graph runs over the sequence from the first
    explained layer up to the last block's attention input, where it is cut (nothing after it is recorded in a
    graph); the last block's query row is then re-computed from that input (keys and values of every row, with
    their graph back to the earlier explained layers) and finished by the pooled tail.

    Args:
        setup (RouteSetup): see :class:`GradientRoute`.
        backward (Backward): see :class:`GradientRoute`.
        block (nn.Module): the last block.
        attention (nn.Module): its attention module.
        tail (callable): the pooled tail after it, ``tail(x_row, y_row) -> embedding``.
    """

    name = "cut"

    def __init__(self, setup: RouteSetup, backward: Backward, block: nn.Module, attention: nn.Module,
                 tail: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(setup, backward)
        self.block = block
        self.attention = attention
        self.tail = tail
        self.first = next((i for i, m in enumerate(setup.modules) if m is attention), -1)  # -1: not explained

    @classmethod
    def build(cls, setup: RouteSetup, layout: TokenLayout, backward: Backward) -> Optional["CutPathRoute"]:
        if setup.single_head or layout.query_mask is not None:
            return None
        block = setup.tower.blocks()[-1]
        try:
            attention = setup.tower.attention_of(block)
        except UnsupportedModelError:
            return None
        tail = setup.tower.pooled_tail(attention)
        if tail is None or not is_attention_module(attention):
            return None
        return cls(setup, backward, block, attention, tail)

    def new_record(self) -> CutRecord:
        layers = super().new_record().layers
        last = layers[self.first] if self.first >= 0 else LayerRecord(attention_adapter(self.attention))
        return CutRecord(layers, last=last)

    def hooks(self, record: ForwardRecord, layout: TokenLayout) -> List[Hook]:
        assert isinstance(record, CutRecord)
        last = record.last
        hooks = self.explained_hooks(
            record, lambda rec: count_runs(rec) if rec is last else add_probe(rec, layout, False), stop_graph=last)
        if self.first < 0:
            hooks.append((self.attention, "pre", record_inputs(last, stop_graph=True)))
        return hooks + [(self.block, "pre", keep_block_input_row(record, layout, keep_graph=True))]

    def gradients(self, record: ForwardRecord, columns: Tensor, layout: TokenLayout) -> Optional[List[Tensor]]:
        assert isinstance(record, CutRecord)
        rec = record.last
        adapter = rec.adapter
        with torch.enable_grad():
            q, k, v = adapter.qkv(rec.args, rec.kwargs)  # (N, H, L, d)
            pos, _ = query_positions(layout, q.shape[0], q.shape[2], q.device)
            y = adapter.project(query_output(adapter, q, k, v, pos, layout))  # (N, 1, D): the output at the query
            if self.first >= 0:
                rec.probe = torch.zeros_like(y, requires_grad=True)
                y = y + rec.probe
            tail_embedding = self.tail(record.block_in[:, 0], y[:, 0])
            if not reproduces(self.backward.score(tail_embedding), record.scores, autocast_on(q.device)):
                return None
        rec.qkv = (q.detach(), k.detach(), v.detach())  # shared with the maps
        return self.backward.target_gradients(tail_embedding, columns, [r.probe for r in record.layers],
                                              max(r.rows for r in record.layers))
