"""Shared set-up for the examples: the shipped shapes model offline, or real weights with --pretrained."""

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, List, Tuple

import torch

from captum_gradeclip.errors import InputError, UnsupportedModelError
from captum_gradeclip.loading import (OFFLINE_HINT, LoadedModel, load_demo, load_image, load_open_clip, native_stride,
                                      prepare_image)

#: What a failed download says in the examples (the command's own hint names its flags).
EXAMPLES_OFFLINE_HINT = ("to run offline, drop --pretrained (the shipped model), give local files (--pretrained FILE, "
                         "--model FOLDER for hf_clip.py) or use a model already in the Hugging Face cache with "
                         "HF_HUB_OFFLINE=1 (see docs/offline.md)")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--pretrained", nargs="?", const="openai", metavar="TAG",
                   help="use open_clip --model with these weights: a tag of open_clip.list_pretrained() (default "
                        "openai; downloaded on first use) or a checkpoint file, instead of the shipped model")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name with --pretrained (default ViT-B-16)")
    p.add_argument("--image", type=Path, help="an image file (required with --pretrained; optional otherwise: the "
                                              "shipped model explains a generated scene)")
    p.add_argument("--text", action="append", help="a prompt (repeatable)")
    p.add_argument("--out", type=Path, default=Path("examples_out"), help="output folder")
    p.add_argument("--seed", type=int, default=3, help="scene seed (shipped model, no --image)")
    return p


def setup(args: argparse.Namespace) -> Tuple[LoadedModel, torch.Tensor, List[str], Any]:
    """(loaded model, image in [0,1] (3, H, W), prompts, ground-truth masks or None)."""
    if args.pretrained:
        if args.image is None:
            raise InputError("--pretrained needs --image PATH (a photo to explain)")
        image = load_image(args.image)  # a missing file fails before the (slow) model load
        lm = load_open_clip(args.model, args.pretrained, "cpu")
        print(f"explaining {args.image} with {lm.name}")
        img01 = prepare_image(image, lm.image_size, native_stride(lm), "native")
        return lm, img01, args.text or ["a dog", "a car"], None
    lm = load_demo("cpu")
    if args.image is not None:  # a photo of your own, seen by the tiny shapes model
        img01 = prepare_image(load_image(args.image), lm.image_size, native_stride(lm), "native")
        print(f"explaining {args.image} with {lm.name}")
        return lm, img01, args.text or ["a red circle", "a blue square"], None
    from captum_gradeclip.data.shapes import COLORS, SHAPES, generate_scenes
    scene = generate_scenes(1, image_size=lm.image_size, num_objects=3, seed=args.seed)
    objects = [(COLORS[c], SHAPES[s]) for c, s in zip(scene.colors[0].tolist(), scene.shapes[0].tolist()) if c >= 0]
    prompts = args.text or [f"a {c} {s}" for c, s in objects]
    print(f"explaining a generated shapes scene (seed {args.seed}) with {lm.name}")
    return lm, scene.images[0], prompts, scene.masks[0]


def normalize(lm: LoadedModel, img01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(lm.mean).view(1, 3, 1, 1)
    std = torch.tensor(lm.std).view(1, 3, 1, 1)
    return (img01[None] - mean) / std


def run(main: Callable[[], None]) -> None:
    """Run an example's ``main``: bad input (a missing image, a failed download, a word the model does not know)
    is reported as one line and exit status 2, as the ``gradeclip`` command does."""
    try:
        main()
    except (InputError, UnsupportedModelError, ValueError) as err:
        print(f"error: {str(err).replace(OFFLINE_HINT, EXAMPLES_OFFLINE_HINT)}", file=sys.stderr)
        sys.exit(2)
