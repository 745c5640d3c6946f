"""Text side: how the layers are combined (``GradECLIP(..., layer_rule=...)``), on the shipped shapes models.

    python benchmarks/text_rules.py --out docs/results/text_rules.json

For each shipped model (open_clip, HF), each rule (``sum_then_relu``: the paper's text rule, ReLU of the sum over
layers; ``relu_then_sum``: the sum over layers of each layer's ReLU), with and without ``single_head`` and for the
default layers (the last 8, capped at the 6 blocks of these models, 4 of the 0.1 models) and the last 3, 2 and 1
blocks: on ``n`` matched caption-image pairs "a <colour> <shape>" of held-out scenes (``--seed``, never used in
training), the share of all-zero word maps, of captions whose colour or shape word gets exactly zero, whose top
word is "a", then the content-word share (all maps, and the non-empty ones), top word is colour/shape and the word
deletion / insertion AUCs of ``benchmarks/quality.py``. Prints a markdown table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import text_setting, word_metrics  # noqa: E402

from captum_gradeclip import GradECLIP  # noqa: E402
from captum_gradeclip.grad_eclip import LAYER_RULES  # noqa: E402

COLUMNS = ("empty maps", "colour word zero", "shape word zero", "top word is 'a'", "content-word share",
           "content-word share (non-empty)", "top word is colour/shape", "word deletion AUC", "word insertion AUC")


def zero_counts(maps: torch.Tensor, word_mask: torch.Tensor) -> Dict[str, float]:
    """Shares of captions "a <colour> <shape>" (positions 1, 2, 3) whose map is zero on every word, on the colour
    word, on the shape word, and whose top word is "a" (a map with a positive word only)."""
    words = maps * word_mask
    empty = words.sum(-1) == 0
    top_a = (words.argmax(-1) == 1) & ~empty
    content = (words[:, 2] + words[:, 3]) / words.sum(-1).clamp_min(1e-12)
    return {
        "empty maps": float(empty.float().mean()),
        "colour word zero": float((words[:, 2] == 0).float().mean()),
        "shape word zero": float((words[:, 3] == 0).float().mean()),
        "top word is 'a'": float(top_a.float().mean()),
        "content-word share (non-empty)": float(content[~empty].mean()) if bool((~empty).any()) else float("nan"),
    }


def run(kinds: Sequence[str], n: int, seed: int, layer_counts: Sequence[Optional[int]]) -> List[Dict]:
    rows = []
    for kind in kinds:
        _, scorer, ids, extra = text_setting(kind, n, seed)
        layout = scorer.tower.layout(ids, *(extra or ()))
        targets = list(range(n))
        for count in layer_counts:
            blocks = None if count is None else scorer.tower.blocks()[-count:]
            for single_head in (False, True):
                for rule in LAYER_RULES:
                    ge = GradECLIP(scorer, blocks, single_head=single_head, layer_rule=rule)
                    t0 = time.perf_counter()
                    maps = ge.attribute(ids, target=targets, additional_forward_args=extra).float()
                    elapsed = time.perf_counter() - t0
                    row = {"model": kind, "layers": len(ge.attention_modules), "default layers": count is None,
                           "single_head": single_head, "layer_rule": rule, "n": n,
                           **zero_counts(maps, layout.report_mask),
                           **word_metrics(scorer, ids, extra, maps, targets), "ms per map": 1000 * elapsed / n}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    return rows


def to_markdown(rows: List[Dict]) -> str:
    head = "| model | layers | single_head | layer_rule | " + " | ".join(COLUMNS) + " |"
    out = [head, "|---" * (4 + len(COLUMNS)) + "|"]
    for r in rows:
        rule = r["layer_rule"] + (" (paper)" if r["layer_rule"] == "sum_then_relu" else "")
        out.append(f"| {r['model']} | {r['layers']} | {'yes' if r['single_head'] else 'no'} | {rule} | "
                   + " | ".join(f"{r[c]:.2f}" for c in COLUMNS) + " |")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="held-out matched caption-image pairs per model")
    p.add_argument("--seed", type=int, default=12345, help="held-out seed (never used in training)")
    p.add_argument("--models", default="open_clip,hf")
    p.add_argument("--layers", default="default,3,2,1",
                   help="comma-separated numbers of last blocks to explain ('default': GradECLIP's default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the rows here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [None if c == "default" else int(c) for c in args.layers.split(",")]
    rows = run(args.models.split(","), args.n, args.seed, counts)
    print(to_markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/text_rules.py " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:]),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
