"""Headless matplotlib figures: the figure that holds an axes, and saving a figure to a file.

Figures are built with :class:`matplotlib.figure.Figure` directly, never pyplot's global state; matplotlib is
imported when a function here runs, not when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["save_figure"]


def save_figure(
    fig: Figure, path: str | Path, dpi: int = 150, **savefig_kwargs: Any
) -> Path:
    """Save a figure to disk (format from the file suffix) and return the path.

    Parent directories are created. ``bbox_inches="tight"`` is used unless
    overridden in ``savefig_kwargs``.

    Args:
        fig: A :class:`matplotlib.figure.Figure` (e.g. from
            :func:`plot_image_maps`).
        path: Destination file, e.g. ``"out/maps.png"`` or ``"maps.pdf"``.
        dpi: Resolution in dots per inch.
        **savefig_kwargs: Extra arguments for :meth:`Figure.savefig`.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError: ``fig`` is not a matplotlib Figure.

    Examples:
        >>> import tempfile
        >>> out_dir = Path(tempfile.mkdtemp())
        >>> from captum_gradeclip.viz import plot_tokens
        >>> save_figure(plot_tokens(["a", "dog"], [0.2, 0.8]), out_dir / "words.png").name
        'words.png'
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    fig.savefig(out, dpi=dpi, **savefig_kwargs)
    return out


def root_figure(ax: Axes) -> Figure:
    """Return the root Figure of ``ax`` (works with SubFigures)."""
    from matplotlib.figure import Figure

    try:
        fig = ax.get_figure(root=True)  # matplotlib >= 3.10
    except TypeError:  # pragma: no cover - older matplotlib
        fig = ax.figure
        while not isinstance(fig, Figure) and hasattr(fig, "figure"):
            fig = fig.figure
    return fig  # type: ignore[return-value]
