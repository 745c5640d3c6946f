"""HuggingFace transformers towers: ``CLIPModel`` vision and text towers.

Works with transformers 4.4x (``get_*_features`` return tensors) and 5.x (they return output objects), and
with every ``attn_implementation``: Grad-ECLIP reads the q/k/v projections, never attention weights.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import Tower, TokenLayout, causal_layout, check_images, check_tokens, cls_image_layout


def features(out: Any) -> Tensor:
    """The embedding tensor of a ``get_*_features`` result (a tensor in 4.x, an output object in 5.x)."""
    if isinstance(out, Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    return out[0]


class HFCLIPVisionTower(Tower):
    """``CLIPModel.vision_model`` + ``visual_projection``, pooled at the class token."""

    side = "image"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.vision_model)
        cfg = model.config.vision_config
        self.patch = (int(cfg.patch_size), int(cfg.patch_size))
        self.image_size = int(cfg.image_size)

    def blocks(self) -> List[nn.Module]:
        return list(self.model.vision_model.encoder.layers)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch, "pixel_values")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        native = tuple(inputs.shape[-2:]) == (self.image_size, self.image_size)
        return features(self.model.get_image_features(pixel_values=inputs, interpolate_pos_encoding=not native))

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        return cls_image_layout(inputs.shape[0], grid, inputs.device)

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        last = self.blocks()[-1]
        if attention is not getattr(last, "self_attn", None):
            return None
        vm = self.model.vision_model

        def tail(x_in: Tensor, y: Tensor) -> Tensor:
            h = x_in + y
            h = h + last.mlp(last.layer_norm2(h))
            return self.model.visual_projection(vm.post_layernorm(h))

        return tail


class HFCLIPTextTower(Tower):
    """``CLIPModel.text_model`` + ``text_projection``, pooled at the EOS token, causal."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.text_model)
        self.eos_id = getattr(model.config.text_config, "eos_token_id", 2)

    def blocks(self) -> List[nn.Module]:
        return list(self.model.text_model.encoder.layers)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs, "input_ids")
        mask = extra[0] if extra else None
        if mask is not None and (not isinstance(mask, Tensor) or mask.shape != inputs.shape):
            raise ValueError(f"attention_mask must be a tensor of the same shape as input_ids "
                             f"{tuple(inputs.shape)}, got {getattr(mask, 'shape', type(mask).__name__)}")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        return features(self.model.get_text_features(input_ids=inputs, attention_mask=mask))

    def query(self, ids: Tensor) -> Tensor:
        if self.eos_id == 2:  # legacy configs: EOS is the largest id
            return ids.argmax(dim=-1)
        return (ids == self.eos_id).int().argmax(dim=-1)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        mask = extra[0] if extra else None
        valid = torch.ones_like(inputs, dtype=torch.bool) if mask is None else mask.bool()
        return causal_layout(inputs, self.query(inputs), valid, True, single_head)


def split_text_inputs(texts: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """``input_ids`` and ``attention_mask`` from a dict, a BatchEncoding or a tensor of ids."""
    if isinstance(texts, Tensor):
        return texts, None
    if hasattr(texts, "keys") and "input_ids" in texts.keys():
        return texts["input_ids"], texts.get("attention_mask") if hasattr(texts, "get") else None
    raise TypeError("HuggingFace texts must be a dict/BatchEncoding with 'input_ids' (and 'attention_mask'), "
                    f"or a tensor of input ids; got {type(texts).__name__}")
