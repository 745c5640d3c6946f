"""The ``gradeclip`` command: heat maps and word importances for images and prompts.

``gradeclip explain IMAGE ... --text "a dog" --text "a car"`` writes, per image, a PNG grid (the image, then
one overlay per prompt titled with the prompt and its similarity), an HTML page with each prompt's words
shaded by importance, and the raw maps (.npz). ``gradeclip demo --out DIR`` does the same offline on the
shipped shapes model and a generated scene.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import image_io
from .image_io import IMAGE_SUFFIXES


class CLIError(Exception):
    """A user error: reported as one line, exit status 2."""


@dataclass
class LoadedModel:
    """A model with what the CLI needs to feed it."""

    model: nn.Module
    name: str
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    tokenize: Callable[[List[str]], Any]  # -> what the scorers take as texts
    token_strings: Callable[[torch.Tensor], List[str]]  # ids of one text -> one string per position


def _split_text_inputs(texts: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(texts, torch.Tensor):
        return texts, None
    return texts["input_ids"], texts.get("attention_mask")


# ----------------------------------------------------------------------------------------------- model loading
OFFLINE_HINT = ("to run offline, use --demo (the shipped model), local files (--checkpoint FILE, --hf FOLDER) or a "
                "model already in the Hugging Face cache with HF_HUB_OFFLINE=1 (see docs/offline.md)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says that a file could not be fetched from the hub."""
    names = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError", "ConnectTimeout",
             "ReadTimeout", "URLError", "HfHubHTTPError", "RepositoryNotFoundError", "EntryNotFoundError")
    words = ("connect", "download", "offline", "cached files", "local cache", "huggingface.co")
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(cls.__name__ in names for cls in type(err).__mro__) or any(w in str(err).lower() for w in words):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence log records (open_clip logs a failed download at ERROR level before raising it): a failed load is
    reported once, as one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def load_error(what: str, err: BaseException) -> CLIError:
    """One line for a failed model load: a failed download names the way to run offline."""
    import os
    if _is_download_failure(err):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            reason = "HF_HUB_OFFLINE is set and the files are not in the local cache"
        else:
            reason = "the files are not in the local cache and the download failed (no network?)"
        return CLIError(f"could not load {what}: {reason}; {OFFLINE_HINT}")
    return CLIError(f"could not load {what}: {_first_line(err)}")


def load_demo(device: str) -> LoadedModel:
    """The shipped shapes-world open_clip model (offline)."""
    from .zoo import load_shapes_clip
    clip = load_shapes_clip("open_clip", device=device)
    return LoadedModel(
        model=clip.model, name="shapes-clip (open_clip, shipped)", image_size=clip.image_size,
        mean=tuple(clip.mean), std=tuple(clip.std),
        tokenize=lambda texts: clip.tokenize(texts),
        token_strings=lambda ids: clip.tokenizer.tokens(ids, skip_pad=False))


def load_open_clip(name: str, pretrained: Optional[str], device: str) -> LoadedModel:
    """An open_clip model by config name, with ``pretrained`` weights (a tag or a checkpoint path), or a
    ``local-dir:FOLDER`` / ``hf-hub:ORG/NAME`` model (its weights come with it)."""
    import open_clip
    if name.startswith("local-dir:"):  # open_clip's own folder format: open_clip_config.json and the weights
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise CLIError(f"{name}: no open_clip_config.json in {folder} (a local-dir: folder holds the model's "
                           "open_clip_config.json and its weights, as on the Hugging Face hub)")
        if not any(f.suffix in (".safetensors", ".bin", ".pth") for f in folder.iterdir()):
            raise CLIError(f"{name}: no weights (.safetensors, .bin, .pth) in {folder}")
        pretrained = None  # the folder's weights
    elif not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise CLIError(f"unknown open_clip model {name!r}; see open_clip.list_models() (e.g. ViT-B-16), or give "
                       "local-dir:FOLDER or hf-hub:ORG/NAME")
    schema = name.startswith(("local-dir:", "hf-hub:"))  # the weights come with the model, not from `pretrained`
    what = f"open_clip {name!r}" + ("" if schema else f" with pretrained={pretrained!r}")
    try:
        with quiet_logging():
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except Exception as err:  # downloads fail in many ways (no network, missing tag, bad checkpoint)
        raise load_error(what, err) from None
    model.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    try:  # some tokenizers (SigLIP, multilingual towers) come from the Hugging Face hub
        with quiet_logging():
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:
        raise load_error(f"the tokenizer of open_clip {name!r}", err) from None

    def strings(ids: torch.Tensor) -> List[str]:
        decode = getattr(tokenizer, "decode", None)
        return [decode([int(i)]).strip() if decode else str(int(i)) for i in ids]

    label = name if schema else f"{name} ({pretrained or 'random weights'})"
    return LoadedModel(model=model, name=label, image_size=size,
                       mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                       std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                       tokenize=lambda texts: tokenizer(texts).to(device), token_strings=strings)


def load_hf(model_id: str, device: str) -> LoadedModel:
    """A HuggingFace CLIP-family model and its processor by hub id or local path."""
    try:
        from transformers import AutoModel, AutoProcessor
    except ImportError:
        raise CLIError("--hf needs transformers: pip install 'captum-gradeclip[hf]'") from None
    local = Path(model_id).expanduser()
    if not local.exists() and (local.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1):
        raise CLIError(f"no model folder {model_id}: --hf takes a hub id (org/name) or a folder written by "
                       "save_pretrained (model and processor)")
    try:
        with quiet_logging():
            model = AutoModel.from_pretrained(model_id).to(device).eval()
            processor = AutoProcessor.from_pretrained(model_id)
    except Exception as err:
        raise load_error(f"HuggingFace model {model_id!r}", err) from None
    tok = processor.tokenizer
    ip = getattr(processor, "image_processor", None)
    size = getattr(model.config, "vision_config", model.config).image_size

    def tokenize(texts: List[str]) -> Any:
        enc = tok(texts, padding=True, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    return LoadedModel(model=model, name=model_id, image_size=int(size),
                       mean=tuple(getattr(ip, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)),
                       std=tuple(getattr(ip, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)),
                       tokenize=tokenize, token_strings=lambda ids: tok.convert_ids_to_tokens(ids.tolist()))


# ------------------------------------------------------------------------------------------------- images
def load_image(path: Path) -> "Any":
    """A PIL RGB image through the guarded loader (:func:`captum_gradeclip.image_io.load_image`), or a CLIError
    naming the file and the reason."""
    try:
        return image_io.load_image(path)
    except image_io.ImageLoadError as err:
        raise CLIError(str(err)) from None


def prepare_image(image: Any, size: int, patch: Optional[int], mode: str) -> torch.Tensor:
    """``(3, H, W)`` float image in [0, 1]: ``model`` resizes the shorter side to ``size`` and crops the centre
    square (what CLIP scores); ``native`` keeps the aspect ratio, shorter side ``size``, both sides rounded to a
    multiple of the patch size (what the Grad-ECLIP authors explain)."""
    from PIL import Image
    w, h = image.size
    scale = size / min(w, h)
    if mode == "native" and patch:
        nh = max(patch, int(round(h * scale / patch)) * patch)
        nw = max(patch, int(round(w * scale / patch)) * patch)
        image = image.resize((nw, nh), Image.BICUBIC)
    else:
        nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _normalize(img01: torch.Tensor, lm: LoadedModel) -> torch.Tensor:
    mean = torch.tensor(lm.mean, dtype=img01.dtype, device=img01.device).view(-1, 3, 1, 1)
    std = torch.tensor(lm.std, dtype=img01.dtype, device=img01.device).view(-1, 3, 1, 1)
    return (img01 - mean) / std


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
@dataclass
class Explanation:
    """Everything written for one image."""

    image01: torch.Tensor  # (3, H, W)
    prompts: List[str]
    similarity: np.ndarray  # (T,)
    image_maps: Optional[np.ndarray]  # (T, h, w)
    word_maps: Optional[np.ndarray]  # (T, L)
    words: Optional[List[List[str]]]  # per prompt, the token strings of the explained positions
    word_scores: Optional[List[np.ndarray]]
    text_layer_rule: Optional[str] = None  # how the text side combined its layers (GradECLIP.layer_rule)


def explain_images(lm: LoadedModel, images01: torch.Tensor, prompts: List[str], *, explain: str,
                   layers: Optional[int], single_head: bool, device: str,
                   layer_rule: Optional[str] = None) -> List[Explanation]:
    """Grad-ECLIP maps of a batch of same-size images ``(B, 3, H, W)`` against every prompt (image side), and
    of every prompt's words against each image (text side). ``layer_rule``: how several layers are combined
    (``GradECLIP``'s option; None: the paper's rule for each side)."""
    from .grad_eclip import GradECLIP
    from .scorers import ImageTextSimilarity, TextImageSimilarity
    texts = lm.tokenize(prompts)
    pixels = _normalize(images01.to(device), lm)
    scorer = ImageTextSimilarity(lm.model, texts)
    with torch.no_grad():
        sims = scorer(pixels).float().cpu().numpy()
    image_maps = None
    if explain in ("image", "both"):
        blocks = scorer.tower.blocks()[-layers:] if layers else None
        image_maps = GradECLIP(scorer, blocks, single_head=single_head,
                               layer_rule=layer_rule).attribute_all(pixels).cpu().numpy()
    results = []
    for b in range(images01.shape[0]):
        word_maps = words = word_scores = text_rule = None
        if explain in ("text", "both"):
            tscorer = TextImageSimilarity(lm.model, pixels[b:b + 1])
            ids, mask = _split_text_inputs(texts)
            extra = () if mask is None else (mask,)
            blocks = tscorer.tower.blocks()[-layers:] if layers else None
            ge = GradECLIP(tscorer, blocks, single_head=single_head, layer_rule=layer_rule)
            text_rule = ge.layer_rule
            word_maps = ge.attribute(ids, target=[0] * len(prompts),
                                     additional_forward_args=extra or None).cpu().numpy()
            keep = tscorer.tower.layout(ids, *extra).report_mask.cpu()
            words, word_scores = [], []
            for i in range(len(prompts)):
                strings = lm.token_strings(ids[i].cpu())
                positions = keep[i].nonzero().flatten().tolist()
                words.append([strings[p] for p in positions])
                word_scores.append(word_maps[i, positions])
        results.append(Explanation(image01=images01[b], prompts=prompts, similarity=sims[b],
                                   image_maps=None if image_maps is None else image_maps[b],
                                   word_maps=word_maps, words=words, word_scores=word_scores,
                                   text_layer_rule=text_rule))
    return results


def explain_image(lm: LoadedModel, image01: torch.Tensor, prompts: List[str], **kwargs: Any) -> Explanation:
    """:func:`explain_images` for one ``(3, H, W)`` image."""
    return explain_images(lm, image01[None], prompts, **kwargs)[0]


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


def save_maps(exp: Explanation, path: Path) -> Path:
    """The raw maps of one explanation as a compressed .npz: ``prompts``, ``similarity`` and, where computed,
    ``image_maps`` ``(T, h, w)`` and ``word_maps`` ``(T, L)``."""
    arrays = {"prompts": np.array(exp.prompts), "similarity": exp.similarity}
    if exp.image_maps is not None:
        arrays["image_maps"] = exp.image_maps
    if exp.word_maps is not None:
        arrays["word_maps"] = exp.word_maps
    np.savez_compressed(path, **arrays)
    return path


# ------------------------------------------------------------------------------------------------ commands
def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but CUDA is not available on this machine; use --device cpu")
    return name


def _load(args: argparse.Namespace) -> LoadedModel:
    """Load the model; the loaders' own log lines (download retries, failures) are silenced: errors come as one
    line."""
    with quiet_logging():
        return _load_quiet(args)


def _load_quiet(args: argparse.Namespace) -> LoadedModel:
    device = args.device
    if args.demo:
        return load_demo(device)
    if args.hf:
        return load_hf(args.hf, device)
    if args.checkpoint:
        if not Path(args.checkpoint).exists():
            raise CLIError(f"checkpoint not found: {args.checkpoint}")
        return load_open_clip(args.model, args.checkpoint, device)
    pretrained = None if args.pretrained.lower() in ("", "none") else args.pretrained
    return load_open_clip(args.model, pretrained, device)


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


def native_stride(lm: LoadedModel) -> Optional[int]:
    """Pixels per map cell of the image tower (the patch of a ViT, the total stride of a ResNet): the multiple that
    ``--size native`` rounds the sides to. None when the tower has no fixed grid."""
    from .adapters import image_tower
    tower = image_tower(lm.model)
    patch = getattr(tower, "patch", None)
    if patch is not None:
        return int(patch[0])
    probe = torch.zeros(1, 3, lm.image_size, lm.image_size)
    try:
        grid = tower.layout(probe).grid
    except Exception:  # a tower whose layout needs more than the image shape
        return None
    return lm.image_size // grid[0] if grid and grid[0] and lm.image_size % grid[0] == 0 else None


def _check_layers(lm: LoadedModel, layers: Optional[int], explain: str) -> None:
    """``--layers N`` must not exceed the blocks of an explained tower."""
    if layers is None:
        return
    from .adapters import image_tower, text_tower
    for side in {"image": ("image",), "text": ("text",), "both": ("image", "text")}[explain]:
        count = len((image_tower if side == "image" else text_tower)(lm.model).blocks())
        if layers > count:
            raise CLIError(f"--layers {layers}: the {side} tower of {lm.name} has {count} block(s); "
                           f"give --layers 1 to {count}")


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
    _check_layers(lm, args.layers, args.explain)
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
    ex.add_argument("--layers", type=int, default=None,
                    help="number of last blocks to explain (default: 1 for images, 8 for text)")
    ex.add_argument("--single-head", action="store_true", help="reproduce the authors' released code")
    _add_layer_rule(ex)
    ex.add_argument("--size", choices=("native", "model"), default="native",
                    help="native: keep the aspect ratio (default; towers without a patch grid fall back to model); "
                         "model: centre crop to the model's size")
    ex.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ex.add_argument("--batch-size", type=int, default=8, help="images of the same size explained together")
    ex.add_argument("--out", default="gradeclip_out", help="output folder (default: gradeclip_out)")
    ex.set_defaults(func=cmd_explain)
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
    except CLIError as err:
        print(f"gradeclip: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:  # library validation errors: one line, no traceback
        print(f"gradeclip: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
