"""The official display normalisations of explanation maps, and resizing a map to its image.

Grad-ECLIP's authors min-max normalise image maps per example and divide word scores by their sum:
:func:`normalize_map` and :func:`normalize_words` implement exactly these. No matplotlib here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import ArrayLike, ScoresLike, single_map, to_float_tensor

__all__ = ["normalize_map", "normalize_words", "upsample_map"]

_NORMALIZE_MODES = ("minmax", "max")
_UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")


def normalize_map(maps: ArrayLike, mode: str = "minmax") -> torch.Tensor:
    """Normalise image maps to ``[0, 1]``, independently per example.

    This is the official display normalisation for image maps.

    Args:
        maps: One map ``(h, w)`` or a batch ``(N, h, w)`` / ``(N, 1, h, w)``, as a
            tensor or array. For 3-D/4-D input every leading index is one example.
        mode: ``"minmax"`` (default): ``(x - min) / (max - min)``, as Grad-ECLIP's
            authors do. ``"max"``: ``x / max`` (keeps zero at zero; for the
            non-negative raw Grad-ECLIP scores; negatives are clipped to 0).
            A constant map (including an all-zero one) becomes all zeros in
            both modes -- never NaN.

    Returns:
        A float tensor (CPU, same shape as ``maps``) with values in ``[0, 1]``.
        ``float64`` input stays ``float64``; anything else becomes ``float32``.

    Raises:
        ValueError: ``maps`` is not 2-, 3- or 4-D, contains NaN/inf, or ``mode``
            is unknown.

    Examples:
        >>> normalize_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
        tensor([[0.0000, 0.5000],
                [0.2500, 1.0000]])
        >>> normalize_map(torch.full((1, 1, 2, 2), 7.0)).sum().item()
        0.0
    """
    if mode not in _NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {_NORMALIZE_MODES}, got {mode!r}")
    t = to_float_tensor(maps, "maps")
    if t.ndim not in (2, 3, 4):
        raise ValueError(
            "maps must be (h, w), (N, h, w) or (N, 1, h, w); "
            f"got a {t.ndim}-D array of shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        return t.clone()
    flat = t.reshape(1, -1) if t.ndim == 2 else t.reshape(t.shape[0], -1)
    if mode == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        shifted = flat - lo
        rng = hi - lo
    else:
        shifted = flat.clamp_min(0.0)
        rng = shifted.max(dim=1, keepdim=True).values
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    out = torch.where(rng > 0, shifted / safe, torch.zeros_like(shifted))
    return out.clamp(0.0, 1.0).reshape(t.shape)


def normalize_words(scores: ScoresLike) -> torch.Tensor:
    """Divide word scores by their sum over positions, per example.

    This is the official display normalisation for text maps (Grad-ECLIP's
    authors divide word importances by their sum). The divisor is the sum of
    absolute values, which equals the plain sum for the non-negative scores
    the explainers produce and avoids sign flips for signed inputs.

    Args:
        scores: ``(L,)`` for one example or ``(N, L)`` for a batch (tensor, array
            or list of floats).

    Returns:
        A float tensor with the same shape; each example sums to 1 (for
        non-negative input), or is all zeros if its scores are all zero.

    Raises:
        ValueError: ``scores`` is not 1- or 2-D or contains NaN/inf.

    Examples:
        >>> normalize_words([1.0, 3.0, 0.0])
        tensor([0.2500, 0.7500, 0.0000], dtype=torch.float64)
        >>> normalize_words(torch.zeros(2, 3)).sum().item()
        0.0
    """
    t = to_float_tensor(scores, "scores")
    if t.ndim not in (1, 2):
        raise ValueError(
            f"scores must be (L,) or (N, L); got a {t.ndim}-D array of shape {tuple(t.shape)}"
        )
    flat = t.reshape(1, -1) if t.ndim == 1 else t
    total = flat.abs().sum(dim=1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = torch.where(total > 0, flat / safe, torch.zeros_like(flat))
    return out.reshape(t.shape)


def upsample_map(
    map: ArrayLike, size: int | tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resize one patch-grid map to an arbitrary ``(H, W)`` (square or not).

    Args:
        map: One map of shape ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        size: Target size, ``(H, W)`` (rows, columns -- the image's height and
            width), or an int for a square ``(size, size)``.
        mode: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``
            (``align_corners=False``). Bicubic may overshoot the input range
            slightly; values are not clipped.

    Returns:
        A float ``(H, W)`` tensor on the CPU.

    Raises:
        ValueError: wrong map rank or a batch with more than one map, a
            non-positive ``size``, or an unknown ``mode``.

    Examples:
        >>> upsample_map(torch.rand(7, 7), (224, 320)).shape
        torch.Size([224, 320])
        >>> upsample_map(torch.ones(1, 1, 2, 2), 5, mode="nearest").unique()
        tensor([1.])
    """
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {_UPSAMPLE_MODES}, got {mode!r}")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"size must be an int or a (H, W) pair, got {size!r}") from None
        if len(hw) != 2:
            raise ValueError(f"size must be an int or a (H, W) pair, got {size!r}")
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"size must be positive, got {hw}")
    m = single_map(map)
    if m.dtype not in (torch.float32, torch.float64):
        m = m.to(torch.float32)
    kwargs: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(m[None, None], size=hw, mode=mode, **kwargs)
    return out[0, 0]
