"""Explain one image with several prompts: one Grad-ECLIP heat map per prompt, from ONE forward pass.

Run offline on the shipped shapes model:   python examples/explain_image_prompts.py
  (on a photo of yours, which the tiny shapes model sees as shapes and colours: --image photo.jpg)
With real weights (downloads them):        python examples/explain_image_prompts.py --pretrained \
                                               --image dog_and_car.jpg --text "a dog" --text "a car"
  (--pretrained TAG picks the weights, a tag of open_clip.list_pretrained() or a checkpoint file;
   --model NAME the open_clip model, default ViT-B-16 with tag openai)
"""

import torch
from _common import normalize, parser, run, setup

from captum_gradeclip import GradECLIP, ImageTextSimilarity, viz


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    lm, img01, prompts, _ = setup(args)
    pixels = normalize(lm, img01)
    scorer = ImageTextSimilarity(lm.model, lm.tokenize(prompts))  # images -> cosine with every prompt
    with torch.no_grad():
        sims = scorer(pixels)[0]
    maps = GradECLIP(scorer).attribute_all(pixels)[0]  # (T, h, w): every prompt, one forward pass
    fig = viz.plot_image_maps(img01, list(maps), titles=prompts, scores=sims.tolist())
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_figure(fig, args.out / "image_prompts.png")
    for p, s, m in zip(prompts, sims.tolist(), maps):
        peak = divmod(int(m.flatten().argmax()), m.shape[1])
        print(f"{p!r:28} similarity {s:.3f}  map peak at patch (row, col) {peak}")
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
