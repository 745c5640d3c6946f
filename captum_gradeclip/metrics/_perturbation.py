"""Pixel deletion / insertion curves and their areas (image side).

Protocol (Petsiuk et al., RISE, as used by Grad-ECLIP): rank the pixels by the
explanation map upsampled to the image size, then replace the most important
pixels first (deletion) or paste them, most important first, onto a
"removed" image (insertion) while recording the scorer's similarity.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import (
    MetricTarget,
    as_spatial_maps,
    check_positive_int,
    format_forward_args,
    normalize_target,
    round_half_up,
    run_chunked,
    upsample_maps,
)

FillType = Union[str, float, Tensor]
_FILL_NAMES = ("noise", "zeros", "blur", "mean")


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with replicate padding, per channel.

    Args:
        images: ``(N, C, H, W)`` floating tensor.
        sigma: Standard deviation in pixels (> 0).

    Returns:
        The blurred images, same shape and dtype.
    """
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    kh = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kh, groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kv, groups=c)


def _make_fill(
    inputs: Tensor,
    fill: FillType,
    generator: Optional[torch.Generator],
    blur_sigma: Optional[float],
) -> Tensor:
    """Build the ``(N, C, H, W)`` image that replaces removed pixels.

    Args:
        inputs: ``(N, C, H, W)`` images.
        fill: A fill name (see :func:`deletion_curve`), a number, or a tensor
            broadcastable to ``inputs.shape``.
        generator: Optional RNG for ``"noise"``.
        blur_sigma: Optional Gaussian sigma for ``"blur"``.

    Returns:
        The fill images, same shape, dtype and device as ``inputs``.

    Raises:
        ValueError: Unknown fill name, bad ``blur_sigma``, or a tensor fill that
            does not broadcast to ``inputs.shape``.
        TypeError: Unsupported fill type.
    """
    if isinstance(fill, str):
        if fill == "zeros":
            return torch.zeros_like(inputs)
        if fill == "mean":
            return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
        if fill == "noise":
            lo = inputs.amin(dim=(2, 3), keepdim=True)
            hi = inputs.amax(dim=(2, 3), keepdim=True)
            u = torch.rand(
                inputs.shape, generator=generator, dtype=inputs.dtype, device=inputs.device
            )
            return lo + (hi - lo) * u
        if fill == "blur":
            sigma = 0.05 * max(inputs.shape[-2:]) if blur_sigma is None else blur_sigma
            if not isinstance(sigma, numbers.Real) or not sigma > 0:
                raise ValueError(f"`blur_sigma` must be a positive number, got {blur_sigma!r}.")
            return _gaussian_blur(inputs, float(sigma))
        raise ValueError(
            f"Unknown fill {fill!r}; accepted: {_FILL_NAMES}, a number, or a tensor "
            f"broadcastable to the inputs' shape {tuple(inputs.shape)}."
        )
    if isinstance(fill, bool):
        raise TypeError("`fill` must be a fill name, a number or a tensor; got bool.")
    if isinstance(fill, numbers.Real):
        return torch.full_like(inputs, float(fill))
    if isinstance(fill, Tensor):
        try:
            shape = torch.broadcast_shapes(fill.shape, inputs.shape)
        except RuntimeError:
            shape = None
        if shape != inputs.shape:
            raise ValueError(
                f"A tensor `fill` must broadcast to the inputs' shape {tuple(inputs.shape)} "
                f"(e.g. (C, H, W), (N, C, H, W) or (C, 1, 1)); got {tuple(fill.shape)}."
            )
        return fill.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)
    raise TypeError(
        f"`fill` must be one of {_FILL_NAMES}, a number or a tensor; got {type(fill).__name__}."
    )


def _pixel_curve(
    scorer: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: MetricTarget,
    steps: int,
    fraction: float,
    fill: FillType,
    additional_forward_args: Any,
    batch_size: int,
    generator: Optional[torch.Generator],
    blur_sigma: Optional[float],
    insertion: bool,
) -> Tensor:
    """Shared implementation of :func:`deletion_curve` and :func:`insertion_curve`."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor, got {type(inputs).__name__}.")
    if inputs.dim() != 4:
        raise ValueError(
            f"`inputs` must be images of shape (N, C, H, W); got {tuple(inputs.shape)}."
        )
    if not inputs.is_floating_point():
        raise ValueError(f"`inputs` must be a floating tensor, got dtype {inputs.dtype}.")
    n, _, h, w = inputs.shape
    if n == 0:
        raise ValueError("`inputs` is an empty batch (N=0).")
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, numbers.Real)
        or not 0.0 < float(fraction) <= 1.0
    ):
        raise ValueError(f"`fraction` must be a number in (0, 1], got {fraction!r}.")
    maps = as_spatial_maps(maps, n).to(inputs.device)
    tgt = normalize_target(target, n)
    fwd_args = format_forward_args(additional_forward_args, n)

    inputs = inputs.detach()
    fill_img = _make_fill(inputs, fill, generator, blur_sigma)
    scores = upsample_maps(maps, (h, w)).flatten(1)  # (N, H*W)
    n_pix = h * w
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_pix, device=order.device).expand(n, n_pix))
    total = min(n_pix, round_half_up(float(fraction) * n_pix))
    counts = (torch.arange(steps + 1, device=inputs.device) * total) // steps  # (S+1,)

    start, end = (fill_img, inputs) if insertion else (inputs, fill_img)
    example_of_row = torch.arange(n).repeat_interleave(steps + 1)
    step_of_row = torch.arange(steps + 1).repeat(n)

    def build(rows: Tensor) -> Tensor:
        ex = example_of_row[rows].to(inputs.device)
        st = step_of_row[rows].to(inputs.device)
        changed = (rank[ex] < counts[st].unsqueeze(1)).view(-1, 1, h, w)
        return torch.where(changed, end[ex], start[ex])

    flat = run_chunked(
        scorer, n * (steps + 1), build, example_of_row, tgt, fwd_args, batch_size
    )
    return flat.view(n, steps + 1)


def deletion_curve(
    scorer: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: MetricTarget = None,
    *,
    steps: int = 20,
    fraction: float = 1.0,
    fill: FillType = "noise",
    additional_forward_args: Any = None,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
    blur_sigma: Optional[float] = None,
) -> Tensor:
    r"""Deletion curve: similarity as the most important pixels are removed first.

    Each map is upsampled (bilinear, ``align_corners=False``) to the image size
    ``(H, W)`` and the ``P = H*W`` pixels are ranked by decreasing value. Ties
    are broken deterministically by a stable sort: among equal values the pixel
    earlier in row-major order is removed first. At step ``k`` (``0..steps``)
    the first ``n_k = floor(k * round(fraction * P) / steps)`` pixels of the
    ranking are replaced, in all channels, by the fill image; index 0 is the
    clean image. All perturbed images of all examples are scored in chunks of
    ``batch_size`` under ``torch.no_grad()``.

    The defaults (20 steps over all pixels, uniform-noise fill) follow the RISE
    deletion metric. The Grad-ECLIP evaluation code instead replaces 50 % of the
    pixels by uniform random colours and evaluates every 5 %; with normalised
    inputs that is ``steps=10, fraction=0.5, fill="noise"``.

    Args:
        scorer (Callable): ``scorer(images, *additional_forward_args)`` returning
            a ``(M, T)`` (or ``(M,)``) tensor of similarities for ``M`` images.
        inputs (Tensor): Images ``(N, C, H, W)``, as the scorer expects them
            (e.g. CLIP-normalised).
        maps (Tensor): Explanation maps ``(N, 1, h, w)`` or ``(N, h, w)`` on any
            grid (e.g. the patch grid). Only the pixel ordering matters.
        target (int, list[int], Tensor or None, optional): Captum semantics: an
            ``int`` selects the same column for every example, a list / 1-D
            tensor of length ``N`` one column per example, ``None`` requires a
            ``(M,)`` or ``(M, 1)`` scorer output. Default: None
        steps (int, optional): Number of deletion steps (>= 1); the curve has
            ``steps + 1`` points. Default: 20
        fraction (float, optional): Fraction of the pixels removed at the last
            step, in ``(0, 1]``. Default: 1.0
        fill (str, float or Tensor, optional): What removed pixels become:

            - ``"noise"``: uniform noise between each image's per-channel
              minimum and maximum (drawn once per example, so a removed pixel
              keeps its value across steps; use ``generator`` for
              reproducibility);
            - ``"zeros"``: 0 (for CLIP-normalised inputs this is the dataset
              mean colour, not black);
            - ``"blur"``: a Gaussian-blurred copy of the image
              (sigma ``blur_sigma``);
            - ``"mean"``: each image's per-channel mean;
            - a number, or a tensor broadcastable to ``inputs.shape``
              (``(C, H, W)``, ``(N, C, H, W)``, ``(C, 1, 1)``...).

            Default: ``"noise"``
        additional_forward_args (Any, optional): Extra scorer arguments. As in
            Captum, every tensor in it must be per-example (first dimension
            ``N``) and is indexed together with the images; non-tensors are
            passed unchanged. Default: None
        batch_size (int, optional): Maximum number of images per scorer call.
            Default: 64
        generator (torch.Generator, optional): RNG for ``fill="noise"`` (on the
            inputs' device). Default: None
        blur_sigma (float, optional): Gaussian sigma in pixels for
            ``fill="blur"``. Default: None, meaning ``0.05 * max(H, W)``.

    Returns:
        Tensor: ``(N, steps + 1)`` selected similarities; ``[:, 0]`` is the
        clean image, ``[:, k]`` the image with ``n_k`` pixels removed.

    Raises:
        ValueError: Shape mismatch between ``maps`` and ``inputs``, non-finite
            maps, ``steps``/``batch_size`` < 1, ``fraction`` outside (0, 1],
            a ``target`` of the wrong length or out of range, an unknown fill
            name or a fill tensor of the wrong shape, a scorer output of the
            wrong shape.
        TypeError: Arguments of an unsupported type.

    Examples::

        >>> import torch
        >>> weights = torch.arange(16.0).view(1, 1, 4, 4)
        >>> scorer = lambda x: (x * weights).sum(dim=(1, 2, 3)).unsqueeze(1)
        >>> images = torch.ones(1, 3, 4, 4)
        >>> deletion_curve(scorer, images, weights, target=0, steps=4, fill="zeros")
        tensor([[360., 198.,  84.,  18.,   0.]])
    """
    return _pixel_curve(
        scorer, inputs, maps, target, steps, fraction, fill,
        additional_forward_args, batch_size, generator, blur_sigma, insertion=False,
    )  # fmt: skip


def insertion_curve(
    scorer: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: MetricTarget = None,
    *,
    steps: int = 20,
    fraction: float = 1.0,
    fill: FillType = "blur",
    additional_forward_args: Any = None,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
    blur_sigma: Optional[float] = None,
) -> Tensor:
    r"""Insertion curve: similarity as the most important pixels are restored first.

    Starts from the fill image (index 0) and, at step ``k``, copies the first
    ``n_k = floor(k * round(fraction * P) / steps)`` pixels of the ranking from
    the original image (ranking, ties and batching as in
    :func:`deletion_curve`). With ``fraction=1`` the last point is the clean
    image.

    The default fill is ``"blur"`` (the RISE insertion metric): it removes the
    information without introducing the sharp artificial edges a constant
    image has. The Grad-ECLIP evaluation code starts from a black image
    (``fill=<black image in the scorer's normalisation>``, e.g.
    ``(0 - mean) / std`` per channel as a ``(C, 1, 1)`` tensor) and inserts up
    to 50 % of the pixels (``steps=10, fraction=0.5``).

    Args:
        scorer (Callable): See :func:`deletion_curve`.
        inputs (Tensor): Images ``(N, C, H, W)``.
        maps (Tensor): Maps ``(N, 1, h, w)`` or ``(N, h, w)``.
        target (int, list[int], Tensor or None, optional): See
            :func:`deletion_curve`. Default: None
        steps (int, optional): Number of insertion steps (>= 1). Default: 20
        fraction (float, optional): Fraction of the pixels inserted at the last
            step, in ``(0, 1]``. Default: 1.0
        fill (str, float or Tensor, optional): The starting image; same options
            as :func:`deletion_curve`. Default: ``"blur"``
        additional_forward_args (Any, optional): See :func:`deletion_curve`.
            Default: None
        batch_size (int, optional): Maximum images per scorer call. Default: 64
        generator (torch.Generator, optional): RNG for ``fill="noise"``.
            Default: None
        blur_sigma (float, optional): Sigma for ``fill="blur"``. Default: None
            (``0.05 * max(H, W)``)

    Returns:
        Tensor: ``(N, steps + 1)`` selected similarities; ``[:, 0]`` is the
        fill image.

    Raises:
        ValueError: See :func:`deletion_curve`.
        TypeError: See :func:`deletion_curve`.

    Examples::

        >>> import torch
        >>> weights = torch.arange(16.0).view(1, 1, 4, 4)
        >>> scorer = lambda x: (x * weights).sum(dim=(1, 2, 3)).unsqueeze(1)
        >>> images = torch.ones(1, 3, 4, 4)
        >>> insertion_curve(scorer, images, weights, target=0, steps=4, fill="zeros")
        tensor([[  0., 162., 276., 342., 360.]])
    """
    return _pixel_curve(
        scorer, inputs, maps, target, steps, fraction, fill,
        additional_forward_args, batch_size, generator, blur_sigma, insertion=True,
    )  # fmt: skip


def auc(curve: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    r"""Trapezoid area under curves sampled at equally spaced x in ``[0, 1]``.

    A curve with ``S + 1`` points is placed at ``x_k = k / S``, so the result
    is the mean height of the piecewise-linear curve and is comparable across
    different ``steps``. For deletion/insertion curves with ``fraction < 1``
    x is the position along the curve, not the fraction of pixels changed.

    Args:
        curve (Tensor): ``(N, S + 1)`` curves (or one ``(S + 1,)`` curve).
        lengths (Tensor, optional): ``(N,)`` integers ``m_i`` in ``[0, S]``:
            row ``i`` uses only its first ``m_i + 1`` points, spread over
            ``[0, 1]``; a row with ``m_i = 0`` gets its first value. Used by
            the word metrics, where sentences have different numbers of words.
            Default: None (all rows use all points)

    Returns:
        Tensor: ``(N,)`` areas (a 0-d tensor for a 1-D ``curve``).

    Raises:
        ValueError: If ``curve`` is not 1-D/2-D, has fewer than 2 points
            (without ``lengths``), or ``lengths`` has the wrong shape or values.

    Examples::

        >>> import torch
        >>> auc(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        tensor([0.5000, 1.0000])
        >>> auc(torch.tensor([[1.0, 0.0, 0.0]]), lengths=torch.tensor([1]))
        tensor([0.5000])
    """
    if not isinstance(curve, Tensor):
        raise TypeError(f"`curve` must be a torch.Tensor, got {type(curve).__name__}.")
    squeeze = curve.dim() == 1
    if squeeze:
        curve = curve.unsqueeze(0)
    if curve.dim() != 2:
        raise ValueError(f"`curve` must have shape (N, S+1) or (S+1,); got {tuple(curve.shape)}.")
    if not curve.is_floating_point():
        curve = curve.float()
    n, points = curve.shape
    if lengths is None:
        if points < 2:
            raise ValueError(f"`curve` needs at least 2 points to integrate; got {points}.")
        area = (curve.sum(1) - 0.5 * (curve[:, 0] + curve[:, -1])) / (points - 1)
    else:
        lengths = torch.as_tensor(lengths, device=curve.device)
        if lengths.shape != (n,) or lengths.is_floating_point():
            raise ValueError(
                f"`lengths` must be an integer tensor of shape ({n},); got "
                f"{tuple(lengths.shape)} with dtype {lengths.dtype}."
            )
        if points < 1 or bool(((lengths < 0) | (lengths > points - 1)).any()):
            raise ValueError(f"`lengths` values must lie in [0, {points - 1}].")
        lengths = lengths.long()
        k = torch.arange(points, device=curve.device)
        inside = (k.unsqueeze(0) <= lengths.unsqueeze(1)).to(curve.dtype)
        last = curve.gather(1, lengths.unsqueeze(1)).squeeze(1)
        denom = lengths.clamp(min=1).to(curve.dtype)
        area = ((curve * inside).sum(1) - 0.5 * (curve[:, 0] + last)) / denom
        area = torch.where(lengths == 0, curve[:, 0], area)
    return area[0] if squeeze else area


def deletion_auc(
    scorer: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: MetricTarget = None,
    **kwargs: Any,
) -> Tensor:
    r"""Area under the :func:`deletion_curve` (lower is better).

    Trapezoid rule with the ``steps + 1`` points at ``x = k / steps`` in
    ``[0, 1]`` (see :func:`auc`).

    Args:
        scorer (Callable): See :func:`deletion_curve`.
        inputs (Tensor): Images ``(N, C, H, W)``.
        maps (Tensor): Maps ``(N, 1, h, w)`` or ``(N, h, w)``.
        target (optional): See :func:`deletion_curve`. Default: None
        **kwargs: Keyword arguments of :func:`deletion_curve` (``steps``,
            ``fraction``, ``fill``, ``additional_forward_args``,
            ``batch_size``, ``generator``, ``blur_sigma``).

    Returns:
        Tensor: ``(N,)`` areas.

    Examples::

        >>> import torch
        >>> weights = torch.arange(16.0).view(1, 1, 4, 4)
        >>> scorer = lambda x: (x * weights).sum(dim=(1, 2, 3)).unsqueeze(1)
        >>> deletion_auc(scorer, torch.ones(1, 3, 4, 4), weights, 0, steps=4, fill="zeros")
        tensor([120.])
    """
    return auc(deletion_curve(scorer, inputs, maps, target, **kwargs))


def insertion_auc(
    scorer: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: MetricTarget = None,
    **kwargs: Any,
) -> Tensor:
    r"""Area under the :func:`insertion_curve` (higher is better).

    Trapezoid rule with the ``steps + 1`` points at ``x = k / steps`` in
    ``[0, 1]`` (see :func:`auc`).

    Args:
        scorer (Callable): See :func:`insertion_curve`.
        inputs (Tensor): Images ``(N, C, H, W)``.
        maps (Tensor): Maps ``(N, 1, h, w)`` or ``(N, h, w)``.
        target (optional): See :func:`deletion_curve`. Default: None
        **kwargs: Keyword arguments of :func:`insertion_curve`.

    Returns:
        Tensor: ``(N,)`` areas.

    Examples::

        >>> import torch
        >>> weights = torch.arange(16.0).view(1, 1, 4, 4)
        >>> scorer = lambda x: (x * weights).sum(dim=(1, 2, 3)).unsqueeze(1)
        >>> insertion_auc(scorer, torch.ones(1, 3, 4, 4), weights, 0, steps=4, fill="zeros")
        tensor([240.])
    """
    return auc(insertion_curve(scorer, inputs, maps, target, **kwargs))
