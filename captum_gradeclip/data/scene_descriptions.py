"""Scene descriptions of the shapes world: object lists, spatial relations and counts, in words.

Captions of :func:`~captum_gradeclip.data.shapes.generate_scenes` name one object ("a red circle"); the functions
here describe a whole scene ("a red circle and a blue square", "a red circle is left of a blue square", "two
circles and one cross") for the analyses and the fine-tuning application.

Examples:
    >>> from captum_gradeclip.data import describe_scene, generate_scenes
    >>> batch = generate_scenes(2, image_size=64, num_objects=2, seed=0)
    >>> isinstance(describe_scene(batch, 0, "relation"), str)
    True
"""

from __future__ import annotations

from typing import Sequence

from .shapes import COLORS, SHAPES, ShapesBatch

__all__ = [
    "CAPTION_PREFIXES",
    "CAPTION_STYLES",
    "NUMBER_WORDS",
    "RELATIONS",
    "SCENE_WORDS",
    "SHAPE_PLURALS",
    "relation",
    "describe_scene",
    "scene_captions",
]


#: Caption styles of :func:`describe_scene`: ``"single"`` names the target object (the caption of
#: :func:`generate_scenes`), ``"list"`` names every object left to right, ``"relation"`` relates the target to
#: another object, ``"count"`` counts the objects of each shape.
CAPTION_STYLES: tuple[str, ...] = ("single", "list", "relation", "count")

#: Number words of ``"count"`` captions, index = count - 1.
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Spatial relations of ``"relation"`` captions (``"<a> is <relation> <b>"``).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

#: Plural of each shape word (``"count"`` captions: ``"two circles"``).
SHAPE_PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                                 "cross": "crosses"}

#: Openings without a visual referent that the shipped models' rich training captions carry half of the time
#: (``"a photo of a red circle left of a blue square"``), so that captions mix concrete and abstract words.
CAPTION_PREFIXES: tuple[str, ...] = ("a photo of", "there is", "a nice picture of", "a simple image with",
                                     "an image of")

#: Every word a caption of :func:`describe_scene` can contain (for word-level tokenizers, e.g.
#: :class:`~captum_gradeclip.zoo.ShapesTokenizer`): function words, relation and number words, colours, shapes
#: and plural shapes.
SCENE_WORDS: tuple[str, ...] = (
    ("a", "and", "is", "left", "right", "of", "above", "below")
    + NUMBER_WORDS + COLORS + SHAPES + tuple(SHAPE_PLURALS[s] for s in SHAPES)
)


def relation(center_a: Sequence[float], center_b: Sequence[float]) -> str:
    """The spatial relation of object ``a`` to object ``b`` along the axis where they differ most.

    Args:
        center_a: ``(x, y)`` centre of ``a`` in pixels (``y`` grows downwards).
        center_b: ``(x, y)`` centre of ``b``.

    Returns:
        One of :data:`RELATIONS`: ``"left of"``/``"right of"`` when the horizontal distance is at least the
        vertical one, else ``"above"``/``"below"``.

    Examples:
        >>> relation((10, 30), (50, 32))
        'left of'
        >>> relation((40, 60), (38, 10))
        'below'
    """
    dx = float(center_b[0]) - float(center_a[0])
    dy = float(center_b[1]) - float(center_a[1])
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _objects_left_to_right(batch: ShapesBatch, i: int) -> list[int]:
    k = int(batch.num_objects[i])
    centers = batch.centers[i, :k].tolist()
    return sorted(range(k), key=lambda m: (round(centers[m][0], 3), round(centers[m][1], 3)))


def _name(batch: ShapesBatch, i: int, m: int) -> str:
    return f"{COLORS[int(batch.colors[i, m])]} {SHAPES[int(batch.shapes[i, m])]}"


def describe_scene(batch: ShapesBatch, index: int, style: str = "list", *, other: int | None = None) -> str:
    """Describe one scene of a batch in words.

    Styles (see :data:`CAPTION_STYLES`):

    - ``"single"``: the scene's own caption (names the target object), e.g. ``"a red circle"``;
    - ``"list"``: every object, left to right (ties: top to bottom), e.g.
      ``"a red circle, a blue square and a green cross"``;
    - ``"relation"``: the target object related to another one (``other``, default the next object left to
      right after the target, wrapping), e.g. ``"a red circle is left of a blue square"``; a one-object scene
      gives the ``"single"`` caption;
    - ``"count"``: the number of objects of each shape, in :data:`SHAPES` order, e.g.
      ``"two circles and one cross"``.

    Args:
        batch: A :class:`ShapesBatch` (on any device).
        index: The scene's index in the batch.
        style: One of :data:`CAPTION_STYLES`.
        other: ``"relation"`` only: the slot of the second object (must differ from the target and be present).

    Returns:
        The caption; its words are in :data:`SCENE_WORDS` (commas aside).

    Raises:
        ValueError: For an unknown style, an index out of range, or a bad ``other`` slot.

    Examples:
        >>> from captum_gradeclip.data import generate_scenes
        >>> b = generate_scenes(1, num_objects=3, seed=0, grid=2)
        >>> describe_scene(b, 0, "list").count(" and ")
        1
        >>> describe_scene(b, 0, "count").split()[-1] in ("circle", "circles", "square", "squares", "triangle",
        ...                                               "triangles", "cross", "crosses")
        True
    """
    if style not in CAPTION_STYLES:
        raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")
    if not isinstance(index, int) or not -len(batch) <= index < len(batch):
        raise ValueError(f"index {index!r} is out of range for a batch of {len(batch)} scenes")
    i = index % len(batch)
    order = _objects_left_to_right(batch, i)
    if style == "single":
        return batch.captions[i]
    if style == "list":
        names = [f"a {_name(batch, i, m)}" for m in order]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if style == "relation":
        t = int(batch.target[i])
        if len(order) == 1:
            return f"a {_name(batch, i, t)}"
        if other is None:
            other = order[(order.index(t) + 1) % len(order)]
        if not isinstance(other, int) or other == t or other not in order:
            raise ValueError(f"other must be the slot of a present object other than the target {t}, got {other!r}")
        rel = relation(batch.centers[i, t].tolist(), batch.centers[i, other].tolist())
        return f"a {_name(batch, i, t)} is {rel} a {_name(batch, i, other)}"
    counts = [0] * len(SHAPES)
    for m in order:
        counts[int(batch.shapes[i, m])] += 1
    parts = [f"{NUMBER_WORDS[c - 1]} {SHAPES[s] if c == 1 else SHAPE_PLURALS[SHAPES[s]]}"
             for s, c in enumerate(counts) if c]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_captions(batch: ShapesBatch, style: str = "list") -> list[str]:
    """:func:`describe_scene` for every scene of a batch.

    Args:
        batch: A :class:`ShapesBatch`.
        style: One of :data:`CAPTION_STYLES`.

    Returns:
        One caption per scene.

    Examples:
        >>> from captum_gradeclip.data import generate_scenes
        >>> b = generate_scenes(3, seed=2)
        >>> scene_captions(b, "single") == b.captions
        True
    """
    return [describe_scene(batch, i, style) for i in range(len(batch))]
