"""The gradeclip command line, offline on the shipped shapes model."""

import numpy as np
import pytest
from PIL import Image

from captum_gradeclip.cli import main


@pytest.fixture()
def scene_png(tmp_path):
    from captum_gradeclip.data.shapes import generate_scenes
    scene = generate_scenes(1, image_size=64, num_objects=2, seed=4)
    arr = (scene.images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    path = tmp_path / "scene.png"
    Image.fromarray(arr).resize((64, 96)).save(path)  # non-square on disk
    return path


def test_demo_writes_pictures_words_and_maps(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best match" in out and "word shares" in out and "most important word" not in out
    png, html, npz = tmp_path / "demo_maps.png", tmp_path / "demo_words.html", tmp_path / "demo_maps.npz"
    assert png.stat().st_size > 1000 and "<html" in html.read_text().lower()
    data = np.load(npz)
    t = len(data["prompts"])
    assert data["image_maps"].shape[0] == t and data["word_maps"].shape[0] == t
    assert (data["image_maps"] >= 0).all() and np.isfinite(data["similarity"]).all()


def test_explain_native_size_and_both_sides(scene_png, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(scene_png), "--demo", "--text", "a red circle", "--text", "a blue square",
               "--out", str(out)])
    assert rc == 0
    data = np.load(out / "scene_maps.npz")
    # native aspect ratio: 64x96 on disk -> shorter side 64, longer 96 -> (8, 12) patches of 8 px
    assert data["image_maps"].shape == (2, 12, 8)
    assert (out / "scene_maps.png").exists() and (out / "scene_words.html").exists()
    assert "scene" in capsys.readouterr().out


def test_explain_folder_model_size_image_only(scene_png, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", str(scene_png.parent), "--demo", "--text", "a red circle", "--size", "model",
                 "--explain", "image", "--out", str(out)]) == 0
    data = np.load(out / "scene_maps.npz")
    assert data["image_maps"].shape == (1, 8, 8) and "word_maps" not in data


@pytest.mark.parametrize("argv, message", [
    (["explain", "missing.png", "--demo", "--text", "a"], "image not found"),
    (["explain", "{png}", "--demo", "--text", "  "], "empty prompt"),
    (["explain", "{png}", "--demo"], "at least one prompt"),
    (["explain", "{png}", "--model", "NoSuchModel", "--text", "a"], "unknown open_clip model"),
    (["explain", "{png}", "--demo", "--text", "a", "--device", "cuda"], "CUDA"),
    (["explain", "{bad}", "--demo", "--text", "a"], "cannot read image"),
    (["explain", "{png}", "--demo", "--text", "a purple elephant"], "vocabulary"),
    (["explain", "{png}", "--demo", "--text", "a", "--layers", "99"], "has 6 block(s); give --layers 1 to 6"),
    (["explain", "{png}", "--demo", "--text", "a", "--explain", "text", "--layers", "7"], "text tower"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, scene_png, tmp_path, capsys):
    import torch
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    argv = [a.format(png=scene_png, bad=bad) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradeclip: error:") and message.lower() in err[0].lower()


def test_explain_with_a_local_hf_model(hf_model_dir, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype("uint8")).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(image), "--hf", str(hf_model_dir), "--text", "a red circle", "--text", "a cat",
                 "--out", str(out)]) == 0
    assert "best match" in capsys.readouterr().out
    data = np.load(out / "photo_maps.npz")
    # native size: shorter side 32, 56 * 32 / 40 = 44.8 rounded to 48 px -> (4, 6) patches of 8 px
    assert data["image_maps"].shape == (2, 4, 6)
    assert np.isfinite(data["image_maps"]).all() and (data["image_maps"] >= 0).all()
    # word maps over the padded ids of both prompts: start, 10 characters of "a red circle", end
    assert data["word_maps"].shape == (2, 12) and (data["word_maps"] >= 0).all()
    assert (data["word_maps"][1, 5:] == 0).all()  # "a cat": start, 4 characters, end, then padding
    assert (out / "photo_words.html").read_text().count("<span") >= 10


def test_missing_hf_model_is_one_line(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype="uint8")).save(image)
    assert main(["explain", str(image), "--hf", str(tmp_path / "nothing"), "--text", "a",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model folder" in err[0] and "save_pretrained" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(image), "--hf", str(tmp_path / "empty"), "--text", "a",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load HuggingFace model" in err[0]


@pytest.fixture()
def cancelling_scene_png(tmp_path):
    """A held-out scene (a blue circle and other objects) on which the prompt "a green triangle" gets an all-zero
    word map under the paper's text rule (the shipped model's layers cancel on every word)."""
    from captum_gradeclip.data.shapes import generate_scenes
    scene = generate_scenes(1, image_size=64, num_objects=(2, 3), seed=6)
    path = tmp_path / "cancel.png"
    Image.fromarray((scene.images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(path)
    return path


def test_empty_word_map_is_reported_not_ranked(cancelling_scene_png, tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["explain", str(cancelling_scene_png), "--demo", "--text", "a green triangle", "--text", "a red square",
                 "--explain", "text", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("  'a green triangle'"))
    assert "no word has a positive contribution under the paper's rule (sum over layers, then ReLU)" in line
    assert "--layer-rule relu_then_sum" in line and "word shares" not in line
    assert "'a red square': word shares" in printed
    assert np.load(out / "cancel_maps.npz")["word_maps"][0].sum() == 0
    page = (out / "cancel_words.html").read_text()
    assert page.count('class="gradeclip-empty"') == 1 and "--layer-rule relu_then_sum" in page

    other = tmp_path / "other"
    assert main(["explain", str(cancelling_scene_png), "--demo", "--text", "a green triangle", "--explain", "text",
                 "--layer-rule", "relu_then_sum", "--out", str(other)]) == 0
    printed = capsys.readouterr().out
    assert "'a green triangle': word shares" in printed and "no word has" not in printed
    assert np.load(other / "cancel_maps.npz")["word_maps"][0].sum() > 0
    assert "gradeclip-empty" not in (other / "cancel_words.html").read_text()


def test_summary_lists_word_shares_and_explains_zero_words():
    import torch

    from captum_gradeclip.cli import _summary
    from captum_gradeclip.explanations import Explanation
    exp = Explanation(image01=torch.zeros(3, 8, 8), prompts=["a cyan triangle", "a red square", "a blue circle"],
                      similarity=np.array([0.2, 0.5, 0.1]), image_maps=None, word_maps=None,
                      words=[["a", "cyan", "triangle"], ["a", "red", "square"], ["a", "blue", "circle"]],
                      word_scores=[np.array([0.52, 0.0, 0.48]), np.array([0.1, 0.3, 0.6]), np.zeros(3)],
                      text_layer_rule="sum_then_relu")
    lines = _summary("scene", exp).splitlines()
    assert lines[0] == "scene: best match 'a red square' (0.500)"
    assert lines[1] == "  'a cyan triangle': word shares a 52%, triangle 48%, cyan 0%"
    assert lines[2] == "  'a red square': word shares square 60%, red 30%, a 10%"
    assert lines[3].startswith("  'a blue circle': no word has a positive contribution under the paper's rule")
    assert lines[4].startswith("  (0% = no positive contribution under the paper's rule")
    exp.text_layer_rule = "relu_then_sum"
    lines = _summary("scene", exp).splitlines()
    assert lines[3] == "  'a blue circle': no word has a positive contribution in any explained layer"
    assert len(lines) == 4  # no note on the paper's rule
    exp.words[1] = [f"w{i}" for i in range(9)]
    exp.word_scores[1] = np.arange(9, dtype=float)
    assert _summary("scene", exp).splitlines()[2].endswith("w3 8%, ... (3 more)")


def test_bad_layer_rule_is_refused(scene_png, capsys):
    with pytest.raises(SystemExit) as err:
        main(["explain", str(scene_png), "--demo", "--text", "a red circle", "--layer-rule", "max"])
    assert err.value.code == 2 and "relu_then_sum" in capsys.readouterr().err


def test_version(capsys):
    from captum_gradeclip import __version__
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"gradeclip {__version__}"


@pytest.mark.parametrize("argv, message", [
    (["explain", "x.png", "--demo", "--hf", "org/name", "--text", "a"], "not allowed with argument"),
    (["explain", "x.png", "--size", "huge"], "invalid choice"),
    (["explain"], "required"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0] and "--help" in err[0]


def test_prompts_are_checked_before_the_progress_bar(scene_png, tmp_path, capsys):
    import shutil
    shutil.copy(scene_png, scene_png.parent / "second.png")  # two images: the bar would be shown
    assert main(["explain", str(scene_png.parent), "--demo", "--text", "a dog", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown word" in err[0] and not (tmp_path / "o").exists()


@pytest.mark.subprocess
@pytest.mark.parametrize("argv, what", [
    ([], "open_clip 'ViT-B-16' with pretrained='openai'"),  # the default model
    (["--model", "ViT-B-16-SigLIP", "--pretrained", "none"], "the tokenizer of open_clip 'ViT-B-16-SigLIP'"),
    (["--hf", "openai/clip-vit-base-patch16"], "HuggingFace model 'openai/clip-vit-base-patch16'"),
])
def test_failed_download_offline_is_one_line_with_the_offline_ways(argv, what, scene_png, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and an empty cache: one line, exit 2, no traceback, no logging."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(root),
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "captum_gradeclip.cli", "explain", str(scene_png), "--text", "a dog",
                          "--out", str(tmp_path / "o"), *argv], capture_output=True, text=True, env=env, timeout=300)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert err[0].startswith(f"gradeclip: error: could not load {what}: HF_HUB_OFFLINE is set")
    assert "--demo" in err[0] and "--hf FOLDER" in err[0] and "docs/offline.md" in err[0]


def test_native_size_on_a_resnet_tower_keeps_the_aspect_ratio():
    """``--size native`` on a ModifiedResNet: sides rounded to the tower's stride (32), no centre crop."""
    import open_clip
    import torch
    from PIL import Image as PILImage

    from captum_gradeclip.explanations import explain_images
    from captum_gradeclip.loading import LoadedModel, native_stride, prepare_image
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=8, head_width=32),
                           text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=1)).eval()
    ids = torch.tensor([[98, 5, 7, 99] + [0] * 8])
    lm = LoadedModel(model=model, name="tiny RN", image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                     tokenize=lambda texts: ids.repeat(len(texts), 1), token_strings=lambda t: [str(int(i)) for i in t])
    assert native_stride(lm) == 32
    photo = PILImage.fromarray((np.random.RandomState(0).rand(50, 90, 3) * 255).astype("uint8"))
    img = prepare_image(photo, lm.image_size, native_stride(lm), "native")
    assert img.shape == (3, 64, 128)  # shorter side 64; 90 * 64 / 50 = 115.2 -> 128, a multiple of 32
    exp = explain_images(lm, img[None], ["x"], explain="image", layers=None, single_head=False, device="cpu")[0]
    assert exp.image_maps.shape == (1, 2, 4) and np.isfinite(exp.image_maps).all()


def test_open_clip_model_from_a_local_dir_folder(scene_png, tmp_path, capsys):
    """``--model local-dir:FOLDER`` (open_clip_config.json + weights, the hub's layout) loads offline, weights
    included; a folder without them is one line."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from captum_gradeclip.loading import load_open_clip
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=2, head_width=24),
               text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    torch.manual_seed(3)
    saved = open_clip.CLIP(**cfg).eval()
    folder = tmp_path / "tiny_clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    lm = load_open_clip(f"local-dir:{folder}", "openai", "cpu")  # `pretrained` does not apply to a folder
    assert lm.image_size == 32 and lm.name == f"local-dir:{folder}"
    loaded = lm.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in saved.state_dict().items())
    assert lm.tokenize(["a dog"]).shape == (1, 16)  # open_clip's bundled BPE tokenizer: no download
    out = tmp_path / "out"
    model = ["--model", f"local-dir:{folder}"]
    assert main(["explain", str(scene_png), *model, "--text", "a dog", "--out", str(out)]) == 0
    assert np.load(out / "scene_maps.npz")["image_maps"].shape == (1, 6, 4)  # 64x96 on disk -> 32x48 px
    (folder / "open_clip_model.safetensors").unlink()
    assert main(["explain", str(scene_png), *model, "--text", "a", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no weights" in err[0]


def test_a_bug_inside_the_library_is_not_disguised_as_a_user_error(scene_png, tmp_path, monkeypatch, capsys):
    """Only input the user can fix is one line and exit 2; a TypeError from the library keeps its traceback."""
    import captum_gradeclip.cli as cli

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'Tensor' and 'NoneType'")

    monkeypatch.setattr(cli, "explain_images", broken)
    argv = ["explain", str(scene_png), "--demo", "--text", "a red circle", "--out", str(tmp_path / "o")]
    with pytest.raises(TypeError, match="unsupported operand"):
        main(argv)
    assert "gradeclip: error:" not in capsys.readouterr().err


def _user_errors():
    from captum_gradeclip.errors import InputError, UnsupportedModelError
    from captum_gradeclip.image_io import ImageLoadError
    return [UnsupportedModelError("MyCLIP is not supported: give an open_clip or HuggingFace CLIP model"),
            InputError("checkpoint not found: weights.pt"), ImageLoadError("photo.png", "not an image file")]


@pytest.mark.parametrize("error", _user_errors(), ids=lambda e: type(e).__name__)
def test_user_errors_from_the_library_are_one_line(error, scene_png, tmp_path, monkeypatch, capsys):
    import captum_gradeclip.cli as cli

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "load_model", refuse)
    argv = ["explain", str(scene_png), "--text", "a red circle", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gradeclip: error: {error}"]
