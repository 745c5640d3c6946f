"""Bring pixel attributions of Captum (IntegratedGradients, Saliency, GradientShap, FeatureAblation) to the
patch grid, for comparison with token-level maps."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

_REDUCTIONS = ("abs_sum", "sum", "mean")


def _pair(x: Union[int, Tuple[int, int]], name: str) -> Tuple[int, int]:
    pair = (x, x) if isinstance(x, int) else tuple(x)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {x!r}")
    return int(pair[0]), int(pair[1])


def pool_to_grid(attributions: Union[Tensor, Tuple[Tensor, ...]], grid: Union[int, Tuple[int, int]],
                 reduce: str = "abs_sum") -> Tensor:
    r"""Pool pixel attributions ``(N, C, H, W)`` to the patch grid ``(N, 1, h, w)``.

    The channels are reduced first (``"abs_sum"``: :math:`\sum_c |a_c|`, the usual saliency convention;
    ``"sum"``; ``"mean"``: the value of a patch-wise ``FeatureAblation``, which is the same on every channel),
    then every patch of ``(H / h) x (W / w)`` pixels is averaged. When ``H`` or ``W`` is not a multiple of the
    grid, adaptive average pooling is used.

    Args:
        attributions (Tensor or tuple of one Tensor): pixel attributions ``(N, C, H, W)``.
        grid (int or (int, int)): the patch grid ``(h, w)`` (e.g. the ``(h, w)`` of a token map).
        reduce (str, optional): ``"abs_sum"``, ``"sum"`` or ``"mean"`` over channels. Default: ``"abs_sum"``

    Returns:
        Tensor: ``(N, 1, h, w)``, detached.

    Examples::

        >>> ig = IntegratedGradients(scorer).attribute(images, target=0)
        >>> pool_to_grid(ig, (14, 14)).shape
        torch.Size([N, 1, 14, 14])
    """
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise ValueError(f"expected one attribution tensor, got a tuple of {len(attributions)}")
        attributions = attributions[0]
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        raise ValueError("attributions must be a tensor (N, C, H, W), got "
                         f"{tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions)}")
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
    h, w = _pair(grid, "grid")
    a = attributions.detach().float()
    a = a.abs().sum(1, keepdim=True) if reduce == "abs_sum" else \
        a.sum(1, keepdim=True) if reduce == "sum" else a.mean(1, keepdim=True)
    big_h, big_w = a.shape[-2:]
    if h > big_h or w > big_w:
        raise ValueError(f"grid {(h, w)} is finer than the attributions {(big_h, big_w)}")
    if big_h % h == 0 and big_w % w == 0:
        return F.avg_pool2d(a, kernel_size=(big_h // h, big_w // w))
    return F.adaptive_avg_pool2d(a, (h, w))


def patch_feature_mask(images: Tensor, patch: Union[int, Tuple[int, int]]) -> Tensor:
    r"""A ``feature_mask`` of patch ids for ``captum.attr.FeatureAblation`` (and ``ShapleyValueSampling``...).

    Patch ``(r, c)`` of the grid gets id ``r * w + c``; the mask has shape ``(1, 1, H, W)`` and broadcasts to
    the images ``(N, C, H, W)``, so all channels of a patch are ablated together. Pixels beyond the last full
    patch (when ``H`` or ``W`` is not a multiple of the patch size; the model's patch embedding ignores them)
    join the last patch row or column.

    Args:
        images (Tensor): ``(N, C, H, W)`` (only the shape and device are used).
        patch (int or (int, int)): the patch size in pixels.

    Returns:
        Tensor: ``(1, 1, H, W)`` long tensor of ids ``0 .. h*w - 1``.

    Examples::

        >>> mask = patch_feature_mask(images, 16)
        >>> fa = FeatureAblation(scorer).attribute(images, target=0, feature_mask=mask)
        >>> heat = pool_to_grid(fa, (images.shape[-2] // 16, images.shape[-1] // 16), reduce="mean")
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images must be a tensor (N, C, H, W)")
    ph, pw = _pair(patch, "patch")
    big_h, big_w = images.shape[-2:]
    h, w = big_h // ph, big_w // pw
    if h == 0 or w == 0:
        raise ValueError(f"images of size {(big_h, big_w)} are smaller than one patch {(ph, pw)}")
    rows = (torch.arange(big_h, device=images.device) // ph).clamp(max=h - 1)
    cols = (torch.arange(big_w, device=images.device) // pw).clamp(max=w - 1)
    return (rows[:, None] * w + cols[None, :])[None, None]
