"""A tiny synthetic "shapes world" with exact per-object masks and captions.

Each image is a noisy grey canvas with one or more flat-coloured shapes placed on
a jittered grid (so objects never overlap).  Every object has an exact boolean
mask, a colour and a shape label, and every image has a caption naming one of
its objects (the *target*), e.g. ``"a red circle"``.  Within one scene every
object has a distinct (colour, shape) combination, so a caption always names
exactly one object.

Everything is generated with vectorised torch operations from a seeded
:class:`torch.Generator` on the CPU, so a given ``seed`` yields bit-identical
scenes on every device.

Examples:
    >>> from captum_gradeclip.data import generate_scenes
    >>> batch = generate_scenes(4, image_size=64, num_objects=(1, 3), seed=0)
    >>> batch.images.shape, batch.masks.dtype
    (torch.Size([4, 3, 64, 64]), torch.bool)
    >>> batch.captions[0] == caption(
    ...     COLORS[batch.colors[0, batch.target[0]]], SHAPES[batch.shapes[0, batch.target[0]]])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence
import torch

__all__ = [
    "COLORS",
    "SHAPES",
    "PALETTE",
    "DEFAULT_TEMPLATE",
    "ShapesBatch",
    "caption",
    "class_names",
    "class_index",
    "generate_scenes",
    "object_boxes",
]

#: Colour names, in label order (``colors`` labels index into this tuple).
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")

#: Shape names, in label order (``shapes`` labels index into this tuple).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: RGB value in ``[0, 1]`` painted for each colour in :data:`COLORS` (before noise).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.15, 0.90),
    "cyan": (0.10, 0.85, 0.90),
}

#: Caption template used when none is given: ``"a {colour} {shape}"``.
DEFAULT_TEMPLATE = "a {} {}"


def caption(color: str, shape: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Return the caption naming one object.

    Args:
        color: A colour name from :data:`COLORS`.
        shape: A shape name from :data:`SHAPES`.
        template: A format string with exactly two ``{}`` fields, filled with
            ``color`` and ``shape`` in that order.

    Returns:
        The caption, e.g. ``"a red circle"``.

    Raises:
        ValueError: If ``color``/``shape`` is unknown or the template does not have
            exactly two ``{}`` fields.

    Examples:
        >>> caption("red", "circle")
        'a red circle'
        >>> caption("blue", "cross", template="a photo of a {} {}")
        'a photo of a blue cross'
    """
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; expected one of {COLORS}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if template.count("{}") != 2:
        raise ValueError(
            f"template must contain exactly two '{{}}' fields (colour, shape), got {template!r}"
        )
    return template.format(color, shape)


def class_names() -> list[str]:
    """Return the names of all colour x shape classes, colour-major.

    The class index of (colour ``c``, shape ``s``) is ``c * len(SHAPES) + s``
    (see :func:`class_index`).

    Returns:
        ``["red circle", "red square", ..., "cyan cross"]`` (24 names).

    Examples:
        >>> class_names()[:2]
        ['red circle', 'red square']
        >>> len(class_names()) == len(COLORS) * len(SHAPES)
        True
    """
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def class_index(colors: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """Combine colour and shape labels into class indices into :func:`class_names`.

    Args:
        colors: Long tensor of colour labels (``-1`` marks an absent object).
        shapes: Long tensor of shape labels, same shape as ``colors``.

    Returns:
        Long tensor ``colors * len(SHAPES) + shapes`` with ``-1`` where the object
        is absent.

    Examples:
        >>> class_index(torch.tensor([0, 5, -1]), torch.tensor([1, 3, -1]))
        tensor([ 1, 23, -1])
    """
    if colors.shape != shapes.shape:
        raise ValueError(f"colors {tuple(colors.shape)} and shapes {tuple(shapes.shape)} differ")
    idx = colors * len(SHAPES) + shapes
    return torch.where((colors < 0) | (shapes < 0), torch.full_like(idx, -1), idx)


@dataclass
class ShapesBatch:
    """A batch of generated scenes.

    Attributes:
        images: ``(N, 3, H, W)`` float32 images in ``[0, 1]``.
        masks: ``(N, M, H, W)`` bool exact object masks; ``M`` is the maximum
            number of objects, and masks of absent slots are all ``False``.
            Masks of one image are pairwise disjoint.
        colors: ``(N, M)`` long colour labels into :data:`COLORS`, ``-1`` if absent.
        shapes: ``(N, M)`` long shape labels into :data:`SHAPES`, ``-1`` if absent.
        num_objects: ``(N,)`` long number of objects in each image (present
            objects occupy slots ``0 .. num_objects - 1``).
        target: ``(N,)`` long slot of the object that ``captions[i]`` names.
        captions: ``N`` captions, each naming the target object.
        centers: ``(N, M, 2)`` float object centres ``(x, y)`` in pixels, ``nan``
            if absent.
        radii: ``(N, M)`` float object radii in pixels, ``nan`` if absent.

    Examples:
        >>> b = generate_scenes(2, seed=1)
        >>> b.target_mask.shape
        torch.Size([2, 64, 64])
        >>> len(b[:1])
        1
    """

    images: torch.Tensor
    masks: torch.Tensor
    colors: torch.Tensor
    shapes: torch.Tensor
    num_objects: torch.Tensor
    target: torch.Tensor
    captions: list[str]
    centers: torch.Tensor
    radii: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> "ShapesBatch":
        """Return a sub-batch (an int index keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, slice):
            caps = self.captions[index]
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            index = idx.long().cpu()
            caps = [self.captions[i] for i in index.tolist()]
        out = {}
        for f in fields(self):
            if f.name == "captions":
                continue
            t = getattr(self, f.name)
            out[f.name] = t[index.to(t.device) if isinstance(index, torch.Tensor) else index]
        return ShapesBatch(captions=caps, **out)

    @property
    def target_mask(self) -> torch.Tensor:
        """``(N, H, W)`` bool mask of the object named by each caption."""
        n = self.masks.shape[0]
        dev = self.masks.device
        return self.masks[torch.arange(n, device=dev), self.target.to(dev)]

    @property
    def boxes(self) -> torch.Tensor:
        """``(N, M, 4)`` float boxes ``(x0, y0, x1, y1)`` of every object in pixels (see :func:`object_boxes`)."""
        return object_boxes(self.masks)

    @property
    def class_ids(self) -> torch.Tensor:
        """``(N, M)`` long class indices into :func:`class_names` (``-1`` if absent)."""
        return class_index(self.colors, self.shapes)

    @property
    def target_class(self) -> torch.Tensor:
        """``(N,)`` long class index of the object named by each caption."""
        n = self.colors.shape[0]
        return self.class_ids[torch.arange(n, device=self.colors.device), self.target]

    def to(self, device: str | torch.device) -> "ShapesBatch":
        """Return a copy with all tensors moved to ``device``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(device)
        return ShapesBatch(**out)


def _shape_masks(
    xx: torch.Tensor,
    yy: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    r: torch.Tensor,
    kind: torch.Tensor,
) -> torch.Tensor:
    """Rasterise one shape per image.

    Args:
        xx: ``(H, W)`` pixel-centre x coordinates.
        yy: ``(H, W)`` pixel-centre y coordinates.
        cx: ``(N,)`` centres x.
        cy: ``(N,)`` centres y.
        r: ``(N,)`` radii.
        kind: ``(N,)`` long shape labels into :data:`SHAPES`.

    Returns:
        ``(N, H, W)`` bool masks.
    """
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    rr = r[:, None, None]
    adx, ady = dx.abs(), dy.abs()
    circle = dx * dx + dy * dy <= rr * rr
    square = torch.maximum(adx, ady) <= 0.85 * rr
    # Upward triangle: apex at (0, -r), base at y = 0.8 r, half-width 1.08 r at the base.
    triangle = (dy <= 0.8 * rr) & (adx <= (dy + rr) * 0.6)
    arm = 0.36 * rr
    cross = ((adx <= arm) & (ady <= rr)) | ((ady <= arm) & (adx <= rr))
    stack = torch.stack([circle, square, triangle, cross], dim=1)  # (N, S, H, W)
    assert stack.shape[1] == len(SHAPES)
    return stack.gather(1, kind[:, None, None, None].expand(-1, 1, *xx.shape)).squeeze(1)


def _parse_num_objects(num_objects: int | tuple[int, int], max_cells: int) -> tuple[int, int]:
    if isinstance(num_objects, bool):
        raise TypeError("num_objects must be an int or a (low, high) tuple of ints")
    if isinstance(num_objects, int):
        lo = hi = num_objects
    else:
        try:
            lo, hi = num_objects
        except (TypeError, ValueError):
            raise TypeError(
                f"num_objects must be an int or a (low, high) tuple of ints, got {num_objects!r}"
            ) from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
            raise TypeError(f"num_objects bounds must be ints, got {num_objects!r}")
    if not 1 <= lo <= hi:
        raise ValueError(f"num_objects must satisfy 1 <= low <= high, got {num_objects!r}")
    if hi > max_cells:
        raise ValueError(
            f"num_objects high={hi} exceeds the {max_cells} grid cells available "
            f"(pass a larger grid, e.g. grid={math.isqrt(hi - 1) + 1})"
        )
    if hi > len(COLORS) * len(SHAPES):
        raise ValueError(
            f"num_objects high={hi} exceeds the number of classes {len(COLORS) * len(SHAPES)}"
        )
    return lo, hi


def generate_scenes(
    n: int,
    *,
    image_size: int = 64,
    num_objects: int | tuple[int, int] = (1, 3),
    seed: int = 0,
    device: str | torch.device = "cpu",
    template: str = DEFAULT_TEMPLATE,
    grid: int = 2,
    noise_std: float = 0.03,
    background: tuple[float, float] = (0.3, 0.6),
) -> ShapesBatch:
    """Generate ``n`` random scenes with exact masks and one caption per scene.

    The canvas is divided into a ``grid x grid`` layout (2x2 by default, so at
    most 4 objects; pass ``grid=3`` for up to 9 smaller objects); each object gets
    its own
    cell (so objects never overlap), a random radius in ``[0.25, 0.38]`` of the cell
    size and a random centre inside the cell such that it stays inside it. Objects
    in one scene have pairwise distinct (colour, shape) combinations. The canvas is
    a random grey level with smooth blotches; objects are painted with the exact
    :data:`PALETTE` colour, and finally i.i.d. Gaussian pixel noise of standard
    deviation ``noise_std`` is added to the whole image and the result clamped to
    ``[0, 1]``.

    Args:
        n: Number of scenes (``>= 1``).
        image_size: Height and width in pixels (``>= 8 * grid``).
        num_objects: Number of objects per scene, either a fixed int or an
            inclusive ``(low, high)`` range sampled uniformly per scene.
        seed: Seed of the :class:`torch.Generator` (generation happens on the CPU,
            so results do not depend on ``device``).
        device: Device of the returned tensors.
        template: Caption template with two ``{}`` fields (colour, shape).
        grid: Grid size; at most ``grid ** 2`` objects fit. Object size scales
            with ``image_size / grid`` (radius 8-12 px for the defaults).
        noise_std: Standard deviation of the pixel noise added at the end
            (``0`` keeps object pixels exactly at their palette colour).
        background: Range ``(low, high)`` of the canvas grey level.

    Returns:
        A :class:`ShapesBatch`.

    Raises:
        ValueError: For non-positive ``n``, too small ``image_size``, bad
            ``num_objects``, negative ``noise_std``, a bad background range or a
            bad template.
        TypeError: If ``n``/``image_size``/``num_objects`` are not ints.

    Examples:
        >>> b = generate_scenes(8, num_objects=1, seed=3)
        >>> b.num_objects.tolist() == [1] * 8
        True
        >>> bool((b.masks[:, 1:] == False).all())
        True
    """
    for name, v in (("n", n), ("image_size", image_size), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    lo, hi = _parse_num_objects(num_objects, grid * grid)
    if image_size < 8 * grid:
        raise ValueError(f"image_size must be >= 8 * grid = {8 * grid}, got {image_size}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if not (0.0 <= background[0] <= background[1] <= 1.0):
        raise ValueError(f"background must be a range 0 <= low <= high <= 1, got {background}")
    if template.count("{}") != 2:
        raise ValueError(
            f"template must contain exactly two '{{}}' fields (colour, shape), got {template!r}"
        )

    g = torch.Generator().manual_seed(seed)
    H = W = image_size
    M = hi
    n_classes = len(COLORS) * len(SHAPES)

    num = torch.randint(lo, hi + 1, (n,), generator=g)
    present = torch.arange(M)[None, :] < num[:, None]  # (N, M)
    # Distinct classes per scene, distinct cells per scene.
    cls = torch.rand(n, n_classes, generator=g).argsort(dim=1)[:, :M]
    cells = torch.rand(n, grid * grid, generator=g).argsort(dim=1)[:, :M]
    colors = torch.div(cls, len(SHAPES), rounding_mode="floor")
    shapes = cls % len(SHAPES)

    cell = image_size / grid
    r = cell * (0.25 + 0.13 * torch.rand(n, M, generator=g))
    slack = (cell / 2 - r - 1.5).clamp(min=0.0)  # keep a 1.5 px margin to the cell border
    jitter = (torch.rand(n, M, 2, generator=g) * 2 - 1) * slack[..., None]
    cx = (cells % grid).float() * cell + cell / 2 + jitter[..., 0]
    cy = torch.div(cells, grid, rounding_mode="floor").float() * cell + cell / 2 + jitter[..., 1]
    target = (torch.rand(n, generator=g) * num).long().clamp(max=M - 1)

    # Canvas: grey level + smooth blotches, all grey (no hue, so colours stay unambiguous).
    level = background[0] + (background[1] - background[0]) * torch.rand(n, 1, 1, 1, generator=g)
    coarse = torch.randn(n, 1, 4, 4, generator=g) * 0.06
    blotch = torch.nn.functional.interpolate(
        coarse, size=(H, W), mode="bicubic", align_corners=False
    )
    images = (level + blotch).expand(n, 3, H, W).clone()

    coords = torch.arange(H, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    palette = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32)  # (C, 3)
    masks = torch.zeros(n, M, H, W, dtype=torch.bool)
    for m in range(M):
        mk = _shape_masks(xx, yy, cx[:, m], cy[:, m], r[:, m], shapes[:, m])
        mk &= present[:, m, None, None]
        masks[:, m] = mk
        rgb = palette[colors[:, m]][:, :, None, None]  # (N, 3, 1, 1)
        images = torch.where(mk[:, None], rgb, images)

    if noise_std > 0:
        images = images + noise_std * torch.randn(images.shape, generator=g)
    images = images.clamp(0.0, 1.0)

    colors = torch.where(present, colors, torch.full_like(colors, -1))
    shapes = torch.where(present, shapes, torch.full_like(shapes, -1))
    nan = torch.tensor(float("nan"))
    centers = torch.where(present[..., None], torch.stack([cx, cy], dim=-1), nan)
    radii = torch.where(present, r, nan)
    tc = colors[torch.arange(n), target].tolist()
    ts = shapes[torch.arange(n), target].tolist()
    captions = [caption(COLORS[c], SHAPES[s], template) for c, s in zip(tc, ts)]

    batch = ShapesBatch(
        images=images.float(),
        masks=masks,
        colors=colors,
        shapes=shapes,
        num_objects=num,
        target=target,
        captions=captions,
        centers=centers,
        radii=radii,
    )
    return batch if torch.device(device).type == "cpu" else batch.to(device)


def object_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight bounding boxes of boolean object masks.

    Args:
        masks: ``(..., H, W)`` bool masks.

    Returns:
        ``(..., 4)`` float boxes ``(x0, y0, x1, y1)`` in pixels, end-exclusive (the box covers pixel columns
        ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``); ``nan`` for an empty mask.

    Examples:
        >>> m = torch.zeros(1, 6, 8, dtype=torch.bool)
        >>> m[0, 1:3, 2:7] = True
        >>> object_boxes(m).tolist()
        [[2.0, 1.0, 7.0, 3.0]]
    """
    if masks.dim() < 2 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool (..., H, W), got {masks.dtype} of shape {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    cols, rows = masks.any(-2), masks.any(-1)  # (..., W), (..., H)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    inf = torch.tensor(float("inf"), device=masks.device)
    x0 = torch.where(cols, xs, inf).amin(-1)
    x1 = torch.where(cols, xs, -inf).amax(-1) + 1
    y0 = torch.where(rows, ys, inf).amin(-1)
    y1 = torch.where(rows, ys, -inf).amax(-1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return torch.where(torch.isfinite(boxes), boxes, torch.full_like(boxes, float("nan")))
