"""The analyses' inputs on the shapes world, where the ground truth is exact: word classes of the caption
grammar (standing in for concreteness norms), binding scenes, token strings of the shipped models."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

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


def template_captions(scenes: Any, seed: int = 0) -> List[str]:
    """A caption of each scene's named object, with a template drawn at random from :data:`TEMPLATES`."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(TEMPLATES), (len(scenes),), generator=g).tolist()
    rows = torch.arange(len(scenes))
    cols = scenes.colors[rows, scenes.target].tolist()
    shps = scenes.shapes[rows, scenes.target].tolist()
    return [TEMPLATES[k].format(COLORS[c], SHAPES[s]) for k, c, s in zip(pick, cols, shps)]
