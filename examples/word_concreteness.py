"""Which words does CLIP lean on? Mean Grad-ECLIP word importance over your image-caption pairs, rank-correlated
with word ratings (e.g. concreteness norms) -- the paper's concreteness analysis on your own model and data.

Offline, on the shipped shapes model and generated scenes (word classes stand in for ratings):
    python examples/word_concreteness.py
Your model and data (a CSV with columns image,caption; a ratings CSV such as Brysbaert et al.'s norms):
    python examples/word_concreteness.py --model ViT-B-16 --pretrained openai --pairs pairs.csv \
        --ratings Concreteness_ratings.csv --word-column Word --rating-column Conc.M
"""

import argparse
import csv
from pathlib import Path

import torch

from captum_gradeclip import analysis as A
from captum_gradeclip.loading import load_demo, load_image, load_open_clip, prepare_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="open_clip model name (default: the shipped shapes model)")
    ap.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path")
    ap.add_argument("--pairs", type=Path, help="CSV with columns image,caption (paths relative to the CSV)")
    ap.add_argument("--ratings", type=Path, help="CSV/TSV of word ratings")
    ap.add_argument("--word-column", default="word")
    ap.add_argument("--rating-column", default="rating")
    args = ap.parse_args()
    if bool(args.model) != bool(args.pairs):
        ap.error("--model and --pairs go together (without both, the shipped model and generated scenes are used)")

    if args.model:
        lm = load_open_clip(args.model, args.pretrained, "cpu")
        with open(args.pairs, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        imgs = [prepare_image(load_image(args.pairs.parent / r["image"]), lm.image_size, None, "model") for r in rows]
        mean, std = torch.tensor(lm.mean).view(3, 1, 1), torch.tensor(lm.std).view(3, 1, 1)
        images = (torch.stack(imgs) - mean) / std
        captions = [r["caption"] for r in rows]
    else:
        from captum_gradeclip.analysis.shapes_world import template_captions
        from captum_gradeclip.data.shapes import generate_scenes
        lm = load_demo("cpu")
        scenes = generate_scenes(64, image_size=lm.image_size, num_objects=(1, 3), seed=99)
        mean, std = torch.tensor(lm.mean).view(3, 1, 1), torch.tensor(lm.std).view(3, 1, 1)
        images, captions = (scenes.images - mean) / std, template_captions(scenes)

    texts = lm.tokenize(captions)
    words = A.word_maps(lm.model, texts, images)                       # (N, L): caption i against image i
    table = A.word_importance(words, A.word_strings(lm.model, texts, lm.token_strings))
    print(f"{table.empty_maps} of {table.total_maps} word maps are all zero")
    for word, value in sorted(table.mean.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {word:>12s}  {value:.3f}  (n = {table.count[word]})")

    if args.ratings:
        ratings = A.load_word_ratings(args.ratings, word_column=args.word_column, rating_column=args.rating_column)
    elif not args.model:
        from captum_gradeclip.analysis.shapes_world import CONCRETENESS_ORDER, WORD_CLASSES
        ratings = A.class_ratings(WORD_CLASSES, CONCRETENESS_ORDER)
    else:
        return
    corr = A.rating_correlation(table, ratings)
    print(f"Spearman rho = {corr.rho:.2f} (95 % bootstrap interval {corr.low:.2f} to {corr.high:.2f}, "
          f"{len(corr.words)} words)")


if __name__ == "__main__":
    main()
