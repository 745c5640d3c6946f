"""Evaluation of fine-tuned models on held-out shapes scenes (the protocol of region-alignment fine-tuning).

- ``region_top1``: every object of multi-object scenes is classified from its region feature: the dense patch
  features (:class:`~.regions.DenseImageEncoder`) averaged over the object's ground-truth **box** (weighted by
  how much of each patch the box covers), against every class prompt (``"a red circle"``, 24 classes);
- ``mask_top1``: the same with the object's exact **mask**;
- ``zero_shot_top1``: global zero-shot classification of single-object scenes (image embedding against the
  class prompts);
- ``pointing_game``: the Grad-ECLIP map of each object's class prompt peaks inside that object
  (:func:`~captum_gradeclip.metrics.pointing_game`), over every object of the multi-object scenes.

The scenes come from :func:`~captum_gradeclip.data.generate_scenes` with the seeds :data:`EVAL_SEED` and
``EVAL_SEED + 1``, never used by :class:`~.data.ShapesCaptions` (whose scene ``i`` has seed
``seed * 1_000_003 + i``).

Examples:
    >>> from captum_gradeclip.finetune.train import FineTuneConfig, load_trainable
    >>> trainable = load_trainable(FineTuneConfig(), torch.device("cpu"))
    >>> scores = evaluate_shapes(trainable.model, trainable.tokenize, trainable.normalize, n_multi=8, n_single=8)
    >>> sorted(scores)
    ['mask_top1', 'pointing_game', 'region_top1', 'zero_shot_top1']
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.shapes import ShapesBatch, class_names, generate_scenes
from ..grad_eclip import GradECLIP
from ..metrics import pointing_game
from ..scorers import ImageTextSimilarity
from .regions import DenseImageEncoder, _eval_mode, box_weights, mask_weights, pool_regions

__all__ = ["EVAL_SEED", "evaluate_shapes", "class_prompts"]

#: Seed of the held-out multi-object scenes (single-object scenes: ``EVAL_SEED + 1``).
EVAL_SEED = 777_000_123


def class_prompts(template: str = "a {}") -> List[str]:
    """The prompt of every shapes class, in :func:`~captum_gradeclip.data.class_names` order."""
    return [template.format(name) for name in class_names()]


def _batches(batch: ShapesBatch, size: int):
    for i in range(0, len(batch), size):
        yield batch[i:i + size]


@torch.no_grad()
def _text_features(model: nn.Module, tokenize: Callable, device: torch.device, template: str) -> Tensor:
    return F.normalize(model.encode_text(tokenize(class_prompts(template)).to(device)).float(), dim=-1)


def evaluate_shapes(model: nn.Module, tokenize: Callable[[List[str]], Tensor], normalize: Callable[[Tensor], Tensor],
                    *, n_multi: int = 500, n_single: int = 500, batch_size: int = 100, template: str = "a {}",
                    seed: int = EVAL_SEED) -> Dict[str, float]:
    """Region classification (boxes, masks), zero-shot top-1 and pointing game on held-out scenes.

    Args:
        model: an open_clip CLIP trained on the shapes world (any image size the scenes are generated at: the
            model's ``visual.image_size``).
        tokenize: texts -> token ids.
        normalize: ``[0, 1]`` images -> model input.
        n_multi: multi-object scenes (2 to 4 objects). Default: 500
        n_single: single-object scenes. Default: 500
        batch_size: scenes per forward. Default: 100
        template: class prompt template. Default: ``"a {}"``
        seed: seed of the multi-object scenes (``seed + 1`` for the single ones). Default: :data:`EVAL_SEED`

    Returns:
        dict: ``region_top1``, ``mask_top1``, ``zero_shot_top1``, ``pointing_game``, as fractions in [0, 1].
    """
    device = next(model.parameters()).device
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    multi = generate_scenes(n_multi, image_size=size, num_objects=(2, 4), seed=seed)
    single = generate_scenes(n_single, image_size=size, num_objects=1, seed=seed + 1)
    hits = {"region_top1": [], "mask_top1": [], "zero_shot_top1": [], "pointing_game": []}
    with _eval_mode(model):
        text = _text_features(model, tokenize, device, template)
        encoder = DenseImageEncoder(model)
        explainer = GradECLIP(ImageTextSimilarity(model, text))
        for part in _batches(multi, batch_size):
            part = part.to(device)
            x = normalize(part.images)
            with torch.no_grad():
                _, dense = encoder(x)
            grid = encoder.tower.layout(x).grid
            present = part.class_ids >= 0  # (N, M)
            labels = part.class_ids[present]
            for key, weights in (("region_top1", box_weights(part.boxes, x.shape[-2:], grid)),
                                 ("mask_top1", mask_weights(part.masks, grid))):
                regions = F.normalize(pool_regions(dense, weights.nan_to_num(0.0)).float(), dim=-1)  # (N, M, E)
                hits[key].append((regions[present] @ text.t()).argmax(-1) == labels)
            maps = explainer.attribute_all(x)  # (N, 24, h, w)
            n_idx = torch.arange(len(part), device=device)[:, None].expand_as(part.class_ids)
            chosen = maps[n_idx[present], labels]  # (objects, h, w)
            hits["pointing_game"].append(pointing_game(chosen, part.masks[present]))
        for part in _batches(single, batch_size):
            part = part.to(device)
            with torch.no_grad():
                emb = F.normalize(model.encode_image(normalize(part.images)).float(), dim=-1)
            hits["zero_shot_top1"].append((emb @ text.t()).argmax(-1) == part.class_ids[:, 0])
    return {k: float(torch.cat(v).float().mean()) for k, v in hits.items()}
