"""Tests for captum_gradeclip.metrics (hand-computed values on tiny inputs)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import captum_gradeclip.metrics as M
from captum_gradeclip.metrics import (
    STANDARD_TOLERANCE,
    auc,
    clip_word_mask,
    deletion_auc,
    deletion_curve,
    energy_pointing_game,
    expand_to_input,
    insertion_auc,
    insertion_curve,
    pointing_game,
    tolerance_pixels,
    tuple_output,
    word_deletion_auc,
    word_deletion_curve,
    word_insertion_auc,
    word_insertion_curve,
)

WEIGHTS = torch.arange(16.0).view(1, 1, 4, 4)  # pixel weights 0..15, row-major


def linear_scorer(x: torch.Tensor) -> torch.Tensor:
    """(N, 2): col 0 = sum of pixels weighted by WEIGHTS, col 1 = pixel sum."""
    return torch.stack([(x * WEIGHTS).sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3))], dim=1)


def region_scorer(x: torch.Tensor) -> torch.Tensor:
    """(N, 1): mean of the top-left 2x2 region of a 4x4 image (all channels)."""
    return x[:, :, :2, :2].mean(dim=(1, 2, 3)).unsqueeze(1)


# --------------------------------------------------------------------- image curves


def test_deletion_linear_scorer_exact_values_and_inverted_map():
    x = torch.ones(1, 3, 4, 4)
    perfect = deletion_curve(linear_scorer, x, WEIGHTS, target=0, steps=4, fill="zeros")
    # 4 pixels per step, largest weights first: 360 - 3*(15+14+13+12) = 198, ...
    assert torch.equal(perfect, torch.tensor([[360.0, 198.0, 84.0, 18.0, 0.0]]))
    inverted = deletion_curve(linear_scorer, x, -WEIGHTS, target=0, steps=4, fill="zeros")
    assert torch.equal(inverted, torch.tensor([[360.0, 342.0, 276.0, 162.0, 0.0]]))
    d_perfect = deletion_auc(linear_scorer, x, WEIGHTS, 0, steps=4, fill="zeros")
    d_inverted = deletion_auc(linear_scorer, x, -WEIGHTS, 0, steps=4, fill="zeros")
    assert torch.allclose(d_perfect, torch.tensor([120.0]))
    assert torch.allclose(d_inverted, torch.tensor([240.0]))
    torch.manual_seed(0)
    d_random = deletion_auc(linear_scorer, x, torch.rand(1, 4, 4), 0, steps=4, fill="zeros")
    assert d_perfect < d_random < d_inverted


def test_insertion_linear_scorer_exact_values_and_inverted_map():
    x = torch.ones(1, 3, 4, 4)
    perfect = insertion_curve(linear_scorer, x, WEIGHTS, target=0, steps=4, fill="zeros")
    assert torch.equal(perfect, torch.tensor([[0.0, 162.0, 276.0, 342.0, 360.0]]))
    i_perfect = insertion_auc(linear_scorer, x, WEIGHTS, 0, steps=4, fill="zeros")
    i_inverted = insertion_auc(linear_scorer, x, -WEIGHTS, 0, steps=4, fill="zeros")
    assert torch.allclose(i_perfect, torch.tensor([240.0]))
    assert torch.allclose(i_inverted, torch.tensor([120.0]))


def test_region_scorer_with_patch_grid_map():
    # A 2x2 patch map, hot top-left patch: after bilinear upsampling to 4x4 the
    # four top-left pixels are the four highest (1, .75, .75, .5625 > .25).
    x = torch.ones(1, 3, 4, 4)
    good = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    bad = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
    c_good = deletion_curve(region_scorer, x, good, steps=4, fill="zeros")
    c_bad = deletion_curve(region_scorer, x, bad, steps=4, fill="zeros")
    assert torch.equal(c_good, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))
    # the bad map removes the bottom-right quadrant first; (N, h, w) maps accepted
    assert torch.equal(c_bad[:, :2], torch.tensor([[1.0, 1.0]]))
    assert torch.equal(c_bad[:, -1], torch.tensor([0.0]))
    assert deletion_auc(region_scorer, x, good[:, 0], steps=4, fill="zeros") < deletion_auc(
        region_scorer, x, bad[:, 0], steps=4, fill="zeros"
    )
    ins = insertion_curve(region_scorer, x, good, steps=4, fill="zeros")
    assert torch.equal(ins, torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]]))


def test_fraction_and_steps():
    x = torch.ones(1, 3, 4, 4)
    c = deletion_curve(linear_scorer, x, WEIGHTS, 0, steps=2, fraction=0.5, fill="zeros")
    # 8 pixels at the end: 360 - 3*(15+..+12) = 198, 360 - 3*(15+..+8) = 84
    assert torch.equal(c, torch.tensor([[360.0, 198.0, 84.0]]))
    c = deletion_curve(linear_scorer, x, WEIGHTS, 0, steps=16, fill="zeros")
    assert c.shape == (1, 17)
    expected = 360.0 - 3.0 * torch.cumsum(torch.tensor([0.0] + list(range(15, -1, -1))), 0)
    assert torch.equal(c[0], expected)


def test_ties_are_broken_in_row_major_order():
    x = torch.ones(1, 3, 4, 4)
    flat = torch.zeros(1, 1, 4, 4)
    c = deletion_curve(linear_scorer, x, flat, 0, steps=4, fill="zeros")
    # pixels 0..3 go first, then 4..7, ...
    assert torch.equal(c, torch.tensor([[360.0, 342.0, 276.0, 162.0, 0.0]]))
    c2 = deletion_curve(linear_scorer, x, flat, 0, steps=4, fill="zeros", batch_size=2)
    assert torch.equal(c, c2)


def test_fills():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4)

    def mean_scorer(z):
        return z.mean(dim=(1, 2, 3))

    # "mean": the fully deleted image has the same mean
    c = deletion_curve(mean_scorer, x, torch.rand(2, 4, 4), steps=2, fill="mean")
    assert torch.allclose(c[:, -1], c[:, 0], atol=1e-6)
    # number and (C, 1, 1) tensor fills: fully deleted image equals the fill
    c = deletion_curve(mean_scorer, x, torch.rand(2, 4, 4), steps=2, fill=0.5)
    assert torch.allclose(c[:, -1], torch.full((2,), 0.5))
    fill = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    c = deletion_curve(mean_scorer, x, torch.rand(2, 4, 4), steps=2, fill=fill)
    assert torch.allclose(c[:, -1], torch.full((2,), 2.0))
    # "blur" of a constant image is constant (replicate padding): flat curve
    const = torch.full((1, 3, 8, 8), 0.3)
    c = deletion_curve(mean_scorer, const, torch.rand(1, 8, 8), steps=3, fill="blur")
    assert torch.allclose(c, torch.full((1, 4), 0.3))
    # "blur" reduces the variance of a noisy image
    noisy = torch.rand(1, 3, 16, 16)
    var = deletion_curve(lambda z: z.var(dim=(1, 2, 3)), noisy, torch.rand(1, 16, 16),
                         steps=1, fill="blur", blur_sigma=2.0)
    assert var[0, 1] < 0.3 * var[0, 0]


def test_noise_fill_is_reproducible_and_in_range():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 5, 5) * 4 - 2
    lo = x.amin(dim=(2, 3))
    hi = x.amax(dim=(2, 3))

    def channel_range_scorer(z):
        return torch.cat([z.amin(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)  # (M, 6)

    maps = torch.rand(2, 5, 5)
    kw = dict(steps=1, fill="noise")
    for c in range(3):
        gen = torch.Generator().manual_seed(3)
        lo_c = deletion_curve(channel_range_scorer, x, maps, c, generator=gen, **kw)
        gen = torch.Generator().manual_seed(3)
        hi_c = deletion_curve(channel_range_scorer, x, maps, 3 + c, generator=gen, **kw)
        assert torch.all(lo_c[:, 1] >= lo[:, c]) and torch.all(hi_c[:, 1] <= hi[:, c])
    a = deletion_curve(linear_scorer, x[:, :, :4, :4], maps[:, :4, :4], 0, steps=3,
                       generator=torch.Generator().manual_seed(7))
    b = deletion_curve(linear_scorer, x[:, :, :4, :4], maps[:, :4, :4], 0, steps=3,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, -1])


def test_insertion_default_blur_ends_at_clean_image():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 1, 2, 2)
    c = insertion_curve(linear_scorer_8, x, maps, target=1, steps=5)
    clean = linear_scorer_8(x)[:, 1]
    assert torch.allclose(c[:, -1], clean)
    blurred = M._perturbation._gaussian_blur(x, 0.05 * 8)
    assert torch.allclose(c[:, 0], linear_scorer_8(blurred)[:, 1])


def linear_scorer_8(x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, x.shape[-1] * x.shape[-2]).view(1, 1, x.shape[-2], x.shape[-1])
    return torch.stack([(x * w).sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3))], dim=1)


def test_targets_captum_semantics():
    x = torch.ones(2, 3, 4, 4)
    maps = WEIGHTS.expand(2, 1, 4, 4)
    both = deletion_curve(linear_scorer, x, maps, [0, 1], steps=4, fill="zeros")
    assert torch.equal(both[0], torch.tensor([360.0, 198.0, 84.0, 18.0, 0.0]))
    assert torch.equal(both[1], torch.tensor([48.0, 36.0, 24.0, 12.0, 0.0]))
    as_tensor = deletion_curve(linear_scorer, x, maps, torch.tensor([0, 1]), steps=4, fill="zeros")
    assert torch.equal(both, as_tensor)
    negative = deletion_curve(linear_scorer, x, maps, -1, steps=4, fill="zeros")
    assert torch.equal(negative[0], both[1])
    # target=None with (N,) and (N, 1) outputs
    one_col = deletion_curve(lambda z: linear_scorer(z)[:, :1], x, maps, steps=4, fill="zeros")
    flat = deletion_curve(lambda z: linear_scorer(z)[:, 0], x, maps, steps=4, fill="zeros")
    assert torch.equal(one_col, flat) and torch.equal(one_col[1], both[0])
    with pytest.raises(ValueError, match="target` is None"):
        deletion_curve(linear_scorer, x, maps, steps=4, fill="zeros")
    with pytest.raises(ValueError, match="length 3 but there are N=2"):
        deletion_curve(linear_scorer, x, maps, [0, 1, 0], steps=4, fill="zeros")
    with pytest.raises(ValueError, match="out of range"):
        deletion_curve(linear_scorer, x, maps, 2, steps=4, fill="zeros")
    with pytest.raises(TypeError, match="tuple targets"):
        deletion_curve(linear_scorer, x, maps, [(0,), (1,)], steps=4, fill="zeros")


def _tiny_clip_scorer():
    """A small non-linear CLIP-like scorer: cosine of pooled conv features vs 3 texts."""
    g = torch.Generator().manual_seed(0)
    conv_w = torch.randn(8, 3, 3, 3, generator=g)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=-1)

    def scorer(images, scale=None):
        feats = F.conv2d(images, conv_w, padding=1).relu().mean(dim=(2, 3))
        if scale is not None:
            feats = feats * scale.view(-1, 1) + scale.view(-1, 1) ** 2
        return F.normalize(feats, dim=-1) @ text.T

    return scorer


@pytest.mark.parametrize("fn", [deletion_curve, insertion_curve])
def test_batch_equals_one_at_a_time(fn):
    torch.manual_seed(3)
    scorer = _tiny_clip_scorer()
    x = torch.rand(3, 3, 6, 6)
    maps = torch.rand(3, 1, 3, 3)
    target = [2, 0, 1]
    scale = torch.tensor([0.5, 1.0, 2.0])
    kw = dict(steps=5, fraction=0.8, fill="blur")
    batched = fn(scorer, x, maps, target, additional_forward_args=(scale,), **kw)
    small_chunks = fn(scorer, x, maps, target, additional_forward_args=(scale,), batch_size=4, **kw)
    single = torch.cat([
        fn(scorer, x[i:i + 1], maps[i:i + 1], target[i],
           additional_forward_args=scale[i:i + 1], **kw)
        for i in range(3)
    ])
    assert batched.shape == (3, 6)
    assert torch.allclose(batched, single, atol=1e-6)
    assert torch.allclose(batched, small_chunks, atol=1e-6)
    # the per-example tensor argument really reaches the scorer
    other = fn(scorer, x, maps, target, additional_forward_args=(scale.flip(0),), **kw)
    assert not torch.allclose(batched, other)


def test_chunking_respects_batch_size():
    sizes = []

    def scorer(z):
        sizes.append(z.shape[0])
        return linear_scorer(z)

    deletion_curve(scorer, torch.ones(3, 3, 4, 4), torch.rand(3, 4, 4), 0, steps=4,
                   fill="zeros", batch_size=4)
    assert sizes == [4, 4, 4, 3]  # 3 examples * 5 points = 15 images


def test_image_curve_bad_inputs():
    x = torch.ones(2, 3, 4, 4)
    maps = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="batch size 3"):
        deletion_curve(linear_scorer, x, torch.rand(3, 1, 4, 4), 0)
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\) or \(N, h, w\)"):
        deletion_curve(linear_scorer, x, torch.rand(2, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="NaN"):
        deletion_curve(linear_scorer, x, torch.full((2, 4, 4), float("nan")), 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        deletion_curve(linear_scorer, x[0], maps, 0)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="`steps` must be a positive integer"):
            deletion_curve(linear_scorer, x, maps, 0, steps=steps)
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            insertion_curve(linear_scorer, x, maps, 0, fraction=fraction)
    with pytest.raises(ValueError, match="batch_size"):
        deletion_curve(linear_scorer, x, maps, 0, batch_size=0)
    with pytest.raises(ValueError, match="Unknown fill 'gray'"):
        deletion_curve(linear_scorer, x, maps, 0, fill="gray")
    with pytest.raises(ValueError, match=r"broadcast to the inputs' shape \(2, 3, 4, 4\)"):
        deletion_curve(linear_scorer, x, maps, 0, fill=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="blur_sigma"):
        insertion_curve(linear_scorer, x, maps, 0, blur_sigma=-1.0)
    with pytest.raises(ValueError, match="first dimension N=2"):
        deletion_curve(lambda z, s: linear_scorer(z), x, maps, 0,
                       additional_forward_args=(torch.ones(5),))
    with pytest.raises(ValueError, match="scorer returned shape"):
        deletion_curve(lambda z: linear_scorer(z)[:1], x, maps, 0)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        deletion_curve(lambda z: z.tolist(), x, maps, 0)


# ------------------------------------------------------------------------------ auc


def test_auc_helper():
    assert torch.allclose(auc(torch.tensor([[1.0, 0.0], [1.0, 1.0]])), torch.tensor([0.5, 1.0]))
    assert torch.allclose(auc(torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])), torch.tensor(0.5))
    # per-row lengths: row 0 uses points 0..1, row 1 uses 0..3, row 2 only point 0
    curve = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0], [0.7, 0.0, 0.0, 0.0]])
    area = auc(curve, lengths=torch.tensor([1, 3, 0]))
    assert torch.allclose(area, torch.tensor([0.5, 1.5, 0.7]))
    with pytest.raises(ValueError, match="at least 2 points"):
        auc(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="lengths"):
        auc(curve, lengths=torch.tensor([1, 4, 0]))
    with pytest.raises(ValueError, match="lengths"):
        auc(curve, lengths=torch.tensor([1, 3]))


# ---------------------------------------------------------------------- localization


def _mask(*pixels, size=4):
    m = torch.zeros(1, size, size, dtype=torch.bool)
    for y, x in pixels:
        m[0, y, x] = True
    return m


def test_pointing_game_hits_misses_and_disk_tolerance():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 1] = 1.0
    assert pointing_game(maps, _mask((1, 1))).tolist() == [True]
    assert pointing_game(maps, _mask((1, 2))).tolist() == [False]
    # distance 2 along a row
    assert pointing_game(maps, _mask((1, 3)), tolerance=1).tolist() == [False]
    assert pointing_game(maps, _mask((1, 3)), tolerance=2).tolist() == [True]
    # diagonal neighbour at distance sqrt(2): disk of radius 1 misses (a square would hit)
    assert pointing_game(maps, _mask((2, 2)), tolerance=1).tolist() == [False]
    assert pointing_game(maps, _mask((2, 2)), tolerance=1.5).tolist() == [True]
    # (N, 1, H, W) masks and 0/1 integer masks are accepted
    assert pointing_game(maps, _mask((1, 1)).unsqueeze(1)).tolist() == [True]
    assert pointing_game(maps[:, 0], _mask((1, 1)).long()).tolist() == [True]
    # empty mask: miss
    assert pointing_game(maps, _mask()).tolist() == [False]


def test_pointing_game_standard_tolerance_is_15_px_at_224():
    assert STANDARD_TOLERANCE == pytest.approx(15 / 224)
    assert tolerance_pixels("standard", (224, 224)) == pytest.approx(15.0)
    assert tolerance_pixels("standard", (64, 64)) == pytest.approx(64 * 15 / 224)  # 4.29 px
    assert tolerance_pixels("standard", (112, 224)) == pytest.approx(7.5)  # the shorter side
    assert tolerance_pixels(3, (64, 64)) == 3.0
    maps = torch.zeros(1, 1, 224, 224)
    maps[0, 0, 100, 100] = 1.0
    for dx, hit in ((15, True), (16, False)):
        masks = torch.zeros(1, 224, 224, dtype=torch.bool)
        masks[0, 100, 100 + dx:] = True
        assert pointing_game(maps, masks, tolerance="standard").tolist() == [hit], dx
        assert pointing_game(maps, masks).tolist() == [False]  # strict
    # 64 px masks: 4.29 px; a mask 4 px away is hit, 5 px away is not
    maps = torch.zeros(1, 64, 64)
    maps[0, 30, 30] = 1.0
    near, far = torch.zeros(1, 64, 64, dtype=torch.bool), torch.zeros(1, 64, 64, dtype=torch.bool)
    near[0, 34, 30], far[0, 35, 30] = True, True
    assert pointing_game(maps, near, tolerance="standard").tolist() == [True]
    assert pointing_game(maps, far, tolerance="standard").tolist() == [False]
    for bad in ("loose", -1, True, None):
        with pytest.raises(ValueError, match="tolerance"):
            pointing_game(maps, near, tolerance=bad)


def test_pointing_game_uninformative_maps_miss_and_batch():
    full = torch.ones(3, 4, 4, dtype=torch.bool)
    maps = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 0.7), torch.eye(2)])
    assert pointing_game(maps, full).tolist() == [False, False, True]
    # low-res map upsampled: hot top-right patch -> max in the top-right quadrant
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4, 4:] = True
    low = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])
    assert pointing_game(low, masks).tolist() == [True, False]


def test_pointing_game_bad_inputs():
    with pytest.raises(ValueError, match="batch size 2"):
        pointing_game(torch.rand(2, 2, 2), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(torch.rand(1, 2, 2), torch.ones(1, 4, 4, dtype=torch.bool), tolerance=-1)
    with pytest.raises(ValueError, match="0/1"):
        pointing_game(torch.rand(1, 2, 2), torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, 1, H, W\)"):
        pointing_game(torch.rand(1, 2, 2), torch.ones(4, 4, dtype=torch.bool))


def test_energy_pointing_game_exact_values():
    quadrant = torch.zeros(1, 4, 4, dtype=torch.bool)
    quadrant[0, :2, :2] = True
    assert torch.equal(energy_pointing_game(torch.ones(1, 4, 4), quadrant), torch.tensor([0.25]))
    # low-res constant map, upsampled
    low_res = energy_pointing_game(torch.ones(1, 1, 2, 2), quadrant)
    assert torch.allclose(low_res, torch.tensor([0.25]))
    # 3 of 4 units of energy in the mask
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    assert torch.allclose(energy_pointing_game(maps, quadrant), torch.tensor([0.75]))
    inside = torch.zeros(1, 4, 4)
    inside[0, 1, 0] = 2.0
    two_maps = torch.cat([inside, torch.zeros(1, 4, 4)])
    batch = energy_pointing_game(two_maps, quadrant.expand(2, 4, 4))
    assert torch.equal(batch, torch.tensor([1.0, 0.0]))  # all-zero map -> 0
    with pytest.raises(ValueError, match="negative"):
        energy_pointing_game(-torch.ones(1, 4, 4), quadrant)
    with pytest.raises(ValueError, match="batch size 2"):
        energy_pointing_game(torch.ones(2, 4, 4), quadrant)


# ------------------------------------------------------------------------------ text

SOT, EOT = 49406, 49407


def count_scorer(ids: torch.Tensor) -> torch.Tensor:
    """(N, 2): col 0 = 3*#5 + 2*#7 + 1*#9, col 1 = number of SOT/EOT tokens."""
    score = 3.0 * (ids == 5).sum(1) + 2.0 * (ids == 7).sum(1) + 1.0 * (ids == 9).sum(1)
    special = ((ids == SOT) | (ids == EOT)).sum(1).float()
    return torch.stack([score, special], dim=1)


def test_word_curves_exact_values():
    ids = torch.tensor([[SOT, 5, 7, 9, EOT, 0, 0]])
    good = torch.tensor([[0.0, 0.6, 0.3, 0.1, 0.0, 0.0, 0.0]])
    bad = torch.tensor([[0.0, 0.1, 0.3, 0.6, 0.0, 0.0, 0.0]])
    del_good = word_deletion_curve(count_scorer, ids, good, 0)
    assert torch.equal(del_good, torch.tensor([[6.0, 3.0, 1.0, 0.0]]))
    del_bad = word_deletion_curve(count_scorer, ids, bad, 0)
    assert torch.equal(del_bad, torch.tensor([[6.0, 5.0, 3.0, 0.0]]))
    ins_good = word_insertion_curve(count_scorer, ids, good, 0)
    assert torch.equal(ins_good, torch.tensor([[0.0, 3.0, 5.0, 6.0]]))
    # trapezoid over x = 0, 1/3, 2/3, 1: (6/2 + 3 + 1 + 0/2) / 3
    assert torch.allclose(word_deletion_auc(count_scorer, ids, good, 0), torch.tensor([7.0 / 3.0]))
    d_good, d_bad = (word_deletion_auc(count_scorer, ids, m, 0) for m in (good, bad))
    i_good, i_bad = (word_insertion_auc(count_scorer, ids, m, 0) for m in (good, bad))
    assert d_good < d_bad and i_good > i_bad
    # SOT and EOT are never replaced
    special = word_deletion_curve(count_scorer, ids, good, 1)
    assert torch.equal(special, torch.full((1, 4), 2.0))
    special = word_insertion_curve(count_scorer, ids, good, 1)
    assert torch.equal(special, torch.full((1, 4), 2.0))


def test_zero_scored_word_is_still_replaced():
    ids = torch.tensor([[SOT, 5, 7, 9, EOT, 0]])
    maps = torch.tensor([[0.0, 0.0, 0.5, 0.2, 0.0, 0.0]])  # word "5" scored exactly 0
    c = word_deletion_curve(count_scorer, ids, maps, 0)
    assert torch.equal(c, torch.tensor([[6.0, 4.0, 3.0, 0.0]]))


def test_word_mask_and_replace_with():
    ids = torch.tensor([[SOT, 5, 7, 9, EOT, 0]])
    maps = torch.tensor([[0.0, 0.6, 0.3, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[False, False, True, True, False, False]])  # "5" is protected
    c = word_deletion_curve(count_scorer, ids, maps, 0, word_mask=mask)
    assert torch.equal(c, torch.tensor([[6.0, 4.0, 3.0]]))
    # replacing with token 9 (worth 1 point)
    c = word_deletion_curve(count_scorer, ids, maps, 0, replace_with=9)
    assert torch.equal(c, torch.tensor([[6.0, 4.0, 3.0, 3.0]]))


def test_clip_word_mask_open_clip_and_hf_padding():
    ids = torch.tensor([[SOT, 5, 7, EOT, 0, 0], [SOT, 9, EOT, EOT, EOT, EOT]])
    expected = torch.tensor([[False, True, True, False, False, False],
                             [False, True, False, False, False, False]])
    assert torch.equal(clip_word_mask(ids), expected)


def test_word_curves_mixed_lengths_and_batch_independence():
    ids = torch.tensor([[SOT, 5, 7, 9, EOT, 0], [SOT, 7, 5, EOT, 0, 0]])
    maps = torch.tensor([[0.0, 0.6, 0.3, 0.1, 0.0, 0.0], [0.0, 0.9, 0.1, 0.0, 0.0, 0.0]])
    c = word_deletion_curve(count_scorer, ids, maps, 0)
    # steps default to 3 words; the 2-word example keeps its final value
    assert torch.equal(c, torch.tensor([[6.0, 3.0, 1.0, 0.0], [5.0, 3.0, 0.0, 0.0]]))
    ins = word_insertion_curve(count_scorer, ids, maps, [0, 0], batch_size=3)
    assert torch.equal(ins, torch.tensor([[0.0, 3.0, 5.0, 6.0], [0.0, 2.0, 5.0, 5.0]]))
    # per-example AUC does not depend on the rest of the batch
    batch_auc = word_deletion_auc(count_scorer, ids, maps, 0)
    alone = torch.cat([
        word_deletion_auc(count_scorer, ids[i:i + 1], maps[i:i + 1], 0) for i in range(2)
    ])
    assert torch.allclose(batch_auc, alone)
    assert torch.allclose(batch_auc, torch.tensor([7.0 / 3.0, 2.75]))
    # explicit steps: fewer steps than words truncates
    assert word_deletion_curve(count_scorer, ids, maps, 0, steps=1).shape == (2, 2)
    # a sentence without words: flat curve and AUC = clean score
    empty = torch.tensor([[SOT, EOT, 0, 0, 0, 0]])
    flat = word_deletion_curve(count_scorer, empty, torch.zeros(1, 6), 1)
    assert torch.equal(flat, torch.full((1, 2), 2.0))
    flat_auc = word_insertion_auc(count_scorer, empty, torch.zeros(1, 6), 1)
    assert torch.equal(flat_auc, torch.tensor([2.0]))


def test_word_curves_additional_args_and_bad_inputs():
    ids = torch.tensor([[SOT, 5, 7, 9, EOT, 0], [SOT, 7, 5, EOT, 0, 0]])
    maps = torch.rand(2, 6)
    weight = torch.tensor([1.0, 10.0])
    c = word_deletion_curve(lambda t, w: count_scorer(t)[:, 0] * w, ids, maps,
                            additional_forward_args=weight)
    assert torch.equal(c[:, 0], torch.tensor([6.0, 50.0]))
    with pytest.raises(ValueError, match=r"shape of `token_ids` \(2, 6\)"):
        word_deletion_curve(count_scorer, ids, torch.rand(2, 5), 0)
    with pytest.raises(ValueError, match="word_mask"):
        word_deletion_curve(count_scorer, ids, maps, 0,
                            word_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        word_insertion_curve(count_scorer, ids, maps, 0, steps=0)
    with pytest.raises(ValueError, match="integer"):
        word_deletion_curve(count_scorer, ids.float(), maps, 0)
    with pytest.raises(ValueError, match="length 1 but there are N=2"):
        word_deletion_curve(count_scorer, ids, maps, [0])
    with pytest.raises(ValueError, match="replace_with"):
        word_deletion_curve(count_scorer, ids, maps, 0, replace_with=0.5)
    with pytest.raises(TypeError, match="Unexpected keyword"):
        word_deletion_auc(count_scorer, ids, maps, 0, fill="zeros")


# ------------------------------------------------------------------- captum interop


def test_expand_to_input():
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    images = torch.zeros(1, 3, 4, 4)
    near = expand_to_input(maps, images, mode="nearest")
    assert near.shape == images.shape
    assert torch.equal(near[0, 2], maps[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    bil = expand_to_input(maps[:, 0], images)
    assert torch.allclose(bil, F.interpolate(maps, size=(4, 4), mode="bilinear",
                                             align_corners=False).expand(1, 3, 4, 4))
    same = expand_to_input(torch.rand(2, 1, 4, 4), torch.zeros(2, 3, 4, 4))
    assert torch.equal(same[:, 0], same[:, 1])
    with pytest.raises(ValueError, match="batch size 1"):
        expand_to_input(maps, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        expand_to_input(maps, images, mode="cubic")


def test_captum_infidelity_with_expanded_maps():
    from captum.metrics import infidelity

    torch.manual_seed(4)
    low = torch.rand(1, 1, 2, 2)
    grad_map = F.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    low = low.expand(2, 1, 2, 2)  # infidelity repeats the batch: keep one weight map

    def scorer(images):  # linear: its gradient is exactly the upsampled low-res map
        lin = (images * grad_map).sum(dim=(1, 2, 3))
        return torch.stack([lin, images.mean(dim=(1, 2, 3))], dim=1)

    def perturb_fn(inputs):
        noise = 0.1 * torch.randn_like(inputs)
        return noise, inputs - noise

    images = torch.rand(2, 3, 8, 8)
    good = infidelity(scorer, perturb_fn, images, expand_to_input(low, images), target=0,
                      normalize=True)
    bad = infidelity(scorer, perturb_fn, images, expand_to_input(low.flip(-1, -2), images),
                     target=0, normalize=True)
    assert good.shape == (2,) and bool(torch.isfinite(good).all())
    assert torch.allclose(good, torch.zeros(2), atol=1e-6)
    assert bool(torch.isfinite(bad).all()) and bool((bad > 1e-6).all())


def _saliency(scorer):
    def explain(inputs, target=None):
        (x,) = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = scorer(x)[:, target]
            (grad,) = torch.autograd.grad(out.sum(), x)
        return grad.sum(1, keepdim=True)  # a bare (N, 1, H, W) tensor, like LayerGradCam

    return explain


def test_captum_sensitivity_max_with_tuple_output():
    from captum.metrics import sensitivity_max

    torch.manual_seed(5)
    images = torch.rand(2, 3, 6, 6)
    sens = sensitivity_max(tuple_output(_saliency(_tiny_clip_scorer())), images, target=0,
                           n_perturb_samples=3)
    assert sens.shape == (2,) and bool(torch.isfinite(sens).all()) and bool((sens >= 0).all())
    # a linear scorer has a constant gradient: sensitivity is exactly 0
    sens0 = sensitivity_max(tuple_output(_saliency(lambda z: linear_scorer_8(z))), images,
                            target=0, n_perturb_samples=3)
    assert torch.equal(sens0, torch.zeros(2))


def test_tuple_output_wrapper():
    t = torch.ones(2)
    assert tuple_output(lambda: t)()[0] is t
    assert isinstance(tuple_output(lambda: [t, t])(), tuple)
    with pytest.raises(TypeError, match="Tensor or a tuple/list of Tensors"):
        tuple_output(lambda: 3)()
    with pytest.raises(TypeError, match="callable"):
        tuple_output(3)


def test_public_api():
    assert set(M.__all__) == {
        "auc", "clip_word_mask", "deletion_auc", "deletion_curve", "energy_pointing_game",
        "expand_to_input", "insertion_auc", "insertion_curve", "pointing_game", "tolerance_pixels",
        "tuple_output",
        "word_deletion_auc", "word_deletion_curve", "word_insertion_auc", "word_insertion_curve",
    }
    for name in M.__all__:
        doc = getattr(M, name).__doc__
        assert "Args:" in doc and "Returns:" in doc and "Examples::" in doc, name
    assert math.isfinite(float(auc(torch.tensor([0.0, 1.0]))))


def test_docstring_examples_run():
    import doctest

    from captum_gradeclip.metrics import _captum, _localization, _perturbation, _text

    for module in (_captum, _localization, _perturbation, _text):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0, module.__name__
