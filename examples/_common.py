"""Shared set-up for the examples: the shipped shapes model offline, or real weights with --pretrained."""

import argparse
from pathlib import Path
from typing import Any, List, Tuple

import torch

from captum_gradeclip.cli import LoadedModel, load_demo, load_image, load_open_clip, prepare_image


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--pretrained", action="store_true",
                   help="use open_clip ViT-B-16 with OpenAI weights (downloads them) instead of the shipped model")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name with --pretrained")
    p.add_argument("--image", type=Path, help="an image file (required with --pretrained)")
    p.add_argument("--text", action="append", help="a prompt (repeatable)")
    p.add_argument("--out", type=Path, default=Path("examples_out"), help="output folder")
    p.add_argument("--seed", type=int, default=3, help="scene seed (shipped model)")
    return p


def setup(args: argparse.Namespace) -> Tuple[LoadedModel, torch.Tensor, List[str], Any]:
    """(loaded model, image in [0,1] (3, H, W), prompts, ground-truth masks or None)."""
    if args.pretrained:
        if args.image is None:
            raise SystemExit("--pretrained needs --image PATH")
        lm = load_open_clip(args.model, "openai", "cpu")
        img01 = prepare_image(load_image(args.image), lm.image_size, 16, "native")
        return lm, img01, args.text or ["a dog", "a cat", "a car"], None
    from captum_gradeclip.data.shapes import COLORS, SHAPES, generate_scenes
    lm = load_demo("cpu")
    scene = generate_scenes(1, image_size=lm.image_size, num_objects=3, seed=args.seed)
    objects = [(COLORS[c], SHAPES[s]) for c, s in zip(scene.colors[0].tolist(), scene.shapes[0].tolist()) if c >= 0]
    prompts = args.text or [f"a {c} {s}" for c, s in objects]
    return lm, scene.images[0], prompts, scene.masks[0]


def normalize(lm: LoadedModel, img01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(lm.mean).view(1, 3, 1, 1)
    std = torch.tensor(lm.std).view(1, 3, 1, 1)
    return (img01[None] - mean) / std
