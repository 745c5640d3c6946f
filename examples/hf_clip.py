"""HuggingFace CLIP: image maps for several prompts and word maps for each prompt, with transformers.

Run offline on the shipped HF shapes model:   python examples/hf_clip.py
  (on a photo of yours, which the tiny shapes model sees as shapes and colours: --image photo.jpg)
With real weights (downloads them):           python examples/hf_clip.py --pretrained --image dog.jpg \
                                                  --text "a dog" --text "a car"
  (--model ID picks the model: a hub id, default openai/clip-vit-base-patch16, or a folder written by
   save_pretrained, which needs no network)
"""

import argparse
from pathlib import Path

import torch
from _common import run

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, describe_layers, viz
from captum_gradeclip.errors import InputError
from captum_gradeclip.loading import load_error, load_image, prepare_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", action="store_true", help="use --model instead of the shipped model")
    p.add_argument("--model", default="openai/clip-vit-base-patch16",
                   help="with --pretrained: a hub id (downloaded on first use) or a save_pretrained folder")
    p.add_argument("--image", type=Path, help="an image file (required with --pretrained)")
    p.add_argument("--text", action="append")
    p.add_argument("--out", type=Path, default=Path("examples_out"))
    args = p.parse_args()
    if args.pretrained:
        if args.image is None:
            raise InputError("--pretrained needs --image PATH (a photo to explain)")
        image = load_image(args.image)  # a missing file fails before the (slow) model load
        from transformers import AutoModel, AutoProcessor
        try:
            model = AutoModel.from_pretrained(args.model).eval()
            processor = AutoProcessor.from_pretrained(args.model)
        except Exception as err:  # no network, not in the cache, not a model folder
            raise load_error(f"HuggingFace model {args.model!r}", err) from None
        prompts = args.text or ["a dog", "a car"]
        texts = processor(text=prompts, return_tensors="pt", padding=True)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
        strings = processor.tokenizer.convert_ids_to_tokens
    else:
        from captum_gradeclip.data.shapes import COLORS, SHAPES, generate_scenes
        from captum_gradeclip.zoo import load_shapes_clip
        clip = load_shapes_clip("hf")  # a transformers CLIPModel
        model = clip.model
        if args.image is not None:  # a photo of yours, resized and centre-cropped as a CLIPProcessor does
            images01 = prepare_image(load_image(args.image), clip.image_size, None, "model")[None]
            prompts = args.text or ["a red circle", "a blue square"]
        else:
            scene = generate_scenes(1, image_size=clip.image_size, num_objects=3, seed=3)
            images01 = scene.images
            prompts = args.text or [f"a {COLORS[c]} {SHAPES[s]}"
                                    for c, s in zip(scene.colors[0].tolist(), scene.shapes[0].tolist()) if c >= 0]
        texts = clip.tokenize(prompts)  # {"input_ids", "attention_mask"}
        pixel_values = clip.normalize(images01)
        mean, std = clip.mean, clip.std
        strings = lambda ids: clip.tokenizer.tokens(ids, skip_pad=False)  # noqa: E731

    print(f"explaining {args.image or 'a generated shapes scene'} with "
          f"{args.model if args.pretrained else 'the shipped HuggingFace shapes model'}")
    scorer = ImageTextSimilarity(model, texts)
    print("image layers explained:", describe_layers(scorer))
    with torch.no_grad():
        sims = scorer(pixel_values)[0]
    maps = GradECLIP(scorer).attribute_all(pixel_values)[0]  # (T, h, w)
    fig = viz.plot_image_maps(pixel_values[0], list(maps), titles=prompts, scores=sims.tolist(), mean=mean, std=std)
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
    run(main)
