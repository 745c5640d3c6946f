"""Compare Grad-ECLIP with Integrated Gradients on the same scorer: maps side by side, time, deletion AUC.

Run offline on the shipped shapes model:   python examples/compare_with_ig.py
  (on a photo of yours, which the tiny shapes model sees as shapes and colours: --image photo.jpg)
With real weights (downloads them):        python examples/compare_with_ig.py --pretrained \
                                               --image dog.jpg --text "a dog"
  (--pretrained TAG picks the weights, a tag of open_clip.list_pretrained() or a checkpoint file;
   --model NAME the open_clip model, default ViT-B-16 with tag openai)
"""

import time

from _common import normalize, parser, run, setup
from captum.attr import IntegratedGradients

from captum_gradeclip import GradECLIP, ImageTextSimilarity, viz
from captum_gradeclip.metrics import deletion_auc, pointing_game


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    lm, img01, prompts, masks = setup(args)
    pixels = normalize(lm, img01)
    scorer = ImageTextSimilarity(lm.model, lm.tokenize(prompts[:1]))
    t0 = time.perf_counter()
    ge_map = GradECLIP(scorer).attribute(pixels, target=0)  # (1, 1, h, w)
    t1 = time.perf_counter()
    ig = IntegratedGradients(scorer).attribute(pixels, target=0, n_steps=50, internal_batch_size=25)
    t2 = time.perf_counter()
    ig_map = ig.abs().sum(dim=1, keepdim=True)  # (1, 1, H, W): per-pixel magnitude
    print(f"prompt {prompts[0]!r}")
    print(f"Grad-ECLIP: {1000 * (t1 - t0):7.1f} ms    Integrated Gradients (50 steps): {1000 * (t2 - t1):7.1f} ms")
    for name, m in (("Grad-ECLIP", ge_map), ("Integrated Gradients", ig_map)):
        auc = float(deletion_auc(scorer, pixels, m, target=0, steps=20))
        line = f"{name:22} deletion AUC {auc:.4f} (lower is better)"
        if masks is not None:
            hit = bool(pointing_game(m, masks[:1][None, 0]))
            line += f"   pointing game on the first object: {'hit' if hit else 'miss'}"
        print(line)
    fig = viz.plot_image_maps(img01, {"Grad-ECLIP": ge_map[0, 0], "Integrated Gradients": ig_map[0, 0]})
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {viz.save_figure(fig, args.out / 'compare_with_ig.png')}")


if __name__ == "__main__":
    run(main)
