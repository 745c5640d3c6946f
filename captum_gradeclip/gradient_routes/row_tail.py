"""The row tail: causal (text) towers, the query row re-run from the first explained block to the embedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor

from ..adapters.attention import attention_adapter, attention_output_at
from ..adapters.base import RowTail, TokenLayout
from ..token_attribution import Hook
from .backward import Backward
from .base import ForwardRecord, GradientRoute, LayerRecord, RouteSetup
from .recording import keep_block_input_row, keep_query_row, record_inputs


@dataclass
class RowTailRecord(ForwardRecord):
    """The forward of the row tail: ``passes[j]`` records ``row.attentions[j]`` (the explained layer's own record
    where that module is explained); ``block_in`` is the first block's input row at the query."""

    passes: List[LayerRecord] = field(default_factory=list)


class RowTailRoute(GradientRoute):
    """A graph over the query row only (towers with ``Tower.row_tail``): the row is re-run from the first explained
    block to the embedding, attending to the recorded keys and values of the other rows, with a zero probe at the
    output of every explained attention module.

    Args:
        setup (RouteSetup): see :class:`GradientRoute`.
        backward (Backward): see :class:`GradientRoute`.
        row (RowTail): the tower's row tail from the first explained block on.
        slots (list of int or None): ``slots[j]``: the index of the explained layer whose module is
            ``row.attentions[j]`` (None for blocks that are re-run but not explained).
    """

    name = "row_tail"

    def __init__(self, setup: RouteSetup, backward: Backward, row: RowTail, slots: List[Optional[int]]) -> None:
        super().__init__(setup, backward)
        self.row = row
        self.slots = slots

    @classmethod
    def build(cls, setup: RouteSetup, layout: TokenLayout, backward: Backward) -> Optional["RowTailRoute"]:
        if setup.single_head or layout.query_mask is not None:
            return None
        row = setup.tower.row_tail(setup.modules, single_head=setup.single_head)
        if row is None:
            return None
        index = {id(m): i for i, m in enumerate(setup.modules)}
        slots = [index.get(id(m)) for m in row.attentions]
        if slots[0] is None or sum(s is not None for s in slots) != len(setup.modules):
            return None  # the tail must start at an explained layer and hold all of them
        return cls(setup, backward, row, slots)

    def new_record(self) -> RowTailRecord:
        layers = super().new_record().layers
        passes = [layers[s] if s is not None else LayerRecord(attention_adapter(m))
                  for m, s in zip(self.row.attentions, self.slots)]
        return RowTailRecord(layers, passes=passes)

    def hooks(self, record: ForwardRecord, layout: TokenLayout) -> List[Hook]:
        assert isinstance(record, RowTailRecord)
        hooks = self.explained_hooks(record, lambda rec: keep_query_row(rec, layout, False))
        hooks += [(module, "pre", record_inputs(rec))
                  for module, rec, slot in zip(self.row.attentions, record.passes, self.slots) if slot is None]
        return hooks + [(self.row.block, "pre", keep_block_input_row(record, layout, keep_graph=False))]

    def gradients(self, record: ForwardRecord, columns: Tensor, layout: TokenLayout) -> Optional[List[Tensor]]:
        assert isinstance(record, RowTailRecord)
        row, recs = self.row, record.passes
        first = recs[0]
        x = record.block_in  # (N, 1, C)
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
            for j, (rec, slot) in enumerate(zip(recs, self.slots)):
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
        zeros = [torch.zeros(n, 1, width, dtype=dtype, device=device) for _ in self.setup.modules]
        return self.backward.row_path_gradients(path, zeros, record.scores, columns)
