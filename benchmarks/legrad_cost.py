#!/usr/bin/env python
"""Cost of LeGrad against Grad-ECLIP (and GAME) per image map, on a real-size open_clip ViT, in one run.

Random weights (``pretrained=None``): the cost does not depend on the weights. N images, one target each (a
different prompt per image), the methods' ``attribute`` on the whole batch; times are the best of ``--repeats``
calls after a warm-up, interleaved (A B C ... A B C) with ``speed.Bench`` so that a load change on a shared
machine hits every method; the ratio column divides by a plain no-grad forward of the same batch.

    PYTHONPATH=. python benchmarks/legrad_cost.py --model ViT-B-16 --batch 4 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Dict, List, Optional

import torch

from speed import Bench

from captum_gradeclip import GradECLIP, GradientWeightedAttention, ImageTextSimilarity, LeGrad


def methods(scorer: ImageTextSimilarity, images: torch.Tensor, targets: List[int]) -> Dict[str, Callable[[], Any]]:
    blocks = scorer.tower.token_blocks()
    depth = len(blocks)
    out: Dict[str, Callable[[], Any]] = {"forward (no grad)": lambda: _forward(scorer, images)}
    for name, layers in (("last layer", blocks[-1:]), ("last 3 layers", blocks[-3:]), (f"all {depth} layers", blocks)):
        ge, lg = GradECLIP(scorer, layers), LeGrad(scorer, layers)
        out[f"Grad-ECLIP ({name})"] = lambda ge=ge: ge.attribute(images, target=targets)
        out[f"LeGrad ({name})"] = lambda lg=lg: lg.attribute(images, target=targets)
    game = GradientWeightedAttention(scorer)
    out[f"GAME (all {depth} layers)"] = lambda: game.attribute(images, target=targets)
    return out


def _forward(scorer: ImageTextSimilarity, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return scorer(images)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import open_clip
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(args.model)([f"a photo of thing {i}" for i in range(args.batch)])
    scorer = ImageTextSimilarity(model, tokens)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    targets = list(range(args.batch))
    bench = Bench(argparse.Namespace(device="cpu", dtype="fp32", repeats=args.repeats, warmup=1))
    measured = bench.measure(methods(scorer, images, targets))
    floor = measured["forward (no grad)"]["best_s"]
    rows = [{"method": name, "ms per map": 1000 * m["best_s"] / args.batch, "x forward": m["best_s"] / floor,
             "times_s": m["times_s"]} for name, m in measured.items()]
    return {"model": args.model, "image_size": args.image_size, "batch": args.batch, "threads": args.threads,
            "repeats": args.repeats, "torch": torch.__version__, "rows": rows}


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"`{result['model']}` at {result['image_size']} px, {result['batch']} images x 1 target, "
             f"{result['threads']} CPU thread(s), best of {result['repeats']}", "",
             "| method | ms per map | x no-grad forward |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['ms per map']:.1f} | {r['x forward']:.2f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip config name (random weights)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4, help="images (one target each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
