"""The analyses' inputs on the shapes world, where the ground truth is exact: word classes of the caption
grammar (standing in for concreteness norms), binding scenes, token strings of the shipped models."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..data.scene_descriptions import (CAPTION_PREFIXES, CAPTION_STYLES, NUMBER_WORDS, SHAPE_PLURALS,
                                        describe_scene, relation)
from ..data.shapes import COLORS, SHAPES, generate_scenes

#: Word class of every word of the shipped models' vocabulary.
WORD_CLASSES: Dict[str, str] = {
    **{w: "function" for w in ("a", "an", "the", "of")},
    **{w: "no visual referent" for w in ("photo", "image")},
    **{c: "colour" for c in COLORS},
    **{s: "shape" for s in SHAPES},
}
#: The classes from least to most concrete (the ordinal "ratings" of the shapes world).
CONCRETENESS_ORDER: Tuple[str, ...] = ("function", "no visual referent", "colour", "shape")
#: Caption templates the shipped models were trained with (fields: colour, shape).
TEMPLATES: Tuple[str, ...] = ("a {} {}", "the {} {}", "a photo of a {} {}", "an image of a {} {}")

#: Word class of every word of the rich captions (:func:`scene_corpus_captions`) that the default shipped models
#: read: :data:`WORD_CLASSES` plus the words of :data:`~captum_gradeclip.data.CAPTION_PREFIXES`, relations,
#: counts and plural shapes.
SCENE_WORD_CLASSES: Dict[str, str] = {
    **WORD_CLASSES,
    **{w: "function" for w in ("and", "is", "with")},
    **{w: "no visual referent" for w in ("there", "nice", "picture", "simple")},
    **{w: "relation" for w in ("left", "right", "above", "below")},
    **{w: "count" for w in NUMBER_WORDS},
    **{w: "shape" for w in SHAPE_PLURALS.values()},
}
#: The classes of :data:`SCENE_WORD_CLASSES` from least to most concrete: relations and counts name a
#: configuration of the scene, colours and shapes a visible property of one object.
SCENE_CONCRETENESS_ORDER: Tuple[str, ...] = ("function", "no visual referent", "relation", "count", "colour",
                                             "shape")


def token_strings(tokenizer: Any, ids: Tensor) -> List[List[Optional[str]]]:
    """Per caption, the word at each position of the shipped models' token ids (None for special tokens)."""
    specials = {tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id}
    return [[None if int(t) in specials else tokenizer.vocab[int(t)] for t in row] for row in ids]


def content_positions(tokens: Sequence[Sequence[Optional[str]]]) -> Tensor:
    """``(N, L)`` bool: the positions holding a colour or a shape word."""
    return torch.tensor([[WORD_CLASSES.get(t or "") in ("colour", "shape") for t in row] for row in tokens])


def binding_scenes(n: int, *, image_size: int = 64, seed: int = 0) -> Tuple[Tensor, Tensor,
                                                                           List[Tuple[Tuple[str, str],
                                                                                      Tuple[str, str]]]]:
    """``n`` scenes of two objects that differ in colour and in shape (e.g. a red square and a blue circle).

    Returns:
        ``(images01 (n, 3, H, W), masks (n, 2, H, W), objects)`` with ``objects[i] = ((colour_A, shape_A),
        (colour_B, shape_B))``.
    """
    images, masks, objects = [], [], []
    chunk = 0
    while len(objects) < n:
        b = generate_scenes(max(2 * n, 16), image_size=image_size, num_objects=2, seed=seed * 1000 + chunk)
        chunk += 1
        ok = (b.colors[:, 0] != b.colors[:, 1]) & (b.shapes[:, 0] != b.shapes[:, 1])
        for i in ok.nonzero().flatten().tolist():
            if len(objects) == n:
                break
            images.append(b.images[i])
            masks.append(b.masks[i, :2])
            objects.append(tuple((COLORS[int(b.colors[i, j])], SHAPES[int(b.shapes[i, j])]) for j in range(2)))
    return torch.stack(images), torch.stack(masks), objects  # type: ignore[return-value]


def relation_scenes(n: int, *, image_size: int = 64, seed: int = 0) -> Tuple[Tensor, Tensor, List[Tuple[str, str]],
                                                                            List[str]]:
    """``n`` scenes of two objects A and B with the relation of A to B (:func:`~captum_gradeclip.data.relation`).

    Returns:
        ``(images01 (n, 3, H, W), masks (n, 2, H, W), objects, relations)`` with ``objects[i] = ("red circle",
        "blue square")`` and ``relations[i]`` one of :data:`~captum_gradeclip.data.RELATIONS`, true of A and B.

    Examples:
        >>> images, masks, objects, relations = relation_scenes(2, seed=0)
        >>> images.shape, masks.shape, len(objects), relations[0] in ("left of", "right of", "above", "below")
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 2, 64, 64]), 2, True)
    """
    b = generate_scenes(n, image_size=image_size, num_objects=2, seed=seed)
    objects = [tuple(f"{COLORS[int(b.colors[i, j])]} {SHAPES[int(b.shapes[i, j])]}" for j in range(2))
               for i in range(n)]
    relations = [relation(b.centers[i, 0].tolist(), b.centers[i, 1].tolist()) for i in range(n)]
    return b.images, b.masks[:, :2], objects, relations  # type: ignore[return-value]


def naming_captions(scenes: Any, *, max_named: int = 3, seed: int = 0) -> Tuple[List[str], List[List[List[int]]]]:
    """Captions naming 2 to ``max_named`` objects of each scene (``"a red circle and a blue square"``, objects in a
    random order, ``"a red circle, a blue square and a green cross"`` for three) and, per caption and object slot,
    the token positions of the object's colour and shape words
    (position 0 is the start-of-text token of :class:`~captum_gradeclip.zoo.ShapesTokenizer`), as
    :func:`~captum_gradeclip.analysis.cross_modal_correspondence` takes them.

    Args:
        scenes: a :class:`~captum_gradeclip.data.ShapesBatch` of scenes with at least 2 objects.
        max_named: the most objects a caption names (at least 2).
        seed: seed of the choice and order of the named objects.

    Returns:
        ``(captions, object_words)``; ``object_words[i][j]`` is empty for slots the caption does not name.

    Examples:
        >>> b = generate_scenes(1, num_objects=2, seed=0)
        >>> caps, words = naming_captions(b)
        >>> caps[0].count(" and "), sorted(len(w) for w in words[0])
        (1, [2, 2])
    """
    if max_named < 2:
        raise ValueError(f"max_named must be at least 2, got {max_named}")
    g = torch.Generator().manual_seed(seed)
    captions: List[str] = []
    positions: List[List[List[int]]] = []
    slots = int(scenes.masks.shape[1])
    for i in range(len(scenes)):
        k = int(scenes.num_objects[i])
        if k < 2:
            raise ValueError(f"scene {i} has {k} object(s); naming captions need at least 2")
        n_named = int(torch.randint(2, min(k, max_named) + 1, (1,), generator=g))
        chosen = torch.randperm(k, generator=g)[:n_named].tolist()
        parts: List[str] = []
        where: List[List[int]] = [[] for _ in range(slots)]
        for r, m in enumerate(chosen):
            start = 3 * r + (1 if r == n_named - 1 else 0)  # word index of its "a"; "and" precedes the last object
            where[m] = [start + 2, start + 3]  # colour and shape, +1 for the start-of-text token
            parts.append(f"a {COLORS[int(scenes.colors[i, m])]} {SHAPES[int(scenes.shapes[i, m])]}")
        captions.append(", ".join(parts[:-1]) + " and " + parts[-1])
        positions.append(where)
    return captions, positions


def template_captions(scenes: Any, seed: int = 0) -> List[str]:
    """A caption of each scene's named object, with a template drawn at random from :data:`TEMPLATES`."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(TEMPLATES), (len(scenes),), generator=g).tolist()
    rows = torch.arange(len(scenes))
    cols = scenes.colors[rows, scenes.target].tolist()
    shps = scenes.shapes[rows, scenes.target].tolist()
    return [TEMPLATES[k].format(COLORS[c], SHAPES[s]) for k, c, s in zip(pick, cols, shps)]


def scene_corpus_captions(scenes: Any, seed: int = 0) -> List[str]:
    """A rich caption of each scene, every one mixing concrete and abstract words: a style of
    :func:`~captum_gradeclip.data.describe_scene` drawn at random (one object, every object, a relation between two
    objects, the counts of each shape) behind a prefix drawn from :data:`~captum_gradeclip.data.CAPTION_PREFIXES`
    (``"there is a red circle left of a blue square"``). The words are those of :data:`SCENE_WORD_CLASSES`.

    Args:
        scenes: a :class:`~captum_gradeclip.data.ShapesBatch`.
        seed: seed of the styles and prefixes.

    Returns:
        One caption per scene (at most 17 words: the default shipped models' context holds them).

    Examples:
        >>> from captum_gradeclip.data import generate_scenes
        >>> caps = scene_corpus_captions(generate_scenes(3, seed=1), seed=0)
        >>> all(w.strip(",") in SCENE_WORD_CLASSES for c in caps for w in c.split())
        True
    """
    g = torch.Generator().manual_seed(seed)
    styles = torch.randint(0, len(CAPTION_STYLES), (len(scenes),), generator=g).tolist()
    prefixes = torch.randint(0, len(CAPTION_PREFIXES), (len(scenes),), generator=g).tolist()
    return [f"{CAPTION_PREFIXES[p]} {describe_scene(scenes, i, CAPTION_STYLES[k])}"
            for i, (k, p) in enumerate(zip(styles, prefixes))]
