"""Synthetic data for testing and benchmarking explanations.

:mod:`captum_gradeclip.data.shapes` generates coloured shapes on a noisy canvas
with exact per-object masks and captions naming one object;
:func:`describe_scene` describes a whole scene (every object, spatial relations, counts).

Examples:
    >>> from captum_gradeclip.data import generate_scenes, class_names
    >>> batch = generate_scenes(2, seed=0)
    >>> len(class_names())
    24
"""

from .scene_descriptions import (CAPTION_PREFIXES, CAPTION_STYLES, NUMBER_WORDS, RELATIONS, SCENE_WORDS,
                                 SHAPE_PLURALS, describe_scene, relation, scene_captions)
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
    object_boxes,
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
    "CAPTION_PREFIXES",
    "CAPTION_STYLES",
    "NUMBER_WORDS",
    "RELATIONS",
    "SCENE_WORDS",
    "SHAPE_PLURALS",
    "object_boxes",
    "relation",
    "describe_scene",
    "scene_captions",
]
