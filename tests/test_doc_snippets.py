"""Every fenced python and bash block of README.md and docs/*.md runs offline, as written (see doc_snippets.py).

The blocks are executed by tests/doc_snippets.py in a fresh process (offline, empty Hugging Face cache, a
``photo.jpg`` in the working folder), once per module for all blocks. Blocks on the shipped models run in the
default suite; blocks that load ``ViT-B-16`` / ``openai/clip-vit-base-patch16`` run against random-weight
stand-ins of those downloads and are marked slow (a ViT-B/16 on CPU, Integrated Gradients with 50 steps).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from doc_snippets import ROOT, SKIPPED_LINES, all_blocks

pytestmark = pytest.mark.subprocess  # the blocks run in a fresh Python process

BLOCKS = all_blocks()


def _slow(block) -> bool:
    """Needs pretrained weights, or may continue from a block of its page that does: python blocks share one
    namespace, and a command may use the files that an earlier block wrote."""
    return any(b.needs_weights for b in BLOCKS if b.page == block.page and b.line <= block.line
               and (block.lang == "bash" or b.lang == "python"))


FAST = [b for b in BLOCKS if not _slow(b)]
SLOW = [b for b in BLOCKS if _slow(b)]


def _run_blocks(blocks, folder, standins: bool):
    """Results {block id: {"status", "detail"}} of running ``blocks`` in a fresh offline process in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    from captum_gradeclip.data.shapes import generate_scenes
    scene = generate_scenes(1, image_size=96, num_objects=3, seed=5).images[0]
    photo = Image.fromarray((scene.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((128, 96))
    photo.save(folder / "photo.jpg")
    (folder / "photos").mkdir(exist_ok=True)
    photo.save(folder / "photos" / "photo.jpg")
    jobs, results = folder / "jobs.json", folder / "results.json"
    jobs.write_text(json.dumps([b.id for b in blocks]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(folder / "hf"), PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "doc_snippets.py"), str(jobs), str(results)]
                         + ["--standins"] * standins, cwd=folder, env=env, capture_output=True, text=True,
                         timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory):
    return _run_blocks(FAST, tmp_path_factory.mktemp("doc_blocks"), standins=False)


@pytest.fixture(scope="module")
def slow_results(tmp_path_factory):
    needed = {b.id for b in SLOW}
    for b in SLOW:  # the earlier python blocks of the same page define what a slow block continues from
        needed |= {e.id for e in BLOCKS if e.page == b.page and e.lang == "python" and e.line < b.line}
    return _run_blocks([b for b in BLOCKS if b.id in needed], tmp_path_factory.mktemp("doc_blocks_weights"),
                       standins=True)


def test_blocks_are_found_on_every_page_that_has_them():
    pages = {b.page for b in BLOCKS}
    assert {"README.md", "docs/quickstart.md", "docs/api.md", "docs/captum.md", "docs/guide_open_clip.md",
            "docs/guide_hf.md"} <= pages
    assert len(BLOCKS) >= 20 and all(reason for reason in SKIPPED_LINES.values())
    assert any(b.needs_weights for b in BLOCKS) and FAST  # both tiers have work


@pytest.mark.parametrize("block", FAST, ids=[b.id for b in FAST])
def test_doc_block_runs_offline(block, fast_results):
    result = fast_results[block.id]
    if result["status"] == "skipped":
        pytest.skip(result["detail"])
    assert result["status"] == "passed", f"{block.id} ({block.lang}):\n{block.code}\n{result['detail']}"


@pytest.mark.slow
@pytest.mark.parametrize("block", SLOW, ids=[b.id for b in SLOW])
def test_doc_block_with_pretrained_weights_runs_offline(block, slow_results):
    result = slow_results[block.id]
    if result["status"] == "skipped":
        pytest.skip(result["detail"])
    assert result["status"] == "passed", f"{block.id} ({block.lang}):\n{block.code}\n{result['detail']}"
