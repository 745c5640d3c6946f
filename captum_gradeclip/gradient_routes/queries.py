"""The pooling query's positions in a layout, and an attention module's output at them."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..adapters.attention import AttentionAdapter, attention_output_at
from ..adapters.base import TokenLayout


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
