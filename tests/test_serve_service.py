"""The served app's request handler without a web server: results against direct computations, refusals, the time
limit and the model lock, the ``gradeclip serve`` options."""

import io
import threading

import numpy as np
import pytest
import torch
from fixtures import bomb_png
from PIL import Image
from serve_server import model_free, model_held

from captum_gradeclip import GradECLIP, ImageTextSimilarity, viz
from captum_gradeclip.app import ExplainService, RequestError, RequestTimeout, ServeLimits
from captum_gradeclip.cli import build_parser
from captum_gradeclip.explanations import explain_image
from captum_gradeclip.loading import load_demo, normalize_pixels, prepare_image

PROMPTS = "a red circle\na blue square\na green triangle"


@pytest.fixture(scope="module")
def lm():
    return load_demo("cpu")


@pytest.fixture()
def service(lm, tmp_path):
    svc = ExplainService(lm, ServeLimits(max_upload_bytes=100_000, max_prompts=4, max_prompt_chars=40),
                         workdir=tmp_path / "files")
    yield svc
    svc.close()


@pytest.fixture()
def scene(service):
    return service.draw_scene(seed=5)


def _no_hooks_left(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_explain_equals_the_cli_computation(service, scene, lm):
    result = service.explain(scene, PROMPTS + "\n\n", layers=2, size="model")
    img01 = prepare_image(Image.open(scene).convert("RGB"), lm.image_size, 8, "model")
    direct = explain_image(lm, img01, PROMPTS.split("\n"), explain="both", layers=2, single_head=False, device="cpu")
    exp = result.explanation
    assert exp.prompts == PROMPTS.split("\n")  # blank lines dropped
    np.testing.assert_array_equal(exp.image_maps, direct.image_maps)
    np.testing.assert_array_equal(exp.word_maps, direct.word_maps)
    for overlay, m in zip(result.overlays, direct.image_maps):
        np.testing.assert_array_equal(overlay, viz.overlay(img01, m))
    assert [c.split(" (cosine")[0] for c in result.captions] == exp.prompts
    assert f"(cosine {direct.similarity[0]:.3f})" in result.captions[0]
    assert result.words_html.count('class="gradeclip-token"') == sum(len(w) for w in direct.words) == 9
    data = np.load(service.save_maps(result))
    np.testing.assert_array_equal(data["image_maps"], direct.image_maps)
    assert data["prompts"].tolist() == exp.prompts
    assert _no_hooks_left(lm.model)


@pytest.mark.parametrize("rule", ["sum_then_relu", "relu_then_sum"])
def test_layer_rule_is_passed_to_both_sides(service, scene, lm, rule):
    result = service.explain(scene, PROMPTS, layers=3, layer_rule=rule)
    img01 = prepare_image(Image.open(scene).convert("RGB"), lm.image_size, 8, "native")
    direct = explain_image(lm, img01, PROMPTS.split("\n"), explain="both", layers=3, single_head=False,
                           device="cpu", layer_rule=rule)
    np.testing.assert_array_equal(result.explanation.image_maps, direct.image_maps)
    np.testing.assert_array_equal(result.explanation.word_maps, direct.word_maps)
    assert result.explanation.text_layer_rule == rule
    with pytest.raises(RequestError, match="layer rule must be one of"):
        service.explain(scene, PROMPTS, layer_rule="max")


def test_native_size_keeps_the_aspect_ratio(service, tmp_path, lm):
    path = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (120, 30, 30)).save(path)
    result = service.explain(path, "a red circle")
    assert result.explanation.image_maps.shape == (1, 8, 12)  # 64 x 96 px in patches of 8
    assert result.overlays[0].shape == (64, 96, 3)


def _png(size, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("image, prompts, message", [
    (None, "a red circle", "no image"),
    ("scene", "", "no prompt"),
    ("scene", "  \n \n", "no prompt"),
    ("scene", "a\nb\nc\nd\ne", "5 prompts: at most 4"),
    ("scene", "a " * 30, "at most 40 are accepted"),
    ("scene", "a purple dog", r"unknown word\(s\) \['purple', 'dog'\]"),
    ("missing", "a red circle", "missing.png: image not found"),
    ("text", "a red circle", "not an image in a supported format"),
    ("truncated", "a red circle", "truncated or corrupt"),
    ("bomb", "a red circle", "decompression bomb"),
    ("large", "a red circle", "more than the limit of 100,000 bytes"),
    ("elongated", "a red circle", "aspect ratio of 5.0:1; at most 4:1"),
])
def test_bad_input_is_a_clear_refusal(service, scene, tmp_path, lm, image, prompts, message):
    files = {"scene": scene, "missing": tmp_path / "missing.png", "text": tmp_path / "notes.png",
             "truncated": tmp_path / "cut.png", "bomb": tmp_path / "bomb.png", "large": tmp_path / "large.png",
             "elongated": tmp_path / "long.png"}
    files["text"].write_text("not an image")
    files["truncated"].write_bytes(_png((40, 40))[:2000])
    files["bomb"].write_bytes(bomb_png())
    files["large"].write_bytes(_png((300, 300)))
    Image.new("RGB", (200, 40)).save(files["elongated"])
    with pytest.raises(RequestError, match=message):
        service.explain(files.get(image, image), prompts)
    assert _no_hooks_left(lm.model) and model_free(service)
    assert len(service.explain(scene, "a red circle").overlays) == 1  # still serving


@pytest.mark.parametrize("layers, size, message", [
    (-1, "native", "from 0"), (2.5, "native", "whole number"), ("x", "native", "whole number"),
    (99, "native", "to 6"), (0, "square", "size mode must be one of"),
])
def test_bad_options_are_refused(service, scene, layers, size, message):
    with pytest.raises(RequestError, match=message):
        service.explain(scene, "a red circle", layers=layers, size=size)


def test_upload_names_not_server_folders_in_messages(service, tmp_path):
    path = tmp_path / "deep" / "folder" / "x.png"
    path.parent.mkdir(parents=True)
    path.write_text("nope")
    with pytest.raises(RequestError) as info:
        service.explain(path, "a red circle")
    assert "x.png" in str(info.value) and str(path.parent) not in str(info.value)


def test_time_limit_stops_the_model_and_leaves_nothing_behind(lm, scene, tmp_path):
    slow = ExplainService(lm, ServeLimits(time_limit_s=1e-9), workdir=tmp_path / "slow")
    with pytest.raises(RequestTimeout, match="time limit of 1e-09 s"):
        slow.explain(scene, PROMPTS)
    assert _no_hooks_left(lm.model) and model_free(slow)


def test_waiting_for_the_model_counts_against_the_time_limit(lm, scene, tmp_path):
    svc = ExplainService(lm, ServeLimits(time_limit_s=0.3), workdir=tmp_path / "busy")
    with model_held(svc), pytest.raises(RequestTimeout, match="busy"):  # another request holds the model
        svc.explain(scene, "a red circle")
    assert len(svc.explain(scene, "a red circle").overlays) == 1


def test_threads_get_their_own_results(service, scene):
    prompt_sets = ["a red circle", "a blue square\na red circle", "a green triangle", "a cyan cross\na blue square"]
    sequential = [service.explain(scene, p) for p in prompt_sets]
    results = [None] * 4

    def work(i):
        results[i] = service.explain(scene, prompt_sets[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seq, par in zip(sequential, results):
        assert par.captions == seq.captions
        for a, b in zip(par.overlays, seq.overlays):
            np.testing.assert_array_equal(a, b)


def test_compare_with_ig_reports_progress_and_matches_captum(service, scene, lm):
    from captum.attr import IntegratedGradients
    seen = []
    pairs = service.compare_with_ig(scene, "a red circle", steps=20, progress=lambda f, d: seen.append(f))
    assert [c.split(" (")[0] for _, c in pairs] == ["Grad-ECLIP", "Integrated Gradients, 20 steps"]
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) == 4  # 3 batches of <= 8
    img01 = prepare_image(Image.open(scene).convert("RGB"), lm.image_size, 8, "native")
    pixels = normalize_pixels(img01[None], lm)
    scorer = ImageTextSimilarity(lm.model, lm.tokenize(["a red circle"]))
    ge = GradECLIP(scorer).attribute(pixels, target=0)[0, 0]
    ig = IntegratedGradients(scorer).attribute(pixels, target=0, n_steps=20).abs().sum(1)[0]
    np.testing.assert_array_equal(pairs[0][0], viz.overlay(img01, ge))
    assert np.abs(pairs[1][0].astype(int) - viz.overlay(img01, ig).astype(int)).max() <= 1  # batching rounding
    with pytest.raises(RequestError, match="one prompt"):
        service.compare_with_ig(scene, "a red circle\na blue square")
    with pytest.raises(RequestError, match="steps must be from 2 to 128"):
        service.compare_with_ig(scene, "a red circle", steps=1000)


def test_drawn_scenes_are_new_pngs(service):
    a, b = service.draw_scene(seed=1), service.draw_scene(seed=2)
    assert a != b and Image.open(a).size == (64, 64)
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_prompts must be a positive integer"):
        ServeLimits(max_prompts=0)
    with pytest.raises(ValueError, match="time_limit_s must be a positive number"):
        ServeLimits(time_limit_s=-1)
    with pytest.raises(ValueError, match="max_aspect_ratio must be at least 1"):
        ServeLimits(max_aspect_ratio=0.5)


def test_serve_binds_to_this_machine_and_shares_nothing_by_default():
    args = build_parser().parse_args(["serve", "--demo"])
    assert args.host == "127.0.0.1" and args.share is False
    defaults = ServeLimits()
    assert (args.max_prompts, args.queue_size, args.time_limit) == (defaults.max_prompts, defaults.queue_size,
                                                                     defaults.time_limit_s)


def test_serve_bad_limit_is_one_line(capsys):
    from captum_gradeclip.cli import main
    assert main(["serve", "--demo", "--queue-size", "0"]) == 2
    assert "limit queue_size must be a positive integer" in capsys.readouterr().err


def test_model_left_untouched(lm, scene, tmp_path):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    svc = ExplainService(lm, ServeLimits(), workdir=tmp_path / "x")
    svc.explain(scene, PROMPTS)
    svc.compare_with_ig(scene, "a red circle", steps=4)
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not lm.model.training


def test_a_huggingface_model_is_served_too(hf_model_dir, tmp_path):
    from captum_gradeclip.loading import load_hf
    hf = load_hf(str(hf_model_dir), "cpu")
    svc = ExplainService(hf, ServeLimits(), workdir=tmp_path / "hf")
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype("uint8")).save(image)
    result = svc.explain(image, "a red circle\na cat")
    direct = explain_image(hf, prepare_image(Image.open(image).convert("RGB"), hf.image_size, 8, "native"),
                           ["a red circle", "a cat"], explain="both", layers=None, single_head=False, device="cpu")
    np.testing.assert_array_equal(result.explanation.image_maps, direct.image_maps)
    assert result.explanation.words == direct.words and len(result.overlays) == 2
    assert _no_hooks_left(hf.model)


def test_png_files_for_the_page(service):
    small = np.zeros((64, 40, 3), dtype=np.uint8)
    small[0, 0] = 255
    up = np.asarray(Image.open(service.save_png(small, "preview", max_side=512, min_side=256)))
    assert up.shape == (256, 160, 3) and up[:4, :4].min() == 255 and up[4, 4].max() == 0  # x4, pixels repeated
    down = Image.open(service.save_png(Image.new("RGB", (2000, 1000)), "preview", max_side=512, min_side=256))
    assert down.size == (512, 256)
    same = service.save_png(small, "overlay")
    np.testing.assert_array_equal(np.asarray(Image.open(same)), small)
