"""Localization metrics: pointing game and energy-based pointing game."""

from __future__ import annotations

import numbers
from typing import Tuple, Union

import torch
from torch import Tensor

from ._utils import as_spatial_maps, upsample_maps


def _as_masks(masks: Tensor) -> Tensor:
    """Validate masks and return them as a ``(N, H, W)`` bool tensor.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)``; bool, or numeric holding only 0/1.

    Returns:
        ``(N, H, W)`` bool tensor.

    Raises:
        TypeError: If ``masks`` is not a tensor.
        ValueError: Wrong shape, or numeric values other than 0 and 1.
    """
    if not isinstance(masks, Tensor):
        raise TypeError(f"`masks` must be a torch.Tensor, got {type(masks).__name__}.")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(
            f"`masks` must have shape (N, H, W) or (N, 1, H, W); got {tuple(masks.shape)}."
        )
    if masks.shape[0] == 0 or masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"`masks` is empty: shape {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(
                "`masks` must be a bool tensor (or numeric with only 0/1 values); "
                f"got dtype {masks.dtype} with other values."
            )
        masks = masks != 0
    return masks


def _maps_at_mask_size(maps: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
    """Return ``(N, H, W)`` bilinearly upsampled maps and the ``(N, H, W)`` masks."""
    masks = _as_masks(masks)
    maps = as_spatial_maps(maps, masks.shape[0]).to(masks.device)
    up = upsample_maps(maps, (masks.shape[1], masks.shape[2]))[:, 0]
    return up, masks


#: The pointing game's tolerance in the literature (Zhang et al., "Top-down Neural Attention by Excitation
#: Backprop", ECCV 2016, and the CAM / CLIP explainability papers after it): 15 pixels at 224 pixels, as a
#: fraction of the image's shorter side (about 6.7 %).
STANDARD_TOLERANCE = 15 / 224


def tolerance_pixels(tolerance: Union[float, str], size: Tuple[int, int]) -> float:
    """The pointing game's tolerance in pixels for masks of a given size.

    Args:
        tolerance (float or str): a number of pixels >= 0, or ``"standard"``: :data:`STANDARD_TOLERANCE` of the
            shorter side (15 px at 224 px, 4.3 px at 64 px).
        size (tuple of int): ``(H, W)`` of the masks.

    Returns:
        float: the disk radius in pixels.

    Raises:
        ValueError: for anything but a number >= 0 or ``"standard"``.

    Examples::

        >>> tolerance_pixels("standard", (224, 224))
        15.0
        >>> round(tolerance_pixels("standard", (64, 96)), 2)
        4.29
    """
    if isinstance(tolerance, str):
        if tolerance != "standard":
            raise ValueError(f"`tolerance` must be a number of pixels >= 0 or 'standard', got {tolerance!r}.")
        return STANDARD_TOLERANCE * min(size)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
        raise ValueError(f"`tolerance` must be a number >= 0 (pixels) or 'standard', got {tolerance!r}.")
    return float(tolerance)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: Union[float, str] = 0) -> Tensor:
    r"""Pointing game: is the map's maximum inside the object mask?

    Each map is upsampled (bilinear, ``align_corners=False``) to the mask size
    and its maximum is located; if several pixels share the maximum, the first
    one in row-major order is used (``torch.argmax``). The example is a hit if
    that pixel is within Euclidean distance ``tolerance`` of a mask pixel,
    i.e. inside the mask dilated by a **disk** of radius ``tolerance`` pixels
    (``tolerance=0``: the pixel itself must be in the mask, the strict hit).
    ``tolerance="standard"`` is the literature's tolerance, 15 pixels at 224
    (:data:`STANDARD_TOLERANCE` times the masks' shorter side), so that numbers
    compare with published ones. Maps whose values are all equal (including
    all-zero maps) do not point anywhere and count as a **miss**; an empty mask
    is always a miss.

    Args:
        maps (Tensor): ``(N, 1, h, w)`` or ``(N, h, w)`` maps on any grid.
        masks (Tensor): ``(N, H, W)`` or ``(N, 1, H, W)`` bool masks (numeric
            0/1 masks are accepted).
        tolerance (float or str, optional): Disk radius in mask pixels, >= 0,
            or ``"standard"`` (15 px at 224 px). Default: 0 (strict)

    Returns:
        Tensor: ``(N,)`` bool, True for a hit. ``.float().mean()`` gives the
        pointing accuracy.

    Raises:
        ValueError: Shape mismatch between maps and masks, non-finite maps,
            non-0/1 masks, or a negative or unknown ``tolerance``.
        TypeError: Arguments of an unsupported type.

    Examples::

        >>> import torch
        >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, 2:] = True  # top-right quadrant
        >>> pointing_game(maps, masks)
        tensor([True])
        >>> pointing_game(maps, masks, tolerance="standard")  # 15 px at 224 px
        tensor([True])
    """
    tolerance_pixels(tolerance, (1, 1))  # a clear error before the maps and masks are read
    up, masks = _maps_at_mask_size(maps, masks)
    n, h, w = masks.shape
    tolerance = tolerance_pixels(tolerance, (h, w))
    flat_maps = as_spatial_maps(maps, n).flatten(1)
    informative = flat_maps.amax(1) > flat_maps.amin(1)
    idx = up.flatten(1).argmax(1)
    py, px = (idx // w).float(), (idx % w).float()
    ys = torch.arange(h, device=masks.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32).view(1, 1, w)
    dist2 = (ys - py.view(n, 1, 1)) ** 2 + (xs - px.view(n, 1, 1)) ** 2
    near = dist2 <= float(tolerance) ** 2
    hit = (near & masks).flatten(1).any(1)
    return hit & informative.to(hit.device)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Energy-based pointing game: fraction of the map's mass inside the mask.

    Each map is upsampled (bilinear, ``align_corners=False``) to the mask size;
    the score is ``sum(map * mask) / sum(map)``. Maps must be non-negative
    (clamp signed maps first, e.g. ``maps.clamp(min=0)``); an all-zero map has
    no energy and scores 0.

    Args:
        maps (Tensor): ``(N, 1, h, w)`` or ``(N, h, w)`` non-negative maps.
        masks (Tensor): ``(N, H, W)`` or ``(N, 1, H, W)`` bool masks.

    Returns:
        Tensor: ``(N,)`` floats in ``[0, 1]``.

    Raises:
        ValueError: Shape mismatch, non-finite or negative maps, non-0/1 masks.
        TypeError: Arguments of an unsupported type.

    Examples::

        >>> import torch
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, :2] = True
        >>> energy_pointing_game(torch.ones(1, 1, 2, 2), masks)
        tensor([0.2500])
    """
    up, masks = _maps_at_mask_size(maps, masks)
    if bool((up < 0).any()):
        raise ValueError(
            "`maps` contains negative values; the energy pointing game needs non-negative "
            "maps (use maps.clamp(min=0))."
        )
    total = up.flatten(1).sum(1)
    inside = (up * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(up.dtype).tiny), 0.0)
