"""HuggingFace SigLIP and SigLIP 2 towers.

Image side: no class token; the tower is pooled by its multihead attention-pooling ("MAP") head, a learned
probe that attends to every patch through an ``nn.MultiheadAttention``. The explained layer is that pooling
attention: the query is the probe (query axis of length 1), the keys are the patches, and the map is over the
patch grid. SigLIP takes ordinary images ``(N, 3, H, W)`` (other sizes through the model's own
``interpolate_pos_encoding=True``); SigLIP 2 takes either ordinary images, which are patchified here exactly as
its image processor does (row-major patches, each flattened as ``(patch, patch, channel)``), or the processor's
own ``pixel_values (N, P, C*p*p)`` with ``pixel_attention_mask`` and ``spatial_shapes`` passed through Captum's
``additional_forward_args``.

Text side: a bidirectional transformer pooled at the LAST position (SigLIP pads to ``max_length`` and usually
passes no attention mask), then a linear ``head``. The words are the positions that are neither padding
(attention mask), nor the pooled last position, nor a special token id of the config (``tower.special_ids``;
set it to ``set(tokenizer.all_special_ids)`` when the config's ids are not the tokenizer's, e.g. SigLIP 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import ExplainsOneModuleMixin, Tower, TokenLayout, check_images, check_tokens, pair, text_layout, \
    words_from
from .hf_common import accepts, check_text_mask, encoder_layers, inner, output_field, special_token_ids, sub_config


class HFSiglipVisionTower(ExplainsOneModuleMixin, Tower):
    """SigLIP's vision transformer pooled by its attention-pooling ``head`` (no projection: the head's output
    is the embedding)."""

    side = "image"

    def __init__(self, model: nn.Module, vision: Optional[nn.Module] = None) -> None:
        vision = getattr(model, "vision_model", model) if vision is None else vision
        super().__init__(model, vision)
        self.vision = inner(vision, "vision_model")
        head = getattr(self.vision, "head", None)
        if head is None or not getattr(self.vision, "use_head", True):
            raise UnsupportedModelError(
                f"{type(model).__name__} has no attention-pooling head (vision_use_head=False): its image tower "
                "outputs no pooled embedding to explain")
        self.head = head
        cfg = sub_config(model, self.vision, "vision_config")
        self.patch = pair(cfg.patch_size)
        self.image_size = pair(getattr(cfg, "image_size", 0) or 0)
        self.interpolates = accepts(self.vision.forward, "interpolate_pos_encoding")

    def blocks(self) -> List[nn.Module]:
        return encoder_layers(self.vision.encoder) + [self.head]

    def attention_of(self, block: nn.Module) -> nn.Module:
        if block is self.head:
            return self.head.attention
        return super().attention_of(block)

    def attention_pooler(self) -> Optional[nn.Module]:
        return self.head

    def token_head(self) -> Optional[Callable[..., Tensor]]:
        post = getattr(self.vision, "post_layernorm", None)
        if not isinstance(post, nn.Module):
            return None
        return lambda tokens, inputs, *extra: self._head(post(tokens), inputs, *extra)

    def _head(self, tokens: Tensor, inputs: Any, *extra: Any) -> Tensor:
        """The attention-pooling head on normalised tokens (SigLIP 2 also passes its patch mask)."""
        return self.head(tokens)

    def explained_module(self) -> Optional[nn.Module]:
        return self.head

    def refusal(self, layer: nn.Module) -> str:
        return (f"{type(self.model).__name__}'s image tower has no class token: its encoder blocks have no pooling "
                "query, only the attention-pooling head has one (the probe). Explain the head (layer=None, or "
                "vision_model.head)")

    # -- inputs -------------------------------------------------------------------------------------------
    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch, "pixel_values")
        if not self.interpolates and tuple(inputs.shape[-2:]) != self.image_size:
            raise ValueError(
                f"{type(self.model).__name__}: images of size {tuple(inputs.shape[-2:])} need interpolated positional "
                "embeddings, which this transformers version does not offer (no interpolate_pos_encoding); resize "
                f"the images to {self.image_size} or upgrade transformers")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        kwargs = {}
        if self.interpolates and tuple(inputs.shape[-2:]) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True
        return output_field(self.vision(pixel_values=inputs, **kwargs), "pooler_output", 1)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        n = inputs.shape[0]
        keys = torch.ones(n, grid[0] * grid[1], dtype=torch.bool, device=inputs.device)
        return self._probe_layout(keys, grid, padded=False)

    @staticmethod
    def _probe_layout(keys: Tensor, grid: Tuple[int, int], padded: bool = True) -> TokenLayout:
        """One query (the probe, index 0 of the query axis) over the patch keys ``(N, P)``; ``padded``: some keys
        may be padding (decided from shapes, not values, so that no device sync is needed)."""
        n = keys.shape[0]
        allowed = keys[:, None, :] if padded else None  # (N, Lq=1, P)
        return TokenLayout(query=torch.zeros(n, dtype=torch.long, device=keys.device), lam_mask=keys,
                           report_mask=keys, allowed=allowed, grid=grid)

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        head = self.head
        if attention is not head.attention or not all(hasattr(head, n) for n in ("layernorm", "mlp")):
            return None

        def tail(x_in: Tensor, y: Tensor) -> Tensor:  # the head's residual is its attention output, not x_in
            return y + head.mlp(head.layernorm(y))

        return tail


def patchify(images: Tensor, patch: Tuple[int, int]) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, h*w, p*p*C)``: row-major patches, each flattened as (row, column, channel),
    as SigLIP 2's image processor does; trailing pixels that do not fill a patch are dropped."""
    n, c, height, width = images.shape
    h, w = height // patch[0], width // patch[1]
    x = images[:, :, :h * patch[0], :w * patch[1]].reshape(n, c, h, patch[0], w, patch[1])
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, patch[0] * patch[1] * c)


class HFSiglip2VisionTower(HFSiglipVisionTower):
    """SigLIP 2 (NaFlex): patchified inputs with ``pixel_attention_mask`` and ``spatial_shapes``; ordinary images
    ``(N, 3, H, W)`` are patchified here on their own ``(H/p, W/p)`` grid (positional embeddings are resized by
    the model for any grid)."""

    def __init__(self, model: nn.Module, vision: Optional[nn.Module] = None) -> None:
        super().__init__(model, vision)
        self.interpolates = True  # the model resizes its positional embeddings to spatial_shapes itself
        # 5.x towers take ``pixel_attention_mask``; 4.x's inner Siglip2VisionTransformer names it ``attention_mask``
        self.mask_name = "pixel_attention_mask" if accepts(self.vision.forward, "pixel_attention_mask") \
            else "attention_mask"

    def _prepare(self, inputs: Any, *extra: Any) -> Tuple[Tensor, Tensor, Tensor, Optional[Tuple[int, int]]]:
        """``pixel_values (N, P, D)``, ``pixel_attention_mask (N, P)``, ``spatial_shapes (N, 2)``, and the grid
        when it is known on the host (ordinary images: nothing to read back from the device)."""
        if isinstance(inputs, Mapping):
            extra = (inputs.get("pixel_attention_mask"), inputs.get("spatial_shapes"))
            inputs = inputs["pixel_values"]
        if isinstance(inputs, Tensor) and inputs.dim() == 4:
            check_images(inputs, self.patch, "pixel_values")
            pv = patchify(inputs, self.patch)
            n, p = pv.shape[0], pv.shape[1]
            grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
            mask = torch.ones(n, p, dtype=torch.long, device=pv.device)
            shapes = torch.stack([torch.full((n,), g, dtype=torch.long, device=pv.device) for g in grid], dim=1)
            return pv, mask, shapes, grid
        if not isinstance(inputs, Tensor) or inputs.dim() != 3 or not inputs.is_floating_point():
            raise ValueError(
                "SigLIP 2 pixel_values must be images (N, 3, H, W) or the processor's patches (N, P, C*p*p) with "
                f"pixel_attention_mask and spatial_shapes; got {getattr(inputs, 'shape', type(inputs).__name__)}")
        if len(extra) < 2 or not isinstance(extra[0], Tensor) or not isinstance(extra[1], Tensor):
            raise ValueError("SigLIP 2 patches (N, P, C*p*p) need additional_forward_args=(pixel_attention_mask, "
                             "spatial_shapes), as returned by its image processor")
        mask, shapes = extra[0], extra[1]
        n, p = inputs.shape[0], inputs.shape[1]
        if tuple(mask.shape) != (n, p) or tuple(shapes.shape) != (n, 2):
            raise ValueError(f"pixel_attention_mask must be (N, P) = {(n, p)} and spatial_shapes (N, 2); got "
                             f"{tuple(mask.shape)} and {tuple(shapes.shape)}")
        return inputs, mask, shapes, None

    def validate(self, inputs: Any, *extra: Any) -> None:
        _, mask, shapes, grid = self._prepare(inputs, *extra)
        if grid is not None:  # built here from images: consistent by construction
            return
        if not bool((shapes == shapes[:1]).all()):
            raise ValueError(
                "SigLIP 2 images of one batch have different spatial_shapes; the map of a batch is one grid: "
                "explain them one at a time, or pass images (N, 3, H, W) of one size")
        h, w = (int(v) for v in shapes[0])
        expected = torch.zeros_like(mask, dtype=torch.bool)
        expected[:, :h * w] = True
        if not bool((mask.bool() == expected).all()):
            raise ValueError(f"pixel_attention_mask must mark exactly the first h*w = {h * w} patches "
                             f"(spatial_shapes {h}x{w}) of every image")

    def _head(self, tokens: Tensor, inputs: Any, *extra: Any) -> Tensor:
        _, mask, _, _ = self._prepare(inputs, *extra)
        return self.head(tokens, mask)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        pv, mask, shapes, _ = self._prepare(inputs, *extra)
        out = self.vision(pixel_values=pv, spatial_shapes=shapes, **{self.mask_name: mask})
        return output_field(out, "pooler_output", 1)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        _, mask, shapes, grid = self._prepare(inputs, *extra)
        if grid is not None:
            return self._probe_layout(mask.bool(), grid, padded=False)
        h, w = shapes[0].tolist()  # the processor's patches: the grid is data (one read per call)
        return self._probe_layout(mask.bool(), (h, w))


class HFSiglipTextTower(Tower):
    """SigLIP / SigLIP 2 text transformer: bidirectional, pooled at the LAST position, then ``head``."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module, text: Optional[nn.Module] = None) -> None:
        text = getattr(model, "text_model", model) if text is None else text
        super().__init__(model, text)
        self.text = inner(text, "text_model")
        cfg = sub_config(model, self.text, "text_config")
        self.max_length = getattr(cfg, "max_position_embeddings", None)
        #: token ids never reported as words (padding, start and end tokens); overridable
        self.special_ids = special_token_ids(cfg)

    def blocks(self) -> List[nn.Module]:
        return encoder_layers(self.text.encoder)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs, "input_ids")
        check_text_mask(inputs, extra)
        if self.max_length is not None and inputs.shape[1] > self.max_length:
            raise ValueError(f"input_ids have length {inputs.shape[1]} > max_position_embeddings {self.max_length}")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        return output_field(self.text(input_ids=inputs, attention_mask=mask), "pooler_output", 1)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        mask = extra[0] if extra else None
        n, length = inputs.shape
        valid = torch.ones_like(inputs, dtype=torch.bool) if mask is None else mask.bool()
        query = torch.full((n,), length - 1, dtype=torch.long, device=inputs.device)
        layout = text_layout(inputs, query, words_from(valid, 0), valid, False, single_head, see_self="always")
        if self.special_ids:
            special = torch.tensor(sorted(self.special_ids), dtype=inputs.dtype, device=inputs.device)
            layout.report_mask &= ~torch.isin(inputs, special)
        return layout
