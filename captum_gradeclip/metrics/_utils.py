"""Shared helpers for :mod:`captum_gradeclip.metrics` (validation, targets, batching).

Nothing here is public API; the functions are imported by the metric modules.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

#: Target accepted by the metrics: Captum's ``TargetType`` restricted to what a
#: ``(N, T)`` similarity matrix needs (no tuple targets).
MetricTarget = Union[None, int, Sequence[int], Tensor]


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as ``int`` if it is an integer >= 1, else raise.

    Args:
        value: The value to check.
        name: Argument name used in the error message.

    Returns:
        The value as a Python ``int``.

    Raises:
        ValueError: If ``value`` is not an integer or is smaller than 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer (>= 1), got {value}.")
    return int(value)


def check_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` if a floating tensor contains NaN or infinity.

    Args:
        t: Tensor to check.
        name: Argument name used in the error message.
    """
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values; maps must be finite.")


def as_spatial_maps(maps: Tensor, n: int, name: str = "maps") -> Tensor:
    """Validate an image map and return it as a float tensor of shape ``(N, 1, h, w)``.

    Args:
        maps: ``(N, 1, h, w)`` or ``(N, h, w)`` tensor.
        n: Expected batch size ``N``.
        name: Argument name used in error messages.

    Returns:
        The map as a detached floating ``(N, 1, h, w)`` tensor.

    Raises:
        TypeError: If ``maps`` is not a tensor.
        ValueError: If its shape is not one of the accepted ones, its batch size
            differs from ``n``, or it contains non-finite values.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(maps).__name__}.")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(
            f"`{name}` must have shape (N, 1, h, w) or (N, h, w); got {tuple(maps.shape)}."
        )
    if maps.shape[0] != n:
        raise ValueError(
            f"`{name}` has batch size {maps.shape[0]} but the inputs/masks have {n} examples."
        )
    if maps.shape[-2] < 1 or maps.shape[-1] < 1:
        raise ValueError(f"`{name}` has an empty spatial grid {tuple(maps.shape[-2:])}.")
    maps = maps.detach()
    if not maps.is_floating_point():
        maps = maps.float()
    check_finite(maps, name)
    return maps


def upsample_maps(maps: Tensor, size: Tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize ``(N, 1, h, w)`` maps to ``size`` (no-op when already that size).

    Bilinear and bicubic use ``align_corners=False`` (pixel-centre convention, the
    same as ``captum.attr.LayerAttribution.interpolate``'s ``F.interpolate`` call).

    Args:
        maps: ``(N, 1, h, w)`` floating tensor.
        size: Target ``(H, W)``.
        mode: ``"bilinear"``, ``"bicubic"``, ``"nearest"``, ``"nearest-exact"`` or
            ``"area"``.

    Returns:
        ``(N, 1, H, W)`` tensor.

    Raises:
        ValueError: If ``mode`` is not supported.
    """
    modes = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")
    if mode not in modes:
        raise ValueError(f"Unsupported interpolation mode {mode!r}; accepted: {modes}.")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(maps, size=size, mode=mode, align_corners=False)
    return F.interpolate(maps, size=size, mode=mode)


def normalize_target(target: MetricTarget, n: int) -> Optional[Tensor]:
    """Turn a Captum-style target into ``None`` or a ``(N,)`` LongTensor.

    Args:
        target: ``None``; an ``int`` (same column for every example); a list/tuple
            of ``N`` ints or a 1-D integer tensor of length ``N`` (per-example
            column); a 0-d integer tensor (same as an ``int``).
        n: Number of examples ``N``.

    Returns:
        ``None`` or a ``(N,)`` ``torch.long`` tensor on the CPU.

    Raises:
        TypeError: If the target type is not supported (e.g. Captum tuple targets).
        ValueError: If a per-example target does not have length ``N``.
    """
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"A tensor `target` must hold integers, got dtype {target.dtype}.")
        if target.dim() == 0:
            return torch.full((n,), int(target), dtype=torch.long)
        if target.dim() != 1:
            raise ValueError(
                f"A tensor `target` must be 0-d or 1-D of length N={n}; "
                f"got shape {tuple(target.shape)}."
            )
        if target.numel() != n:
            raise ValueError(
                f"`target` has length {target.numel()} but there are N={n} examples; "
                "pass an int (same column for all) or one column per example."
            )
        return target.detach().to("cpu", torch.long)
    if isinstance(target, bool):
        raise TypeError("`target` must be an int, a sequence of ints, a tensor or None; got bool.")
    if isinstance(target, numbers.Integral):
        return torch.full((n,), int(target), dtype=torch.long)
    if isinstance(target, (list, tuple)):
        if not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target
        ):
            raise TypeError(
                "A list/tuple `target` must contain one int per example "
                "(Captum tuple targets for multi-dimensional outputs are not supported)."
            )
        if len(target) != n:
            raise ValueError(
                f"`target` has length {len(target)} but there are N={n} examples; "
                "pass an int (same column for all) or one column per example."
            )
        return torch.tensor([int(t) for t in target], dtype=torch.long)
    raise TypeError(
        "`target` must be None, an int, a list/tuple of ints or an integer tensor; "
        f"got {type(target).__name__}."
    )


def select_scores(out: Any, rows_target: Optional[Tensor], expected_rows: int) -> Tensor:
    """Pick one score per row of a scorer output.

    Args:
        out: The scorer output; must be a tensor of shape ``(M, T)`` or ``(M,)``.
        rows_target: ``None`` or a ``(M,)`` LongTensor of columns.
        expected_rows: ``M``, the number of inputs given to the scorer.

    Returns:
        A detached ``(M,)`` tensor.

    Raises:
        TypeError: If ``out`` is not a tensor.
        ValueError: If its shape does not fit ``M`` or the target, or a target
            column is out of range.
    """
    if not isinstance(out, Tensor):
        raise TypeError(
            "The scorer must return a torch.Tensor of shape (N, T) or (N,); "
            f"got {type(out).__name__}."
        )
    out = out.detach()
    if out.dim() == 0 or out.shape[0] != expected_rows:
        raise ValueError(
            f"The scorer returned shape {tuple(out.shape)} for a batch of {expected_rows} "
            f"inputs; expected ({expected_rows}, T) or ({expected_rows},)."
        )
    if rows_target is None:
        if out.dim() == 1:
            return out
        if out.dim() == 2 and out.shape[1] == 1:
            return out[:, 0]
        raise ValueError(
            f"`target` is None but the scorer returned shape {tuple(out.shape)}; "
            "target=None needs an output of shape (N,) or (N, 1). Pass a target column."
        )
    if out.dim() != 2:
        raise ValueError(
            f"With a target, the scorer must return a 2-D (N, T) tensor; got {tuple(out.shape)}."
        )
    t = out.shape[1]
    rows_target = rows_target.to(out.device)
    if bool(((rows_target < -t) | (rows_target >= t)).any()):
        bad = rows_target[(rows_target < -t) | (rows_target >= t)][0].item()
        raise ValueError(f"Target column {bad} is out of range for a scorer output with T={t}.")
    cols = torch.remainder(rows_target, t)
    return out.gather(1, cols.unsqueeze(1)).squeeze(1)


def format_forward_args(additional_forward_args: Any, n: int) -> Tuple[Any, ...]:
    """Normalise ``additional_forward_args`` into a tuple and check per-example tensors.

    Following Captum, every tensor in ``additional_forward_args`` is treated as
    aligned with the examples (first dimension ``N``) and is indexed together
    with the inputs; other objects are passed unchanged to every call.

    Args:
        additional_forward_args: ``None``, a single object, or a tuple of objects.
        n: Number of examples ``N``.

    Returns:
        A tuple (empty when ``None``).

    Raises:
        ValueError: If a tensor argument does not have first dimension ``N``.
    """
    if additional_forward_args is None:
        return ()
    if not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)
    for i, arg in enumerate(additional_forward_args):
        if isinstance(arg, Tensor) and (arg.dim() == 0 or arg.shape[0] != n):
            raise ValueError(
                f"additional_forward_args[{i}] is a tensor of shape {tuple(arg.shape)}; "
                f"tensor arguments must be per-example with first dimension N={n}. "
                "Keep shared tensors (e.g. class text features) inside the scorer."
            )
    return additional_forward_args


def index_forward_args(args: Tuple[Any, ...], rows: Tensor) -> Tuple[Any, ...]:
    """Select the rows ``rows`` of every tensor in ``args`` (others are unchanged)."""
    return tuple(a[rows.to(a.device)] if isinstance(a, Tensor) else a for a in args)


def run_chunked(
    scorer: Callable[..., Tensor],
    n_rows: int,
    build: Callable[[Tensor], Tensor],
    example_of_row: Tensor,
    target: Optional[Tensor],
    forward_args: Tuple[Any, ...],
    batch_size: int,
) -> Tensor:
    """Score ``n_rows`` perturbed inputs in chunks of ``batch_size``.

    Args:
        scorer: The scorer.
        n_rows: Total number of perturbed inputs.
        build: Maps a LongTensor of row indices to the batch of perturbed inputs.
        example_of_row: ``(n_rows,)`` example index of every row (CPU LongTensor).
        target: ``None`` or ``(N,)`` per-example target columns.
        forward_args: Formatted additional forward args.
        batch_size: Maximum number of rows per scorer call.

    Returns:
        ``(n_rows,)`` tensor of selected scores.
    """
    scores: List[Tensor] = []
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            ex = example_of_row[rows]
            batch = build(rows)
            out = scorer(batch, *index_forward_args(forward_args, ex))
            scores.append(select_scores(out, None if target is None else target[ex], len(rows)))
    device = scores[0].device
    return torch.cat([s.to(device) for s in scores])


def round_half_up(x: float) -> int:
    """Round a non-negative float to the nearest integer, halves going up."""
    return int(math.floor(x + 0.5))
