"""Tests for captum_gradeclip.viz (headless; run with MPLBACKEND=Agg)."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from captum_gradeclip import viz


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 24, 40, generator=g)  # non-square (H=24, W=40)


@pytest.fixture
def maps() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 1, 4, 4, generator=g)


# --------------------------------------------------------------------------- #
# normalize_map / normalize_words
# --------------------------------------------------------------------------- #
def test_normalize_map_minmax_exact() -> None:
    m = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    out = viz.normalize_map(m)
    assert torch.equal(out, torch.tensor([[0.0, 0.5], [0.25, 1.0]]))


def test_normalize_map_per_example_and_constant() -> None:
    m = torch.tensor(
        [[[[0.0, 2.0], [4.0, 8.0]]], [[[3.0, 3.0], [3.0, 3.0]]], [[[0.0, 0.0], [0.0, 0.0]]]]
    )
    out = viz.normalize_map(m)
    assert out.shape == (3, 1, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # constant -> zeros, no NaN
    assert torch.equal(out[2], torch.zeros(1, 2, 2))
    assert not torch.isnan(out).any()


def test_normalize_map_max_mode_numpy_and_dtype() -> None:
    m = np.array([[[1.0, 2.0], [0.0, 4.0]]])  # (1, h, w) float64 numpy
    out = viz.normalize_map(m, mode="max")
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.tensor([[[0.25, 0.5], [0.0, 1.0]]], dtype=torch.float64))
    ints = viz.normalize_map(np.array([[2, 4], [6, 10]]))
    assert ints.dtype == torch.float32
    assert torch.equal(ints, torch.tensor([[0.0, 0.25], [0.5, 1.0]]))


@pytest.mark.parametrize("shape", [(5,), (1, 1, 1, 2, 2)])
def test_normalize_map_bad_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="maps must be"):
        viz.normalize_map(torch.ones(shape))


def test_normalize_map_bad_mode_and_nan() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        viz.normalize_map(torch.ones(2, 2), mode="zscore")
    with pytest.raises(ValueError, match="NaN"):
        viz.normalize_map(torch.tensor([[1.0, float("nan")]]))


def test_normalize_words_exact() -> None:
    assert torch.equal(
        viz.normalize_words([1.0, 3.0, 0.0]), torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64)
    )
    batch = torch.tensor([[2.0, 2.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = viz.normalize_words(batch)
    assert torch.equal(out[0], torch.tensor([0.25, 0.25, 0.5, 0.0]))
    assert torch.equal(out[1], torch.zeros(4))  # all-zero -> zeros, no NaN
    with pytest.raises(ValueError, match=r"\(L,\) or \(N, L\)"):
        viz.normalize_words(torch.ones(1, 2, 3))


# --------------------------------------------------------------------------- #
# upsample_map
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(7, 7), (1, 7, 7), (1, 1, 7, 7)])
def test_upsample_map_shapes_non_square(shape: tuple[int, ...]) -> None:
    out = viz.upsample_map(torch.rand(shape), (30, 52))
    assert out.shape == (30, 52)
    assert viz.upsample_map(torch.rand(shape), 16).shape == (16, 16)


def test_upsample_map_values() -> None:
    const = viz.upsample_map(torch.full((3, 5), 2.5), (9, 11))
    assert torch.allclose(const, torch.full((9, 11), 2.5))
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    near = viz.upsample_map(m, (4, 6), mode="nearest")
    expected = m.repeat_interleave(2, dim=0).repeat_interleave(3, dim=1)
    assert torch.equal(near, expected)
    bil = viz.upsample_map(m, (4, 4))
    assert float(bil.min()) >= 1.0 and float(bil.max()) <= 4.0


@pytest.mark.parametrize("shape", [(3, 7, 7), (2, 1, 7, 7), (7,), (1, 1, 1, 7, 7)])
def test_upsample_map_bad_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="single map|2-D"):
        viz.upsample_map(torch.rand(shape), 8)


def test_upsample_map_bad_size_and_mode() -> None:
    with pytest.raises(ValueError, match="positive"):
        viz.upsample_map(torch.rand(4, 4), (0, 8))
    with pytest.raises(ValueError, match=r"\(H, W\) pair"):
        viz.upsample_map(torch.rand(4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match="mode must be one of"):
        viz.upsample_map(torch.rand(4, 4), 8, mode="area")


# --------------------------------------------------------------------------- #
# overlay
# --------------------------------------------------------------------------- #
def _blend(img_hwc: np.ndarray, rgb: np.ndarray, alpha: float) -> np.ndarray:
    out = (1.0 - alpha) * img_hwc + alpha * rgb
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def test_overlay_all_zero_map_is_cmap_at_zero(image: torch.Tensor) -> None:
    out = viz.overlay(image, torch.zeros(1, 1, 4, 4), cmap="jet", alpha=0.4, normalize=True)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    c0 = np.asarray(matplotlib.colormaps["jet"](0.0)[:3], dtype=np.float64)
    img = image.permute(1, 2, 0).double().numpy()
    assert np.array_equal(out, _blend(img, c0, 0.4))


def test_overlay_values_and_aspect(image: torch.Tensor) -> None:
    img = image.permute(1, 2, 0).double().numpy()
    # alpha = 0 gives back the image; alpha = 1 gives the pure colormap
    assert np.array_equal(viz.overlay(image, torch.rand(4, 4), alpha=0.0), _blend(img, img, 0.0))
    ones = viz.overlay(image, torch.ones(4, 4), cmap="viridis", alpha=1.0, normalize=False)
    c1 = np.asarray(matplotlib.colormaps["viridis"](1.0)[:3]) * 255
    assert np.array_equal(ones, np.broadcast_to(np.rint(c1).astype(np.uint8), (24, 40, 3)))
    # left half hot, right half cold: colours follow the image's own aspect ratio
    m = torch.tensor([[1.0, 0.0]])
    out = viz.overlay(image, m, alpha=1.0, cmap="gray")
    assert out.shape == (24, 40, 3)
    assert out[:, 0].min() == 255 and out[:, -1].max() == 0


def test_overlay_accepts_numpy_and_pil(image: torch.Tensor) -> None:
    u8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    m = torch.rand(1, 4, 4)
    from_np = viz.overlay(u8, m)
    from_pil = viz.overlay(Image.fromarray(u8), m)
    from_tensor = viz.overlay(torch.from_numpy(u8).permute(2, 0, 1).contiguous(), m)
    from_float = viz.overlay(u8 / 255.0, m)
    assert np.array_equal(from_np, from_pil)
    assert np.array_equal(from_np, from_tensor)
    assert np.array_equal(from_np, from_float)
    grey = viz.overlay(Image.fromarray(u8[..., 0]), m, alpha=0.0)
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_overlay_bad_inputs(image: torch.Tensor) -> None:
    m = torch.rand(4, 4)
    with pytest.raises(ValueError, match="3 channels"):
        viz.overlay(torch.rand(4, 24, 40), m)
    with pytest.raises(ValueError, match="3 channels"):
        viz.overlay(np.zeros((24, 40, 4), dtype=np.uint8), m)
    with pytest.raises(ValueError, match="alpha channel"):
        viz.overlay(Image.new("RGBA", (40, 24)), m)
    with pytest.raises(ValueError, match="channels-first"):
        viz.overlay(image.permute(1, 2, 0), m)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        viz.overlay(image * 255.0, m)
    with pytest.raises(ValueError, match="single map"):
        viz.overlay(image, torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="alpha must be"):
        viz.overlay(image, m, alpha=1.5)
    with pytest.raises(ValueError, match="unknown matplotlib colormap"):
        viz.overlay(image, m, cmap="not-a-cmap")
    with pytest.raises(TypeError, match="image must be"):
        viz.overlay([[0.0]], m)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# plot_image_maps
# --------------------------------------------------------------------------- #
def test_plot_image_maps_prompts_with_scores(image: torch.Tensor, maps: torch.Tensor) -> None:
    fig = viz.plot_image_maps(image, maps, ["a dog", "a cat", "a car"], scores=[0.31, 0.2, 0.049])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["image", "a dog (0.31)", "a cat (0.20)", "a car (0.05)"]
    assert np.array_equal(fig.axes[1].images[0].get_array(), viz.overlay(image, maps[0]))


def test_plot_image_maps_methods_dict_and_grid(image: torch.Tensor) -> None:
    methods = {"Grad-ECLIP": torch.rand(4, 4), "GradCAM": np.random.rand(1, 4, 4)}
    fig = viz.plot_image_maps(image, methods)
    assert [ax.get_title() for ax in fig.axes] == ["image", "Grad-ECLIP", "GradCAM"]
    fig2 = viz.plot_image_maps(image, torch.rand(4, 4, 4), ncols=2)  # 5 panels in 3x2
    assert len(fig2.axes) == 5
    assert fig2.axes[-1].get_title() == "map 3"
    fig3 = viz.plot_image_maps(image, [torch.rand(4, 4)], titles=["only"])
    assert len(fig3.axes) == 2


def test_plot_image_maps_bad_inputs(image: torch.Tensor, maps: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="one entry per map"):
        viz.plot_image_maps(image, maps, ["a", "b"])
    with pytest.raises(ValueError, match="one value per map"):
        viz.plot_image_maps(image, maps, scores=[0.1])
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\)"):
        viz.plot_image_maps(image, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="ncols"):
        viz.plot_image_maps(image, maps, ncols=0)
    with pytest.raises(ValueError, match="empty"):
        viz.plot_image_maps(image, [])


# --------------------------------------------------------------------------- #
# token_html / tokens_html_page / plot_tokens
# --------------------------------------------------------------------------- #
_ALPHA_RE = re.compile(r"rgba\(255, 140, 0, ([0-9.]+)\)")


def test_token_html_escaping_and_monotone_alpha() -> None:
    tokens = ["<script>", "a&b", "\"q\"", "dog"]
    scores = torch.tensor([0.1, 0.4, 0.0, 0.5])
    out = viz.token_html(tokens, scores, title="<b>caption</b>")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "a&amp;b" in out and "&quot;q&quot;" in out
    assert "&lt;b&gt;caption&lt;/b&gt;" in out
    alphas = [float(a) for a in _ALPHA_RE.findall(out)]
    assert len(alphas) == 4
    assert alphas == [0.2, 0.8, 0.0, 1.0]  # sum-normalised, top word opaque
    order = np.argsort(scores.numpy(), kind="stable")
    assert all(alphas[i] <= alphas[j] for i, j in zip(order[:-1], order[1:]))
    assert 'title="score: 0.4 (40.0% of total)"' in out


def test_token_html_unnormalized_and_zero() -> None:
    out = viz.token_html(["a", "b"], np.array([0.25, 2.0]), normalize=False, color=(0, 0, 255))
    assert re.findall(r"rgba\(0, 0, 255, ([0-9.]+)\)", out) == ["0.250", "1.000"]
    zero = viz.token_html(["a", "b"], [0.0, 0.0])
    assert [float(a) for a in _ALPHA_RE.findall(zero)] == [0.0, 0.0]


def test_empty_word_maps_are_reported_not_shaded() -> None:
    assert viz.empty_words_message("relu_then_sum") == "no word has a positive contribution in any explained layer"
    paper = viz.empty_words_message("sum_then_relu", switch="--layer-rule relu_then_sum")
    assert paper.startswith("no word has a positive contribution under the paper's rule (sum over layers, then ReLU)")
    assert "cancel" in paper and paper.endswith("--layer-rule relu_then_sum counts each layer's positive part")
    assert 'layer_rule="relu_then_sum"' in viz.empty_words_message()
    empty = viz.token_html(["a", "blue", "circle"], [0.0, 0.0, 0.0])
    assert empty.count('class="gradeclip-empty"') == 1
    assert "No word has a positive contribution" in empty and "layer_rule=&quot;relu_then_sum&quot;" in empty
    assert [float(a) for a in _ALPHA_RE.findall(empty)] == [0.0, 0.0, 0.0]
    assert "gradeclip-empty" not in viz.token_html(["a", "dog"], [0.0, 0.3])
    custom = viz.token_html(["a"], [-0.5], empty_message="nothing <here>")  # negative: nothing positive either
    assert "Nothing &lt;here&gt;." in custom
    page = viz.tokens_html_page([("one", ["a"], [0.0]), ("two", ["b"], [1.0])], empty_message="none")
    assert page.count('class="gradeclip-empty"') == 1 and ">None.</div>" in page
    fig = viz.plot_tokens(["a", "blue", "circle"], [0.0, 0.0, 0.0], title="a blue circle")
    ax = fig.axes[0]
    assert ax.get_title().startswith("a blue circle\nNo word has a positive contribution")
    assert [t.get_text() for t in ax.texts] == ["a", "blue", "circle"]
    assert viz.plot_tokens(["a", "dog"], [0.1, 0.9], title="t").axes[0].get_title() == "t"


def test_token_html_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        viz.token_html(["a", "b", "c"], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        viz.token_html(["a", "b"], torch.ones(2, 2))
    with pytest.raises(ValueError, match="color"):
        viz.token_html(["a"], [1.0], color=(300, 0, 0))
    with pytest.raises(TypeError, match="tokens"):
        viz.token_html("ab", [1.0, 2.0])  # type: ignore[arg-type]


def test_tokens_html_page() -> None:
    page = viz.tokens_html_page(
        [("a <dog>", ["a", "dog"], [0.2, 0.8]), ("cat", ["cat"], torch.tensor([[1.0]]))],
        page_title="Words & scores",
    )
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    assert "<title>Words &amp; scores</title>" in page
    assert "a &lt;dog&gt;" in page
    assert page.count('class="gradeclip-token"') == 3
    with pytest.raises(ValueError, match=r"rows\[1\].*same length"):
        viz.tokens_html_page([("ok", ["a"], [1.0]), ("bad", ["a", "b"], [1.0])])


def test_plot_tokens_figure(tmp_path) -> None:
    tokens = ["a", "photo", "of", "a", "dog"] * 4
    scores = torch.linspace(0, 1, len(tokens))
    fig = viz.plot_tokens(tokens, scores, title="caption", max_chars_per_line=20)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "caption"
    assert [t.get_text() for t in ax.texts] == tokens
    face_alpha = [t.get_bbox_patch().get_facecolor()[3] for t in ax.texts]
    assert face_alpha[0] == 0.0 and face_alpha[-1] == pytest.approx(1.0)
    assert np.all(np.diff(face_alpha) >= 0)
    path = viz.save_figure(fig, tmp_path / "sub" / "words.png", dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_tokens_on_given_axes() -> None:
    fig = Figure()
    axes = fig.subplots(1, 2)
    out = viz.plot_tokens(["a", "b"], [1.0, 0.0], ax=axes[1])
    assert out is fig and len(axes[1].texts) == 2 and len(axes[0].texts) == 0
    with pytest.raises(ValueError, match="same length"):
        viz.plot_tokens(["a"], [1.0, 0.0])


# --------------------------------------------------------------------------- #
# Captum converters
# --------------------------------------------------------------------------- #
def test_to_captum_image_runs_in_captum(image: torch.Tensor) -> None:
    from captum.attr import visualization as cviz

    attr, img = viz.to_captum_image(torch.rand(1, 1, 4, 4) + 0.1, image)
    assert attr.shape == (24, 40, 1) and img.shape == (24, 40, 3)
    assert attr.dtype == np.float32 and img.dtype == np.float32
    assert np.allclose(img, image.permute(1, 2, 0).numpy())
    fig, ax = cviz.visualize_image_attr(
        attr, img, method="blended_heat_map", sign="positive", use_pyplot=False
    )
    assert isinstance(fig, Figure) and isinstance(ax, Axes)


def test_to_captum_image_all_zero_raises(image: torch.Tensor) -> None:
    from captum.attr import visualization as cviz

    # The reason for raising: Captum itself asserts on an all-zero map.
    with pytest.raises(AssertionError):
        cviz.visualize_image_attr(
            np.zeros((24, 40, 1)), image.permute(1, 2, 0).numpy(),
            method="blended_heat_map", sign="positive", use_pyplot=False,
        )
    with pytest.raises(ValueError, match="Cannot normalize"):
        viz.to_captum_image(torch.zeros(4, 4), image)
    with pytest.raises(ValueError, match="no positive values"):
        viz.to_captum_image(-torch.rand(4, 4), image)
    attr, _ = viz.to_captum_image(-torch.rand(4, 4), image, sign="negative")
    assert attr.max() < 0
    with pytest.raises(ValueError, match="sign must be"):
        viz.to_captum_image(torch.rand(4, 4), image, sign="both")
    with pytest.raises(ValueError, match="3 channels"):
        viz.to_captum_image(torch.rand(4, 4), torch.rand(4, 8, 8))


def test_to_captum_text_record() -> None:
    from captum.attr import visualization as cviz

    rec = viz.to_captum_text_record(["a", "dog"], [0.5, -2.0], similarity=0.31, label="a dog")
    assert isinstance(rec, cviz.VisualizationDataRecord)
    assert torch.equal(rec.word_attributions, torch.tensor([0.25, -1.0]))
    assert rec.pred_prob == pytest.approx(0.31) and rec.attr_score == pytest.approx(-1.5)
    assert rec.raw_input_ids == ["a", "dog"] and rec.true_class == "a dog"
    html_cell = cviz.format_word_importances(rec.raw_input_ids, rec.word_attributions)
    assert "dog" in html_cell and "hsl(0, 75%, 60%)" in html_cell
    zero = viz.to_captum_text_record(["a"], torch.zeros(1, 1), similarity=0.0)
    assert torch.equal(zero.word_attributions, torch.zeros(1))
    with pytest.raises(ValueError, match="same length"):
        viz.to_captum_text_record(["a", "b"], [1.0], similarity=0.1)
    with pytest.raises(ValueError, match="similarity"):
        viz.to_captum_text_record(["a"], [1.0], similarity=float("nan"))


def test_save_figure_type_check(tmp_path) -> None:
    with pytest.raises(TypeError, match="Figure"):
        viz.save_figure("not a figure", tmp_path / "x.png")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ normalised images
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _clip_normalise(img01):
    return (img01 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def test_denormalize_inverts_the_model_normalisation():
    img01 = torch.rand(3, 6, 9, generator=torch.Generator().manual_seed(0))
    back = viz.denormalize(_clip_normalise(img01), CLIP_MEAN, CLIP_STD)
    assert back.shape == (3, 6, 9) and torch.allclose(back, img01, atol=1e-6)
    hwc = viz.denormalize(_clip_normalise(img01).permute(1, 2, 0).numpy(), CLIP_MEAN, CLIP_STD)
    assert torch.allclose(hwc, img01.permute(1, 2, 0), atol=1e-6)
    assert viz.denormalize(torch.zeros(1, 3, 2, 2), 0.5, 0.5).unique().tolist() == [0.5]  # one number per image


def test_overlay_and_figures_take_a_normalised_image_with_its_mean_and_std():
    img01 = torch.rand(3, 24, 40, generator=torch.Generator().manual_seed(1))
    m = torch.rand(3, 5)
    pixels = _clip_normalise(img01)
    assert np.array_equal(viz.overlay(pixels, m, mean=CLIP_MEAN, std=CLIP_STD), viz.overlay(img01, m))
    assert np.array_equal(viz.overlay(pixels[None], m, mean=CLIP_MEAN, std=CLIP_STD), viz.overlay(img01, m))
    fig = viz.plot_image_maps(pixels, [m, m], titles=["a", "b"], mean=CLIP_MEAN, std=CLIP_STD)
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.allclose(np.asarray(shown), img01.permute(1, 2, 0).numpy(), atol=1e-6)
    _, img = viz.to_captum_image(m, pixels, mean=CLIP_MEAN, std=CLIP_STD)
    assert np.allclose(img, img01.permute(1, 2, 0).numpy(), atol=1e-6)


def test_normalised_image_errors_say_what_to_pass():
    img01 = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="mean= and std="):
        viz.overlay(_clip_normalise(img01), torch.rand(2, 2))  # the quickstart's mistake: a hint, not a crash
    with pytest.raises(ValueError, match="both mean and std"):
        viz.overlay(_clip_normalise(img01), torch.rand(2, 2), mean=CLIP_MEAN)
    with pytest.raises(ValueError, match="not the mean and std"):
        viz.overlay(_clip_normalise(img01) * 10, torch.rand(2, 2), mean=CLIP_MEAN, std=CLIP_STD)
    with pytest.raises(ValueError, match="positive"):
        viz.denormalize(img01, CLIP_MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 finite numbers"):
        viz.denormalize(img01, (0.5, 0.5), CLIP_STD)
    with pytest.raises(TypeError, match="float tensor"):
        viz.denormalize((img01 * 255).to(torch.uint8), CLIP_MEAN, CLIP_STD)
    with pytest.raises(TypeError, match="drop mean and std"):
        viz.overlay(Image.new("RGB", (8, 8)), torch.rand(2, 2), mean=CLIP_MEAN, std=CLIP_STD)
