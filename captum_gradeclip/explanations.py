"""Explanations of images against prompts with a loaded model: the maps of both sides, the words they score,
and the raw maps saved to a file.

:func:`explain_images` is what the ``gradeclip explain`` command, the web app and the dataset jobs run on a
:class:`~captum_gradeclip.loading.LoadedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .grad_eclip import GradECLIP
from .loading import LoadedModel, normalize_pixels
from .scorers import ImageTextSimilarity, TextImageSimilarity


@dataclass
class Explanation:
    """Everything written for one image."""

    image01: torch.Tensor  # (3, H, W)
    prompts: List[str]
    similarity: np.ndarray  # (T,)
    image_maps: Optional[np.ndarray]  # (T, h, w)
    word_maps: Optional[np.ndarray]  # (T, L)
    words: Optional[List[List[str]]]  # per prompt, the token strings of the explained positions
    word_scores: Optional[List[np.ndarray]]
    text_layer_rule: Optional[str] = None  # how the text side combined its layers (GradECLIP.layer_rule)


def explain_images(lm: LoadedModel, images01: torch.Tensor, prompts: List[str], *, explain: str,
                   layers: Optional[int], single_head: bool, device: str,
                   layer_rule: Optional[str] = None) -> List[Explanation]:
    """Grad-ECLIP maps of a batch of same-size images ``(B, 3, H, W)`` against every prompt (image side), and
    of every prompt's words against each image (text side). ``layer_rule``: how several layers are combined
    (``GradECLIP``'s option; None: the paper's rule for each side)."""
    texts = lm.tokenize(prompts)
    pixels = normalize_pixels(images01.to(device), lm)
    scorer = ImageTextSimilarity(lm.model, texts)
    with torch.no_grad():
        sims = scorer(pixels).float().cpu().numpy()
    image_maps = None
    if explain in ("image", "both"):
        blocks = scorer.tower.blocks()[-layers:] if layers else None
        image_maps = GradECLIP(scorer, blocks, single_head=single_head,
                               layer_rule=layer_rule).attribute_all(pixels).cpu().numpy()
    results = []
    for b in range(images01.shape[0]):
        word_maps = words = word_scores = text_rule = None
        if explain in ("text", "both"):
            tscorer = TextImageSimilarity(lm.model, pixels[b:b + 1])
            ids, mask = _split_text_inputs(texts)
            extra = () if mask is None else (mask,)
            blocks = tscorer.tower.blocks()[-layers:] if layers else None
            ge = GradECLIP(tscorer, blocks, single_head=single_head, layer_rule=layer_rule)
            text_rule = ge.layer_rule
            word_maps = ge.attribute(ids, target=[0] * len(prompts),
                                     additional_forward_args=extra or None).cpu().numpy()
            keep = tscorer.tower.layout(ids, *extra).report_mask.cpu()
            words, word_scores = [], []
            for i in range(len(prompts)):
                strings = lm.token_strings(ids[i].cpu())
                positions = keep[i].nonzero().flatten().tolist()
                words.append([strings[p] for p in positions])
                word_scores.append(word_maps[i, positions])
        results.append(Explanation(image01=images01[b], prompts=prompts, similarity=sims[b],
                                   image_maps=None if image_maps is None else image_maps[b],
                                   word_maps=word_maps, words=words, word_scores=word_scores,
                                   text_layer_rule=text_rule))
    return results


def explain_image(lm: LoadedModel, image01: torch.Tensor, prompts: List[str], **kwargs: Any) -> Explanation:
    """:func:`explain_images` for one ``(3, H, W)`` image."""
    return explain_images(lm, image01[None], prompts, **kwargs)[0]


def save_maps(exp: Explanation, path: Path) -> Path:
    """The raw maps of one explanation as a compressed .npz: ``prompts``, ``similarity`` and, where computed,
    ``image_maps`` ``(T, h, w)`` and ``word_maps`` ``(T, L)``."""
    arrays = {"prompts": np.array(exp.prompts), "similarity": exp.similarity}
    if exp.image_maps is not None:
        arrays["image_maps"] = exp.image_maps
    if exp.word_maps is not None:
        arrays["word_maps"] = exp.word_maps
    np.savez_compressed(path, **arrays)
    return path


def _split_text_inputs(texts: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The token ids and the attention mask (None for open_clip's plain ids) of tokenized texts."""
    if isinstance(texts, torch.Tensor):
        return texts, None
    return texts["input_ids"], texts.get("attention_mask")
