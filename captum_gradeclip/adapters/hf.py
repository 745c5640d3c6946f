"""HuggingFace transformers towers of the CLIP layout: a ViT pooled at its class token, and a causal text
transformer pooled at its EOS token.

Covers ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPTextModelWithProjection``, ``MetaClip2Model`` (and
its ``*WithProjection`` towers), the image towers of ``AltCLIPModel`` and ``ChineseCLIPModel`` (same ViT), and
BLIP's image tower (:class:`HFBlipVisionTower`). SigLIP lives in :mod:`.hf_siglip`, the BERT-like text towers
(CLS pooling) in :mod:`.hf_bert`, the helpers they share in :mod:`.hf_common`; which class gets which tower is
the registry's (:mod:`.registry`).

Works with transformers 4.4x (``get_*_features`` return tensors, towers wrapped in ``*Transformer`` modules) and
5.x (output objects, flattened towers), and with every ``attn_implementation``: Grad-ECLIP reads the q/k/v
projections, never attention weights. Images of another size than the model's are encoded with the model's
own ``interpolate_pos_encoding=True`` (bicubic, class position kept); towers without that argument (old
transformers) raise a clear error for such images instead of silently mis-encoding them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import RowTail, Tower, TokenLayout, check_images, check_tokens, grid_layout, pair, tail_blocks, \
    text_layout, words_from
from .hf_common import accepts, check_text_mask, encoder_layers, inner, output_field, sub_config


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
        return grid_layout(inputs.shape[0], grid, inputs.device)

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
        return text_layout(inputs, self.query(inputs), words_from(valid, 1), valid, True, single_head,
                           see_self="always")

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
