"""Losses of Grad-ECLIP-guided fine-tuning: CLIP's contrastive loss and the region-phrase loss.

Both take features that may have been gathered across ranks (:func:`~.distributed.gather_rows`); with the full
batch on every rank they are the same number everywhere.

Examples:
    >>> img, txt = torch.eye(2), torch.eye(2)
    >>> round(float(clip_contrastive_loss(img, txt, logit_scale=10.0)), 6)   # log(1 + e^-10)
    4.5e-05
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_contrastive_loss", "region_phrase_loss"]


def clip_contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Union[Tensor, float]
                          ) -> Tensor:
    r"""CLIP's symmetric InfoNCE loss over a batch of matching image-text pairs.

    With unit-norm features :math:`I, T` (normalised here) and :math:`s` the logit scale (the exponentiated
    temperature parameter, as ``model.logit_scale.exp()``):

    .. math::

        L = \tfrac12\big(\mathrm{CE}(s\,I T^\top, \mathrm{diag}) + \mathrm{CE}(s\,T I^\top, \mathrm{diag})\big)

    Args:
        image_features (Tensor): ``(B, E)`` image embeddings; row ``b`` matches ``text_features[b]``.
        text_features (Tensor): ``(B, E)`` text embeddings.
        logit_scale (Tensor or float): the scale :math:`s` (already exponentiated).

    Returns:
        Tensor: the scalar loss.

    Examples:
        >>> clip_contrastive_loss(torch.eye(3), torch.eye(3), 1.0).item() > 0
        True
    """
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image features {tuple(image_features.shape)} and text features "
                         f"{tuple(text_features.shape)} must both be (B, E)")
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale * img @ txt.t()
    labels = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def region_phrase_loss(regions: Tensor, phrases: Tensor, targets: Optional[Tensor] = None,
                       phrase_ids: Optional[Tensor] = None, weights: Optional[Tensor] = None,
                       temperature: float = 0.07) -> Tensor:
    r"""Each region against every phrase of the batch: cross-entropy towards its own phrase.

    Region :math:`k` (pooled with the map of its phrase :math:`t_k`) is classified among the batch's phrase
    embeddings with logits :math:`\cos(r_k, p_j) / \tau`. Phrases with equal ``phrase_ids`` (the same text,
    e.g. gathered from several ranks) count once: region :math:`k`'s softmax runs over its own phrase
    :math:`t_k` and the first copy of every other text, so the loss is the same however the batch is split over
    ranks. The loss is the weighted mean over regions:

    .. math::

        L = \frac{\sum_k w_k\,\big(-\log \mathrm{softmax}_j(\cos(r_k, p_j) / \tau)_{t_k}\big)}{\sum_k w_k}

    Args:
        regions (Tensor): ``(R, E)`` region features (normalised here).
        phrases (Tensor): ``(P, E)`` phrase embeddings of the batch.
        targets (Tensor, optional): ``(R,)`` index into ``phrases`` of each region's phrase. Default:
            ``arange(R)`` (then ``P == R``).
        phrase_ids (Tensor, optional): ``(P,)`` integer ids of the phrase texts (equal texts, equal ids).
            Default: every phrase distinct.
        weights (Tensor, optional): ``(R,)`` non-negative weights (0 drops a region, e.g. a blank map).
            Default: all 1.
        temperature (float, optional): :math:`\tau > 0`. Default: 0.07

    Returns:
        Tensor: the scalar loss (0, still attached to the graph, when every weight is 0).

    Examples:
        >>> r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(region_phrase_loss(r, r, temperature=1.0).item(), 4)     # log(1 + e^-1)
        0.3133
    """
    if regions.dim() != 2 or phrases.dim() != 2 or regions.shape[1] != phrases.shape[1]:
        raise ValueError(f"regions (R, E) {tuple(regions.shape)} and phrases (P, E) {tuple(phrases.shape)} "
                         "do not match")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, m = regions.shape[0], phrases.shape[0]
    dev = regions.device
    if targets is None:
        if n != m:
            raise ValueError(f"without targets there must be one phrase per region, got {n} regions, {m} phrases")
        targets = torch.arange(n, device=dev)
    targets = targets.to(dev).long()
    if targets.shape != (n,) or bool(((targets < 0) | (targets >= m)).any()):
        raise ValueError(f"targets must be ({n},) indexes into the {m} phrases")
    r = F.normalize(regions.float(), dim=-1)
    p = F.normalize(phrases.float(), dim=-1)
    logits = r @ p.t() / temperature
    if phrase_ids is not None:
        if phrase_ids.shape != (m,):
            raise ValueError(f"phrase_ids must be ({m},), got {tuple(phrase_ids.shape)}")
        ids = phrase_ids.to(dev)
        same_text = ids[:, None] == ids[None, :]
        first = ~torch.tril(same_text, diagonal=-1).any(dim=1)  # (P,) no equal text before it
        keep = first[None, :] & (ids[targets][:, None] != ids[None, :])
        keep[torch.arange(n, device=dev), targets] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    per_region = F.cross_entropy(logits, targets, reduction="none")
    w = torch.ones(n, device=dev) if weights is None else weights.to(dev).float()
    if w.shape != (n,) or bool((w < 0).any()):
        raise ValueError(f"weights must be ({n},) and non-negative")
    return (per_region * w).sum() / w.sum().clamp(min=1e-12)
