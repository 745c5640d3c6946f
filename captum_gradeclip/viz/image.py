"""Image maps drawn over their image: one blended overlay, or a grid of the image and one overlay per map.

matplotlib is imported when a function here runs, not when this module is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .inputs import (ArrayLike, ImageLike, MapsLike, ScoresLike, collect_maps, display_image, single_map,
                     to_float_tensor)
from .normalize import normalize_map, upsample_map

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["overlay", "plot_image_maps"]


def overlay(
    image: ImageLike,
    map: ArrayLike,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Colour a map and blend it over an image.

    The map is upsampled (bilinear) to the image's own height and width (so
    non-square images keep their aspect ratio), min-max normalised if
    ``normalize`` (after upsampling, so the colours span the whole colormap),
    coloured with ``cmap`` and blended:
    ``out = (1 - alpha) * image + alpha * cmap(map)``, rounded to ``uint8``.

    Args:
        image: The image (see :mod:`captum_gradeclip.viz` for accepted forms).
        map: One map ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        cmap: Colormap name or :class:`~matplotlib.colors.Colormap`.
        alpha: Weight of the heat map, in ``[0, 1]``.
        normalize: Min-max normalise the map (default). If ``False`` the map is
            assumed to be in ``[0, 1]`` already and is clipped to it.
            An all-zero map with ``normalize=True`` is drawn as the colormap's
            colour at 0 everywhere.
        mean: With ``std``: the per-channel mean that normalised ``image`` for
            the model; the normalisation is undone for display
            (:func:`denormalize`). Leave both ``None`` for images in ``[0, 1]``
            or ``[0, 255]``.
        std: The per-channel standard deviation of that normalisation.

    Returns:
        An ``(H, W, 3)`` ``uint8`` array.

    Raises:
        ValueError: bad image/map shape, ``alpha`` outside ``[0, 1]``, unknown
            colormap.

    Examples:
        >>> img = torch.rand(3, 224, 300)
        >>> overlay(img, torch.rand(1, 1, 7, 7)).shape
        (224, 300, 3)
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colormap(cmap)
    img = display_image(image, mean, std)
    m = single_map(map).to(torch.float64)
    up = upsample_map(m, img.shape[:2])
    up = normalize_map(up) if normalize else up.clamp(0.0, 1.0)
    heat = np.asarray(colours(up.numpy()), dtype=np.float64)[..., :3]
    blended = (1.0 - float(alpha)) * img + float(alpha) * heat
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def plot_image_maps(
    image: ImageLike,
    maps: MapsLike,
    titles: Sequence[str] | None = None,
    *,
    scores: ScoresLike | None = None,
    ncols: int | None = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    figsize: tuple[float, float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """Plot an image followed by one overlay per map, in a grid.

    Typical uses: one map per prompt (``titles`` = prompts, ``scores`` = the
    CLIP similarities, giving titles like ``"a dog (0.31)"``), or several
    attribution methods side by side (``maps={"Grad-ECLIP": m1, "GradCAM": m2}``).

    Args:
        image: The image (see :mod:`captum_gradeclip.viz` for accepted forms).
        maps: ``(N, 1, h, w)`` / ``(N, h, w)`` / ``(h, w)`` tensor or array, a
            list of single maps, or a dict ``{title: map}``.
        titles: One title per map. Defaults to the dict keys, else ``"map i"``.
        scores: Optional number per map appended to its title as ``" (0.31)"``.
        ncols: Panels per row (default: all panels in one row, at most 5).
        cmap: Colormap for the overlays.
        alpha: Heat-map weight in ``[0, 1]``.
        figsize: Figure size in inches (default: 3 inches wide per panel, height
            following the image's aspect ratio).
        mean: With ``std``: the normalisation of ``image`` to undo for display,
            for an image straight from the model's preprocessing (see
            :func:`overlay`).
        std: See ``mean``.

    Returns:
        A :class:`matplotlib.figure.Figure` (not attached to pyplot) with
        exactly ``1 + N`` axes: the image (title ``"image"``) then the overlays.
        Grid cells left over in the last row are removed.

    Raises:
        ValueError: bad shapes, mismatched ``titles``/``scores`` lengths,
            ``ncols < 1``.

    Examples:
        >>> img, maps = torch.rand(3, 224, 300), torch.rand(2, 1, 7, 7)
        >>> fig = plot_image_maps(img, maps, ["a dog", "a cat"], scores=[0.31, 0.12])
        >>> [ax.get_title() for ax in fig.axes]
        ['image', 'a dog (0.31)', 'a cat (0.12)']
        >>> clip_mean, clip_std = [0.481, 0.458, 0.408], [0.269, 0.261, 0.276]
        >>> pixels = (img - torch.tensor(clip_mean).view(3, 1, 1)) / torch.tensor(clip_std).view(3, 1, 1)
        >>> fig = plot_image_maps(pixels, maps, mean=clip_mean, std=clip_std)  # a preprocessed image
    """
    items, names = collect_maps(maps, titles)
    if scores is not None:
        sc = to_float_tensor(scores, "scores").reshape(-1)
        if sc.numel() != len(items):
            raise ValueError(
                f"scores must have one value per map; got {sc.numel()} scores for "
                f"{len(items)} maps"
            )
        names = [f"{n} ({float(s):.2f})" for n, s in zip(names, sc.tolist())]
    n_panels = len(items) + 1
    if ncols is None:
        ncols = min(n_panels, 5)
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(int(ncols), n_panels)
    nrows = math.ceil(n_panels / ncols)
    img = display_image(image, mean, std)
    if figsize is None:
        panel_h = 3.0 * img.shape[0] / img.shape[1]
        figsize = (3.0 * ncols, (panel_h + 0.4) * nrows)
    overlays = [overlay(img, m, cmap=cmap, alpha=alpha) for m in items]

    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    panels = [(img, "image")] + list(zip(overlays, names))
    for ax, (pic, title) in zip(axes, panels):
        ax.imshow(pic)
        ax.set_title(title)
        ax.set_axis_off()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig


def colormap(cmap: str | Colormap) -> Colormap:
    """A matplotlib colormap by name, or ``cmap`` itself when it is one (pyplot is never touched)."""
    import matplotlib
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name or a Colormap, got {type(cmap).__name__}")
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None
