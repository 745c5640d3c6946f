#!/usr/bin/env python
"""How close are Grad-ECLIP maps under ``torch.autocast`` (bf16 / fp16) to the fp32 maps?

Same model (open_clip, random weights), same inputs, maps computed once in fp32 and once inside
``torch.autocast(device, dtype)``. For every map (one input, one target) it reports

* ``max |m_autocast - m_fp32|`` relative to the largest fp32 value of the same input's maps, and relative to
  the map's own fp32 max (maps with a max below 5% of the input's largest are counted, not compared: see
  :func:`compare`),
* the cosine similarity of the two maps (worst, and mean).

Cases: image side default (last block: the pooled-tail fast path), image side last 4 blocks (the cut path: a graph
over the sequence up to the last block's attention input), image side ``single_head=True``, text side default
(last 8 blocks, row tail), text side against many images.

Examples::

    PYTHONPATH=. python benchmarks/autocast_check.py                      # CPU, bf16 and fp16
    PYTHONPATH=. python benchmarks/autocast_check.py --device cuda --dtypes bf16,fp16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compare(ref: torch.Tensor, out: torch.Tensor, weak: float = 0.05) -> Dict[str, Any]:
    """Compare maps ``(N, K, ...)``: one map per (input, target).

    ``rel_max_diff_input``: max |diff| of a map over the largest fp32 map value of the same input (all K
    targets), worst map. ``rel_max_diff_map``: the same over the map's own fp32 max, worst map among the maps
    whose max is at least ``weak`` x the input's largest (text maps are ReLU(sum over layers): a map where
    nearly everything cancels has a tiny max, and its relative error is not meaningful; those are counted in
    ``weak_maps``). Cosines over the same non-weak maps; two all-zero maps count as equal.
    """
    a, b = ref.float().flatten(2), out.float().flatten(2)  # (N, K, P)
    diff = (b - a).abs().amax(-1)  # (N, K)
    own = a.abs().amax(-1)
    row = own.amax(-1, keepdim=True).clamp_min(1e-30)
    strong = own >= weak * row
    cos = F.cosine_similarity(a, b, dim=-1)
    both_zero = (a.abs().amax(-1) == 0) & (b.abs().amax(-1) == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    return {"rel_max_diff_input": (diff / row).max().item(),
            "rel_max_diff_map": (diff / own.clamp_min(1e-30))[strong].max().item(),
            "cosine_min": cos[strong].min().item(), "cosine_mean": cos[strong].mean().item(),
            "cosine_min_all": cos.min().item(), "weak_maps": int((~strong).sum().item()), "maps": int(own.numel()),
            "out_dtype": str(out.dtype).replace("torch.", "")}


def main(argv: List[str] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--texts", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)

    import open_clip
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
    from speed import captions

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None, force_image_size=args.image_size)
    model = model.eval().to(dev).requires_grad_(False)
    tokens = open_clip.get_tokenizer(args.model)(captions(args.texts)).to(dev)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=g).to(dev)

    # the fixed sides are encoded in fp32 once, so that only the explained pass differs
    iscorer = ImageTextSimilarity(model, tokens)
    tscorer = TextImageSimilarity(model, images)
    many = F.normalize(torch.randn(32, iscorer.fixed_features.shape[-1], generator=g), dim=-1).to(dev)
    tscorer_many = TextImageSimilarity(model, many)
    blocks = list(model.visual.transformer.resblocks)
    cases: Dict[str, Callable[[], torch.Tensor]] = {
        "image, last block (fast path)": lambda: GradECLIP(iscorer).attribute_all(images),
        "image, last 4 blocks (cut path)": lambda: GradECLIP(iscorer, blocks[-4:]).attribute_all(images),
        "image, single_head=True": lambda: GradECLIP(iscorer, single_head=True).attribute_all(images),
        "text, last 8 blocks": lambda: GradECLIP(tscorer).attribute_all(tokens),
        "text, 1 caption vs 32 images": lambda: GradECLIP(tscorer_many).attribute_all(tokens[:1]),
    }
    results = []
    for name, fn in cases.items():
        ref = fn()
        for dname in args.dtypes.split(","):
            try:
                with torch.autocast(dev.type, dtype=DTYPES[dname]):
                    out = fn()
                r = {"case": name, "dtype": dname, **compare(ref, out)}
            except Exception as e:  # report, do not hide: the lead wants the failing line
                import traceback
                r = {"case": name, "dtype": dname, "error": repr(e), "traceback": traceback.format_exc()}
            results.append(r)
            if "error" in r:
                print(f"{name:36s} {dname}: FAILED {r['error']}\n{r['traceback']}")
            else:
                print(f"{name:32s} {dname}: max|diff|/input max {r['rel_max_diff_input']:.4f}, "
                      f"/map max {r['rel_max_diff_map']:.4f}, cosine min {r['cosine_min']:.5f} "
                      f"mean {r['cosine_mean']:.5f} ({r['weak_maps']}/{r['maps']} weak maps excluded, cosine min "
                      f"over all {r['cosine_min_all']:.4f}), maps {r['out_dtype']}", flush=True)
    for dname in args.dtypes.split(","):
        ok = [r for r in results if r["dtype"] == dname and "error" not in r]
        if ok:
            print(f"tolerance {dname} on {dev.type}: max|diff| <= "
                  f"{max(r['rel_max_diff_input'] for r in ok):.4f} x the input's largest fp32 map value, "
                  f"<= {max(r['rel_max_diff_map'] for r in ok):.4f} x the map's own max (non-weak maps), "
                  f"cosine >= {min(r['cosine_min'] for r in ok):.5f} "
                  f"({len(ok)}/{sum(r['dtype'] == dname for r in results)} cases ran)")
    out = {"config": vars(args), "torch": torch.__version__, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
