"""Run the fenced ``python`` and ``bash`` blocks of README.md and docs/*.md as written (used by test_doc_snippets).

Blocks of one page share one namespace, in page order, like a reader pasting them into one session. Pages that
continue a guide (``api.md``, ``captum.md``) start from a short set-up on the shipped shapes model (PREAMBLES),
because their blocks use the ``model``, ``images`` and ``texts`` that the guides define. Bash blocks run line by
line in a shell whose ``gradeclip`` is this checkout's command.

Blocks that load ``ViT-B-16`` with ``pretrained="openai"`` or ``openai/clip-vit-base-patch16`` run offline
against a Hugging Face cache holding *stand-ins*: files in the exact layout and format of the real downloads
(open_clip's ``open_clip_model.safetensors``; a ``save_pretrained`` model, image processor and CLIP tokenizer built
from open_clip's BPE vocabulary), with random weights of the real architectures. The real loaders
(``create_model_and_transforms``, ``from_pretrained``) read them with ``HF_HUB_OFFLINE=1``, so the blocks run
unchanged; only the numbers differ from the real weights.

As a script: ``python tests/doc_snippets.py JOBS.json RESULTS.json [--standins]`` (run in a fresh process by the
test, with ``HF_HOME`` pointing at a temporary cache and the current directory holding ``photo.jpg``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

#: Blocks that need the weights of a named pretrained model (run against the stand-in cache, in the slow test).
NEEDS_WEIGHTS = re.compile(r'pretrained="openai"|from_pretrained\("openai/|--pretrained openai|--hf openai/')

#: Bash lines that are not run, with the reason.
SKIPPED_LINES = {
    "pip install": "installs packages from the network; CI runs exactly this install in .ci/run",
    "python -m pytest": "the test suite itself (this test is part of it); CI runs it in .ci/run",
    "mkdocs serve": "starts a web server that never exits; the site build is tested by test_docs.py",
    "gradeclip serve": "starts a web server that never exits; tests/test_serve_app.py runs the command",
    "python -m captum_gradeclip.adapters.registry_docs --write":
        "rewrites the repository's docs; tests/test_registry.py checks them against the registry",
}

#: Python blocks that are not run (a pattern in the block), with the reason.
SKIPPED_BLOCKS = {
    'Client("http://127.0.0.1': "talks to a running `gradeclip serve`; tests/test_serve_app.py makes the same "
                                "calls through gradio_client against a live server",
    "launch(service": "starts a web server that never exits; tests/test_serve_app.py runs examples/app.py",
    'pretrained="laion2b_s13b_b82k"': "needs ConvNeXt's LAION weights (no stand-in); tests/test_feature_map_towers.py "
                                      "makes the same calls on random-weight ConvNeXt towers",
}

#: Set-up for pages whose blocks continue a guide: the names those blocks use, on the shipped shapes model.
SHIPPED_SETUP = """
from captum_gradeclip.data.shapes import generate_scenes
from captum_gradeclip.zoo import load_shapes_clip
clip = load_shapes_clip("open_clip")
model = clip.model
scene = generate_scenes(2, image_size=clip.image_size, seed=0)
images01 = scene.images                       # (2, 3, 64, 64) in [0, 1]
images = clip.normalize(images01)             # what the model takes
texts = tokens = clip.tokenize(["a red circle", "a blue square"])
"""
PREAMBLES = {"docs/api.md": SHIPPED_SETUP, "docs/captum.md": SHIPPED_SETUP}


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def needs_weights(self) -> bool:
        return bool(NEEDS_WEIGHTS.search(self.code))


def extract_blocks(path: Path) -> List[Block]:
    """The fenced ``python`` and ``bash`` blocks of a markdown file (untagged blocks are synopses or output)."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i + 1, m.group(2), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(m.group(1)):])
            i += 1
        i += 1
        if lang in ("python", "bash"):
            blocks.append(Block(str(path.relative_to(ROOT)), start, lang, "\n".join(body) + "\n"))
    return blocks


def all_blocks() -> List[Block]:
    return [b for page in PAGES for b in extract_blocks(page)]


def skip_reason(line: str) -> Optional[str]:
    for prefix, reason in SKIPPED_LINES.items():
        if line.startswith(prefix):
            return reason
    return None


# ------------------------------------------------------------------------------------------ stand-in downloads
def _snapshot(cache: Path, repo: str) -> Path:
    """A snapshot folder of ``repo`` in the hub cache layout, with ``refs/main`` pointing at it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_standins(cache: Path) -> None:
    """Random-weight stand-ins for open_clip ViT-B-16 ``openai`` and ``openai/clip-vit-base-patch16``."""
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(_snapshot(cache, "timm/vit_base_patch16_clip_224.openai") / "open_clip_model.safetensors"))
    del model, state

    import transformers
    snap = _snapshot(cache, "openai/clip-vit-base-patch16")
    bpe = SimpleTokenizer()  # the CLIP BPE vocabulary shipped with open_clip, with HuggingFace's special tokens
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(k, k): v for k, v in bpe.encoder.items()}
    (snap / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (snap / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                     encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(snap / "vocab.json"), str(snap / "merges.txt"))
    transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(),
                               tokenizer=tokenizer).save_pretrained(snap)
    config = transformers.CLIPConfig(text_config={}, vision_config={"patch_size": 16}, projection_dim=512)
    transformers.CLIPModel(config).save_pretrained(snap)


# ------------------------------------------------------------------------------------------------- running
def run_bash(block: Block, bin_dir: str, done_before: Dict[str, str]) -> Dict[str, str]:
    """Run the lines of a bash block; a command that an earlier block already ran (same folder) is not repeated."""
    import os
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    ran = []
    for line in block.code.splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("#"):
            continue
        if skip_reason(command):
            continue
        if command not in done_before:
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=900)
            done_before[command] = "" if done.returncode == 0 else f"(exit {done.returncode})\n{done.stderr[-3000:]}"
        if done_before[command]:
            return {"status": "failed", "detail": f"$ {command}\n{done_before[command]}"}
        ran.append(command)
    return {"status": "passed", "detail": "\n".join(ran)}


def run_jobs(blocks: List[Block], bin_dir: str) -> Dict[str, Dict[str, str]]:
    """Run ``blocks`` page by page (a fresh namespace per page), in order; a failed block is reported and the rest
    of its page still runs."""
    import matplotlib
    matplotlib.use("Agg")
    results: Dict[str, Dict[str, str]] = {}
    namespaces: Dict[str, dict] = {}
    commands: Dict[str, str] = {}
    for block in blocks:
        if block.lang == "bash":
            results[block.id] = run_bash(block, bin_dir, commands)
            continue
        reason = next((why for pattern, why in SKIPPED_BLOCKS.items() if pattern in block.code), None)
        if reason:
            results[block.id] = {"status": "skipped", "detail": reason}
            continue
        if block.page not in namespaces:
            namespaces[block.page] = {"__name__": "__main__"}
            exec(compile(PREAMBLES.get(block.page, ""), f"preamble of {block.page}", "exec"), namespaces[block.page])
        try:
            exec(compile(block.code, block.id, "exec"), namespaces[block.page])
            results[block.id] = {"status": "passed", "detail": ""}
        except Exception:
            results[block.id] = {"status": "failed", "detail": traceback.format_exc()[-4000:]}
    return results


def main(argv: List[str]) -> None:
    import os
    jobs, out = Path(argv[0]), Path(argv[1])
    if "--standins" in argv:
        write_standins(Path(os.environ["HF_HOME"]) / "hub")
    wanted = set(json.loads(jobs.read_text()))
    bin_dir = Path.cwd() / "_bin"  # `gradeclip` = this checkout's command
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "gradeclip"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m captum_gradeclip.cli "$@"\n')
    shim.chmod(0o755)
    results = run_jobs([b for b in all_blocks() if b.id in wanted], str(bin_dir))
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
