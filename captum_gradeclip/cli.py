"""The ``gradeclip`` command: heat maps and word importances for images and prompts.

``gradeclip explain IMAGE ... --text "a dog" --text "a car"`` writes, per image, a PNG grid (the image, then
one overlay per prompt titled with the prompt and its similarity), an HTML page with each prompt's words
shaded by importance, and the raw maps (.npz). ``gradeclip demo --out DIR`` does the same offline on the
shipped shapes model and a generated scene.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch

from . import image_io
from .errors import InputError, UnsupportedModelError
from .explanations import Explanation, explain_image, explain_images, save_maps
from .image_io import IMAGE_SUFFIXES
# The loaders lived here before captum_gradeclip.loading; their names stay importable from this module.
from .loading import (OFFLINE_HINT, LoadedModel, check_layers, load_demo, load_error, load_hf,  # noqa: F401
                      load_image, load_model, load_open_clip, native_stride, prepare_image, quiet_logging)

#: What the command reports as one line and exit status 2 (no traceback): input the user can fix. A
#: ``ValueError`` is the library's way of refusing an argument (an unknown word, a limit out of range); any
#: other exception is a bug and propagates with its traceback.
USER_ERRORS = (InputError, UnsupportedModelError, image_io.ImageLoadError, ValueError)


class CLIError(InputError):
    """A command-line argument that cannot be used: reported as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------- inputs
def collect_images(paths: Sequence[str]) -> List[Path]:
    """Files named on the command line; folders are expanded to the images they contain."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out.extend(found)
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ explaining
def write_outputs(exp: Explanation, out: Path, stem: str) -> List[Path]:
    """The PNG grid, the HTML word page and the .npz of one explanation."""
    from . import viz
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if exp.image_maps is not None:
        fig = viz.plot_image_maps(exp.image01, [torch.from_numpy(m) for m in exp.image_maps], titles=exp.prompts,
                                  scores=exp.similarity.tolist())
        written.append(viz.save_figure(fig, out / f"{stem}_maps.png"))
    if exp.words is not None:
        rows = [(f"{p}  (similarity {s:.3f})", w, torch.from_numpy(np.asarray(sc, dtype=np.float32)))
                for p, s, w, sc in zip(exp.prompts, exp.similarity, exp.words, exp.word_scores)]
        path = out / f"{stem}_words.html"
        page = viz.tokens_html_page(rows, page_title=f"Grad-ECLIP word importance: {stem}",
                                    empty_message=viz.empty_words_message(exp.text_layer_rule, _SWITCH))
        path.write_text(page, encoding="utf-8")
        written.append(path)
    written.append(save_maps(exp, out / f"{stem}_maps.npz"))
    return written


# ------------------------------------------------------------------------------------------------ commands
def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but CUDA is not available on this machine; use --device cpu")
    return name


def _load(args: argparse.Namespace) -> LoadedModel:
    """The model chosen by ``--demo``, ``--hf``, ``--checkpoint`` or ``--model`` / ``--pretrained``."""
    return load_model(args.device, demo=args.demo, hf=args.hf, checkpoint=args.checkpoint, model=args.model,
                      pretrained=args.pretrained)


_SWITCH = "--layer-rule relu_then_sum"  # how a CLI user selects the other text rule
_MAX_WORDS = 6  # words listed per prompt in the summary


def _word_shares(words: List[str], scores: np.ndarray) -> str:
    """``"cyan 60%, triangle 40%, a 0%"``: the words by decreasing share of the positive total (ties in order)."""
    positive = np.clip(np.asarray(scores, dtype=np.float64), 0, None)
    shares = positive / positive.sum()
    order = np.argsort(-shares, kind="stable")
    listed = [f"{words[i]} {shares[i]:.0%}" for i in order[:_MAX_WORDS]]
    more = len(order) - _MAX_WORDS
    return ", ".join(listed) + (f", ... ({more} more)" if more > 0 else "")


def _summary(stem: str, exp: Explanation) -> str:
    """The best-matching prompt, then each prompt's words with their shares. A map with no positive word is
    reported as such, never as a ranking; a note explains zero words under the paper's text rule."""
    from .viz import empty_words_message
    best = int(np.argmax(exp.similarity))
    parts = [f"{stem}: best match {exp.prompts[best]!r} ({exp.similarity[best]:.3f})"]
    zero_words = False
    if exp.words is not None:
        for p, w, s in zip(exp.prompts, exp.words, exp.word_scores):
            if not len(s):
                continue
            if not np.any(np.asarray(s) > 0):
                parts.append(f"  {p!r}: {empty_words_message(exp.text_layer_rule, _SWITCH)}")
                continue
            zero_words = zero_words or bool(np.any(np.asarray(s) <= 0))
            parts.append(f"  {p!r}: word shares {_word_shares(w, s)}")
    if zero_words and exp.text_layer_rule == "sum_then_relu":
        parts.append("  (0% = no positive contribution under the paper's rule, sum over layers then ReLU; "
                     f"{_SWITCH} counts each layer's positive part)")
    return "\n".join(parts)


def cmd_explain(args: argparse.Namespace) -> int:
    prompts = [t.strip() for t in args.text]
    if not prompts:
        raise CLIError("give at least one prompt with --text")
    if any(not p for p in prompts):
        raise CLIError("empty prompt: every --text needs some words")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.layers is not None and args.layers < 1:
        raise CLIError(f"--layers must be a positive number of blocks, got {args.layers}")
    args.device = _device(args.device)
    paths = collect_images(args.images)
    images = [(p, load_image(p)) for p in paths]  # fail before the (slow) model load
    lm = _load(args)
    lm.tokenize(prompts)  # words outside the vocabulary fail here, before any work
    check_layers(lm, args.layers, args.explain)
    patch = native_stride(lm)
    if args.size == "native" and patch is None:
        print(f"note: {lm.name} has no fixed patch grid: --size native is not possible, images are resized and "
              f"centre-cropped to {lm.image_size} px (as --size model)", file=sys.stderr)
    out = Path(args.out)
    from tqdm.auto import tqdm
    prepared = [(path, prepare_image(pil, lm.image_size, patch, args.size)) for path, pil in images]
    batches: List[List[Tuple[Path, torch.Tensor]]] = []
    for item in prepared:  # consecutive images of the same size share a batch
        if batches and len(batches[-1]) < args.batch_size and batches[-1][0][1].shape == item[1].shape:
            batches[-1].append(item)
        else:
            batches.append([item])
    with tqdm(total=len(prepared), disable=len(prepared) < 2, desc="explaining", unit="image") as bar:
        for batch in batches:
            exps = explain_images(lm, torch.stack([t for _, t in batch]), prompts, explain=args.explain,
                                  layers=args.layers, single_head=args.single_head, device=args.device,
                                  layer_rule=args.layer_rule)
            for (path, _), exp in zip(batch, exps):
                write_outputs(exp, out, path.stem)
                bar.write(_summary(path.stem, exp))
            bar.update(len(batch))
    print(f"wrote {len(images)} explanation(s) of {len(prompts)} prompt(s) with {lm.name} to {out}/")
    return 0


def cmd_explain_dataset(args: argparse.Namespace) -> int:
    from .scale import ModelSpec, explain_dataset, require_scale_packages
    try:
        require_scale_packages()
    except ImportError as err:
        raise CLIError(str(err)) from None
    model = ModelSpec(demo=args.demo, hf=args.hf, checkpoint=args.checkpoint, model=args.model,
                      pretrained=args.pretrained)
    summary = explain_dataset(
        args.source, args.out, texts=args.text, model=model, layers=args.layers, single_head=args.single_head,
        layer_rule=args.layer_rule, size=args.size, word_maps=args.word_maps, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, readers=args.readers,
        batch_size=args.batch_size, images_per_file=args.images_per_file, address=args.address,
        max_pixels=args.max_pixels, max_bytes=args.max_bytes, image_column=args.image_column,
        caption_column=args.caption_column, arguments={k: v for k, v in vars(args).items() if k != "func"})
    for note in summary.notes:
        print(note)
    print(f"{summary.images} image(s) in {summary.files} file(s): {summary.files_skipped} file(s) already done, "
          f"{summary.images_explained} image(s) explained now ({summary.pairs} map(s)); {summary.errors} error(s) "
          f"in {summary.out / 'errors.jsonl'}; results in {summary.out / 'maps'}/")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .data.shapes import generate_scenes
    args.device = _device(args.device)
    lm = load_demo(args.device)
    scene = generate_scenes(1, image_size=lm.image_size, num_objects=3, seed=args.seed)
    present = [f"a {c} {s}" for c, s in _objects(scene)]
    prompts = present + [p for p in ("a blue square", "a red circle", "a green triangle") if p not in present][:1]
    exp = explain_image(lm, scene.images[0], prompts, explain="both", layers=None, single_head=False,
                        device=args.device, layer_rule=args.layer_rule)
    out = Path(args.out)
    written = write_outputs(exp, out, "demo")
    print(_summary("demo scene", exp))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _objects(scene: Any) -> List[Tuple[str, str]]:
    from .data.shapes import COLORS, SHAPES
    objs = []
    for c, s in zip(scene.colors[0].tolist(), scene.shapes[0].tolist()):
        if c >= 0:
            objs.append((COLORS[c], SHAPES[s]))
    return objs


def cmd_serve(args: argparse.Namespace) -> int:
    from .app.command import limits_from_args, serve
    limits = limits_from_args(args)  # fail before the (slow) model load
    args.device = _device(args.device)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError("gradeclip serve needs Gradio: pip install 'captum-gradeclip[demo]'") from None
    return serve(_load(args), limits, args)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model: ``--demo``, ``--hf ID``, ``--checkpoint PATH`` or ``--model M --pretrained P``."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--hf", metavar="ID", help="a HuggingFace CLIP-family model id or local path")
    src.add_argument("--checkpoint", metavar="PATH", help="an open_clip checkpoint file for --model")
    src.add_argument("--demo", action="store_true", help="the shipped shapes model (offline)")
    parser.add_argument("--model", default="ViT-B-16",
                        help="open_clip model name (default: ViT-B-16), or local-dir:FOLDER / hf-hub:ORG/NAME")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip pretrained tag (default: openai; 'none': random weights)")


def _add_layer_rule(parser: argparse.ArgumentParser) -> None:
    from .grad_eclip import LAYER_RULES
    parser.add_argument("--layer-rule", choices=LAYER_RULES, default=None,
                        help="how several explained layers are combined: sum_then_relu (sum the layers, then ReLU) or "
                             "relu_then_sum (ReLU each layer, then sum); default: the paper's rule, relu_then_sum "
                             "for images and sum_then_relu for words (whose layers can cancel to an all-zero map)")


def _add_explanation_arguments(parser: argparse.ArgumentParser) -> None:
    """How to explain, shared by ``explain`` and ``explain-dataset``: layers, head mode, layer rule, image size."""
    parser.add_argument("--layers", type=int, default=None,
                        help="number of last blocks to explain (default: 1 for images, 8 for text)")
    parser.add_argument("--single-head", action="store_true", help="reproduce the authors' released code")
    _add_layer_rule(parser)
    parser.add_argument("--size", choices=("native", "model"), default="native",
                        help="native: keep the aspect ratio (default; towers without a patch grid fall back to "
                             "model); model: centre crop to the model's size")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``gradeclip explain: error: ...``), exit status 2, like every other error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="gradeclip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain images against prompts")
    ex.add_argument("images", nargs="+", help="image files or folders of images")
    ex.add_argument("--text", action="append", default=[], help="a prompt (repeat for several)")
    _add_model_arguments(ex)
    ex.add_argument("--explain", choices=("image", "text", "both"), default="both")
    _add_explanation_arguments(ex)
    ex.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ex.add_argument("--batch-size", type=int, default=8, help="images of the same size explained together")
    ex.add_argument("--out", default="gradeclip_out", help="output folder (default: gradeclip_out)")
    ex.set_defaults(func=cmd_explain)
    ds = sub.add_parser("explain-dataset", help="explain a whole dataset on Ray Data (Parquet output)")
    ds.add_argument("source", help="a folder of images (recursive), a .csv/.parquet file of image paths (and "
                                   "captions), or webdataset .tar shards (a file, a glob or data-{000..009}.tar)")
    ds.add_argument("--out", required=True, help="output folder: Parquet files, manifest.json, errors.jsonl")
    ds.add_argument("--text", action="append", default=[],
                    help="a prompt every image is explained against (repeat; optional when the source has captions)")
    _add_model_arguments(ds)
    _add_explanation_arguments(ds)
    ds.add_argument("--word-maps", action="store_true", help="also store each pair's word tokens and scores")
    ds.add_argument("--workers", type=int, default=1, help="model workers (Ray actors; default 1)")
    ds.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs and torch threads per worker (default 1)")
    ds.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker; above 0 runs on CUDA")
    ds.add_argument("--readers", type=int, default=None,
                    help="decoding tasks at once beside the workers (default: CPU workers decode their own batches, "
                         "GPU workers get 2 tasks each)")
    ds.add_argument("--address", default=None, help="a Ray cluster address (default: a local Ray for this run)")
    ds.add_argument("--batch-size", type=int, default=8, help="images per worker call (default 8)")
    ds.add_argument("--images-per-file", type=int, default=256,
                    help="images per output file, the unit of resuming (default 256)")
    ds.add_argument("--image-column", default=None, help="a table's image column (default: image, path, ...)")
    ds.add_argument("--caption-column", default=None, help="a table's caption column (default: caption, text)")
    ds.add_argument("--max-pixels", type=int, default=image_io.DEFAULT_MAX_PIXELS,
                    help=f"refuse larger images, recorded as errors (default {image_io.DEFAULT_MAX_PIXELS:,})")
    ds.add_argument("--max-bytes", type=int, default=image_io.DEFAULT_MAX_BYTES,
                    help=f"refuse larger files, recorded as errors (default {image_io.DEFAULT_MAX_BYTES:,})")
    ds.set_defaults(func=cmd_explain_dataset)
    demo = sub.add_parser("demo", help="run offline on the shipped shapes model and a generated scene")
    demo.add_argument("--out", default="gradeclip_demo", help="output folder (default: gradeclip_demo)")
    demo.add_argument("--seed", type=int, default=3, help="scene seed")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    _add_layer_rule(demo)
    demo.set_defaults(func=cmd_demo)
    from .app.command import add_serve_arguments
    serve = sub.add_parser("serve", help="serve an interactive web app (Gradio) on this machine")
    _add_model_arguments(serve)
    serve.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gradeclip`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as err:
        print(f"gradeclip: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
