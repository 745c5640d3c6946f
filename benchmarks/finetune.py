"""Grad-ECLIP-guided fine-tuning on the shapes world: train, then evaluate on held-out scenes.

One run (one process, or torchrun / DDP)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/finetune.py \\
        --loss grad_eclip --steps 300 --out runs/grad_eclip
    python benchmarks/finetune.py --loss global --steps 300 --out runs/global

writes ``OUT/checkpoints/`` and ``OUT/results.json``: ``region_top1``, ``mask_top1``, ``zero_shot_top1`` and
``pointing_game`` (fractions, :func:`captum_gradeclip.finetune.evaluate.evaluate_shapes`), the median seconds per
step, the wall time and the configuration. ``--steps 0`` evaluates the shipped model without training (the
``base`` row).

Cost per step of each loss, interleaved in one process (global, grad_eclip, global, ...: both see the same
machine load), forward + backward + optimizer step on the same batch::

    python benchmarks/finetune.py --cost 12 --batch-size 64 --out runs/cost

Collect three runs (and the cost file, if present) into the documented table and figure::

    python benchmarks/finetune.py --collect runs/base runs/global runs/grad_eclip \\
        --json docs/results/finetune.json --figure docs/images/finetune_maps.png [--also name=runs/other ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from captum_gradeclip.finetune import WordListPhrases
from captum_gradeclip.finetune.data import ShapesCaptions, collate
from captum_gradeclip.finetune.distributed import DistributedContext
from captum_gradeclip.finetune.evaluate import EVAL_SEED, class_prompts, evaluate_shapes
from captum_gradeclip.finetune.train import (LOSSES, FeatureEncoder, FineTuneConfig, load_finetuned, load_trainable,
                                             step_loss, train)

KEYS = ("region_top1", "mask_top1", "zero_shot_top1", "pointing_game")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    config = FineTuneConfig(model=args.model, out=str(out), loss=args.loss, steps=max(args.steps, 1),
                            batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, region_weight=args.region_weight,
                            region_temperature=args.region_temperature, save_every=max(args.steps, 1),
                            warmup=min(args.warmup, max(args.steps, 1)), progress=not args.no_progress)
    if args.steps == 0:  # the shipped model, evaluated the same way
        trainable = load_trainable(config, torch.device("cpu"))
        trainable.model.eval()
        result = {"loss": "none (shipped model)", "steps": 0, "seconds_per_step": None, "world_size": 1}
    else:
        res = train(config)
        if rank != 0:
            return 0
        trainable = res.trainable
        times = sorted(res.step_seconds)
        result = {"loss": args.loss, "steps": args.steps, "seconds_per_step": times[len(times) // 2],
                  "world_size": int(os.environ.get("WORLD_SIZE", "1")), "checkpoint": str(res.checkpoint),
                  "first_loss": res.losses[0], "last_loss": res.losses[-1]}
    train_seconds = time.perf_counter() - start
    result["model"] = args.model
    scores = evaluate_shapes(trainable.model, trainable.tokenize, trainable.normalize, n_multi=args.n_eval,
                             n_single=args.n_eval)
    result.update(scores)
    result.update(train_seconds=round(train_seconds, 1), wall_seconds=round(time.perf_counter() - start, 1),
                  eval_scenes=args.n_eval, eval_seed=EVAL_SEED, torch_threads=torch.get_num_threads(),
                  config={k: v for k, v in vars(config).items() if k not in ("out", "progress")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in KEYS + ("seconds_per_step", "wall_seconds")}))
    return 0


def cost(args: argparse.Namespace) -> int:
    """Median seconds of a full step (forward, backward, AdamW step) of each loss, interleaved."""
    config = FineTuneConfig(model=args.model, batch_size=args.batch_size)
    trainable = load_trainable(config, torch.device("cpu"))
    data = ShapesCaptions(10 * args.batch_size, seed=args.seed)
    images01, captions = collate([data[i] for i in range(args.batch_size)])
    images = trainable.normalize(images01)
    ctx, extractor = DistributedContext(), WordListPhrases()
    encoders = {loss: FeatureEncoder(trainable.model, dense=loss == "grad_eclip") for loss in LOSSES}
    optimizer = torch.optim.AdamW(trainable.model.parameters(), lr=1e-6)
    seconds: Dict[str, List[float]] = {loss: [] for loss in LOSSES}
    for rep in range(args.cost + 1):
        for loss in LOSSES:
            start = time.perf_counter()
            parts = step_loss(encoders[loss], encoders[loss], trainable, images, captions, extractor, "a {}",
                              config, ctx, loss == "grad_eclip")
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            if rep:  # the first round warms up
                seconds[loss].append(time.perf_counter() - start)
    med = {loss: sorted(v)[len(v) // 2] for loss, v in seconds.items()}
    result = {"batch_size": args.batch_size, "rounds": args.cost, "torch_threads": torch.get_num_threads(),
              "seconds_per_step": med, "grad_eclip_over_global": med["grad_eclip"] / med["global"],
              "all_seconds": seconds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("seconds_per_step", "grad_eclip_over_global")}))
    return 0


def figure(dirs: Dict[str, Path], path: Path, n: int = 4) -> None:
    """Held-out scenes, one object's class prompt per row; per model, its Grad-ECLIP map and the similarity of
    its dense patch features with the prompt (what region classification pools)."""
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    from captum_gradeclip import GradECLIP, ImageTextSimilarity
    from captum_gradeclip.data.shapes import generate_scenes
    from captum_gradeclip.finetune import DenseImageEncoder
    from captum_gradeclip.viz import overlay

    scenes = generate_scenes(n, num_objects=3, seed=EVAL_SEED + 7)
    prompts = class_prompts()
    models = {}
    for name, d in dirs.items():
        base_model = json.loads((d / "results.json").read_text()).get("model", "shapes") if name == "base" else None
        models[name] = load_finetuned(d / "checkpoints") if name != "base" else \
            load_trainable(FineTuneConfig(model=base_model), torch.device("cpu"))
    cols = 1 + 2 * len(models)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 2.0 * n))
    for j, (name, t) in enumerate(models.items()):
        t.model.eval()
        x = t.normalize(scenes.images)
        text = t.model.encode_text(t.tokenize(prompts)).detach()
        maps = GradECLIP(ImageTextSimilarity(t.model, text)).attribute_all(x)
        with torch.no_grad():
            _, dense = DenseImageEncoder(t.model)(x)
            sims = F.normalize(dense, dim=-1) @ F.normalize(text, dim=-1).t()  # (N, h*w, classes)
        side = maps.shape[-1]
        for i in range(n):
            cls = int(scenes.class_ids[i, 0])
            if j == 0:
                axes[i, 0].imshow(scenes.images[i].permute(1, 2, 0).numpy())
                axes[i, 0].set_title(prompts[cls], fontsize=8)
            axes[i, 1 + 2 * j].imshow(overlay(scenes.images[i], maps[i, cls]))
            axes[i, 2 + 2 * j].imshow(overlay(scenes.images[i], sims[i, :, cls].reshape(side, side).clamp(min=0)))
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"{name}\nGrad-ECLIP", fontsize=8)
                axes[i, 2 + 2 * j].set_title(f"{name}\ndense features", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collect(args: argparse.Namespace) -> int:
    names = ("base", "global", "grad_eclip")
    dirs = dict(zip(names, (Path(d) for d in args.collect)))
    results = {name: json.loads((d / "results.json").read_text()) for name, d in dirs.items()}
    table: Dict[str, object] = {name: {k: round(results[name][k], 4) for k in KEYS} for name in names}
    table["cost"] = {name: {k: results[name].get(k) for k in ("seconds_per_step", "train_seconds", "wall_seconds",
                                                                "world_size", "torch_threads")}
                     for name in names}
    g, e = results["global"]["seconds_per_step"], results["grad_eclip"]["seconds_per_step"]
    table["grad_eclip_step_over_global_step"] = round(e / g, 2) if g and e else None
    if args.cost_file:
        c = json.loads(Path(args.cost_file).read_text())
        table["interleaved_cost"] = {"seconds_per_step": {k: round(v, 3) for k, v in c["seconds_per_step"].items()},
                                     "grad_eclip_over_global": round(c["grad_eclip_over_global"], 2),
                                     "batch_size": c["batch_size"], "rounds": c["rounds"]}
    table["protocol"] = {"steps": results["grad_eclip"]["steps"], "config": results["grad_eclip"]["config"],
                         "eval_scenes": results["grad_eclip"]["eval_scenes"],
                         "eval_seed": results["grad_eclip"]["eval_seed"],
                         "note": "times measured on a shared 2-core CPU machine while other jobs ran: noisy"}
    for spec in args.also or []:  # more runs, e.g. the same loss on several processes
        name, d = spec.split("=", 1)
        r = json.loads((Path(d) / "results.json").read_text())
        table[name] = {**{k: round(r[k], 4) for k in KEYS},
                       **{k: r.get(k) for k in ("loss", "steps", "world_size", "seconds_per_step", "wall_seconds")}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(table, indent=1))
    print(json.dumps(table, indent=1))
    if args.figure:
        figure(dirs, Path(args.figure))
    return 0


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loss", choices=LOSSES, default="grad_eclip")
    p.add_argument("--model", default="shapes",
                   help="'shapes' (the 0.1 model open_clip_single, the documented runs) or 'shapes:open_clip'")
    p.add_argument("--steps", type=int, default=300, help="0: evaluate the shipped model")
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--region-weight", type=float, default=1.0)
    p.add_argument("--region-temperature", type=float, default=0.07)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=500, help="held-out scenes of each kind")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--collect", nargs=3, metavar=("BASE", "GLOBAL", "GRAD_ECLIP"), help="run directories")
    p.add_argument("--json", default="docs/results/finetune.json")
    p.add_argument("--figure", default=None)
    p.add_argument("--cost", type=int, default=0, metavar="ROUNDS", help="measure the cost per step of each loss")
    p.add_argument("--cost-file", default=None, help="--collect: the cost.json of a --cost run")
    p.add_argument("--also", nargs="*", metavar="NAME=DIR", help="--collect: more runs to add to the table")
    args = p.parse_args(argv)
    if args.cost:
        return cost(args)
    return collect(args) if args.collect else run(args)


if __name__ == "__main__":
    sys.exit(main())
