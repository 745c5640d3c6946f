"""Attribution identification: how well the maps find the named object as scenes get crowded, and whether
they expose a model that matches bags of words instead of bound attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..grad_eclip import GradECLIP
from ..metrics import energy_pointing_game, pointing_game
from ..scorers import ImageTextSimilarity
from ._explain import LayerChoice, _blocks


def chance_of_pointing(masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Per example, the hit probability of a point drawn uniformly over the image: the share of pixels within
    ``tolerance`` pixels (Euclidean) of the mask. This is the chance level of the pointing game.

    Args:
        masks: ``(N, H, W)`` bool masks.
        tolerance: disk radius in pixels (as :func:`~captum_gradeclip.metrics.pointing_game`).

    Returns:
        ``(N,)`` float probabilities.
    """
    m = masks.float()[:, None]
    r = int(tolerance)
    if tolerance > 0:
        ys, xs = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disk = ((ys ** 2 + xs ** 2) <= tolerance ** 2).float()[None, None].to(m.device)
        m = (F.conv2d(m, disk, padding=r) > 0).float()
    return m.flatten(1).mean(1).cpu()


@dataclass
class PointingByCount:
    """The pointing game split by the number of objects in the scene.

    Attributes:
        counts: the object counts, ascending.
        hit_rate: ``(K,)`` hit rate of the maps per count.
        chance: ``(K,)`` hit rate of a point drawn uniformly over the image (see :func:`chance_of_pointing`).
        energy: ``(K,)`` mean share of the map's energy inside the named object.
        n: ``(K,)`` examples per count.
        tolerance: the pointing tolerance in pixels (0: strict).
    """

    counts: List[int]
    hit_rate: Tensor
    chance: Tensor
    energy: Tensor
    n: Tensor
    tolerance: float


def multi_object_pointing(maps: Tensor, masks: Tensor, num_objects: Tensor, *,
                          tolerance: float = 0.0) -> PointingByCount:
    """Pointing game per number of objects in the scene, next to its chance level.

    Args:
        maps: ``(N, 1, h, w)`` maps of the named object (any explainer).
        masks: ``(N, H, W)`` bool masks of the named object.
        num_objects: ``(N,)`` objects in each scene.
        tolerance: pointing tolerance in mask pixels.

    Returns:
        A :class:`PointingByCount`.

    Examples:
        >>> res = multi_object_pointing(maps, scenes.target_mask, scenes.num_objects)  # doctest: +SKIP
        >>> res.hit_rate, res.chance                                                    # doctest: +SKIP
    """
    num_objects = torch.as_tensor(num_objects).cpu()
    if num_objects.shape != (maps.shape[0],):
        raise ValueError(f"num_objects must be ({maps.shape[0]},), got {tuple(num_objects.shape)}")
    hits = pointing_game(maps, masks, tolerance=tolerance).float().cpu()
    energy = energy_pointing_game(maps, masks).cpu()
    chance = chance_of_pointing(masks, tolerance)
    counts = sorted(int(k) for k in torch.unique(num_objects))
    sel = [num_objects == k for k in counts]
    return PointingByCount(counts=counts, hit_rate=torch.stack([hits[s].mean() for s in sel]),
                           chance=torch.stack([chance[s].mean() for s in sel]),
                           energy=torch.stack([energy[s].mean() for s in sel]),
                           n=torch.tensor([int(s.sum()) for s in sel]), tolerance=float(tolerance))


def _explain_prompts(model: nn.Module, images: Tensor, prompts: List[str], tokenize: Callable[[List[str]], Any],
                     explainer: Optional[Callable[..., Any]], layers: LayerChoice,
                     single_head: bool) -> Tuple[Dict[str, int], Any, Tensor]:
    """The column of each prompt, an explainer of the image scorer over ``prompts`` (Grad-ECLIP unless
    ``explainer`` is given) and the similarities ``(N, len(prompts))`` of ``images`` with every prompt."""
    column: Dict[str, int] = {p: i for i, p in enumerate(prompts)}
    scorer = ImageTextSimilarity(model, tokenize(prompts))
    if explainer is None:
        method = GradECLIP(scorer, _blocks(scorer, layers), single_head=single_head)
    elif single_head:
        raise ValueError("single_head=True reproduces the authors' Grad-ECLIP code; it does not apply to another "
                         "explainer")
    else:
        method = explainer(scorer, _blocks(scorer, layers))
    with torch.no_grad():
        sims = scorer(images).cpu()
    return column, method, sims


@dataclass
class Binding:
    """Attribute binding in scenes of two objects ``A = (a1, n1)`` and ``B = (a2, n2)`` with ``a1 != a2`` and
    ``n1 != n2``: the true prompts name A and B; the swapped prompts ``(a1, n2)`` and ``(a2, n1)`` name objects
    that are not there, built from words that are.

    Attributes:
        binding_accuracy: share of scenes where both true prompts score above both swapped prompts (a
            bag-of-words model is at chance, 1/6 for exchangeable scores).
        similarity_gap: mean over scenes of (mean true similarity - mean swapped similarity).
        true_energy: ``(3,)`` mean energy share of a true prompt's map on [its object, the other object,
            the background].
        swapped_energy: ``(3,)`` mean energy share of a swapped prompt's map on [the object sharing its
            attribute, the object sharing its noun, the background].
        n: scenes.
    """

    binding_accuracy: float
    similarity_gap: float
    true_energy: Tensor
    swapped_energy: Tensor
    n: int


def attribute_binding(model: nn.Module, images: Tensor, masks: Tensor, objects: Sequence[Tuple[Tuple[str, str],
                      Tuple[str, str]]], tokenize: Callable[[List[str]], Any], *, template: str = "a {} {}",
                      layers: LayerChoice = None, single_head: bool = False,
                      explainer: Optional[Callable[[ImageTextSimilarity, Optional[List[nn.Module]]], Any]] = None
                      ) -> Binding:
    """Does the model bind attributes to objects, and do the maps show it?

    Args:
        model: a supported CLIP model.
        images: ``(N, 3, H, W)`` preprocessed images, each with exactly the two objects of ``objects[i]``.
        masks: ``(N, 2, H, W)`` bool masks of objects A and B.
        objects: per image ``((attribute_A, noun_A), (attribute_B, noun_B))`` with different attributes and
            different nouns.
        tokenize: texts -> the model's token input (ids, or a HuggingFace dict).
        template: prompt template with two fields (attribute, noun).
        layers: explained image blocks (modules or indices; default GradECLIP's default).
        single_head: reproduce the authors' code (Grad-ECLIP only).
        explainer: ``explainer(scorer, blocks)`` -> an attribution whose ``attribute(images, target=...)`` gives
            ``(N, 1, h, w)`` maps, e.g. ``captum_gradeclip.baselines.LeGrad`` (``blocks``: the chosen blocks, None
            for the explainer's default). Default: Grad-ECLIP.

    Returns:
        A :class:`Binding`.
    """
    n = int(images.shape[0])
    if n == 0 or len(objects) != n or masks.shape[:2] != (n, 2):
        raise ValueError(f"images, masks (N, 2, H, W) and objects must describe the same N > 0 scenes; got "
                         f"{n} images, masks {tuple(masks.shape)} and {len(objects)} object pairs")
    for (a1, n1), (a2, n2) in objects:
        if a1 == a2 or n1 == n2:
            raise ValueError(f"binding needs two objects that differ in attribute and in noun, got "
                             f"{(a1, n1)} and {(a2, n2)}")
    roles = {"A": [], "B": [], "a1n2": [], "a2n1": []}
    for (a1, n1), (a2, n2) in objects:
        roles["A"].append(template.format(a1, n1))
        roles["B"].append(template.format(a2, n2))
        roles["a1n2"].append(template.format(a1, n2))
        roles["a2n1"].append(template.format(a2, n1))
    prompts = sorted({p for ps in roles.values() for p in ps})
    column, method, sims = _explain_prompts(model, images, prompts, tokenize, explainer, layers, single_head)
    rows = torch.arange(n)
    col = {r: torch.tensor([column[p] for p in ps]) for r, ps in roles.items()}
    s = {r: sims[rows, c] for r, c in col.items()}
    true_lo = torch.minimum(s["A"], s["B"])
    swapped_hi = torch.maximum(s["a1n2"], s["a2n1"])
    gap = (s["A"] + s["B"]) / 2 - (s["a1n2"] + s["a2n1"]) / 2
    mask_a, mask_b = masks[:, 0], masks[:, 1]

    def split(role: str, first: Tensor, second: Tensor) -> Tensor:
        maps = method.attribute(images, target=col[role].tolist())
        e1 = energy_pointing_game(maps, first).cpu()
        e2 = energy_pointing_game(maps, second).cpu()
        return torch.stack([e1, e2, 1 - e1 - e2], 1)

    true_energy = torch.cat([split("A", mask_a, mask_b), split("B", mask_b, mask_a)]).mean(0)
    # "a1 n2" shares its attribute with A and its noun with B; "a2 n1" the other way round
    swapped_energy = torch.cat([split("a1n2", mask_a, mask_b), split("a2n1", mask_b, mask_a)]).mean(0)
    return Binding(binding_accuracy=float((true_lo > swapped_hi).float().mean()),
                   similarity_gap=float(gap.mean()), true_energy=true_energy, swapped_energy=swapped_energy, n=n)


@dataclass
class RelationSwap:
    """Spatial relations in scenes of two objects A and B where "A <relation> B" is true: the true caption
    against the swapped caption "B <relation> A", built from the same words.

    Attributes:
        accuracy: share of scenes where the true caption scores above the swapped one (chance: 0.5; a model
            blind to word order, a bag of words, scores them equal).
        similarity_diff: mean over scenes of (true similarity - swapped similarity).
        accuracy_by_relation: the accuracy per relation word(s), e.g. ``{"left of": 0.8, ...}``.
        true_energy: ``(3,)`` mean energy share of the true caption's map on [A, B, background].
        swapped_energy: ``(3,)`` mean energy share of the swapped caption's map on [A, B, background] (A is
            still the object the *true* caption names first).
        n: scenes.
    """

    accuracy: float
    similarity_diff: float
    accuracy_by_relation: Dict[str, float]
    true_energy: Tensor
    swapped_energy: Tensor
    n: int


def relation_swap(model: nn.Module, images: Tensor, masks: Tensor, objects: Sequence[Tuple[str, str]],
                  relations: Sequence[str], tokenize: Callable[[List[str]], Any], *,
                  template: str = "a {} is {} a {}", layers: LayerChoice = None, single_head: bool = False,
                  explainer: Optional[Callable[[ImageTextSimilarity, Optional[List[nn.Module]]], Any]] = None
                  ) -> RelationSwap:
    """Does the model prefer the true spatial relation to the swapped one, and where do the maps move?

    Args:
        model: a supported CLIP model.
        images: ``(N, 3, H, W)`` preprocessed images.
        masks: ``(N, 2, H, W)`` bool masks of objects A and B.
        objects: per image the names ``(name_A, name_B)``, e.g. ``("red circle", "blue square")``; they differ.
        relations: per image the relation of A to B that holds, e.g. ``"left of"`` (any words).
        tokenize: texts -> the model's token input (ids, or a HuggingFace dict).
        template: caption template with three fields (first object, relation, second object).
        layers: explained image blocks (modules or indices; default GradECLIP's default).
        single_head: reproduce the authors' code (Grad-ECLIP only).
        explainer: ``explainer(scorer, blocks)`` -> an attribution whose ``attribute(images, target=...)`` gives
            ``(N, 1, h, w)`` maps (see :func:`attribute_binding`). Default: Grad-ECLIP.

    Returns:
        A :class:`RelationSwap`.

    Examples:
        >>> from captum_gradeclip.analysis.shapes_world import relation_scenes  # doctest: +SKIP
        >>> images, masks, objects, rels = relation_scenes(16, seed=0)         # doctest: +SKIP
        >>> r = relation_swap(clip.model, clip.normalize(images), masks, objects, rels, clip.tokenize)  # doctest: +SKIP
        >>> r.accuracy, r.true_energy, r.swapped_energy                          # doctest: +SKIP
    """
    n = int(images.shape[0])
    if n == 0 or len(objects) != n or len(relations) != n or tuple(masks.shape[:2]) != (n, 2):
        raise ValueError(f"images, masks (N, 2, H, W), objects and relations must describe the same N > 0 scenes; "
                         f"got {n} images, masks {tuple(masks.shape)}, {len(objects)} object pairs and "
                         f"{len(relations)} relations")
    for (a, b), rel in zip(objects, relations):
        if a == b:
            raise ValueError(f"the two objects of a relation must have different names, got {a!r} twice")
        if not isinstance(rel, str) or not rel.strip():
            raise ValueError(f"relations must be non-empty strings, got {rel!r}")
    if template.count("{}") != 3:
        raise ValueError(f"template must have three '{{}}' fields (object, relation, object), got {template!r}")
    true = [template.format(a, rel, b) for (a, b), rel in zip(objects, relations)]
    swapped = [template.format(b, rel, a) for (a, b), rel in zip(objects, relations)]
    prompts = sorted(set(true) | set(swapped))
    column, method, sims = _explain_prompts(model, images, prompts, tokenize, explainer, layers, single_head)
    rows = torch.arange(n)
    col_true = torch.tensor([column[p] for p in true])
    col_swap = torch.tensor([column[p] for p in swapped])
    diff = sims[rows, col_true] - sims[rows, col_swap]
    wins = (diff > 0).float()
    by_rel: Dict[str, float] = {}
    for rel in sorted(set(relations)):
        sel = torch.tensor([r == rel for r in relations])
        by_rel[rel] = float(wins[sel].mean())

    def split(cols: Tensor) -> Tensor:
        maps = method.attribute(images, target=cols.tolist())
        ea = energy_pointing_game(maps, masks[:, 0]).cpu()
        eb = energy_pointing_game(maps, masks[:, 1]).cpu()
        return torch.stack([ea, eb, 1 - ea - eb], 1).mean(0)

    return RelationSwap(accuracy=float(wins.mean()), similarity_diff=float(diff.mean()),
                        accuracy_by_relation=by_rel, true_energy=split(col_true), swapped_energy=split(col_swap),
                        n=n)
