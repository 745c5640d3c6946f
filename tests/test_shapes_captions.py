"""Multi-object descriptions of the shapes world: object lists, relations, counts, boxes."""

from __future__ import annotations

import pytest
import torch

from captum_gradeclip.data import (SCENE_WORDS, ShapesBatch, describe_scene, generate_scenes, object_boxes, relation,
                                   scene_captions)
from captum_gradeclip.zoo import ShapesTokenizer


def _scene() -> ShapesBatch:
    """Three objects by hand: a blue square (right, top), a red circle (left), a green square (right, bottom)."""
    nan = float("nan")
    return ShapesBatch(
        images=torch.zeros(1, 3, 64, 64), masks=torch.zeros(1, 4, 64, 64, dtype=torch.bool),
        colors=torch.tensor([[2, 0, 1, -1]]), shapes=torch.tensor([[1, 0, 1, -1]]),
        num_objects=torch.tensor([3]), target=torch.tensor([0]), captions=["a blue square"],
        centers=torch.tensor([[[48.0, 16.0], [16.0, 20.0], [47.0, 50.0], [nan, nan]]]),
        radii=torch.tensor([[10.0, 10.0, 10.0, nan]]))


def test_hand_checked_descriptions() -> None:
    b = _scene()
    assert describe_scene(b, 0, "single") == "a blue square"
    assert describe_scene(b, 0, "list") == "a red circle, a green square and a blue square"
    # the next object after the target, left to right (wrapping): the red circle
    assert describe_scene(b, 0, "relation") == "a blue square is right of a red circle"
    assert describe_scene(b, 0, "relation", other=2) == "a blue square is above a green square"
    assert describe_scene(b, 0, "count") == "one circle and two squares"
    with pytest.raises(ValueError, match="other"):
        describe_scene(b, 0, "relation", other=3)
    with pytest.raises(ValueError, match="style"):
        describe_scene(b, 0, "poem")
    with pytest.raises(ValueError, match="out of range"):
        describe_scene(b, 1)


def test_relation_and_boxes() -> None:
    assert relation((0, 0), (10, 3)) == "left of" and relation((10, 3), (0, 0)) == "right of"
    assert relation((0, 0), (3, 10)) == "above" and relation((3, 10), (0, 0)) == "below"
    b = generate_scenes(20, num_objects=(1, 4), seed=3)
    boxes = b.boxes
    present = b.class_ids >= 0
    assert torch.isnan(boxes[~present]).all() and not torch.isnan(boxes[present]).any()
    for i, m in present.nonzero().tolist():
        x0, y0, x1, y1 = (int(v) for v in boxes[i, m].tolist())
        mask = b.masks[i, m]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the whole mask
        assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()  # tight
    with pytest.raises(ValueError):
        object_boxes(torch.zeros(4, 4))


def test_every_caption_fits_a_scene_vocabulary() -> None:
    b = generate_scenes(200, num_objects=(1, 4), seed=9)
    tok = ShapesTokenizer(words=SCENE_WORDS, context_length=16)
    for style in ("single", "list", "relation", "count"):
        caps = scene_captions(b, style)
        assert len(caps) == 200
        tok(caps)  # every word known, at most 14 words
    lists = scene_captions(b, "list")
    assert all(c.count(" a ") + c.startswith("a ") == k for c, k in zip(lists, b.num_objects.tolist()))
