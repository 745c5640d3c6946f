"""Run Grad-ECLIP on a tiny offline build of every open_clip config and write ``docs/models.md``.

Usage::

    PYTHONPATH=. python benchmarks/models_table.py [--out docs/models.md] [names ...]

Each config of ``open_clip.list_models()`` is shrunk (see ``tests/fixtures.py``), built with random weights,
and both towers are run through ``GradECLIP``: an image map at the native size and at twice the width, a text
map, with the fixed side of each scorer encoded by the model. Configs are grouped by tower family; the table says
what is explained, which layers are explained by default, and why a tower raises ``UnsupportedModelError``. The
tower families and the supported-model list above it come from the model registry
(``captum_gradeclip.adapters.registry_docs``; ``--check`` there tells when they are stale).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from collections import OrderedDict
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import open_clip  # noqa: E402
import torch  # noqa: E402

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, UnsupportedModelError  # noqa: E402
from captum_gradeclip.adapters.registry_docs import models_md_sections  # noqa: E402
from captum_gradeclip.layers import describe_layers  # noqa: E402
from fixtures import build, native_image_size, text_tokens  # noqa: E402


def _pattern(names: List[str], side: str) -> str:
    """``visual.transformer.resblocks.1`` -> ``visual.transformer.resblocks[-1]`` (block indices of the real model
    differ from the tiny build's)."""
    if not names:
        return "-"
    pat = re.sub(r"\.(\d+)(?=$|\.)", "[i]", names[-1])
    if "[i]" not in pat:
        return f"`{pat}`"
    return f"`{pat.replace('[i]', '[-1]' if side == 'image' else '[-8:]')}`"


def image_family(model) -> str:
    v = model.visual
    kind = type(v).__name__
    if kind == "VisionTransformer":
        if getattr(v, "attn_pool", None) is not None:
            return "open_clip ViT, attentional pooler (CoCa)"
        blocks = "custom blocks, " if type(v.transformer.resblocks[0]).__name__.startswith("Custom") else ""
        return f"open_clip ViT, {blocks}{'average' if v.pool_type == 'avg' else 'class-token'} pooling"
    if kind == "ModifiedResNet":
        return "open_clip ModifiedResNet (attention pool)"
    if kind == "TimmModel":
        t = v.trunk
        pool = "MAP" if getattr(t, "attn_pool", None) is not None else getattr(t, "global_pool", "")
        extra = ", rotary" if getattr(t, "rope", None) is not None else ""
        if type(getattr(t, "patch_embed", None)).__name__.startswith("Hybrid"):
            extra += ", convolutional stem"
        pool = {"token": "class token", "avg": "average", "MAP": "MAP head"}.get(pool, pool or "none")
        if hasattr(t, "blocks") and isinstance(getattr(t, "global_pool", None), str):
            return f"timm {type(t).__name__} ({pool}{extra})"
        return f"timm {type(t).__name__} (global average of the last feature map)"
    return kind


def text_family(model) -> str:
    text = getattr(model, "text", None)
    if type(model).__name__ == "CLIP":
        causal = "causal" if model.attn_mask is not None else "bidirectional"
        return f"CLIP text transformer ({model.text_pool_type}, {causal})"
    if type(text).__name__ == "TextTransformer":
        if text.cls_emb is not None:
            return "TextTransformer (appended class token, CoCa)"
        causal = "causal" if text.attn_mask is not None else "bidirectional"
        return f"TextTransformer ({text.pool_type}, {causal})"
    if type(text).__name__ == "HFTextEncoder":
        return f"HFTextEncoder {type(text.transformer).__name__} ({type(text.pooler).__name__})"
    return type(text).__name__


def run_one(name: str) -> Dict[str, str]:
    row: Dict[str, str] = {"name": name}
    t0 = time.time()
    model = build(name)
    row["image_family"] = image_family(model)
    row["text_family"] = text_family(model)
    h, w = native_image_size(model)
    images = torch.randn(2, 3, h, w)
    tokens = text_tokens(model)
    try:  # the fixed side of each scorer is encoded by the model itself
        scorer = ImageTextSimilarity(model, tokens)
    except UnsupportedModelError as err:
        row["image"] = "UnsupportedModelError"
        row["image_note"] = str(err).split(";")[0]
        row["image_layers"] = "-"
    else:
        maps = GradECLIP(scorer).attribute(images, target=0)
        assert torch.isfinite(maps).all() and (maps >= 0).all()
        wide = torch.randn(1, 3, h, 2 * w)
        try:
            scorer.tower.validate(wide)
            GradECLIP(scorer).attribute(wide, target=0)
            sizes = "any size"
        except ValueError as err:
            sizes = "native size only (" + str(err).split(": ", 2)[-1] + ")"
        if not scorer.tower.has_attention:
            sizes = (f"{sizes}, sides multiples of {scorer.tower.patch[0]}; lambda = 1 (Grad-CAM on the last feature "
                     "map)") if sizes == "any size" else f"{sizes}; lambda = 1 (Grad-CAM on the last feature map)"
        row["image"] = "yes"
        row["image_note"] = sizes
        row["image_layers"] = _pattern(describe_layers(scorer), "image")
    tscorer = TextImageSimilarity(model, images)
    tmaps = GradECLIP(tscorer).attribute(tokens, target=0)
    assert torch.isfinite(tmaps).all() and (tmaps >= 0).all()
    row["text"] = "yes"
    row["text_layers"] = _pattern(describe_layers(tscorer), "text")
    row["seconds"] = f"{time.time() - t0:.1f}"
    return row


def write_markdown(rows: List[Dict[str, str]], path: str) -> None:
    groups: "OrderedDict[Tuple[str, ...], List[Dict[str, str]]]" = OrderedDict()
    for r in sorted(rows, key=lambda r: (r.get("image_family", ""), r.get("text_family", ""), r["name"])):
        key = (r.get("image_family", "?"), r.get("image", "error"), r.get("image_note", ""),
               r.get("image_layers", ""), r.get("text_family", "?"), r.get("text", "error"), r.get("text_layers", ""))
        groups.setdefault(key, []).append(r)
    n_img = sum(r.get("image") == "yes" for r in rows)
    n_txt = sum(r.get("text") == "yes" for r in rows)
    lines = [
        "# Models: what Grad-ECLIP explains in open_clip",
        "",
        "HuggingFace transformers families (CLIP, SigLIP, SigLIP 2, MetaCLIP 2, AltCLIP, ChineseCLIP, BLIP) are listed "
        "in [models_hf.md](models_hf.md).",
        "",
        "Generated by `benchmarks/models_table.py` from every config of `open_clip.list_models()` "
        f"(open_clip {open_clip.__version__}, {len(rows)} configs), each built offline as a tiny random model of the "
        "same architecture (see `tests/fixtures.py`). Do not edit by hand.",
        "",
        f"- image towers explained: {n_img} / {len(rows)}; text towers explained: {n_txt} / {len(rows)}",
        "- *default layers*: what `GradECLIP(scorer, layer=None)` explains (`[-1]`: the last block, `[-8:]`: the last "
        "8 blocks); `captum_gradeclip.layers.describe_layers` prints them for a real model.",
        "- towers pooled by an attention pooler (CoCa, SigLIP / PE MAP heads, ResNet attention pool) explain that "
        "pooler only: its query is the pooling query.",
        "- average-pooled towers (CLIPA, ViTamin, gap ViTs, HF mean poolers) use every pooled token as a query and "
        "sum the per-query maps.",
        "- towers without a pooling attention (ConvNeXt, FastViT / MobileCLIP-S, Swin) explain the global average "
        "pool of their last feature map: Grad-ECLIP's channel weights `g = dS/d(pooled)` on that map with lambda = 1, "
        "i.e. Grad-CAM on the similarity (see [method.md](method.md)).",
        "- the fixed side of each scorer (the texts of `ImageTextSimilarity`, the images of `TextImageSimilarity`) is "
        "encoded by the model itself; every run here encodes it so.",
        "",
        *models_md_sections(),
        "| image tower | image | default image layer | notes | text tower | text | default text layers | configs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, members in groups.items():
        img_family, img, note, img_layers, txt_family, txt, txt_layers = key
        names = ", ".join(f"`{m['name']}`" for m in members)
        lines.append(f"| {img_family} | {img} | {img_layers} | {note} | {txt_family} | {txt} | {txt_layers} | "
                     f"{names} |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Configs that could not be run", ""]
        lines += [f"- `{r['name']}`: {r['error']}" for r in errors]
    lines += [
        "",
        "## Notes",
        "",
        "- Text words: positions that are not padding, not the pooling token and not the start/end tokens "
        "(CLIP BPE: between the start token and the end token; `eos` pooling: before the EOS id, after a start token "
        "unless the EOS id is 1 as in T5-style vocabularies; last/first pooling: before the trailing padding run; "
        "HF encoders: non-padding tokens except the last one and, where the architecture has a BOS id, the first).",
        "- Rotary embeddings (EVA02, PE) are applied to q and k before lam, exactly as the attention does; at other "
        "input sizes they are rebuilt for the new grid from the model's frequency bands. Relative position biases "
        "(relpos ViTs, T5) enter the attention logits only and so are not part of lam.",
        "- Other input sizes: open_clip ViTs and ResNets interpolate their positional embeddings on the fly; "
        "timm towers "
        "resample theirs with `timm.layers.resample_abs_pos_embed` into a new tensor. Models are never modified.",
        "- Towers without a pooling attention (ConvNeXt, FastViT / MobileCLIP-S, Swin): the map comes on the last "
        "feature map's grid `(H/r, W/r)`, `r` the trunk's reduction (32, or 64 for MobileCLIP2-S3/S4); the "
        "attention baselines (rollout, GAME, ...) raise `UnsupportedModelError` for them, Captum's `LayerGradCam` "
        "explains their earlier stages on the same scorer.",
        "- LeGrad (`captum_gradeclip.baselines.LeGrad`, image side) runs on every image tower with transformer "
        "blocks in this table, at the same input sizes: class-token and average-pooled towers differentiate each "
        "block's own attention, attention-pooled towers (CoCa, SigLIP / PE MAP heads) the pooler's attention applied "
        "to each block's tokens; the attention baselines include the relative position biases of the relpos ViTs in "
        "the probabilities they recompute. ResNet, ConvNeXt, FastViT and Swin towers raise `UnsupportedModelError` "
        "for LeGrad (`tests/test_legrad.py`, slow sweep over every config).",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs", "models.md"))
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    names = args.names or open_clip.list_models()
    rows = []
    for name in names:
        try:
            row = run_one(name)
        except Exception as err:  # noqa: BLE001 - reported in the table
            row = {"name": name, "error": f"{type(err).__name__}: {str(err)[:200]}"}
        rows.append(row)
        print(f"{name:40s} " + " | ".join(f"{k}={v}" for k, v in row.items() if k != "name"), flush=True)
    write_markdown(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
