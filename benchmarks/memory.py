#!/usr/bin/env python
"""Peak tensor memory of ``GradECLIP.attribute_all`` against a plain no-grad forward, on any device.

This is a script, not a test: it prints a markdown table (and can write JSON).

What is measured: the peak, over one call, of the bytes of tensor storages that the call created and that are
alive at the same time. A ``TorchDispatchMode`` sees every aten op of the call (forward, backward, the map
reductions), records each new output storage with a weak reference and drops it when it is freed. This is
what ``torch.cuda.max_memory_allocated()`` measures on a GPU, minus what kernels allocate internally
(workspaces) and the caching allocator's rounding, so it predicts the CUDA peak ratio on a machine without a
GPU; it is deterministic (no RSS noise). Storages that existed before the call (weights, inputs) and views of
them are not counted. On CUDA the script also reports ``max_memory_allocated`` above the start, for comparison.

Cases (open_clip ViT-B-16 at 224 px, random weights, parameters frozen):

* image: N images against K = 10 texts, the default layer (last block, fast path) and the last 4 blocks
  (an autograd graph over those blocks, cut at the last block's attention input).
* text: 100 captions against 1 image, and 1 caption against 100 images (default: last 8 blocks).

Autocast (``--dtypes bf16``) runs on the CPU too (slowly): it changes which tensors are bf16 exactly as on a GPU,
apart from kernel-specific choices (e.g. CUDA's fused attention keeps no attention matrix either way here).

Examples::

    PYTHONPATH=. python benchmarks/memory.py --threads 2
    PYTHONPATH=. python benchmarks/memory.py --device cuda --batch-size 64 --out memory_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import DTYPES, captions  # noqa: E402


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the ``with`` block and alive at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.live: Dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        inputs = {a.untyped_storage()._cdata for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:  # a view, or an in-place result
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def measure(fn: Callable[[], Any], device: torch.device) -> Dict[str, float]:
    gc.collect()
    result: Dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        result["cuda_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    with LiveTensorBytes() as live:
        fn()
    result["tensor_mib"] = live.peak / 2 ** 20
    return result


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma separated: fp32, bf16, fp16")
    p.add_argument("--batch-size", type=int, default=16, help="images in the image cases (default 16)")
    p.add_argument("--texts", type=int, default=10, help="K texts in the image cases (default 10)")
    p.add_argument("--cases", default="image,image4,captions,images",
                   help="image (default layer), image4 (last 4 blocks), captions (100 captions x 1 image), "
                        "images (1 caption x 100 images)")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import open_clip

    from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).to(device).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(args.model)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    embed = model.text_projection.shape[-1]
    g = torch.Generator().manual_seed(0)

    def unit(n: int) -> torch.Tensor:
        return F.normalize(torch.randn(n, embed, generator=g), dim=-1).to(device)

    rows = []
    print(f"{args.model}, {size} px, device {device}, torch {torch.__version__}")
    print("| case | dtype | forward MiB | attribute_all MiB | ratio | CUDA forward MiB | CUDA attribute_all MiB | "
          "CUDA ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

        for case in args.cases.split(","):
            if case in ("image", "image4"):
                images = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
                texts = unit(args.texts)
                blocks = None if case == "image" else list(model.visual.transformer.resblocks[-4:])
                explainer = GradECLIP(ImageTextSimilarity(model, texts), blocks)
                name = f"image, N = {args.batch_size}, K = {args.texts}, " + \
                    ("last block (default)" if case == "image" else "last 4 blocks")

                def forward(images=images, texts=texts):
                    return F.normalize(model.encode_image(images), dim=-1) @ texts.t()

                def explain(explainer=explainer, images=images):
                    return explainer.attribute_all(images)
            elif case in ("captions", "images"):
                n_cap, n_img = (100, 1) if case == "captions" else (1, 100)
                tokens = tokenizer(captions(n_cap)).to(device)
                feats = unit(n_img)
                explainer = GradECLIP(TextImageSimilarity(model, feats))
                name = f"text, {n_cap} caption(s) x {n_img} image(s), last 8 blocks (default)"

                def forward(tokens=tokens, feats=feats):
                    return F.normalize(model.encode_text(tokens), dim=-1) @ feats.t()

                def explain(explainer=explainer, tokens=tokens):
                    return explainer.attribute_all(tokens)
            else:
                raise SystemExit(f"unknown case {case!r}")

            def plain(forward=forward):
                with torch.no_grad(), autocast():
                    return forward()

            def attributed(explain=explain):
                with autocast():
                    return explain()

            plain(), attributed()  # warm-up
            f, a = measure(plain, device), measure(attributed, device)
            row = {"case": name, "dtype": dtype_name, "forward_mib": f["tensor_mib"],
                   "attribute_all_mib": a["tensor_mib"], "ratio": a["tensor_mib"] / f["tensor_mib"]}
            cuda = ""
            if "cuda_mib" in f:
                row.update(cuda_forward_mib=f["cuda_mib"], cuda_attribute_all_mib=a["cuda_mib"],
                           cuda_ratio=a["cuda_mib"] / f["cuda_mib"])
                cuda = f"{f['cuda_mib']:.1f} | {a['cuda_mib']:.1f} | {row['cuda_ratio']:.2f}x"
            else:
                cuda = " | | "
            print(f"| {name} | {dtype_name} | {row['forward_mib']:.1f} | {row['attribute_all_mib']:.1f} | "
                  f"{row['ratio']:.2f}x | {cuda} |", flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model, "device": str(device), "torch": torch.__version__, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
