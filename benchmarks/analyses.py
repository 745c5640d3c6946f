"""Run the paper's analyses (captum_gradeclip.analysis) on the shipped shapes CLIPs; write JSON and figures.
The multi-object pointing game and the binding analysis also run LeGrad (captum_gradeclip.baselines.LeGrad).

    PYTHONPATH=. python benchmarks/analyses.py --models open_clip,hf --n 100 --out docs/results/analyses \
        --figures docs/images

Models trained on rich captions (the defaults ``open_clip`` and ``hf``) also run the relations analysis (``"a red
circle is left of a blue square"`` against the swapped caption) and the cross-modal correspondence of captions
naming 2-3 objects, and their concreteness corpus is rich captions (prefixes, relations, counts). The 4-block models
of version 0.1, trained on one-object captions, run the rest:

    PYTHONPATH=. python benchmarks/analyses.py --models open_clip_single,hf_single --n 100 \
        --out docs/results/analyses_single --figures docs/images --figure-prefix analysis_single

``--n`` is the number of scenes per experiment (per object count for the multi-object pointing game). ``--n 8``
finishes in well under a minute per model on one CPU core. Every scene is held out (seeds never used in training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch

from captum_gradeclip import ImageTextSimilarity
from captum_gradeclip import analysis as A
from captum_gradeclip.baselines import LeGrad
from captum_gradeclip.analysis import plots
from captum_gradeclip.analysis.shapes_world import (CONCRETENESS_ORDER, SCENE_CONCRETENESS_ORDER,
                                                    SCENE_WORD_CLASSES, WORD_CLASSES, binding_scenes,
                                                    content_positions, naming_captions, relation_scenes,
                                                    scene_corpus_captions, template_captions, token_strings)
from captum_gradeclip.data.shapes import generate_scenes
from captum_gradeclip.zoo import MODELS, load_shapes_clip

SEED = 424_242  # held out: training seeds are (seed + 1) * 10_000_019 + step, evaluation 777_000 and 2024
TOLERANCE_FRACTION = 15 / 224  # the literature's pointing tolerance: 15 px at 224 px


def _floats(t: Any) -> Any:
    return [round(float(v), 4) for v in t] if isinstance(t, torch.Tensor) else round(float(t), 4)


def run_model(kind: str, n: int, progress: bool = True) -> Dict[str, Any]:
    clip = load_shapes_clip(kind)
    size = clip.image_size
    tol = TOLERANCE_FRACTION * size
    last3 = [-3, -2, -1]
    out: Dict[str, Any] = {"image_size": size, "tolerance_px": round(tol, 2)}
    rich = {"left", "and", "is"} <= set(clip.tokenizer.words)  # a vocabulary for relations and object lists
    steps = ["layer profile", "multi-object pointing", "binding", "concreteness"]
    if rich:
        steps += ["relations", "correspondence"]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(steps, desc=kind, file=sys.stderr)

    def done() -> None:
        if bar is not None:
            bar.update(1)

    # 1. mechanism: which layers carry the matching
    scenes = generate_scenes(n, image_size=size, num_objects=(1, 4), seed=SEED)
    px, tok = clip.normalize(scenes.images), clip.tokenize(scenes.captions)
    ids = tok if isinstance(tok, torch.Tensor) else tok["input_ids"]
    strings = token_strings(clip.tokenizer, ids)
    img_prof = A.image_layer_profile(clip.model, px, tok, scenes.target_mask)
    txt_prof = A.text_layer_profile(clip.model, tok, px, content_positions(strings))
    out["layer_profile"] = {
        "image": {"layers": img_prof.layers, "share": _floats(img_prof.share),
                  "pointing": _floats(img_prof.localisation), "energy": _floats(img_prof.energy)},
        "text": {"layers": txt_prof.layers, "share": _floats(txt_prof.share),
                 "content_share": _floats(txt_prof.localisation), "empty": _floats(txt_prof.empty)},
    }
    done()

    # 2. attribution identification: the pointing game as scenes get crowded
    pointing: Dict[str, A.PointingByCount] = {}
    maps_by = {"last layer": [], "last 3 layers": [], "LeGrad, last layer": [], "LeGrad, last 3 layers": [],
               "LeGrad, all layers": []}
    masks, counts = [], []
    for k in (1, 2, 3, 4):
        sc = generate_scenes(n, image_size=size, num_objects=k, seed=SEED + k)
        p, t = clip.normalize(sc.images), clip.tokenize(sc.captions)
        maps_by["last layer"].append(A.image_maps(clip.model, p, t, [-1])[0])
        maps_by["last 3 layers"].append(A.image_maps(clip.model, p, t, last3)[0])
        scorer = ImageTextSimilarity(clip.model, t)  # caption i names an object of scene i
        blocks = scorer.tower.token_blocks()
        for name, chosen in (("last layer", blocks[-1:]), ("last 3 layers", blocks[-3:]), ("all layers", blocks)):
            maps_by[f"LeGrad, {name}"].append(LeGrad(scorer, chosen).attribute(p, target=list(range(len(p)))))
        masks.append(sc.target_mask)
        counts.append(sc.num_objects)
    mask_all, count_all = torch.cat(masks), torch.cat(counts)
    out["multi_object_pointing"] = {}
    for name, ms in maps_by.items():
        for label, tolerance in (("strict", 0.0), ("tolerance", tol)):
            r = A.multi_object_pointing(torch.cat(ms), mask_all, count_all, tolerance=tolerance)
            pointing[f"{name}, {label}"] = r
            out["multi_object_pointing"][f"{name}, {label}"] = {
                "counts": r.counts, "hit_rate": _floats(r.hit_rate), "chance": _floats(r.chance),
                "energy": _floats(r.energy), "n": r.n.tolist()}
    done()

    # 2b. binding: "a red square" vs the absent "a red circle" in a scene of a red square and a blue circle
    images, bmasks, objects = binding_scenes(n, image_size=size, seed=SEED + 7)
    binding = {}
    for name, layers, explainer in (("last layer", [-1], None), ("last 3 layers", last3, None),
                                    ("LeGrad, last layer", [-1], LeGrad), ("LeGrad, last 3 layers", last3, LeGrad)):
        b = A.attribute_binding(clip.model, clip.normalize(images), bmasks, objects, clip.tokenize, layers=layers,
                                explainer=explainer)
        binding[name] = b
        out.setdefault("binding", {})[name] = {
            "binding_accuracy": _floats(b.binding_accuracy), "chance": round(1 / 6, 4),
            "similarity_gap": _floats(b.similarity_gap), "true_energy": _floats(b.true_energy),
            "swapped_energy": _floats(b.swapped_energy), "n": b.n}
    done()

    # 3. concreteness: mean word importance by word class, the classes ordered from abstract to concrete; a model
    # trained on rich captions reads a corpus of them (prefixes, relations, counts), the others the templates
    classes, order = (SCENE_WORD_CLASSES, SCENE_CONCRETENESS_ORDER) if rich else (WORD_CLASSES, CONCRETENESS_ORDER)
    corpus = generate_scenes(4 * n, image_size=size, num_objects=(1, 4) if rich else (1, 3), seed=SEED + 11)
    caps = scene_corpus_captions(corpus, seed=SEED) if rich else template_captions(corpus, seed=SEED)
    ctok = clip.tokenize(caps)
    cids = ctok if isinstance(ctok, torch.Tensor) else ctok["input_ids"]
    cstrings = token_strings(clip.tokenizer, cids)
    ratings = A.class_ratings(classes, order)
    out["concreteness_corpus"] = {"captions": "scene_corpus_captions" if rich else "template_captions",
                                  "class_order": list(order), "examples": caps[:3]}
    words = {}
    for name, single_head, rule in (("unmodified model", False, None), ("single_head", True, None),
                                    ("relu_then_sum", False, "relu_then_sum")):
        wm = A.word_maps(clip.model, ctok, clip.normalize(corpus.images), single_head=single_head, layer_rule=rule)
        wi = A.word_importance(wm, cstrings)
        words[name] = wi
        corr = A.rating_correlation(wi, ratings, n_boot=1000, seed=0)
        out.setdefault("concreteness", {})[name] = {
            "by_class": {c: round(v, 4) for c, v in wi.by_class(classes).items()},
            "by_word": {w: round(v, 4) for w, v in sorted(wi.mean.items(), key=lambda kv: -kv[1])},
            "spearman_with_class_order": [round(corr.rho, 4), round(corr.low, 4), round(corr.high, 4)],
            "empty_maps": wi.empty_maps, "total_maps": wi.total_maps}
    done()
    figures: Dict[str, Any] = {"profiles": {f"{kind} image": img_prof, f"{kind} text": txt_prof},
                               "pointing": pointing, "binding": binding, "words": words}
    if rich:
        # 2c. relations: "a red circle is left of a blue square" against "a blue square is left of a red circle"
        rimages, rmasks, robjects, rels = relation_scenes(n, image_size=size, seed=SEED + 13)
        figures["relations"] = {}
        for name, layers, explainer in (("last layer", [-1], None), ("last 3 layers", last3, None),
                                        ("LeGrad, last 3 layers", last3, LeGrad)):
            r = A.relation_swap(clip.model, clip.normalize(rimages), rmasks, robjects, rels, clip.tokenize,
                                layers=layers, explainer=explainer)
            figures["relations"][name] = r
            out.setdefault("relations", {})[name] = {
                "accuracy": _floats(r.accuracy), "chance": 0.5, "similarity_diff": _floats(r.similarity_diff),
                "accuracy_by_relation": {k: round(v, 4) for k, v in r.accuracy_by_relation.items()},
                "true_energy": _floats(r.true_energy), "swapped_energy": _floats(r.swapped_energy), "n": r.n}
        done()
        # 1b. cross-modal correspondence: captions naming 2-3 of the 2-4 objects of a scene
        csc = generate_scenes(n, image_size=size, num_objects=(2, 4), seed=SEED + 17)
        ccaps, cwords = naming_captions(csc, seed=SEED)
        figures["correspondence"] = {}
        for name, layers in (("last layer", [-1]), ("last 3 layers", last3)):
            c = A.cross_modal_correspondence(clip.model, clip.normalize(csc.images), clip.tokenize(ccaps),
                                             csc.masks, cwords, image_layers=layers)
            figures["correspondence"][name] = c
            out.setdefault("correspondence", {})[name] = {
                "named_energy": _floats(c.named_energy), "unnamed_energy": _floats(c.unnamed_energy),
                "background_energy": _floats(c.background_energy), "rank_correlation": _floats(c.rank_correlation),
                "named_area": _floats(_named_area(csc.masks, cwords)), "n": n}
        done()
    if bar is not None:
        bar.close()
    out["_figures"] = figures
    return out


def _named_area(masks: torch.Tensor, object_words: Any) -> float:
    """Mean share of the image covered by the named objects (the energy a uniform map would put on them)."""
    named = torch.tensor([[len(w) > 0 for w in row] for row in object_words])
    area = masks.flatten(2).float().mean(2)
    return float((area * named).sum(1).mean())


def _classes_seen(results: Dict[str, Any]) -> list:
    """The word classes of the models' corpora, least to most concrete (:data:`SCENE_CONCRETENESS_ORDER` is the
    order of every class; a template corpus has four of them)."""
    seen = {c for m in results["models"].values() for c in m["concreteness_corpus"]["class_order"]}
    return [c for c in SCENE_CONCRETENESS_ORDER if c in seen]


def _in_figure(name: str) -> bool:
    """The figures show Grad-ECLIP's results and LeGrad's over the last 3 layers (the JSON has every result)."""
    return "LeGrad" not in name or "last 3 layers" in name


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="open_clip,hf", help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--n", type=int, default=48, help="scenes per experiment (default 48)")
    ap.add_argument("--out", default="analyses_out", help="output folder for results.json and the PNG figures")
    ap.add_argument("--figures", default=None, help="folder for the PNG figures (default: --out)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--figure-prefix", default="analysis", help="figure file names start with this")
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error("--n must be at least 2")
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MODELS]
    if bad or not kinds:
        ap.error(f"--models takes names of {MODELS}, got {args.models!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import matplotlib
    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(args.figures) if args.figures else out
    fig_dir.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"n": args.n, "seed": SEED, "models": {}}
    figures: Dict[str, Dict[str, Any]] = {"profiles": {}, "pointing": {}, "binding": {}, "words": {},
                                          "relations": {}, "correspondence": {}}
    t0 = time.perf_counter()
    for kind in kinds:
        res = run_model(kind, args.n)
        for key, val in res.pop("_figures").items():
            figures[key].update({f"{kind}: {k}" if key != "profiles" else k: v for k, v in val.items()})
        results["models"][kind] = res
    results["seconds"] = round(time.perf_counter() - t0, 1)
    names = {key: f"{args.figure_prefix}_{stem}.png" for key, stem in (
        ("profiles", "layers"), ("pointing", "pointing"), ("binding", "binding"), ("words", "words"),
        ("relations", "relations"), ("correspondence", "correspondence"))}
    if not figures["relations"]:
        del names["relations"], names["correspondence"]
    plt = plots._plt()
    extra = [(key, draw(figures[key])) for key, draw in (("relations", plots.plot_relations),
                                                         ("correspondence", plots.plot_correspondence))
             if figures[key]]
    for key, fig in [("profiles", plots.plot_layer_profiles(figures["profiles"])),
                     ("pointing", plots.plot_pointing_by_count(
                         {k: v for k, v in figures["pointing"].items() if k.endswith("strict") and _in_figure(k)})),
                     ("binding", plots.plot_binding({k: v for k, v in figures["binding"].items() if _in_figure(k)})),
                     ("words", plots.plot_word_importance(figures["words"], SCENE_WORD_CLASSES,
                                                          _classes_seen(results))),
                     *extra]:
        fig.savefig(fig_dir / names[key], dpi=110)
        plt.close(fig)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {out / 'results.json'} and {len(names)} figures in {results['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
