"""The explanations every analysis starts from: paired image maps and word maps, one layer set at a time."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..adapters import text_tower
from ..adapters.hf import split_text_inputs
from ..grad_eclip import GradECLIP
from ..scorers import ImageTextSimilarity, TextImageSimilarity

LayerChoice = Optional[Sequence[nn.Module]]


def text_args(texts: Any) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Token ids and the extra scorer arguments (the attention mask of HuggingFace text, if any)."""
    ids, mask = split_text_inputs(texts)
    return ids, (() if mask is None else (mask,))


def pair_count(images: Tensor, texts: Any) -> int:
    """The number of (image, text) pairs; raises a ValueError when images and texts do not pair up."""
    ids, _ = text_args(texts)
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("the analysis got an empty batch: pass at least one image and its text")
    if int(ids.shape[0]) != n:
        raise ValueError(f"images and texts must pair up one to one: got {n} images and {int(ids.shape[0])} texts")
    return n


def image_maps(model: nn.Module, images: Tensor, texts: Any, layers: LayerChoice = None, *,
               single_head: bool = False, layer_rule: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Grad-ECLIP image maps of each image for its own text, and the similarities of every pair.

    Args:
        model: a supported CLIP model.
        images: ``(N, 3, H, W)`` preprocessed images.
        texts: ``N`` tokenised texts (ids, or a HuggingFace dict); text ``i`` belongs to image ``i``.
        layers: explained image blocks (default: GradECLIP's default); a list of block indices is accepted.
        single_head: reproduce the authors' code.
        layer_rule: how several layers combine (see :class:`~captum_gradeclip.GradECLIP`; None: the paper's).

    Returns:
        ``(maps (N, 1, h, w), similarity (N, N))``: ``similarity[i, j]`` is image ``i`` against text ``j``.
    """
    pair_count(images, texts)
    scorer = ImageTextSimilarity(model, texts)
    chosen = _blocks(scorer, layers)
    maps = GradECLIP(scorer, chosen, single_head=single_head, layer_rule=layer_rule).attribute(
        images, target=list(range(len(images))))
    with torch.no_grad():
        sims = scorer(images)
    return maps.detach(), sims.detach()


def word_maps(model: nn.Module, texts: Any, images: Tensor, layers: LayerChoice = None, *,
              single_head: bool = False, layer_rule: Optional[str] = None) -> Tensor:
    """Grad-ECLIP word maps ``(N, L)`` of each text for its own image (text ``i`` with image ``i``).

    Args:
        model: a supported CLIP model.
        texts: ``N`` tokenised texts (ids, or a HuggingFace dict).
        images: ``(N, 3, H, W)`` preprocessed images; image ``i`` belongs to text ``i``.
        layers: explained text blocks (modules or indices; default: GradECLIP's default).
        single_head: reproduce the authors' code.
        layer_rule: how several layers combine (None: the paper's "sum, then ReLU"; ``"relu_then_sum"`` leaves
            fewer maps empty, see docs/faq.md).

    Returns:
        ``(N, L)`` non-negative word maps, zero outside the words.
    """
    pair_count(images, texts)
    ids, extra = text_args(texts)
    scorer = TextImageSimilarity(model, images)
    chosen = _blocks(scorer, layers)
    maps = GradECLIP(scorer, chosen, single_head=single_head, layer_rule=layer_rule).attribute(
        ids, target=list(range(len(ids))), additional_forward_args=extra or None)
    return maps.detach()


def _blocks(scorer: Any, layers: Any) -> Optional[List[nn.Module]]:
    if layers is None:
        return None
    blocks = scorer.tower.blocks()
    out = []
    for layer in layers:
        if isinstance(layer, int):
            if not -len(blocks) <= layer < len(blocks):
                raise ValueError(f"layer index {layer} is out of range for a tower of {len(blocks)} blocks")
            out.append(blocks[layer])
        else:
            out.append(layer)
    if not out:
        raise ValueError("layers is empty: pass at least one block (or None for the default)")
    return out


def word_strings(model: nn.Module, texts: Any, token_strings: Callable[[Tensor], List[str]]) -> \
        List[List[Optional[str]]]:
    """Per text, the string of each token position that a word map reports (None for start, end, padding).

    Args:
        model: a supported CLIP model.
        texts: tokenised texts (ids, or a HuggingFace dict).
        token_strings: ids of one text -> one string per position (e.g. ``tokenizer.convert_ids_to_tokens``).

    Returns:
        The token table :func:`~captum_gradeclip.analysis.word_importance` takes.
    """
    ids, extra = text_args(texts)
    keep = text_tower(model).layout(ids, *extra).report_mask.cpu()
    out: List[List[Optional[str]]] = []
    for row, mask in zip(ids.cpu(), keep):
        strings = token_strings(row)
        out.append([s if bool(m) else None for s, m in zip(strings, mask)])
    return out
