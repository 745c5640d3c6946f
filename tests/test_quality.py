"""Regression thresholds on the shipped shapes model (held-out scenes, exact masks).

The thresholds sit below the values measured when the model was shipped (benchmarks/quality.py, docs/benchmarks.md),
so a change that breaks the maps' meaning fails here even when every formula test still passes.
"""

import pytest
import torch

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
from captum_gradeclip.baselines import LeGrad
from captum_gradeclip.data.shapes import generate_scenes
from captum_gradeclip.metrics import deletion_auc, energy_pointing_game, pointing_game
from captum_gradeclip.zoo import load_shapes_clip

N = 48
SEED = 2024  # never used in training


@pytest.fixture(scope="module")
def setting():
    clip = load_shapes_clip("open_clip")
    scenes = generate_scenes(N, image_size=clip.image_size, num_objects=(2, 3), seed=SEED)
    scorer = ImageTextSimilarity(clip.model, clip.tokenize(clip.class_prompts()))
    return clip, scenes, scorer, clip.normalize(scenes.images), scenes.target_class.tolist()


def test_image_maps_point_at_the_named_object(setting):
    clip, scenes, scorer, pixels, targets = setting
    last = GradECLIP(scorer).attribute(pixels, target=targets)
    multi = GradECLIP(scorer, scorer.tower.blocks()[-3:]).attribute(pixels, target=targets)
    random = torch.rand(last.shape, generator=torch.Generator().manual_seed(0))
    pg = {name: float(pointing_game(m, scenes.target_mask).float().mean())
          for name, m in (("last", last), ("multi", multi), ("random", random))}
    energy = float(energy_pointing_game(multi, scenes.target_mask).mean())
    # measured at shipping (48 scenes, the 6-block default model): last 0.58, last 3 layers 0.60, random 0.00;
    # energy 0.32 (the 4-block model of 0.1: 0.56, 0.67, 0.00; 0.27)
    assert pg["last"] >= 0.3 and pg["multi"] >= 0.45 and pg["random"] < 0.2, pg
    assert energy >= 0.18


def test_legrad_points_at_the_named_object(setting):
    clip, scenes, scorer, pixels, targets = setting
    maps = LeGrad(scorer).attribute(pixels, target=targets)
    strict = float(pointing_game(maps, scenes.target_mask).float().mean())
    tolerant = float(pointing_game(maps, scenes.target_mask, tolerance="standard").float().mean())
    energy = float(energy_pointing_game(maps, scenes.target_mask).mean())
    # measured at shipping (48 scenes, all 6 layers): strict 0.77, 15 px at 224: 0.94, energy 0.17 (the 0.1 model,
    # all 4 layers: 0.75, 0.90, 0.16)
    assert strict >= 0.55 and tolerant >= 0.7 and tolerant >= strict and energy >= 0.1, (strict, tolerant, energy)


def test_deletion_beats_a_random_map(setting):
    clip, scenes, scorer, pixels, targets = setting
    maps = GradECLIP(scorer, scorer.tower.blocks()[-3:]).attribute(pixels, target=targets)
    random = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    kw = dict(target=targets, steps=8, generator=torch.Generator().manual_seed(0))
    ours = float(deletion_auc(scorer, pixels, maps, **kw).mean())
    chance = float(deletion_auc(scorer, pixels, random, **kw).mean())
    assert ours < chance - 0.05, (ours, chance)  # measured at shipping: 0.086 vs 0.292 (0.1 model: 0.038 vs 0.275)


def test_word_maps_favour_colour_and_shape(setting):
    clip, scenes, _, pixels, _ = setting
    ids = clip.tokenize(scenes.captions)
    words = GradECLIP(TextImageSimilarity(clip.model, pixels)).attribute(ids, target=list(range(N)))
    share = (words[:, 2:4].sum(-1) / words.sum(-1).clamp_min(1e-12)).mean()  # "a <colour> <shape>"
    assert float(share) >= 0.55, float(share)  # measured at shipping: 0.68, 11 of 48 maps empty (0.1 model: 0.70)
