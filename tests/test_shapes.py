"""Tests of the synthetic shapes world (captum_gradeclip.data.shapes)."""

from __future__ import annotations

import pytest
import torch

from captum_gradeclip.data import (
    COLORS,
    PALETTE,
    SHAPES,
    ShapesBatch,
    caption,
    class_index,
    class_names,
    generate_scenes,
)


@pytest.fixture(scope="module")
def batch() -> ShapesBatch:
    return generate_scenes(64, image_size=64, num_objects=(1, 3), seed=11)


def test_shapes_and_dtypes(batch: ShapesBatch) -> None:
    n, m, h = 64, 3, 64
    assert batch.images.shape == (n, 3, h, h) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (n, m, h, h) and batch.masks.dtype == torch.bool
    for t in (batch.colors, batch.shapes):
        assert t.shape == (n, m) and t.dtype == torch.long
    assert batch.num_objects.shape == (n,) and batch.num_objects.dtype == torch.long
    assert batch.target.shape == (n,) and batch.target.dtype == torch.long
    assert batch.target_mask.shape == (n, h, h) and batch.target_mask.dtype == torch.bool
    assert batch.centers.shape == (n, m, 2) and batch.radii.shape == (n, m)
    assert len(batch.captions) == n and len(batch) == n
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert set(batch.num_objects.tolist()) == {1, 2, 3}


def test_determinism() -> None:
    a = generate_scenes(16, seed=5)
    b = generate_scenes(16, seed=5)
    c = generate_scenes(16, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.captions == b.captions and torch.equal(a.target, b.target)
    assert not torch.equal(a.images, c.images)


def test_absent_slots_and_presence(batch: ShapesBatch) -> None:
    slot = torch.arange(batch.masks.shape[1])[None]
    present = slot < batch.num_objects[:, None]
    assert torch.equal(batch.colors >= 0, present)
    assert torch.equal(batch.shapes >= 0, present)
    area = batch.masks.sum((2, 3))
    assert (area[present] > 20).all()
    assert (area[~present] == 0).all()
    assert torch.isnan(batch.radii[~present]).all() and not torch.isnan(batch.radii[present]).any()
    assert (batch.target < batch.num_objects).all() and (batch.target >= 0).all()


def test_masks_disjoint_and_distinct_classes(batch: ShapesBatch) -> None:
    assert (batch.masks.sum(1) <= 1).all()
    for ids, k in zip(batch.class_ids.tolist(), batch.num_objects.tolist()):
        assert len(set(ids[:k])) == k


def test_mask_pixels_have_exact_colour_without_noise() -> None:
    b = generate_scenes(32, num_objects=(1, 3), seed=2, noise_std=0.0)
    palette = torch.tensor([PALETTE[c] for c in COLORS])
    fg = b.masks.any(1)
    for i in range(len(b)):
        for m in range(int(b.num_objects[i])):
            pix = b.images[i][:, b.masks[i, m]]  # (3, P)
            expected = palette[b.colors[i, m]][:, None].expand_as(pix)
            assert torch.allclose(pix, expected, atol=1e-6)
        # background is grey (equal channels) everywhere outside the objects
        bg = b.images[i][:, ~fg[i]]
        assert torch.allclose(bg[0], bg[1]) and torch.allclose(bg[1], bg[2])


def test_mask_mean_colour_with_noise(batch: ShapesBatch) -> None:
    palette = torch.tensor([PALETTE[c] for c in COLORS])
    i = torch.arange(len(batch))
    tm = batch.target_mask
    mean = (batch.images * tm[:, None]).sum((2, 3)) / tm.sum((1, 2))[:, None]
    expected = palette[batch.colors[i, batch.target]]
    assert (mean - expected).abs().max() < 0.05


def test_shape_geometry() -> None:
    b = generate_scenes(200, num_objects=1, seed=4, noise_std=0.0)
    area = b.masks[:, 0].sum((1, 2)).float()
    ratio = area / (b.radii[:, 0] ** 2)
    expected = {
        "circle": 3.14,
        "square": 4 * 0.85**2,
        "triangle": 1.8 * 1.08,
        "cross": 4 * 0.72 - 0.72**2,
    }
    for s, name in enumerate(SHAPES):
        sel = b.shapes[:, 0] == s
        assert sel.any()
        assert abs(ratio[sel].mean().item() - expected[name]) < 0.35, name


def test_captions_name_target(batch: ShapesBatch) -> None:
    i = torch.arange(len(batch))
    for cap, c, s in zip(batch.captions, batch.colors[i, batch.target].tolist(),
                         batch.shapes[i, batch.target].tolist()):
        assert cap == f"a {COLORS[c]} {SHAPES[s]}"
    names = class_names()
    for cap, k in zip(batch.captions, batch.target_class.tolist()):
        assert cap == "a " + names[k]


def test_templates_and_class_names() -> None:
    assert caption("red", "circle") == "a red circle"
    assert caption("cyan", "cross", "a photo of a {} {}") == "a photo of a cyan cross"
    names = class_names()
    assert len(names) == len(COLORS) * len(SHAPES) == len(set(names))
    assert names[class_index(torch.tensor(2), torch.tensor(3)).item()] == f"{COLORS[2]} {SHAPES[3]}"
    b = generate_scenes(4, seed=0, template="the {} {}")
    assert all(c.startswith("the ") for c in b.captions)


def test_indexing_and_to() -> None:
    b = generate_scenes(6, seed=1)
    sub = b[[0, 2]]
    assert len(sub) == 2 and sub.captions == [b.captions[0], b.captions[2]]
    assert torch.equal(sub.images[1], b.images[2])
    assert b[3].captions == [b.captions[3]] and len(b[1:4]) == 3
    assert b[torch.tensor([True, False] * 3)].captions == b.captions[::2]
    assert b.to("cpu").images.device.type == "cpu"


def test_image_size_and_fixed_count() -> None:
    b = generate_scenes(3, image_size=96, num_objects=5, seed=0, grid=3)
    assert b.images.shape == (3, 3, 96, 96) and b.masks.shape == (3, 5, 96, 96)
    assert (b.num_objects == 5).all()
    assert (b.masks.sum(1) <= 1).all()


def test_grid_controls_object_size() -> None:
    big = generate_scenes(50, num_objects=1, seed=0, grid=1)
    small = generate_scenes(50, num_objects=1, seed=0, grid=3)
    assert big.radii.nanmean() > 2.5 * small.radii.nanmean()
    pos = small.centers[:, 0]
    assert (pos > 0).all() and (pos < 64).all()


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(n=0), ValueError),
        (dict(n=2.5), TypeError),
        (dict(n=2, image_size=10), ValueError),
        (dict(n=2, num_objects=0), ValueError),
        (dict(n=2, num_objects=(3, 1)), ValueError),
        (dict(n=2, num_objects=5), ValueError),
        (dict(n=2, num_objects=10, grid=3), ValueError),
        (dict(n=2, num_objects=25, grid=5), ValueError),
        (dict(n=2, grid=0), ValueError),
        (dict(n=2, num_objects="3"), TypeError),
        (dict(n=2, noise_std=-1.0), ValueError),
        (dict(n=2, background=(0.8, 0.2)), ValueError),
        (dict(n=2, template="a {}"), ValueError),
    ],
)
def test_bad_input(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        generate_scenes(**kwargs)


def test_bad_caption() -> None:
    with pytest.raises(ValueError, match="colour"):
        caption("purple", "circle")
    with pytest.raises(ValueError, match="shape"):
        caption("red", "hexagon")
    with pytest.raises(ValueError):
        class_index(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
