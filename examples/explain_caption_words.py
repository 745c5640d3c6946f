"""Explain a caption's words: which words made CLIP match the caption with the image.

Run offline on the shipped shapes model:   python examples/explain_caption_words.py
  (on a photo of yours, which the tiny shapes model sees as shapes and colours: --image photo.jpg)
With real weights (downloads them):        python examples/explain_caption_words.py --pretrained \
                                               --image dog_and_car.jpg --text "a dog in a car"
  (--pretrained TAG picks the weights, a tag of open_clip.list_pretrained() or a checkpoint file;
   --model NAME the open_clip model, default ViT-B-16 with tag openai)
"""

from _common import normalize, parser, run, setup

from captum_gradeclip import GradECLIP, TextImageSimilarity, viz


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    lm, img01, prompts, _ = setup(args)
    tokens = lm.tokenize(prompts)
    ids = tokens if not isinstance(tokens, dict) else tokens["input_ids"]
    tscorer = TextImageSimilarity(lm.model, normalize(lm, img01))  # token ids -> cosine with the image
    ge = GradECLIP(tscorer)  # the paper's text rule; layer_rule="relu_then_sum" keeps every layer's positive part
    words = ge.attribute(ids, target=[0] * len(prompts))  # (T, L), zero outside the words
    keep = tscorer.tower.layout(ids).report_mask
    rows = []
    for i, p in enumerate(prompts):
        strings = lm.token_strings(ids[i])
        pos = keep[i].nonzero().flatten().tolist()
        share = viz.normalize_words(words[i, pos])  # the authors' display: divide by the sum
        rows.append((p, [strings[j] for j in pos], words[i, pos]))
        if not bool((words[i, pos] > 0).any()):  # nothing to rank: the layers' contributions cancel
            print(f"{p}:  {viz.empty_words_message(ge.layer_rule)}")
        else:
            print(p + ":  " + "  ".join(f"{strings[j]}={float(s):.2f}" for j, s in zip(pos, share)))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "caption_words.html"
    path.write_text(viz.tokens_html_page(rows), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
