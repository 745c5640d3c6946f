"""Similarity scorers: turn a CLIP-style model into a forward function that Captum understands.

:class:`ImageTextSimilarity` maps images ``(N, 3, H, W)`` to the cosine similarities ``(N, T)`` with ``T`` fixed
texts; :class:`TextImageSimilarity` maps token ids ``(N, L)`` to the cosine similarities ``(N, I)`` with ``I``
fixed images. The fixed side is encoded once, at construction, and kept inside the scorer (never pass it
through ``additional_forward_args``: Captum's metrics repeat those per perturbation).

Every Captum method runs on the same scorer: ``IntegratedGradients(scorer)``, ``Saliency(scorer)``,
``LayerGradCam(scorer, layer)``, and :class:`~captum_gradeclip.GradECLIP`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import encode_fixed, image_tower, text_tower
from .adapters.base import Tower
from .adapters.hf import split_text_inputs
from .hooking import model_lock


class _Similarity(nn.Module):
    """Shared machinery: an explained tower, fixed normalised features of the other side, cosine head."""

    def __init__(self, model: nn.Module, tower: Tower, fixed: Tensor) -> None:
        super().__init__()
        self.model = model
        self.tower = tower
        with torch.inference_mode(False):  # built under inference_mode: a normal tensor, usable by autograd later
            fixed = F.normalize(fixed.detach().float().clone(), dim=-1)
        self.register_buffer("fixed_features", fixed, persistent=False)

    def embed(self, inputs: Tensor, *additional_forward_args: Any) -> Tensor:
        """Embeddings ``(N, E)`` of the explained side (not normalised)."""
        self.tower.validate(inputs, *additional_forward_args)
        with model_lock(self.tower.model):  # never inside another call's hooked forward (captum_gradeclip.hooking)
            return self.tower.encode(inputs, *additional_forward_args)

    def score(self, embeddings: Tensor) -> Tensor:
        """Cosine similarities ``(N, K)`` of embeddings with the fixed side, computed in float32."""
        fixed = self.fixed_features
        if embeddings.shape[-1] != fixed.shape[-1]:
            raise ValueError(f"embeddings have width {embeddings.shape[-1]} but the fixed side has width "
                             f"{fixed.shape[-1]}: are both sides from the same model?")
        return F.normalize(embeddings.float(), dim=-1) @ fixed.t().to(embeddings.device)

    def forward(self, inputs: Tensor, *additional_forward_args: Any) -> Tensor:
        self.tower.check_values(inputs)
        if isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] == 0:  # an empty batch: (0, T)
            self.tower.validate(inputs, *additional_forward_args)
            return self.fixed_features.new_zeros(0, self.num_targets)
        return self.score(self.embed(inputs, *additional_forward_args))

    @property
    def num_targets(self) -> int:
        """Number of columns of the output (texts or images on the fixed side)."""
        return int(self.fixed_features.shape[0])


def _is_embedding_matrix(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point() and x.dim() == 2


def _check_fixed_side(items: Any, what: str) -> None:
    """The fixed side needs at least one text or image: a ValueError that says so for an empty batch."""
    if isinstance(items, Tensor) and items.dim() > 0 and items.shape[0] == 0:
        raise ValueError(f"the fixed side is empty: the scorer needs at least one {what} (got a tensor of shape "
                         f"{tuple(items.shape)}); every output column is one of them")


class ImageTextSimilarity(_Similarity):
    r"""Images -> cosine similarity with fixed texts: an ``nn.Module`` forward function for Captum.

    ``forward(images)`` returns ``S[n, t] = cos(f_I(images[n]), f_T(texts[t]))``, shape ``(N, T)``, not multiplied
    by CLIP's logit scale. Images may have any size that is a multiple of the patch size (positional
    embeddings are interpolated on the fly).

    Args:
        model (nn.Module): a supported open_clip or HuggingFace CLIP-family model (see ``docs/models.md``;
            ``captum_gradeclip.adapters.SUPPORTED_MODELS``).
        texts: the fixed texts: token ids ``(T, L)`` (open_clip), a dict/BatchEncoding with ``input_ids`` and
            ``attention_mask`` (HuggingFace), or precomputed text embeddings ``(T, E)`` (float). Token ids are
            encoded by the model, whatever its text tower (it need not be one that Grad-ECLIP explains).

    Examples::

        >>> model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained="openai")
        >>> tokens = open_clip.get_tokenizer("ViT-B-16")(["a dog", "a car"])
        >>> scorer = ImageTextSimilarity(model, tokens)
        >>> scorer(images).shape
        torch.Size([N, 2])
    """

    def __init__(self, model: nn.Module, texts: Any) -> None:
        tower = image_tower(model)
        if _is_embedding_matrix(texts):
            fixed = texts
        else:  # encoded by the model whatever its text tower (explained or not)
            ids, mask = split_text_inputs(texts)
            _check_fixed_side(ids, "text")
            fixed = encode_fixed(model, "text", ids, mask)
        _check_fixed_side(fixed, "text")
        super().__init__(model, tower, fixed)


class TextImageSimilarity(_Similarity):
    r"""Token ids -> cosine similarity with fixed images: an ``nn.Module`` forward function for Captum.

    ``forward(input_ids[, attention_mask])`` returns ``S[n, i] = cos(f_T(texts[n]), f_I(images[i]))``, shape
    ``(N, I)``. For HuggingFace models pass the attention mask through Captum's ``additional_forward_args``.

    Args:
        model (nn.Module): a supported open_clip or HuggingFace CLIP-family model (see ``docs/models.md``).
        images: the fixed images ``(I, 3, H, W)`` (preprocessed), or precomputed image embeddings ``(I, E)``.
            Images are encoded by the model, whatever its image tower (it need not be one that Grad-ECLIP explains).

    Examples::

        >>> tscorer = TextImageSimilarity(model, images)
        >>> tscorer(tokens).shape
        torch.Size([N, I])
    """

    def __init__(self, model: nn.Module, images: Any) -> None:
        tower = text_tower(model)
        _check_fixed_side(images, "image")
        if _is_embedding_matrix(images):
            fixed = images
        else:  # encoded by the model whatever its image tower (explained or not)
            fixed = encode_fixed(model, "image", images)
        super().__init__(model, tower, fixed)


def is_scorer(obj: Any) -> bool:
    """Whether ``obj`` is one of this package's scorers."""
    return isinstance(obj, _Similarity)


__all__ = ["ImageTextSimilarity", "TextImageSimilarity", "is_scorer"]
