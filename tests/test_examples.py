"""Every example runs offline on the shipped model and writes its picture or page; bad input is one line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(script, args, tmp_path):
    """The example in a fresh process, offline, with an empty Hugging Face cache and this checkout's package."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", str(tmp_path))}
    return subprocess.run([sys.executable, script, *args], cwd=EXAMPLES, capture_output=True, text=True,
                          timeout=600, env=env)


def run_example_here(script, args, monkeypatch):
    """The example in this process (faster; for cases that need no isolated cache): its exit status."""
    import runpy
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(0).rand(50, 80, 3) * 255).astype("uint8")).save(path)
    return path


@pytest.mark.subprocess
@pytest.mark.parametrize("script, output", [
    ("explain_image_prompts.py", "image_prompts.png"),
    ("explain_caption_words.py", "caption_words.html"),
    ("compare_with_ig.py", "compare_with_ig.png"),
    ("hf_clip.py", "hf_image_maps.png"),
])
def test_example_runs_offline(script, output, tmp_path):
    run = run_example(script, ["--out", str(tmp_path)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / output).stat().st_size > 500
    assert "wrote" in run.stdout and "generated shapes scene" in run.stdout


@pytest.mark.parametrize("script, output", [
    ("explain_image_prompts.py", "image_prompts.png"),
    ("hf_clip.py", "hf_image_maps.png"),
])
def test_example_explains_the_given_image_with_the_shipped_model(script, output, photo, tmp_path, monkeypatch,
                                                                capsys):
    args = ["--image", str(photo), "--text", "a red circle", "--out", str(tmp_path)]
    assert run_example_here(script, args, monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"explaining {photo}" in out and "a red circle" in out
    assert (tmp_path / output).stat().st_size > 500


@pytest.mark.parametrize("script, args, message", [
    ("explain_caption_words.py", ["--text", "a dog"], "unknown word(s) ['dog']"),
    ("explain_image_prompts.py", ["--image", "missing.jpg"], "missing.jpg: image not found"),
    ("compare_with_ig.py", ["--pretrained"], "--pretrained needs --image PATH"),
])
def test_example_bad_input_is_one_line(script, args, message, tmp_path, monkeypatch, capsys):
    assert run_example_here(script, args + ["--out", str(tmp_path)], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.subprocess
@pytest.mark.parametrize("script, args, message", [
    ("explain_image_prompts.py", ["--pretrained", "--image", "{photo}"],
     "could not load open_clip 'ViT-B-16' with pretrained='openai': HF_HUB_OFFLINE is set"),
    ("compare_with_ig.py", ["--model", "RN50", "--pretrained", "yfcc15m", "--image", "{photo}"],
     "could not load open_clip 'RN50' with pretrained='yfcc15m'"),
    ("hf_clip.py", ["--pretrained", "--image", "{photo}"],
     "could not load HuggingFace model 'openai/clip-vit-base-patch16'"),
])
def test_example_failed_download_is_one_line(script, args, message, photo, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and an empty cache: one line naming the examples' offline ways."""
    run = run_example(script, [a.format(photo=photo) for a in args] + ["--out", str(tmp_path)], tmp_path)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert err[0].startswith("error: ") and message in err[0]
    assert "drop --pretrained" in err[0] and "docs/offline.md" in err[0]
