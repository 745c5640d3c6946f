"""HuggingFace CLIP: image maps for several prompts and word maps for each prompt, with transformers.

Run offline on the shipped HF shapes model:   python examples/hf_clip.py
With real weights (downloads them):           python examples/hf_clip.py --pretrained --image dog.jpg \
                                                  --text "a dog" --text "a car"
"""

import argparse
from pathlib import Path

import torch

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, describe_layers, viz


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", action="store_true", help="openai/clip-vit-base-patch16 (downloads it)")
    p.add_argument("--image", type=Path)
    p.add_argument("--text", action="append")
    p.add_argument("--out", type=Path, default=Path("examples_out"))
    args = p.parse_args()
    if args.pretrained:
        from PIL import Image
        from transformers import CLIPModel, CLIPProcessor
        model = CLIPModel.from_pretrained("openai/clip-vit-base-patch16").eval()
        processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch16")
        prompts = args.text or ["a dog", "a car"]
        texts = processor(text=prompts, return_tensors="pt", padding=True)
        image = Image.open(args.image).convert("RGB")
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
        strings = processor.tokenizer.convert_ids_to_tokens
    else:
        from captum_gradeclip.data.shapes import COLORS, SHAPES, generate_scenes
        from captum_gradeclip.zoo import load_shapes_clip
        clip = load_shapes_clip("hf")  # a transformers CLIPModel
        model = clip.model
        scene = generate_scenes(1, image_size=clip.image_size, num_objects=3, seed=3)
        prompts = args.text or [f"a {COLORS[c]} {SHAPES[s]}"
                                for c, s in zip(scene.colors[0].tolist(), scene.shapes[0].tolist()) if c >= 0]
        texts = clip.tokenize(prompts)  # {"input_ids", "attention_mask"}
        pixel_values = clip.normalize(scene.images)
        mean, std = torch.tensor(clip.mean).view(3, 1, 1), torch.tensor(clip.std).view(3, 1, 1)
        strings = lambda ids: clip.tokenizer.tokens(ids, skip_pad=False)  # noqa: E731

    scorer = ImageTextSimilarity(model, texts)
    print("image layers explained:", describe_layers(scorer))
    with torch.no_grad():
        sims = scorer(pixel_values)[0]
    maps = GradECLIP(scorer).attribute_all(pixel_values)[0]  # (T, h, w)
    image01 = (pixel_values[0] * std + mean).clamp(0, 1)
    fig = viz.plot_image_maps(image01, list(maps), titles=prompts, scores=sims.tolist())
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {viz.save_figure(fig, args.out / 'hf_image_maps.png')}")

    tscorer = TextImageSimilarity(model, pixel_values)
    ids, mask = texts["input_ids"], texts["attention_mask"]
    words = GradECLIP(tscorer).attribute(ids, target=[0] * len(prompts), additional_forward_args=mask)
    keep = tscorer.tower.layout(ids, mask).report_mask
    rows = []
    for i, prompt in enumerate(prompts):
        tok = strings(ids[i].tolist() if args.pretrained else ids[i])
        pos = keep[i].nonzero().flatten().tolist()
        rows.append((f"{prompt} ({float(sims[i]):.3f})", [tok[j] for j in pos], words[i, pos]))
        print(prompt + ": " + " ".join(f"{tok[j]}={float(w):.3f}" for j, w in zip(pos, words[i, pos])))
    path = args.out / "hf_words.html"
    path.write_text(viz.tokens_html_page(rows), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
