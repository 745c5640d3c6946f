"""Latency of ``gradeclip serve`` on the CPU: one request = one image and 3 prompts, maps for both sides.

Measures, on the same scene and prompts, in one run:

* ``service``: :meth:`ExplainService.explain` in-process (guarded load, checks, both sides, overlays, words);
* ``http``: the whole round trip through a real server on 127.0.0.1 with ``gradio_client`` (upload, queue,
  explanation, .npz written, PNGs encoded and downloaded);
* ``http x4``: 4 clients at once; the time until all 4 answers are back, and per request.

The Integrated Gradients comparison is not part of a request. Prints a table and writes JSON with ``--out``.

    python benchmarks/serve_latency.py --requests 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = "a red circle\na blue square\na green triangle"


def _times(call: Callable[[], object], n: int) -> List[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _row(name: str, seconds: Sequence[float]) -> Dict[str, object]:
    ordered = sorted(seconds)
    return {"case": name, "requests": len(ordered), "median_s": statistics.median(ordered),
            "p90_s": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))], "max_s": ordered[-1]}


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="timed requests per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    from captum_gradeclip.app import ExplainService, ServeLimits, launch
    from captum_gradeclip.loading import load_demo

    service = ExplainService(load_demo("cpu"), ServeLimits())
    app = launch(service, block=False, quiet=True)
    try:
        scene = str(service.draw_scene(seed=3))
        client = Client(app.local_url, verbose=False)

        def request() -> object:
            return client.predict(handle_file(scene), PROMPTS, api_name="/explain")
        for _ in range(args.warmup):
            service.explain(scene, PROMPTS)
            request()
        rows = [_row("service", _times(lambda: service.explain(scene, PROMPTS), args.requests)),
                _row("http", _times(request, args.requests))]
        rounds = max(1, args.requests // 4)
        with ThreadPoolExecutor(4) as pool:
            together = _times(lambda: [f.result() for f in [pool.submit(request) for _ in range(4)]], rounds)
        rows.append(_row("http x4 (all 4 back)", together))
        rows.append(_row("http x4 (per request)", [t / 4 for t in together]))
    finally:
        app.close()
        service.close()
    print(f"gradeclip serve, shipped shapes model, 3 prompts, both sides, CPU, torch threads {torch.get_num_threads()}")
    print(f"{'case':24} {'requests':>8} {'median s':>9} {'p90 s':>7} {'max s':>7}")
    for r in rows:
        print(f"{r['case']:24} {r['requests']:8d} {r['median_s']:9.3f} {r['p90_s']:7.3f} {r['max_s']:7.3f}")
    if args.out:
        args.out.write_text(json.dumps({"argv": list(argv or sys.argv[1:]), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
