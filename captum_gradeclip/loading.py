"""Loading what is explained: CLIP-family models (the shipped demo, open_clip, HuggingFace) with what is needed
to feed them, and images prepared at the model's size.

Every failure a user can fix (a missing file, an unknown model name, a download that failed offline) is an
:class:`~captum_gradeclip.errors.InputError` with a one-line message; the ``gradeclip`` command, the web app,
the dataset jobs and the examples share these loaders.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import image_io
from .errors import InputError

#: OpenAI CLIP's per-channel pixel mean and standard deviation: the normalisation of a model whose
#: configuration names none.
CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LoadedModel:
    """A model with what is needed to feed it."""

    model: nn.Module
    name: str
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    tokenize: Callable[[List[str]], Any]  # -> what the scorers take as texts
    token_strings: Callable[[torch.Tensor], List[str]]  # ids of one text -> one string per position


# ----------------------------------------------------------------------------------------------- models
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


def load_error(what: str, err: BaseException) -> InputError:
    """One line for a failed model load: a failed download names the way to run offline."""
    if _is_download_failure(err):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            reason = "HF_HUB_OFFLINE is set and the files are not in the local cache"
        else:
            reason = "the files are not in the local cache and the download failed (no network?)"
        return InputError(f"could not load {what}: {reason}; {OFFLINE_HINT}")
    return InputError(f"could not load {what}: {_first_line(err)}")


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
            raise InputError(f"{name}: no open_clip_config.json in {folder} (a local-dir: folder holds the model's "
                           "open_clip_config.json and its weights, as on the Hugging Face hub)")
        if not any(f.suffix in (".safetensors", ".bin", ".pth") for f in folder.iterdir()):
            raise InputError(f"{name}: no weights (.safetensors, .bin, .pth) in {folder}")
        pretrained = None  # the folder's weights
    elif not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise InputError(f"unknown open_clip model {name!r}; see open_clip.list_models() (e.g. ViT-B-16), or give "
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
                       mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD)),
                       tokenize=lambda texts: tokenizer(texts).to(device), token_strings=strings)


def load_hf(model_id: str, device: str) -> LoadedModel:
    """A HuggingFace CLIP-family model and its processor by hub id or local path."""
    try:
        from transformers import AutoModel, AutoProcessor
    except ImportError:
        raise InputError("--hf needs transformers: pip install 'captum-gradeclip[hf]'") from None
    local = Path(model_id).expanduser()
    if not local.exists() and (local.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1):
        raise InputError(f"no model folder {model_id}: --hf takes a hub id (org/name) or a folder written by "
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
                       mean=tuple(getattr(ip, "image_mean", None) or CLIP_MEAN),
                       std=tuple(getattr(ip, "image_std", None) or CLIP_STD),
                       tokenize=tokenize, token_strings=lambda ids: tok.convert_ids_to_tokens(ids.tolist()))


def load_model(device: str, *, demo: bool = False, hf: Optional[str] = None, checkpoint: Optional[str] = None,
               model: str = "ViT-B-16", pretrained: Optional[str] = "openai") -> LoadedModel:
    """The model a user chose, with the ``gradeclip`` command's precedence: ``demo``, else ``hf``, else
    ``checkpoint`` (a file of weights for the open_clip ``model``), else ``model`` with ``pretrained`` weights
    (``None``, ``""`` or ``"none"``: random weights). The loaders' own log lines (download retries, failures)
    are silenced: a failure is one :class:`~captum_gradeclip.errors.InputError`.

    Examples:
        >>> lm = load_model("cpu", demo=True)
        >>> lm.image_size
        64
    """
    with quiet_logging():
        if demo:
            return load_demo(device)
        if hf:
            return load_hf(hf, device)
        if checkpoint:
            if not Path(checkpoint).exists():
                raise InputError(f"checkpoint not found: {checkpoint}")
            return load_open_clip(model, checkpoint, device)
        weights = None if (pretrained or "").lower() in ("", "none") else pretrained
        return load_open_clip(model, weights, device)


# ----------------------------------------------------------------------------------------------- images
def load_image(path: Path) -> Any:
    """A PIL RGB image through the guarded loader (:func:`captum_gradeclip.image_io.load_image`), or a InputError
    naming the file and the reason."""
    try:
        return image_io.load_image(path)
    except image_io.ImageLoadError as err:
        raise InputError(str(err)) from None


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


def normalize_pixels(img01: torch.Tensor, lm: LoadedModel) -> torch.Tensor:
    """Images in ``[0, 1]``, ``(3, H, W)`` or ``(B, 3, H, W)``, normalised with the model's mean and std:
    the pixels the model takes."""
    mean = torch.tensor(lm.mean, dtype=img01.dtype, device=img01.device).view(-1, 3, 1, 1)
    std = torch.tensor(lm.std, dtype=img01.dtype, device=img01.device).view(-1, 3, 1, 1)
    return (img01 - mean) / std


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


def check_layers(lm: LoadedModel, layers: Optional[int], explain: str) -> None:
    """``--layers N`` must not exceed the blocks of an explained tower (``explain``: ``"image"``, ``"text"`` or
    ``"both"``)."""
    if layers is None:
        return
    from .adapters import image_tower, text_tower
    for side in {"image": ("image",), "text": ("text",), "both": ("image", "text")}[explain]:
        count = len((image_tower if side == "image" else text_tower)(lm.model).blocks())
        if layers > count:
            raise InputError(f"--layers {layers}: the {side} tower of {lm.name} has {count} block(s); "
                           f"give --layers 1 to {count}")
