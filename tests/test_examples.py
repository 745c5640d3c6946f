"""Every example runs offline on the shipped model and writes its picture or page."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script, output", [
    ("explain_image_prompts.py", "image_prompts.png"),
    ("explain_caption_words.py", "caption_words.html"),
    ("compare_with_ig.py", "compare_with_ig.png"),
    ("hf_clip.py", "hf_image_maps.png"),
])
def test_example_runs_offline(script, output, tmp_path):
    run = subprocess.run([sys.executable, script, "--out", str(tmp_path)], cwd=EXAMPLES, capture_output=True,
                         text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
                                                      "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert (tmp_path / output).stat().st_size > 500
    assert "wrote" in run.stdout
