"""Quality benchmark on the shapes world: every method x (pointing game, strict and with the literature's tolerance
of 15 px at 224 px; energy pointing game, deletion AUC, insertion AUC, ms per map), image side and text side, for
the shipped models.

    python benchmarks/quality.py --n 200 --out docs/benchmarks_results.md

The held-out split is generated with a seed never used in training (``--seed``, default 12345). Ground truth is
exact: the mask of the object that the caption names. Methods run on the same scorer, whose texts are every
class prompt ("a red circle", ...); the target of each scene is its caption's class.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict, List

import torch
from captum.attr import FeatureAblation, GradientShap, IntegratedGradients, LayerIntegratedGradients, Saliency

from captum_gradeclip import (AttentionRollout, GradECLIP, GradientWeightedAttention, ImageTextSimilarity, LeGrad,
                              MaskCLIPSimilarity, RawAttention, TextImageSimilarity, TokenGradCAM,
                              patch_feature_mask, pool_to_grid)
from captum_gradeclip.data.shapes import generate_scenes
from captum_gradeclip.metrics import (deletion_auc, energy_pointing_game, insertion_auc, pointing_game,
                                      tolerance_pixels, word_deletion_auc, word_insertion_auc)
from captum_gradeclip.zoo import load_shapes_clip

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pixels, targets) -> (N, 1, h, w)


def image_methods(clip, scorer) -> Dict[str, Method]:
    tower = scorer.tower
    blocks = tower.blocks()
    patch = getattr(tower, "patch", (8, 8))
    grid = lambda x: (x.shape[-2] // patch[0], x.shape[-1] // patch[1])  # noqa: E731
    ge_last = GradECLIP(scorer)
    ge_multi = GradECLIP(scorer, blocks[-3:])
    ge_all = GradECLIP(scorer, blocks)
    ge_single = GradECLIP(scorer, single_head=True)
    token_blocks = tower.token_blocks()
    lg_last, lg_multi, lg_all = LeGrad(scorer, token_blocks[-1:]), LeGrad(scorer, token_blocks[-3:]), LeGrad(scorer)
    legrad: Dict[str, Method] = {
        "LeGrad (last layer)": lambda x, t: lg_last.attribute(x, target=t),
        "LeGrad (last 3 layers)": lambda x, t: lg_multi.attribute(x, target=t),
        f"LeGrad (all {len(token_blocks)} layers)": lambda x, t: lg_all.attribute(x, target=t),
    }
    if tower.attention_pooler() is None:  # the legrad-torch package's feature for class-token CLIPs: token mean
        lg_mean = LeGrad(scorer, feature="mean")
        legrad[f"LeGrad, mean-token feature (all {len(token_blocks)} layers)"] = \
            lambda x, t: lg_mean.attribute(x, target=t)
    ig = IntegratedGradients(scorer)
    gs = GradientShap(scorer)
    sal = Saliency(scorer)
    fa = FeatureAblation(scorer)
    methods: Dict[str, Method] = {
        "Grad-ECLIP (last layer)": lambda x, t: ge_last.attribute(x, target=t),
        "Grad-ECLIP (last 3 layers)": lambda x, t: ge_multi.attribute(x, target=t),
        f"Grad-ECLIP (all {len(blocks)} layers)": lambda x, t: ge_all.attribute(x, target=t),
        "Grad-ECLIP single_head (authors' code)": lambda x, t: ge_single.attribute(x, target=t),
        **legrad,
        "Raw attention (last layer)": lambda x, t: RawAttention(scorer).attribute(x, target=t),
        "Attention rollout": lambda x, t: AttentionRollout(scorer).attribute(x, target=t),
        "GAME (Chefer et al. 2021)": lambda x, t: GradientWeightedAttention(scorer).attribute(x, target=t),
        "Token Grad-CAM": lambda x, t: TokenGradCAM(scorer).attribute(x, target=t),
        "Integrated Gradients (32 steps)": lambda x, t: pool_to_grid(
            ig.attribute(x, target=t, n_steps=32, internal_batch_size=256), grid(x)),
        "Saliency": lambda x, t: pool_to_grid(sal.attribute(x, target=t), grid(x)),
        "GradientShap (16 samples)": lambda x, t: pool_to_grid(
            gs.attribute(x, baselines=torch.zeros_like(x[:1]), target=t, n_samples=16), grid(x)),
        "Patch occlusion (FeatureAblation)": lambda x, t: pool_to_grid(
            fa.attribute(x, target=t, feature_mask=patch_feature_mask(x, patch[0]), perturbations_per_eval=16),
            grid(x), reduce="mean").clamp_min(0),
    }
    try:
        mc = MaskCLIPSimilarity(scorer)
        methods["MaskCLIP dense similarity"] = lambda x, t: mc.attribute(x, target=t)
    except Exception as err:  # pragma: no cover - depends on the model family
        print(f"MaskCLIP skipped: {err}")
    methods["Random map"] = lambda x, t: torch.rand(x.shape[0], 1, *grid(x),
                                                    generator=torch.Generator().manual_seed(0))
    return methods


def text_methods(scorer, embedding) -> Dict[str, Callable]:
    ge = GradECLIP(scorer)
    ge_single = GradECLIP(scorer, single_head=True)
    lig = LayerIntegratedGradients(scorer, embedding)
    return {
        "Grad-ECLIP (last 8 layers)": lambda ids, t, extra: ge.attribute(ids, target=t, additional_forward_args=extra),
        "Grad-ECLIP single_head": lambda ids, t, extra: ge_single.attribute(ids, target=t,
                                                                           additional_forward_args=extra),
        "Raw attention": lambda ids, t, extra: RawAttention(scorer).attribute(ids, target=t,
                                                                              additional_forward_args=extra),
        "Attention rollout": lambda ids, t, extra: AttentionRollout(scorer).attribute(
            ids, target=t, additional_forward_args=extra),
        "GAME": lambda ids, t, extra: GradientWeightedAttention(scorer).attribute(
            ids, target=t, additional_forward_args=extra),
        "Integrated Gradients on embeddings (32 steps)": lambda ids, t, extra: lig.attribute(
            ids, target=t, additional_forward_args=extra, n_steps=32).sum(-1).abs(),
    }


def run_image(kind: str, n: int, seed: int, batch: int) -> List[Dict]:
    clip = load_shapes_clip(kind)
    scenes = generate_scenes(n, image_size=clip.image_size, num_objects=(2, 3), seed=seed)
    scorer = ImageTextSimilarity(clip.model, clip.tokenize(clip.class_prompts()))
    pixels = clip.normalize(scenes.images)
    targets = scenes.target_class
    rows = []
    for name, method in image_methods(clip, scorer).items():
        maps, elapsed = [], 0.0
        for i in range(0, n, batch):
            t0 = time.perf_counter()
            m = method(pixels[i:i + batch], targets[i:i + batch].tolist())
            elapsed += time.perf_counter() - t0
            maps.append(m.detach().float())
        maps = torch.cat(maps)
        masks = scenes.target_mask
        fill_black = ((torch.zeros(3) - torch.tensor(clip.mean)) / torch.tensor(clip.std)).view(1, 3, 1, 1)
        tlist = targets.tolist()
        tol = tolerance_pixels("standard", tuple(masks.shape[-2:]))
        rows.append({
            "model": kind, "side": "image", "method": name,
            "pointing game (strict)": float(pointing_game(maps, masks).float().mean()),
            f"pointing game (tolerance {tol:.1f} px = 15 px at 224)": float(
                pointing_game(maps, masks, tolerance="standard").float().mean()),
            "energy pointing game": float(energy_pointing_game(maps.clamp_min(0), masks).mean()),
            "deletion AUC": float(deletion_auc(scorer, pixels, maps, target=tlist, steps=16, fill="noise",
                                               generator=torch.Generator().manual_seed(0)).mean()),
            "insertion AUC": float(insertion_auc(scorer, pixels, maps, target=tlist, steps=16,
                                                 fill=fill_black.expand_as(pixels)).mean()),
            "ms per map": 1000 * elapsed / n,
        })
        print(json.dumps(rows[-1]))
    return rows


def text_setting(kind: str, n: int, seed: int):
    """The shipped ``kind`` model, its text scorer over ``n`` held-out scenes (column i: scene i), the token ids of
    the scenes' captions and the scorer's extra arguments (HF: the attention mask)."""
    clip = load_shapes_clip(kind)
    scenes = generate_scenes(n, image_size=clip.image_size, num_objects=(2, 3), seed=seed)
    enc = clip.tokenize(scenes.captions)
    ids, mask = (enc, None) if isinstance(enc, torch.Tensor) else (enc["input_ids"], enc["attention_mask"])
    scorer = TextImageSimilarity(clip.model, clip.normalize(scenes.images))
    return clip, scorer, ids, None if mask is None else (mask,)


def run_text(kind: str, n: int, seed: int) -> List[Dict]:
    clip, scorer, ids, extra = text_setting(kind, n, seed)
    mask = None if extra is None else extra[0]
    embedding = clip.model.token_embedding if kind == "open_clip" else \
        clip.model.text_model.embeddings.token_embedding
    targets = list(range(n))
    rows = []
    # words are "a <colour> <shape>": ground truth for the text side is the share of importance on the colour
    # and shape words (the words that identify the object), and the word deletion / insertion AUCs
    for name, method in text_methods(scorer, embedding).items():
        t0 = time.perf_counter()
        maps = torch.cat([method(ids[i:i + 50], targets[i:i + 50],
                                 None if extra is None else (mask[i:i + 50],)).detach().float()
                          for i in range(0, n, 50)])
        elapsed = time.perf_counter() - t0
        rows.append({"model": kind, "side": "text", "method": name, **word_metrics(scorer, ids, extra, maps, targets),
                     "ms per map": 1000 * elapsed / n})
        print(json.dumps(rows[-1]))
    return rows


def word_metrics(scorer, ids: torch.Tensor, extra, maps: torch.Tensor, targets: List[int]) -> Dict[str, float]:
    """Text-side metrics of word maps ``(N, L)`` of captions "a <colour> <shape>" (token positions: 0 start, 1 "a",
    2 colour, 3 shape): the share of importance on the colour and shape words, whether the top word is one of them
    (an all-zero map's top word is the start token: no), and the word deletion / insertion AUCs."""
    layout = scorer.tower.layout(ids, *(extra or ()))
    words = maps * layout.report_mask
    total = words.sum(-1).clamp_min(1e-12)
    content = (words[:, 2] + words[:, 3]) / total
    kwargs = dict(word_mask=layout.report_mask, additional_forward_args=extra)
    return {
        "content-word share": float(content.mean()),
        "top word is colour/shape": float((words.argmax(-1) >= 2).float().mean()),
        "word deletion AUC": float(word_deletion_auc(scorer, ids, words, target=targets, **kwargs).mean()),
        "word insertion AUC": float(word_insertion_auc(scorer, ids, words, target=targets, **kwargs).mean()),
    }


def to_markdown(rows: List[Dict]) -> str:
    out = []
    for side in ("image", "text"):
        for kind in sorted({r["model"] for r in rows}):
            sel = [r for r in rows if r["side"] == side and r["model"] == kind]
            if not sel:
                continue
            cols = [c for c in sel[0] if c not in ("model", "side", "method")]
            out.append(f"### {side.capitalize()} side, shipped `{kind}` model\n")
            out.append("| method | " + " | ".join(cols) + " |")
            out.append("|---|" + "---|" * len(cols))
            for r in sel:
                out.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.3f}" if c != "ms per map" else f"{r[c]:.1f}"
                                                               for c in cols) + " |")
            out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="held-out scenes")
    p.add_argument("--seed", type=int, default=12345, help="held-out seed (never used in training)")
    p.add_argument("--models", default="open_clip,hf")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the markdown tables here (and JSON next to it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: List[Dict] = []
    for kind in args.models.split(","):
        rows += run_image(kind, args.n, args.seed, args.batch)
        rows += run_text(kind, args.n, args.seed)
    md = to_markdown(rows)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
