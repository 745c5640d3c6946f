"""Captum's input and target formats for (N, T) similarity outputs, validated with readable errors."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from captum._utils.typing import TargetType
from torch import Tensor


def single_input(inputs: Union[Tensor, Tuple[Tensor, ...]], method: str) -> Tuple[Tensor, bool]:
    """The one input tensor of a call, and whether it came as a 1-tuple (Captum's metrics pass tuples and expect
    tuples back)."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(f"{method} explains one input tensor; got a tuple of {len(inputs)}")
        return inputs[0], True
    return inputs, False


def check_target(scores: Tensor, target: TargetType) -> None:
    """Raise a clear error unless ``target`` selects one column of ``scores`` ``(N, T)`` per example.

    Accepted (every form Captum accepts for a 2-D output): None when ``T == 1``; an int in ``[-T, T)``; a 1-tuple of
    such an int; a list of N ints or of N 1-tuples of ints (``[(0,), (2,)]``); a tensor of 1 or N ints.
    """
    n, t = scores.shape[0], scores.shape[1] if scores.dim() > 1 else 1
    if target is None:
        if t != 1:
            raise ValueError(f"target is required: the scorer has {t} columns (texts or images); "
                             "pass an int, or a list of N ints")
        return
    if isinstance(target, tuple):
        if len(target) != 1:
            raise ValueError(f"a tuple target indexes the (N, T) output with one int, got {target!r}")
        values = list(target)
    elif isinstance(target, Tensor):
        if target.numel() not in (1, n):
            raise ValueError(f"target tensor must have 1 or N={n} elements, got {target.numel()}")
        values = target.reshape(-1).tolist()
    elif isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target list must have N={n} elements (one per example), got {len(target)}")
        values = [_unwrap(v) for v in target]
    elif isinstance(target, int):
        values = [target]
    else:
        raise TypeError(f"target must be an int, a list or a tensor of ints, got {type(target).__name__}")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -t <= v < t:
            raise ValueError(f"target {v!r} is out of range: the scorer has {t} columns (0..{t - 1})")


def _unwrap(value: object) -> object:
    """The int of a 1-tuple target element (Captum's list-of-tuples form), anything else unchanged."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise ValueError(f"a tuple in a target list indexes the (N, T) output with one int, got {value!r}")
        return value[0]
    return value


def index_tensor(values: Sequence[int], device: torch.device) -> Tensor:
    """A long tensor of host ints on ``device`` without blocking the host: a range or a constant is built on the
    device itself, anything else is copied from pinned memory asynchronously (a plain host-to-GPU copy would
    wait for the GPU's queue to drain)."""
    values = [int(v) for v in values]
    n = len(values)
    if n == 0:  # an empty batch
        return torch.zeros(0, dtype=torch.long, device=device)
    if values == list(range(values[0], values[0] + n)):
        return torch.arange(values[0], values[0] + n, dtype=torch.long, device=device)
    if all(v == values[0] for v in values):
        return torch.full((n,), values[0], dtype=torch.long, device=device)
    host = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def target_columns(scores: Tensor, target: TargetType) -> Tensor:
    """The column explained for each example, ``(N,)`` long on ``scores``' device (validated first)."""
    check_target(scores, target)
    n, t = scores.shape[0], scores.shape[1]
    if target is None:
        return torch.zeros(n, dtype=torch.long, device=scores.device)
    if isinstance(target, Tensor):
        cols = target.to(device=scores.device, dtype=torch.long).reshape(-1).expand(n)
        return cols % t
    values = [_unwrap(v) for v in target] if isinstance(target, (tuple, list)) else [target]
    if len(values) == 1:
        values = values * n
    return index_tensor([v % t for v in values], scores.device)
