"""open_clip towers: VisionTransformer (class-token pooling) and the CLIP text transformer."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import Tower, TokenLayout, causal_layout, check_images, check_tokens, cls_image_layout, \
    interpolate_positions


def _pair(x: Any) -> Tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


class OpenClipVisionTower(Tower):
    """open_clip ``VisionTransformer`` pooled at the class token.

    Images of any size are encoded by the model's own modules, with the positional embedding interpolated
    on the fly (bicubic, class position kept) when the patch grid differs from the model's; the model's
    parameters are never written. Patch dropout is not applied (inference).
    """

    side = "image"

    def __init__(self, model: nn.Module, visual: nn.Module) -> None:
        super().__init__(model, visual)
        v = visual
        if getattr(v, "attn_pool", None) is not None:
            raise UnsupportedModelError(
                f"{type(model).__name__} pools its image tower with an attentional pooler; not supported yet")
        if getattr(v, "pool_type", "tok") != "tok":
            raise UnsupportedModelError(
                f"open_clip VisionTransformer with pool_type={v.pool_type!r} is not supported yet; "
                "supported: class-token pooling ('tok')")
        self.visual = v
        self.patch = _pair(v.conv1.kernel_size)
        self.grid = _pair(v.grid_size)

    def blocks(self) -> List[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch)

    def tokens(self, images: Tensor) -> Tensor:
        """Token embeddings entering the first block, ``(N, 1 + h*w, D)``."""
        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_positions(v.positional_embedding, self.grid, grid).to(x.dtype)
        return v.ln_pre(x)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        v = self.visual
        x = v.transformer(self.tokens(inputs))
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        return cls_image_layout(inputs.shape[0], grid, inputs.device)

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        v = self.visual
        last = self.blocks()[-1]
        if attention is not getattr(last, "attn", None):
            return None
        if not hasattr(last, "ln_2") or not hasattr(last, "mlp"):
            return None

        def tail(x_in: Tensor, y: Tensor) -> Tensor:
            h = x_in + last.ls_1(y)
            h = h + last.ls_2(last.mlp(last.ln_2(h)))
            h = v.ln_post(h)
            return h @ v.proj if v.proj is not None else h

        return tail


class OpenClipTextTower(Tower):
    """open_clip text transformer of ``CLIP`` (token embedding, causal blocks, ``ln_final``, projection),
    pooled at the EOS token (``argmax`` of ids or the tokenizer's eos id)."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.transformer)
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise UnsupportedModelError(f"open_clip text pooling {self.pool_type!r} is not supported")
        self.eos_id = getattr(model, "text_eos_id", None)
        self.causal = getattr(model, "attn_mask", None) is not None
        self.pad_id = getattr(model, "pad_id", 0)

    def blocks(self) -> List[nn.Module]:
        return list(self.model.transformer.resblocks)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs)
        ctx = self.model.positional_embedding.shape[0]
        if inputs.shape[1] != ctx:
            raise ValueError(f"token ids have length {inputs.shape[1]} but the text tower's context length is "
                             f"{ctx}; tokenize with open_clip.get_tokenizer(...) (it pads to the context)")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        return self.model.encode_text(inputs)

    def query(self, tokens: Tensor) -> Tensor:
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        query = self.query(inputs)
        pos = torch.arange(inputs.shape[1], device=inputs.device)
        # open_clip's CLIP text tower attends to padding positions (causal mask only); words are the
        # positions between the start token and the query.
        valid = torch.ones_like(inputs, dtype=torch.bool)
        layout = causal_layout(inputs, query, valid, self.causal, single_head)
        layout.report_mask &= (inputs != self.pad_id) | (pos[None] < query[:, None])
        return layout
