"""Synthetic data for testing and benchmarking explanations.

:mod:`captum_gradeclip.data.shapes` generates coloured shapes on a noisy canvas
with exact per-object masks and captions naming one object.

Examples:
    >>> from captum_gradeclip.data import generate_scenes, class_names
    >>> batch = generate_scenes(2, seed=0)
    >>> len(class_names())
    24
"""

from .shapes import (
    COLORS,
    DEFAULT_TEMPLATE,
    PALETTE,
    SHAPES,
    ShapesBatch,
    caption,
    class_index,
    class_names,
    generate_scenes,
)

__all__ = [
    "COLORS",
    "SHAPES",
    "PALETTE",
    "DEFAULT_TEMPLATE",
    "ShapesBatch",
    "caption",
    "class_index",
    "class_names",
    "generate_scenes",
]
