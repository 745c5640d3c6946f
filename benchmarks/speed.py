#!/usr/bin/env python
"""Speed and memory benchmark of Grad-ECLIP (``GradECLIP.attribute_all``) against the usual alternatives.

This is a script, not a test: it prints a markdown table and can write JSON / markdown files.

Methods, all on the same open_clip model (random weights, ``pretrained=None``), the same inputs, under the same
autocast setting, in one run:

* ``forward``      plain no-grad ``model.encode_image`` (text side: ``encode_text``) + cosine with the K fixed
                   features: the cost floor of looking at the inputs at all.
* ``attribute_all`` ``GradECLIP(scorer).attribute_all(inputs)``: K maps per input from one forward pass (image
                   side: default layer = last block; text side: default = last 8 blocks).
* ``loop``         the authors' style: ``GradECLIP.attribute`` on ONE input with ONE target, for every
                   (input, text) pair.  Its cost per map does not depend on N or K, so only a sample of the pairs
                   is timed (``--loop-max-pairs``, always warmed up) and its rate is reported (see the note).
* ``ig``           Captum ``IntegratedGradients(scorer)`` with ``n_steps=--ig-steps`` and ``internal_batch_size``,
                   one call per target on the batch; sampled on at most ``--ig-max-maps`` maps per cell, and on
                   CPU only run in the cells given by ``--ig-cells`` (default ``1x1``): it is ~50 forward+backward
                   passes per map.

Throughput: ``inputs/s`` = explained inputs (images, or captions) per second, ``maps/s`` = (input, target) maps
per second; a ``forward`` produces no map, its ``maps/s`` column is the similarities it scores per second.
Times are the best of ``--repeats`` calls after ``--warmup`` untimed calls (``torch.cuda.synchronize()`` around
each call on CUDA), with forward / attribute_all / loop interleaved (A B C A B C ...) so that a load change on a
shared machine hits all three; every call's wall and process CPU time is kept in the JSON.

Memory: CUDA: ``torch.cuda.max_memory_allocated()`` reset before each method; reported is the peak above what was
allocated before the call (model, inputs), and the total peak.  CPU: peak RSS is process-wide, so before each
method the script returns freed heap memory to the OS (``malloc_trim``) and resets the RSS high-water mark
(``/proc/self/clear_refs``); reported is ``VmHWM`` after the method minus ``VmRSS`` before it.  Caveats: lazily
loaded libraries and allocator caches count against the first method that triggers them (the warm-up calls run
first), and without ``/proc/self/clear_refs`` (non-Linux) no CPU memory is reported.

The model's parameters are frozen (``requires_grad_(False)``), the best case for every gradient method.

Examples::

    PYTHONPATH=. python benchmarks/speed.py --quick
    PYTHONPATH=. python benchmarks/speed.py --device cpu --threads 2 --batch-sizes 1,8 --texts 1,10,100
    PYTHONPATH=. python benchmarks/speed.py --device cuda --dtype bf16 --out results.json --out results.md
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_WORDS_A = ["red", "small", "old", "shiny", "wooden", "striped", "happy", "broken", "tall", "green", "tiny", "dark"]
_WORDS_N = ["dog", "car", "house", "bird", "bicycle", "teapot", "horse", "guitar", "boat", "chair", "tree", "clock"]
_WORDS_P = ["on a beach", "in the snow", "next to a window", "under a bridge", "in a busy street at night",
            "on a table", "in a field of flowers", "near a lake", "in a kitchen", "at the top of a hill"]


def captions(count: int) -> List[str]:
    """Deterministic captions of varying length (4 to ~14 words)."""
    out = []
    for i in range(count):
        a, n, p = _WORDS_A[i % len(_WORDS_A)], _WORDS_N[(i // 3) % len(_WORDS_N)], _WORDS_P[(i // 7) % len(_WORDS_P)]
        extra = " and a " + _WORDS_N[(i * 5) % len(_WORDS_N)] if i % 4 == 0 else ""
        out.append(f"a photo of a {a} {n}{extra} {p}")
    return out


def ints(text: str) -> List[int]:
    """'1,8,64' -> [1, 8, 64]; '' or '0' -> [] (skip that part of the benchmark)."""
    return [int(t) for t in text.split(",") if t.strip() and int(t) > 0]


# ---------------------------------------------------------------------------------------------------------------
# memory
class PeakMemory:
    """Peak memory of the code inside ``with`` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: Optional[float] = None
        self.total_mib: Optional[float] = None
        self._libc = None
        if device.type == "cpu":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status() -> Dict[str, int]:
        text = open("/proc/self/status").read()
        return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._base = self._status()["VmRSS"]
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mib = (peak - self._base) / 2 ** 20
            self.total_mib = peak / 2 ** 20
        elif self._base is not None:
            st = self._status()
            self.peak_mib = (st["VmHWM"] - self._base) / 1024
            self.total_mib = st["VmHWM"] / 1024


# ---------------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.rows: List[Dict[str, Any]] = []

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fns: Dict[str, Callable[[], Any]], warmup: Optional[Dict[str, int]] = None,
                repeats: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
        """Time several methods, interleaved (A B A B ...) so that a load change on a shared machine hits all.

        ``warmup`` untimed calls of each first; then ``repeats`` rounds; memory is measured around each method's
        first timed call.
        """
        repeats = self.args.repeats if repeats is None else repeats
        warmup = warmup or {}
        out = {name: {"times_s": [], "cpu_s": [], "peak_mib": None, "total_peak_mib": None} for name in fns}
        with self.autocast():
            for name, fn in fns.items():
                for _ in range(warmup.get(name, self.args.warmup)):
                    fn()
            self.sync()
            for r in range(repeats):
                for name, fn in fns.items():
                    mem = PeakMemory(self.device) if r == 0 else contextlib.nullcontext()
                    with mem:
                        self.sync()
                        t0, c0 = time.perf_counter(), time.process_time()
                        fn()
                        self.sync()
                        out[name]["times_s"].append(time.perf_counter() - t0)
                        out[name]["cpu_s"].append(time.process_time() - c0)
                    if r == 0:
                        out[name]["peak_mib"], out[name]["total_peak_mib"] = mem.peak_mib, mem.total_mib
        for m in out.values():
            m["best_s"], m["median_s"] = min(m["times_s"]), statistics.median(m["times_s"])
            m["best_cpu_s"] = m["cpu_s"][m["times_s"].index(m["best_s"])]
        return out

    def record(self, side: str, n: int, k: int, method: str, m: Dict[str, Any], inputs: int, maps: int,
               note: str = "") -> Dict[str, Any]:
        """``inputs``/``maps``: how many inputs and maps ONE timed call produced."""
        row = dict(side=side, n=n, k=k, method=method, note=note, inputs_per_call=inputs, maps_per_call=maps, **m)
        row["inputs_per_s"] = inputs / m["best_s"]
        row["maps_per_s"] = maps / m["best_s"]
        self.rows.append(row)
        print(f"  {side:5s} N={n:<4d} K={k:<4d} {method:14s} {m['best_s']:9.4f} s/call  "
              f"{row['inputs_per_s']:9.2f} inputs/s {row['maps_per_s']:10.2f} maps/s  "
              f"peak {fmt_mib(m['peak_mib'])} MiB {note}", flush=True)
        return row


def fmt_mib(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.0f}"


# ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Dict[str, Any]:
    import open_clip
    from captum.attr import IntegratedGradients

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench = Bench(args)
    dev = bench.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False

    model = open_clip.create_model(args.model, pretrained=None, force_image_size=args.image_size)
    model = model.eval().to(dev).requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(args.model)

    batch_sizes, text_counts = ints(args.batch_sizes), ints(args.texts)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(max(batch_sizes + [1]), 3, args.image_size, args.image_size, generator=g).to(dev)
    max_caps = max(ints(args.captions) + text_counts + [1])
    tokens = tokenizer(captions(max_caps)).to(dev)
    with torch.no_grad(), bench.autocast():
        text_feats = torch.cat([model.encode_text(tokens[i:i + 64]).float()
                                for i in range(0, max(text_counts + [1]), 64)])
    text_feats_n = F.normalize(text_feats, dim=-1)

    print(f"# {args.model} @ {args.image_size}px, device={dev}, dtype={args.dtype}, "
          f"threads={torch.get_num_threads()}", flush=True)
    ig_cells = None if args.ig_cells == "all" else {
        tuple(int(v) for v in c.lower().split("x")) for c in args.ig_cells.split(",") if c.strip()}

    def compare(side: str, n: int, k: int, forward: Callable, explain: Callable, one: Callable[[int], None],
                pairs: int, note: str = "") -> None:
        """forward / attribute_all / loop (``pairs`` calls of ``one(p)``), timed interleaved."""
        def loop() -> None:
            for p in range(pairs):
                one(p)

        # the loop is always warmed up (its sampled pairs are few): a cold first call is not its rate
        res = bench.measure({"forward": forward, "attribute_all": explain, "loop": loop},
                            warmup={"loop": max(1, args.warmup)})
        bench.record(side, n, k, "forward", res["forward"], n, n * k, note)
        bench.record(side, n, k, "attribute_all", res["attribute_all"], n, n * k, note)
        sampled = "" if pairs == n * k else f"sampled {pairs}/{n * k} pairs"
        bench.record(side, n, k, "loop", res["loop"], pairs / k, pairs, ", ".join(t for t in (note, sampled) if t))

    # ---------------- image side ----------------
    for n in batch_sizes:
        x = images[:n]
        for k in text_counts:
            scorer = ImageTextSimilarity(model, text_feats[:k])
            ge = GradECLIP(scorer, chunk_size=args.chunk_size or None)
            feats = text_feats_n[:k]

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return F.normalize(model.encode_image(x).float(), dim=-1) @ feats.t()

            def one(p: int) -> None:  # pair p of the (image, text) grid, text-major
                ge.attribute(x[p % n:p % n + 1], target=(p // n) % k)

            compare("image", n, k, forward, lambda: ge.attribute_all(x), one, min(n * k, args.loop_max_pairs))

            if ig_cells is None or (n, k) in ig_cells:
                ig = IntegratedGradients(scorer)
                n_ig = min(n, args.ig_max_maps)
                k_ig = max(1, min(k, args.ig_max_maps // n_ig))
                ibs = args.ig_internal_batch or (100 if dev.type == "cuda" else 10)

                def integrated() -> None:
                    for t in range(k_ig):
                        ig.attribute(x[:n_ig], target=t, n_steps=args.ig_steps, internal_batch_size=ibs)

                m = bench.measure({"ig": integrated}, warmup={"ig": args.ig_warmup}, repeats=args.ig_repeats)["ig"]
                note = f"{args.ig_steps} steps, internal batch {ibs}"
                if n_ig * k_ig != n * k:
                    note += f", sampled {n_ig * k_ig}/{n * k} maps"
                bench.record("image", n, k, "ig", m, n_ig * k_ig / k, n_ig * k_ig, note)
            del scorer, ge

    # ---------------- text side: many captions against one image ----------------
    with torch.no_grad(), bench.autocast():
        image_feat = model.encode_image(images[:1]).float()
    fixed = F.normalize(image_feat, dim=-1)
    for c in ints(args.captions):
        tok = tokens[:c]
        ge = GradECLIP(TextImageSimilarity(model, image_feat), chunk_size=args.chunk_size or None)

        def tforward() -> torch.Tensor:
            with torch.no_grad():
                return F.normalize(model.encode_text(tok).float(), dim=-1) @ fixed.t()

        compare("text", c, 1, tforward, lambda: ge.attribute_all(tok),
                lambda p: ge.attribute(tok[p:p + 1], target=0), min(c, args.loop_max_pairs), "captions vs 1 image")

    # ---------------- text side: one caption against many images ----------------
    for mi in ints(args.caption_images):
        # the fixed side's values do not change the cost: random unit image embeddings
        feats_i = F.normalize(torch.randn(mi, text_feats.shape[-1], generator=g), dim=-1).to(dev)
        ge = GradECLIP(TextImageSimilarity(model, feats_i), chunk_size=args.chunk_size or None)
        tok1 = tokens[:1]

        def tforward1() -> torch.Tensor:
            with torch.no_grad():
                return F.normalize(model.encode_text(tok1).float(), dim=-1) @ feats_i.t()

        compare("text", 1, mi, tforward1, lambda: ge.attribute_all(tok1),
                lambda p: ge.attribute(tok1, target=p % mi), min(mi, args.loop_max_pairs), "1 caption vs images")

    env = {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version(),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or
           platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])}
    with contextlib.suppress(Exception):
        import captum
        env["captum"] = captum.__version__
    return {"config": vars(args), "env": env, "rows": bench.rows, "summary": summarize(bench.rows, args)}


# ---------------------------------------------------------------------------------------------------------------
def _find(rows: List[Dict[str, Any]], side: str, n: int, k: int, method: str) -> Optional[Dict[str, Any]]:
    for r in rows:
        if (r["side"], r["n"], r["k"], r["method"]) == (side, n, k, method):
            return r
    return None


def summarize(rows: List[Dict[str, Any]], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Add ratios to every row; return the goal checks."""
    for r in rows:
        fwd = _find(rows, r["side"], r["n"], r["k"], "forward")
        loop = _find(rows, r["side"], r["n"], r["k"], "loop")
        r["inputs_per_s_vs_forward"] = r["inputs_per_s"] / fwd["inputs_per_s"] if fwd else None
        r["maps_per_s_vs_loop"] = r["maps_per_s"] / loop["maps_per_s"] if loop and r["method"] != "forward" else None
        r["peak_vs_forward"] = (r["peak_mib"] / fwd["peak_mib"]
                                if fwd and r["peak_mib"] is not None and fwd["peak_mib"] else None)
        r["total_peak_vs_forward"] = (r["total_peak_mib"] / fwd["total_peak_mib"]
                                      if fwd and r["total_peak_mib"] is not None and fwd["total_peak_mib"] else None)
    goals = []
    for r in rows:
        if r["side"] == "image" and r["method"] == "attribute_all" and r["k"] == 10:
            goals.append({"n": r["n"], "k": 10,
                          "inputs_per_s_vs_forward": r["inputs_per_s_vs_forward"], "goal_vs_forward": 0.75,
                          "maps_per_s_vs_loop": r["maps_per_s_vs_loop"], "goal_vs_loop_gpu": 50.0,
                          "peak_vs_forward": r["peak_vs_forward"], "total_peak_vs_forward": r["total_peak_vs_forward"],
                          "goal_peak_vs_forward_cuda": 1.5})
    return goals


def _x(v: Optional[float], digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}x"


def markdown(result: Dict[str, Any]) -> str:
    cfg, env = result["config"], result["env"]
    unit = "CUDA MiB" if cfg["device"] == "cuda" else "RSS MiB"
    lines = [f"Model {cfg['model']} @ {cfg['image_size']} px (random weights), device {cfg['device']} "
             f"({env['device_name']}), dtype {cfg['dtype']}, threads {env['threads']}, torch {env['torch']}, "
             f"open_clip {env['open_clip']}, captum {env.get('captum', '?')}.",
             f"Command: `{env['command']}`", "",
             f"| side | N | K | method | s/call | CPU s/call | inputs/s | maps/s | inputs/s vs forward "
             f"| maps/s vs loop | peak {unit} | peak vs forward | note |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['side']} | {r['n']} | {r['k']} | {r['method']} | {r['best_s']:.4g} | {r['best_cpu_s']:.4g} | "
            f"{r['inputs_per_s']:.3g} | "
            f"{r['maps_per_s']:.3g} | {_x(r['inputs_per_s_vs_forward'])} | {_x(r['maps_per_s_vs_loop'], 1)} | "
            f"{fmt_mib(r['peak_mib'])} | {_x(r['peak_vs_forward'])} | {r['note']} |")
    lines += ["", "Goals (image side, attribute_all with K = 10 texts):", "",
              "| N | inputs/s vs forward (goal >= 0.75x) | maps/s vs loop (goal >= 50x on GPU) "
              "| peak vs forward (goal <= 1.5x on CUDA) | total peak vs forward |",
              "|---:|---:|---:|---:|---:|"]
    if not result["summary"]:
        lines.append("| (no image cell with K = 10 in this run) | | | | |")
    for gl in result["summary"]:
        lines.append(f"| {gl['n']} | {_x(gl['inputs_per_s_vs_forward'])} | {_x(gl['maps_per_s_vs_loop'], 1)} | "
                     f"{_x(gl['peak_vs_forward'])} | {_x(gl['total_peak_vs_forward'])} |")
    lines += ["", "s/call: best wall time of the timed calls; CPU s/call: process CPU time of that best call (all "
              "threads; on a shared machine it is less sensitive to other load than wall time). peak: peak memory "
              "above what was held before the method (model, inputs). `loop` and `ig` rates are measured on the "
              "sampled pairs/maps named in the note (their cost per map does not depend on N or K); inputs/s of "
              "`loop`/`ig` = maps/s / K."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="autocast dtype (fp32: no autocast)")
    p.add_argument("--model", default="ViT-B-16", help="open_clip config name (pretrained=None)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,8,64", help="image side N; '' or 0 skips the image side")
    p.add_argument("--texts", default="1,10,100", help="K: texts explained per image")
    p.add_argument("--captions", default=None, help="text side: numbers of captions against one image "
                                                     "(default: 100,500 on CUDA, 100 on CPU; 0 skips)")
    p.add_argument("--caption-images", default="100",
                   help="text side: numbers of images against one caption (0 skips)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method (best is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method before timing")
    p.add_argument("--chunk-size", type=int, default=0,
                   help="GradECLIP chunk_size (targets per batched backward); 0: automatic (the default)")
    p.add_argument("--loop-max-pairs", type=int, default=None,
                   help="pairs timed for the one-image-one-text loop (default: 256 CUDA, 2 CPU)")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-max-maps", type=int, default=None,
                   help="maps computed by IG per cell (default: 64 CUDA, 1 CPU)")
    p.add_argument("--ig-cells", default=None,
                   help="'all', or NxK cells separated by ',' where IG runs (default: all on CUDA, 1x1 on CPU)")
    p.add_argument("--ig-internal-batch", type=int, default=None, help="default: 100 CUDA, 10 CPU")
    p.add_argument("--ig-repeats", type=int, default=None, help="default: --repeats on CUDA, 1 on CPU")
    p.add_argument("--ig-warmup", type=int, default=None, help="default: --warmup on CUDA, 0 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", action="append", default=[], help="write results to .json or .md (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64 px, batches 1,2, K 1,3, IG 4 steps)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.quick:
        args.image_size, args.batch_sizes, args.texts = 64, "1,2", "1,3"
        args.captions, args.caption_images, args.repeats, args.ig_steps = "8", "8", 1, 4
        args.ig_cells = args.ig_cells or "all"
        args.ig_internal_batch = args.ig_internal_batch or 8
    if args.captions is None:
        args.captions = "100,500" if cuda else "100"
    if args.loop_max_pairs is None:
        args.loop_max_pairs = 256 if cuda else 2
    if args.ig_max_maps is None:
        args.ig_max_maps = 64 if cuda else 1
    if args.ig_cells is None:
        args.ig_cells = "all" if cuda else "1x1"
    if args.ig_repeats is None:
        args.ig_repeats = args.repeats if cuda else 1
    if args.ig_warmup is None:
        args.ig_warmup = args.warmup if cuda else 0
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    result = run(args)
    md = markdown(result)
    print()
    print(md)
    for path in args.out:
        with open(path, "w") as f:
            if path.endswith(".md"):
                f.write(md)
            else:
                json.dump(result, f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
