"""The mechanism of matching: where in depth it happens, and how the two sides correspond."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..metrics import energy_pointing_game, pointing_game
from ..scorers import ImageTextSimilarity, TextImageSimilarity
from ._explain import image_maps, pair_count, text_args, word_maps
from .statistics import spearman


@dataclass
class LayerProfile:
    """What each layer of one tower contributes when it is explained alone.

    Attributes:
        side: ``"image"`` or ``"text"``.
        layers: one description per block, first to last (dotted module names).
        share: ``(B,)`` mean over pairs of the layer's share of the summed map mass of all layers (sums to 1
            over layers, up to pairs whose maps are all zero).
        localisation: ``(B,)`` image side: pointing-game hit rate of the layer's map on the named object's mask;
            text side: share of the layer's word importance on the content words. NaN when no masks or content
            positions were given.
        energy: ``(B,)`` image side: share of the map's energy inside the named object (NaN on the text side).
        empty: ``(B,)`` fraction of pairs whose map of that layer is all zero.
    """

    side: str
    layers: List[str]
    share: Tensor
    localisation: Tensor
    energy: Tensor
    empty: Tensor


def _names(model: nn.Module, blocks: Sequence[nn.Module]) -> List[str]:
    names = {id(m): name for name, m in model.named_modules()}
    return [names.get(id(b), type(b).__name__) for b in blocks]


def _shares(per_layer_mass: Tensor) -> Tensor:
    """``(B, N)`` masses -> ``(B,)`` mean share per layer over the pairs with a non-zero total."""
    total = per_layer_mass.sum(0)
    keep = total > 0
    if not bool(keep.any()):
        return torch.full((per_layer_mass.shape[0],), float("nan"))
    return (per_layer_mass[:, keep] / total[keep]).mean(1)


def image_layer_profile(model: nn.Module, images: Tensor, texts: Any, masks: Optional[Tensor] = None, *,
                        single_head: bool = False, tolerance: float = 0.0) -> LayerProfile:
    """Explain every block of the image tower on its own and measure what each contributes.

    Args:
        model: a supported CLIP model.
        images: ``(N, 3, H, W)`` preprocessed images.
        texts: ``N`` tokenised texts, text ``i`` describing image ``i``.
        masks: ``(N, H, W)`` bool masks of what each text names (optional; localisation needs them).
        single_head: reproduce the authors' code.
        tolerance: pointing-game tolerance in mask pixels (0: strict).

    Returns:
        A :class:`LayerProfile` with ``side="image"``.

    Examples:
        >>> prof = image_layer_profile(clip.model, pixels, clip.tokenize(captions), masks)  # doctest: +SKIP
        >>> prof.share                                    # where in depth the matching happens  # doctest: +SKIP
    """
    pair_count(images, texts)
    blocks = ImageTextSimilarity(model, texts).tower.blocks()
    mass, hits, energy, empty = [], [], [], []
    for block in blocks:
        maps, _ = image_maps(model, images, texts, [block], single_head=single_head)
        flat = maps.flatten(1)
        mass.append(flat.sum(1))
        empty.append((flat.amax(1) <= 0).float().mean())
        if masks is not None:
            hits.append(pointing_game(maps, masks, tolerance=tolerance).float().mean())
            energy.append(energy_pointing_game(maps, masks).mean())
    nan = torch.full((len(blocks),), float("nan"))
    return LayerProfile(side="image", layers=_names(model, blocks), share=_shares(torch.stack(mass)),
                        localisation=torch.stack(hits) if hits else nan, energy=torch.stack(energy) if energy else nan,
                        empty=torch.stack(empty))


def text_layer_profile(model: nn.Module, texts: Any, images: Tensor, content: Optional[Tensor] = None, *,
                       single_head: bool = False) -> LayerProfile:
    """Explain every block of the text tower on its own and measure what each contributes.

    Args:
        model: a supported CLIP model.
        texts: ``N`` tokenised texts, text ``i`` describing image ``i``.
        images: ``(N, 3, H, W)`` preprocessed images.
        content: ``(N, L)`` bool, the token positions of content words (optional).
        single_head: reproduce the authors' code.

    Returns:
        A :class:`LayerProfile` with ``side="text"`` (``localisation`` = share on the content words).
    """
    pair_count(images, texts)
    ids, _ = text_args(texts)
    blocks = TextImageSimilarity(model, images[:1]).tower.blocks()
    if content is not None and tuple(content.shape) != tuple(ids.shape):
        raise ValueError(f"content must have the shape of the token ids {tuple(ids.shape)}, got "
                         f"{tuple(content.shape)}")
    mass, on_content, empty = [], [], []
    for block in blocks:
        words = word_maps(model, texts, images, [block], single_head=single_head)
        total = words.sum(1)
        mass.append(total)
        empty.append((total <= 0).float().mean())
        if content is not None:
            keep = total > 0
            share = (words * content.to(words.device)).sum(1)[keep] / total[keep]
            on_content.append(share.mean() if keep.any() else torch.tensor(float("nan")))
    nan = torch.full((len(blocks),), float("nan"))
    return LayerProfile(side="text", layers=_names(model, blocks), share=_shares(torch.stack(mass)),
                        localisation=torch.stack(on_content) if on_content else nan, energy=nan,
                        empty=torch.stack(empty))


@dataclass
class Correspondence:
    """How a caption naming several objects splits its importance, on both sides.

    Attributes:
        image_energy: ``(N, M)`` share of each image map's energy on each object (0 for absent slots).
        named_energy: mean share of the energy on the named objects (all of them together).
        unnamed_energy: mean share on objects present but not named.
        background_energy: mean share outside every object.
        word_share: ``(N, M)`` share of the caption's word importance on each named object's words.
        rank_correlation: Spearman correlation, over every (scene, named object), between the object's word
            share and its image energy share among the named objects (NaN with fewer than 3 points).
    """

    image_energy: Tensor
    named_energy: float
    unnamed_energy: float
    background_energy: float
    word_share: Tensor
    rank_correlation: float


def cross_modal_correspondence(model: nn.Module, images: Tensor, texts: Any, object_masks: Tensor,
                               object_words: Sequence[Sequence[Sequence[int]]], *,
                               image_layers: Optional[Sequence[Any]] = None,
                               text_layers: Optional[Sequence[Any]] = None,
                               single_head: bool = False) -> Correspondence:
    """Do the words that matter more on the text side name the objects that get more energy on the image side?

    Args:
        model: a supported CLIP model.
        images: ``(N, 3, H, W)`` preprocessed images.
        texts: ``N`` tokenised captions, caption ``i`` describing image ``i``.
        object_masks: ``(N, M, H, W)`` bool masks of every object of each scene (all False for empty slots).
        object_words: for each caption, for each of the ``M`` object slots, the token positions of the words
            that name it (an empty list: the object is present but not named, or the slot is empty).
        image_layers: explained image blocks (block modules or indices; default: GradECLIP's default).
        text_layers: explained text blocks (block modules or indices; default: GradECLIP's default).
        single_head: reproduce the authors' code.

    Returns:
        A :class:`Correspondence`.
    """
    n = pair_count(images, texts)
    if object_masks.dim() != 4 or object_masks.shape[0] != n:
        raise ValueError(f"object_masks must be (N, M, H, W) with N = {n}, got {tuple(object_masks.shape)}")
    m = int(object_masks.shape[1])
    if len(object_words) != n or any(len(slots) != m for slots in object_words):
        raise ValueError(f"object_words must give, for each of the {n} captions, a list of token positions for "
                         f"each of the {m} object slots")
    maps, _ = image_maps(model, images, texts, image_layers, single_head=single_head)
    words = word_maps(model, texts, images, text_layers, single_head=single_head)
    energy = torch.stack([energy_pointing_game(maps, object_masks[:, j]) for j in range(m)], 1).cpu()
    present = object_masks.flatten(2).any(2).cpu()
    energy = energy * present
    named = torch.tensor([[len(object_words[i][j]) > 0 for j in range(m)] for i in range(n)])
    if bool((named & ~present).any()):
        raise ValueError("object_words names an object slot whose mask is empty")
    word_total = words.sum(1).cpu()
    word_share = torch.zeros(n, m)
    for i in range(n):
        for j in range(m):
            if object_words[i][j] and word_total[i] > 0:
                word_share[i, j] = words[i, list(object_words[i][j])].sum().cpu() / word_total[i]
    named_energy = energy.masked_fill(~named, 0).sum(1)
    unnamed_energy = energy.masked_fill(named | ~present, 0).sum(1)
    xs, ys = [], []
    for i in range(n):
        if int(named[i].sum()) < 2 or word_total[i] <= 0 or named_energy[i] <= 0:
            continue
        for j in range(m):
            if named[i, j]:
                xs.append(float(word_share[i, j] / word_share[i][named[i]].sum().clamp_min(1e-12)))
                ys.append(float(energy[i, j] / named_energy[i]))
    rho = spearman(torch.tensor(xs), torch.tensor(ys)) if len(xs) >= 3 else float("nan")
    return Correspondence(image_energy=energy, named_energy=float(named_energy.mean()),
                          unnamed_energy=float(unnamed_energy.mean()),
                          background_energy=float((1 - energy.sum(1)).mean()), word_share=word_share,
                          rank_correlation=rho)
