"""HuggingFace transformers towers of the CLIP layout: a ViT pooled at its class token, and a causal text
transformer pooled at its EOS token.

Covers ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPTextModelWithProjection``, ``MetaClip2Model`` (and
its ``*WithProjection`` towers), the image towers of ``AltCLIPModel`` and ``ChineseCLIPModel`` (same ViT), and
BLIP's image tower (:class:`HFBlipVisionTower`). SigLIP lives in :mod:`.hf_siglip`, the BERT-like text towers
(CLS pooling) in :mod:`.hf_bert`; :func:`hf_image_tower` / :func:`hf_text_tower` dispatch on the class.

Works with transformers 4.4x (``get_*_features`` return tensors, towers wrapped in ``*Transformer`` modules) and
5.x (output objects, flattened towers), and with every ``attn_implementation``: Grad-ECLIP reads the q/k/v
projections, never attention weights. Images of another size than the model's are encoded with the model's
own ``interpolate_pos_encoding=True`` (bicubic, class position kept); towers without that argument (old
transformers) raise a clear error for such images instead of silently mis-encoding them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import RowTail, Tower, TokenLayout, causal_layout, check_images, check_tokens, cls_image_layout, \
    tail_blocks


# -- helpers shared by the HF towers ------------------------------------------------------------------------
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


def pair(x: Any) -> Tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


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


# -- image: ViT pooled at the class token -------------------------------------------------------------------
class HFCLIPVisionTower(Tower):
    """A HF ViT pooled at the class token, then a linear projection.

    ``CLIPModel`` / ``CLIPVisionModelWithProjection`` / ``MetaClip2*`` / ``AltCLIPModel`` / ``ChineseCLIPModel``:
    ``vision_model`` (pre-LN blocks ``self_attn``/``layer_norm2``/``mlp``, ``post_layernorm`` on the class token)
    and ``visual_projection``.
    """

    side = "image"
    projection_name = "visual_projection"

    def __init__(self, model: nn.Module, vision: Optional[nn.Module] = None,
                 projection: Optional[nn.Module] = None) -> None:
        vision = model.vision_model if vision is None else vision
        super().__init__(model, vision)
        self.vision = inner(vision, "vision_model")
        self.projection = getattr(model, self.projection_name) if projection is None else projection
        cfg = sub_config(model, self.vision, "vision_config")
        self.patch = pair(cfg.patch_size)
        self.image_size = pair(cfg.image_size)
        self.interpolates = accepts(self.vision.forward, "interpolate_pos_encoding")

    def blocks(self) -> List[nn.Module]:
        return encoder_layers(self.vision.encoder)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch, "pixel_values")
        if not self.interpolates and tuple(inputs.shape[-2:]) != self.image_size:
            raise ValueError(
                f"{type(self.model).__name__}: images of size {tuple(inputs.shape[-2:])} need interpolated positional "
                f"embeddings, which this transformers version's {type(self.vision).__name__} does not offer "
                f"(no interpolate_pos_encoding); resize the images to {self.image_size} or upgrade transformers")

    def forward_kwargs(self, inputs: Tensor) -> Dict[str, Any]:
        if self.interpolates and tuple(inputs.shape[-2:]) != self.image_size:
            return {"interpolate_pos_encoding": True}
        return {}

    def pooled(self, out: Any) -> Tensor:
        """The pooled (class-token) row that the projection takes."""
        return output_field(out, "pooler_output", 1)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        out = self.vision(pixel_values=inputs, **self.forward_kwargs(inputs))
        return self.projection(self.pooled(out))

    def token_head(self) -> Optional[Callable[..., Tensor]]:
        post = getattr(self.vision, "post_layernorm", None)
        if not isinstance(post, nn.Module):
            return None
        proj = self.projection

        def head(tokens: Tensor, *unused: Any) -> Tensor:  # the class token, post_layernorm, the projection
            return proj(post(tokens[:, 0]))

        return head

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        return cls_image_layout(inputs.shape[0], grid, inputs.device)

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        last = self.blocks()[-1]
        if attention is not getattr(last, "self_attn", None):
            return None
        if not all(hasattr(last, n) for n in ("layer_norm2", "mlp")) or not hasattr(self.vision, "post_layernorm"):
            return None
        post, proj = self.vision.post_layernorm, self.projection

        def tail(x_in: Tensor, y: Tensor) -> Tensor:
            h = x_in + y
            h = h + last.mlp(last.layer_norm2(h))
            return proj(post(h))

        return tail


class HFBlipVisionTower(HFCLIPVisionTower):
    """``BlipForImageTextRetrieval``'s image-text contrastive path: ``vision_proj`` of the class token of
    ``vision_model``'s last hidden state (after ``post_layernorm``), as the model does with
    ``use_itm_head=False``."""

    projection_name = "vision_proj"

    def pooled(self, out: Any) -> Tensor:
        return output_field(out, "last_hidden_state", 0)[:, 0]


# -- text: causal transformer pooled at EOS -----------------------------------------------------------------
class HFCLIPTextTower(Tower):
    """``text_model`` + ``text_projection``, pooled at the EOS token, causal (CLIP, MetaCLIP 2)."""

    side = "text"
    default_depth = 8
    #: CLIP configs with ``eos_token_id == 2`` pool at the argmax of the ids (pre-#24773 behaviour).
    legacy_eos = True

    def __init__(self, model: nn.Module, text: Optional[nn.Module] = None,
                 projection: Optional[nn.Module] = None) -> None:
        text = model.text_model if text is None else text
        super().__init__(model, text)
        self.text = inner(text, "text_model")
        self.projection = model.text_projection if projection is None else projection
        cfg = sub_config(model, self.text, "text_config")
        eos = getattr(self.text, "eos_token_id", None)
        self.eos_id = getattr(cfg, "eos_token_id", 2) if eos is None else eos

    def blocks(self) -> List[nn.Module]:
        return encoder_layers(self.text.encoder)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs, "input_ids")
        check_text_mask(inputs, extra)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        out = self.text(input_ids=inputs, attention_mask=mask)
        return self.projection(output_field(out, "pooler_output", 1))

    def crop_length(self, inputs: Any, *extra: Any) -> Optional[int]:
        return int(self.query(inputs).max()) + 1

    def query(self, ids: Tensor) -> Tensor:
        if self.legacy_eos and self.eos_id == 2:  # legacy configs: EOS is the largest id
            return ids.argmax(dim=-1)
        return (ids == self.eos_id).int().argmax(dim=-1)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        mask = extra[0] if extra else None
        valid = torch.ones_like(inputs, dtype=torch.bool) if mask is None else mask.bool()
        return causal_layout(inputs, self.query(inputs), valid, True, single_head)

    def row_tail(self, attentions: Sequence[nn.Module], single_head: bool = False) -> Optional[RowTail]:
        norm = getattr(self.text, "final_layer_norm", None)
        if single_head or not isinstance(norm, nn.Module):
            return None
        blocks = tail_blocks(self.blocks(), attentions, "self_attn")
        if blocks is None or not all(_clip_encoder_layer(b) for b in blocks):
            return None
        proj = self.projection

        def pre(j: int, x: Tensor) -> Tensor:
            return blocks[j].layer_norm1(x)

        def post(j: int, x: Tensor, y: Tensor) -> Tensor:
            x = x + y
            return x + blocks[j].mlp(blocks[j].layer_norm2(x))

        def head(x: Tensor) -> Tensor:
            return proj(norm(x))

        return RowTail([b.self_attn for b in blocks], blocks[0], pre, post, head)


#: HF encoder layers of the pre-LN CLIP layout (``layer_norm1``, ``self_attn``, ``layer_norm2``, ``mlp``) and their
#: attention classes (transformers 4.4x has one class per attention implementation, 5.x one class for all)
_CLIP_LAYERS = {"CLIPEncoderLayer": {"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2"},
                "MetaClip2EncoderLayer": {"MetaClip2Attention"}}


def _clip_encoder_layer(layer: nn.Module) -> bool:
    """A transformers CLIP / MetaCLIP 2 encoder layer with its own attention class (not a user subclass)."""
    attn = getattr(layer, "self_attn", None)
    return type(layer).__module__.startswith("transformers") and attn is not None \
        and type(attn).__name__ in _CLIP_LAYERS.get(type(layer).__name__, ()) \
        and type(attn).__module__.startswith("transformers") \
        and all(isinstance(getattr(layer, n, None), nn.Module) for n in ("layer_norm1", "layer_norm2", "mlp"))


class HFMetaClip2TextTower(HFCLIPTextTower):
    """MetaCLIP 2: as CLIP, but always pooled at the first ``eos_token_id`` (no legacy argmax)."""

    legacy_eos = False


def split_text_inputs(texts: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """``input_ids`` and ``attention_mask`` from a dict, a BatchEncoding or a tensor of ids."""
    if isinstance(texts, Tensor):
        return texts, None
    if hasattr(texts, "keys") and "input_ids" in texts.keys():
        return texts["input_ids"], texts.get("attention_mask") if hasattr(texts, "get") else None
    raise TypeError("HuggingFace texts must be a dict/BatchEncoding with 'input_ids' (and 'attention_mask'), "
                    f"or a tensor of input ids; got {type(texts).__name__}")


# -- dispatch -----------------------------------------------------------------------------------------------
def _clip_image(model: nn.Module) -> Tower:
    return HFCLIPVisionTower(model)


def _blip_image(model: nn.Module) -> Tower:
    return HFBlipVisionTower(model)


def _siglip_image(model: nn.Module) -> Tower:
    from .hf_siglip import HFSiglipVisionTower
    return HFSiglipVisionTower(model)


def _siglip2_image(model: nn.Module) -> Tower:
    from .hf_siglip import HFSiglip2VisionTower
    return HFSiglip2VisionTower(model)


def _clip_text(model: nn.Module) -> Tower:
    return HFCLIPTextTower(model)


def _metaclip2_text(model: nn.Module) -> Tower:
    return HFMetaClip2TextTower(model)


def _siglip_text(model: nn.Module) -> Tower:
    from .hf_siglip import HFSiglipTextTower
    return HFSiglipTextTower(model)


def _chinese_clip_text(model: nn.Module) -> Tower:
    from .hf_bert import HFChineseCLIPTextTower
    return HFChineseCLIPTextTower(model)


def _altclip_text(model: nn.Module) -> Tower:
    from .hf_bert import HFAltCLIPTextTower
    return HFAltCLIPTextTower(model)


def _blip_text(model: nn.Module) -> Tower:
    from .hf_bert import HFBlipTextTower
    return HFBlipTextTower(model)


#: transformers class name -> image tower factory
HF_IMAGE_TOWERS: Dict[str, Callable[[nn.Module], Tower]] = {
    "CLIPModel": _clip_image,
    "CLIPVisionModelWithProjection": _clip_image,
    "MetaClip2Model": _clip_image,
    "MetaClip2VisionModelWithProjection": _clip_image,
    "AltCLIPModel": _clip_image,
    "ChineseCLIPModel": _clip_image,
    "BlipForImageTextRetrieval": _blip_image,
    "SiglipModel": _siglip_image,
    "SiglipVisionModel": _siglip_image,
    "Siglip2Model": _siglip2_image,
    "Siglip2VisionModel": _siglip2_image,
}

#: transformers class name -> text tower factory
HF_TEXT_TOWERS: Dict[str, Callable[[nn.Module], Tower]] = {
    "CLIPModel": _clip_text,
    "CLIPTextModelWithProjection": _clip_text,
    "MetaClip2Model": _metaclip2_text,
    "MetaClip2TextModelWithProjection": _metaclip2_text,
    "SiglipModel": _siglip_text,
    "SiglipTextModel": _siglip_text,
    "Siglip2Model": _siglip_text,
    "Siglip2TextModel": _siglip_text,
    "AltCLIPModel": _altclip_text,
    "ChineseCLIPModel": _chinese_clip_text,
    "BlipForImageTextRetrieval": _blip_text,
}

#: classes with one tower only, and what to pass for the other side
_SINGLE_TOWER_HINTS = {
    "image": ("precomputed text embeddings (T, E) as `texts` of ImageTextSimilarity, e.g. "
              "CLIPTextModelWithProjection(...)(**tokens).text_embeds"),
    "text": ("precomputed image embeddings (I, E) as `images` of TextImageSimilarity, e.g. "
             "CLIPVisionModelWithProjection(...)(pixel_values).image_embeds"),
}

#: classes whose towers output hidden states, not joint-space embeddings
_NO_PROJECTION = {"CLIPVisionModel": "CLIPVisionModelWithProjection", "CLIPTextModel": "CLIPTextModelWithProjection",
                  "MetaClip2VisionModel": "MetaClip2VisionModelWithProjection",
                  "MetaClip2TextModel": "MetaClip2TextModelWithProjection"}


def _hf_class(model: nn.Module, table: Dict[str, Any]) -> Optional[str]:
    """The first class of ``type(model)``'s MRO that ``table`` knows (user subclasses keep working)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers") and cls.__name__ in table:
            return cls.__name__
    return None


def hf_tower(model: nn.Module, side: str) -> Optional[Tower]:
    """The HF tower of ``model`` for ``side`` ("image" or "text"), None when the class is unknown.

    Raises:
        UnsupportedModelError: for known classes without that side (with a hint on what to pass instead).
    """
    table, other = (HF_IMAGE_TOWERS, HF_TEXT_TOWERS) if side == "image" else (HF_TEXT_TOWERS, HF_IMAGE_TOWERS)
    name = _hf_class(model, table)
    if name is not None:
        return table[name](model)
    name = _hf_class(model, _NO_PROJECTION)
    if name is not None:
        raise UnsupportedModelError(
            f"transformers.{name} outputs hidden states, not CLIP embeddings (it has no projection); load "
            f"transformers.{_NO_PROJECTION[name]} (or the two-tower model) instead")
    name = _hf_class(model, other)
    if name is not None:
        missing = "text" if side == "text" else "image"
        present = "image" if missing == "text" else "text"
        raise UnsupportedModelError(
            f"transformers.{name} has a {present} tower only, no {missing} tower: pass "
            f"{_SINGLE_TOWER_HINTS[present]}")
    return None
