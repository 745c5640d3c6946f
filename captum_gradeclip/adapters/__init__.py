"""Adapters: model-specific knowledge, one module per family.

Which model gets which tower, and which attention modules are read, is the registry's
(:mod:`~captum_gradeclip.adapters.registry`): :func:`image_tower` and :func:`text_tower` return the
:class:`~captum_gradeclip.adapters.base.Tower` of a model; anything unknown raises
:class:`~captum_gradeclip.errors.UnsupportedModelError`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..hooking import model_lock
from .attention import AttentionAdapter
from .base import TokenLayout, Tower
from .hf_common import features
from .registry import SUPPORTED_MODELS, attention_adapter, image_tower, is_attention_module, \
    register_attention_adapter, text_tower, uncompiled


def _own_encoder(model: nn.Module, side: str) -> Optional[Callable[[Tensor, Optional[Tensor]], Tensor]]:
    """The model's own encoder of ``side`` (open_clip ``encode_image`` / ``encode_text``, HuggingFace
    ``get_image_features`` / ``get_text_features``), as ``f(inputs, attention_mask) -> embeddings``; None if it has
    none."""
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
           "is_attention_module", "register_attention_adapter", "text_tower", "uncompiled", "SUPPORTED_MODELS"]
