"""Helpers shared by the HuggingFace transformers towers (:mod:`.hf`, :mod:`.hf_siglip`, :mod:`.hf_bert`): reading
output objects of transformers 4.x and 5.x, finding a tower's encoder, blocks and config, checking text masks.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Tuple

from torch import Tensor, nn

from ..errors import UnsupportedModelError


def features(out: Any) -> Tensor:
    """The embedding tensor of a ``get_*_features`` result (a tensor in 4.x, an output object in 5.x)."""
    if isinstance(out, Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    return out[0]


def output_field(out: Any, name: str, index: int) -> Tensor:
    """``out.name`` of a ModelOutput, or ``out[index]`` of a tuple (``return_dict=False`` / old versions)."""
    value = getattr(out, name, None)
    if isinstance(value, Tensor):
        return value
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        value = out[index]
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"cannot read {name!r} from a {type(out).__name__}")


def inner(module: nn.Module, *names: str) -> nn.Module:
    """The module that holds ``encoder``: 5.x towers hold it themselves, 4.x wrappers hold a ``*Transformer``
    under ``vision_model`` / ``text_model`` (e.g. ``CLIPVisionModel.vision_model``)."""
    seen = 0
    while not hasattr(module, "encoder") and seen < 3:
        nxt = next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), nn.Module)), None)
        if nxt is None:
            break
        module, seen = nxt, seen + 1
    return module


def encoder_layers(encoder: nn.Module) -> List[nn.Module]:
    """Blocks of an HF encoder (``layers`` in CLIP-like encoders, ``layer`` in BERT-like ones)."""
    layers = getattr(encoder, "layers", None)
    if layers is None:
        layers = getattr(encoder, "layer", None)
    if layers is None:
        raise UnsupportedModelError(f"cannot find the blocks of {type(encoder).__name__} (no layers/layer)")
    return list(layers)


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (follows ``functools.wraps`` of HF's decorators)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return False


def sub_config(model: nn.Module, module: nn.Module, name: str) -> Any:
    """The config of a sub-tower: its own ``config``, else ``model.config.<name>``, else ``model.config``."""
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "hidden_size"):
        return cfg
    top = model.config
    return getattr(top, name, None) or top


def check_text_mask(inputs: Tensor, extra: Tuple[Any, ...]) -> Optional[Tensor]:
    """The optional attention mask (first extra argument), checked against ``input_ids``."""
    mask = extra[0] if extra else None
    if mask is not None and (not isinstance(mask, Tensor) or mask.shape != inputs.shape):
        raise ValueError(f"attention_mask must be a tensor of the same shape as input_ids "
                         f"{tuple(inputs.shape)}, got {getattr(mask, 'shape', type(mask).__name__)}")
    return mask


def special_token_ids(cfg: Any, names: Tuple[str, ...] = ("pad_token_id", "bos_token_id", "eos_token_id",
                                                           "sep_token_id", "cls_token_id")) -> frozenset:
    """Special token ids named in a text config (only those inside the vocabulary)."""
    vocab = getattr(cfg, "vocab_size", None)
    ids = set()
    for n in names:
        value = getattr(cfg, n, None)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v >= 0 and (vocab is None or v < vocab):
                ids.add(v)
    return frozenset(ids)
