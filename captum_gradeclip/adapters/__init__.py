"""Adapters: model-specific knowledge, one module per family.

:func:`image_tower` and :func:`text_tower` return the :class:`~captum_gradeclip.adapters.base.Tower` of a model;
anything unknown raises :class:`~captum_gradeclip.errors.UnsupportedModelError`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..hooking import model_lock
from . import hf_attention  # noqa: F401  (registers the BERT-style and BLIP attention adapters)
from .attention import AttentionAdapter, attention_adapter, is_attention_module
from .base import TokenLayout, Tower

SUPPORTED_MODELS = (
    "open_clip CLIP, CustomTextCLIP and CoCa (image towers: VisionTransformer, ModifiedResNet, timm ViT/EVA/ViTamin, "
    "timm ConvNeXt/FastViT/Swin (last feature map, lambda = 1); "
    "text towers: transformer, TextTransformer, HFTextEncoder); see docs/models.md",
    "transformers.CLIPModel",
    "transformers.CLIPVisionModelWithProjection / CLIPTextModelWithProjection (one tower; the other side as "
    "precomputed embeddings)",
    "transformers.MetaClip2Model (and MetaClip2VisionModelWithProjection / MetaClip2TextModelWithProjection)",
    "transformers.SiglipModel, SiglipVisionModel, SiglipTextModel (image: attention-pooling head)",
    "transformers.Siglip2Model, Siglip2VisionModel, Siglip2TextModel (image: attention-pooling head)",
    "transformers.AltCLIPModel",
    "transformers.ChineseCLIPModel",
    "transformers.BlipForImageTextRetrieval (image-text contrastive path, use_itm_head=False)",
)


def _family(model: nn.Module) -> str:
    module = type(model).__module__
    if module.startswith("open_clip"):
        return "open_clip"
    if module.startswith("transformers"):
        return "hf"
    return "unknown"


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def uncompiled(model: nn.Module, side: str) -> nn.Module:
    """The module that ``torch.compile`` wrapped (the wrapper shares its parameters and submodules), or ``model``
    itself. Grad-ECLIP explains that module and runs it eagerly: its hooks need the modules' own forward. A model
    with separately compiled submodules cannot be run eagerly: UnsupportedModelError names them."""
    model = model._orig_mod if _is_compiled(model) else model
    if any(_is_compiled(sub) for sub in model.modules()):
        raise _unsupported(model, side)
    return model


def _unsupported(model: nn.Module, side: str) -> UnsupportedModelError:
    compiled = [name for name, sub in model.named_modules() if name and _is_compiled(sub)]
    hint = (f"; its submodule(s) {', '.join(compiled)} are compiled with torch.compile: pass a model whose towers "
            "are not compiled (e.g. model.visual = model.visual._orig_mod), or compile the whole model instead"
            ) if compiled else ""
    return UnsupportedModelError(
        f"cannot explain the {side} tower of {type(model).__module__}.{type(model).__name__}{hint}; "
        f"supported models: {'; '.join(SUPPORTED_MODELS)}")


def _open_clip_image_tower(model: nn.Module) -> Tower:
    visual = getattr(model, "visual", None)
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        from .open_clip import OpenClipVisionTower
        return OpenClipVisionTower(model, visual)
    if kind == "ModifiedResNet":
        from .open_clip import OpenClipResNetTower
        return OpenClipResNetTower(model, visual)
    if kind == "TimmModel":
        from .timm import timm_image_tower
        return timm_image_tower(model, visual)
    raise UnsupportedModelError(
        f"cannot explain the image tower {type(visual).__module__}.{kind} of {type(model).__name__}; supported "
        "open_clip image towers: VisionTransformer, ModifiedResNet, TimmModel (ViT, EVA, ViTamin, ConvNeXt, FastViT, "
        "Swin)")


def _open_clip_text_tower(model: nn.Module) -> Tower:
    if type(model).__name__ == "CLIP" and hasattr(model, "transformer"):
        from .open_clip import OpenClipTextTower
        return OpenClipTextTower(model)
    text = getattr(model, "text", None)
    kind = type(text).__name__
    if kind == "TextTransformer":
        from .open_clip import OpenClipTextTransformerTower
        return OpenClipTextTransformerTower(model, text)
    if kind == "HFTextEncoder":
        from .open_clip_hf import OpenClipHFTextTower
        return OpenClipHFTextTower(model, text)
    raise UnsupportedModelError(
        f"cannot explain the text tower {type(text).__module__}.{kind} of {type(model).__name__}; supported "
        "open_clip text towers: the CLIP text transformer, TextTransformer, HFTextEncoder")


def image_tower(model: nn.Module) -> Tower:
    """The image tower adapter of ``model`` (a ``torch.compile`` wrapper is explained through its original)."""
    model = uncompiled(model, "image")
    family = _family(model)
    if family == "open_clip" and hasattr(model, "visual"):
        return _open_clip_image_tower(model)
    if family == "hf":
        from .hf import hf_tower
        tower = hf_tower(model, "image")
        if tower is not None:
            return tower
    raise _unsupported(model, "image")


def text_tower(model: nn.Module) -> Tower:
    """The text tower adapter of ``model`` (a ``torch.compile`` wrapper is explained through its original)."""
    model = uncompiled(model, "text")
    family = _family(model)
    if family == "open_clip" and type(model).__name__ in ("CLIP", "CustomTextCLIP", "CoCa"):
        return _open_clip_text_tower(model)
    if family == "hf":
        from .hf import hf_tower
        tower = hf_tower(model, "text")
        if tower is not None:
            return tower
    raise _unsupported(model, "text")


def _own_encoder(model: nn.Module, side: str) -> Optional[Callable[[Tensor, Optional[Tensor]], Tensor]]:
    """The model's own encoder of ``side`` (open_clip ``encode_image`` / ``encode_text``, HuggingFace
    ``get_image_features`` / ``get_text_features``), as ``f(inputs, attention_mask) -> embeddings``; None if it has
    none."""
    from .hf import features
    if side == "image":
        if callable(getattr(model, "encode_image", None)):
            return lambda x, mask: model.encode_image(x)
        if callable(getattr(model, "get_image_features", None)):
            return lambda x, mask: features(model.get_image_features(pixel_values=x))
        return None
    if callable(getattr(model, "encode_text", None)):
        return lambda ids, mask: model.encode_text(ids)
    if callable(getattr(model, "get_text_features", None)):
        return lambda ids, mask: features(model.get_text_features(
            input_ids=ids, **({} if mask is None else {"attention_mask": mask})))
    return None


def encode_fixed(model: nn.Module, side: str, inputs: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Embeddings ``(K, E)`` of the side a scorer keeps fixed (not explained), without a graph.

    Encoded by the tower adapter where ``side`` has one (the same checks and the same encoding at any image size as
    on the explained side), and otherwise by the model itself (``encode_image`` / ``encode_text`` of open_clip,
    ``get_image_features`` / ``get_text_features`` of HuggingFace): the fixed side is never explained, so any
    architecture that the model can encode will do.

    Args:
        model (nn.Module): the CLIP-style model.
        side (str): ``"image"`` or ``"text"``.
        inputs (Tensor): images ``(K, 3, H, W)`` or token ids ``(K, L)``.
        attention_mask (Tensor, optional): the text's attention mask (HuggingFace). Default: None

    Returns:
        Tensor: ``(K, E)`` embeddings, not normalised.

    Raises:
        UnsupportedModelError: when ``side`` has no adapter and the model has no encoder of its own for it.

    Examples::

        >>> encode_fixed(model, "image", images).shape      # what TextImageSimilarity(model, images) keeps
        torch.Size([I, E])
    """
    try:
        tower = image_tower(model) if side == "image" else text_tower(model)
    except UnsupportedModelError:
        encoder = _own_encoder(model, side)
        if encoder is None:
            raise
        with torch.no_grad(), model_lock(model):
            return encoder(inputs, attention_mask)
    extra = () if attention_mask is None else (attention_mask,)
    tower.validate(inputs, *extra)
    tower.check_values(inputs)
    with torch.no_grad(), model_lock(tower.model):
        return tower.encode(inputs, *extra)


__all__ = ["AttentionAdapter", "TokenLayout", "Tower", "attention_adapter", "encode_fixed", "image_tower",
           "is_attention_module", "text_tower", "SUPPORTED_MODELS"]
