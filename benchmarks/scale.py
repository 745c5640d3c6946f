"""Throughput of ``gradeclip explain-dataset``: in-process against Ray Data with 1 and 2 workers, one run.

The same images (shapes scenes saved as 256 x 256 JPEG files) and prompts are explained three ways, each with one
torch thread per model:

* in-process: one loop that loads, prepares and explains batches with ``explanations.explain_images`` (the model loaded
  beforehand, not timed);
* Ray, 1 worker and 2 workers: :func:`captum_gradeclip.scale.explain_dataset` on a local Ray (the model in
  actors of 1 CPU each, which decode their own batches), Parquet files written.

For Ray two rates are printed: over the whole call (actor start-up and model loading included, which a large
dataset amortises) and steady: the marginal rate ``(N - n) / (T(N) - T(n))`` from a second call on the first
``n = N / 4`` images (at least 2 batches per worker, so that every worker has started and worked in both
calls), which cancels the start-up. Before any timed call one untimed call on the shapes model starts what Ray
Data starts once per Ray session (its coordinating actors, the first worker processes), which would otherwise
fall in the first timed call only and not cancel. Goals on a 2-core machine: Ray with 1 worker >= 0.85x
in-process (the engine's overhead), 2 workers >= 1.6x 1 worker (steady rates).

Wall-clock rates are only comparable on a quiet machine. The CPU time of every process of a run (this one, Ray's
daemons, the decoding tasks and the workers; sampled from /proc on Linux) is also printed per image (marginal, as
the steady rate): the engine's overhead as CPU spent, which the load of other jobs changes much less.

    python benchmarks/scale.py                           # open_clip ViT-B-32, random weights, 128 images
    python benchmarks/scale.py --demo --images 64        # the shipped shapes model (overhead-bound: tiny model)

The last column, load, is the machine's 1-minute load average when the mode finished: above the number of
cores, other jobs shared them and the wall-clock figures of that mode are not comparable.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from captum_gradeclip.explanations import explain_images  # noqa: E402
from captum_gradeclip.image_io import load_image  # noqa: E402
from captum_gradeclip.loading import load_model, native_stride, prepare_image  # noqa: E402


def write_images(folder: Path, count: int) -> List[Path]:
    """``count`` shapes scenes as 256 x 256 JPEG files."""
    from PIL import Image

    from captum_gradeclip.data.shapes import generate_scenes
    scenes = generate_scenes(count, image_size=64, num_objects=3, seed=11)
    paths = []
    for i in range(count):
        array = (scenes.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(array).resize((256, 256), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def _tree_cpu() -> Dict[int, float]:
    """CPU seconds (user + system) of this process and of every live process below it, by pid (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    out = {}
    for pid, seconds in times.items():
        ancestor = pid
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = parents.get(ancestor, 1)
        if ancestor == os.getpid():
            out[pid] = seconds
    return out


class CpuMeter:
    """CPU seconds spent by this process and every process below it (a local Ray's daemons, tasks and actors)
    while the meter runs: the tree is sampled every 0.5 s, so a worker that exits (an actor at the end of a job)
    is counted up to its last sample. NaN where /proc is not available."""

    def __init__(self) -> None:
        self.seconds = float("nan")

    def __enter__(self) -> "CpuMeter":
        if os.path.isdir("/proc"):
            self._first, self._last = _tree_cpu(), {}
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self._last.update(_tree_cpu())

    def __exit__(self, *exc: object) -> None:
        if os.path.isdir("/proc"):
            self._stop.set()
            self._thread.join()
            self._last.update(_tree_cpu())
            self.seconds = sum(t - self._first.get(pid, 0.0) for pid, t in self._last.items())


def in_process(args: argparse.Namespace, paths: List[Path], prompts: List[str]) -> Dict[str, float]:
    torch.set_num_threads(1)
    lm = load_model("cpu", demo=args.demo, model=args.model, pretrained=args.pretrained)
    patch = native_stride(lm)
    with CpuMeter() as cpu:
        start = time.perf_counter()
        for i in range(0, len(paths), args.batch_size):
            batch = torch.stack([prepare_image(load_image(p), lm.image_size, patch, args.size)
                                 for p in paths[i:i + args.batch_size]])
            explain_images(lm, batch, prompts, explain="image", layers=None, single_head=False, device="cpu")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rate": len(paths) / seconds, "steady": len(paths) / seconds,
            "cpu": cpu.seconds / len(paths), "load": os.getloadavg()[0]}


def on_ray(args: argparse.Namespace, folders: Dict[int, Path], out: Path, prompts: List[str],
           workers: int) -> Dict[str, float]:
    """Whole-call and marginal rates of ``explain_dataset`` on ``folders[N]`` and ``folders[n]``."""
    from captum_gradeclip.scale import ModelSpec, explain_dataset
    spec = ModelSpec(demo=args.demo, model=args.model, pretrained=args.pretrained)
    seconds, cpu = {}, {}
    for count, folder in folders.items():
        with CpuMeter() as meter:
            start = time.perf_counter()
            summary = explain_dataset(folder, out / str(count), texts=prompts, model=spec, size=args.size,
                                      workers=workers, cpus_per_worker=1, batch_size=args.batch_size,
                                      images_per_file=args.batch_size, progress=False)
            seconds[count] = time.perf_counter() - start
        cpu[count] = meter.seconds
        assert summary.images_explained == count and summary.errors == 0, summary
    big, small = max(seconds), min(seconds)
    return {"seconds": seconds[big], "rate": big / seconds[big],
            "steady": (big - small) / max(seconds[big] - seconds[small], 1e-9),
            "cpu": (cpu[big] - cpu[small]) / (big - small), "load": os.getloadavg()[0]}


def warm_up(args: argparse.Namespace, folder: Path, out: Path, prompts: List[str]) -> None:
    """One untimed call (the shapes model, 2 workers, a few images): Ray Data starts its coordinating actors on
    the first execution of a Ray session, seconds of CPU that would land in the first timed call only."""
    from captum_gradeclip.scale import ModelSpec, explain_dataset
    explain_dataset(folder, out, texts=prompts[:1], model=ModelSpec(demo=True), size=args.size, workers=2,
                    cpus_per_worker=1, batch_size=args.batch_size, images_per_file=args.batch_size, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="open_clip tag (default: none, random weights)")
    parser.add_argument("--demo", action="store_true", help="the shipped shapes model instead")
    parser.add_argument("--images", type=int, default=128,
                        help="images of the long run; the short run has a quarter of them (at least 2 batches)")
    parser.add_argument("--texts", type=int, default=2, help="prompts per image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", choices=("native", "model"), default="model")
    args = parser.parse_args()
    if args.images < 4 * args.batch_size:
        parser.error(f"--images must be at least 4 times --batch-size ({4 * args.batch_size})")
    import ray
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a cyan circle"]
    prompts = (prompts * (args.texts // len(prompts) + 1))[:args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        folder, head = Path(tmp) / "images", Path(tmp) / "head"
        folder.mkdir()
        head.mkdir()
        paths = write_images(folder, args.images)
        small = max(2 * args.batch_size, args.images // 4)
        for p in paths[:small]:
            (head / p.name).symlink_to(p)
        folders = {small: head, args.images: folder}
        name = "shapes demo" if args.demo else f"{args.model} ({args.pretrained})"
        print(f"{args.images} images, {args.texts} prompt(s), batch {args.batch_size}, {name}, "
              f"{os.cpu_count()} CPU(s), torch {torch.__version__}, ray {ray.__version__}")
        rows = {"in-process": in_process(args, paths, prompts)}
        t = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning",
                 log_to_driver=False)
        warm_up(args, head, Path(tmp) / "warm-up", prompts)
        print(f"ray.init and a warm-up call: {time.perf_counter() - t:.1f} s (not counted)")
        try:
            for workers in (1, 2):
                rows[f"ray, {workers} worker(s)"] = on_ray(args, folders, Path(tmp) / f"out{workers}", prompts,
                                                           workers)
        finally:
            ray.shutdown()
    base, one = rows["in-process"], rows["ray, 1 worker(s)"]
    print(f"\n{'mode':<18}{'wall s':>8}{'images/s':>10}{'maps/s':>9}{'steady img/s':>14}{'steady maps/s':>15}"
          f"{'x in-process':>14}{'x 1 worker':>12}{'CPU s/image':>13}{'load':>7}")
    for mode, r in rows.items():
        print(f"{mode:<18}{r['seconds']:>8.1f}{r['rate']:>10.2f}{r['rate'] * args.texts:>9.2f}{r['steady']:>14.2f}"
              f"{r['steady'] * args.texts:>15.2f}{r['steady'] / base['steady']:>14.2f}"
              f"{r['steady'] / one['steady']:>12.2f}{r['cpu']:>13.3f}{r['load']:>7.1f}")
    two = rows["ray, 2 worker(s)"]
    print(f"\ngoal: ray 1 worker / in-process >= 0.85: {one['steady'] / base['steady']:.2f} (steady), "
          f"{one['rate'] / base['rate']:.2f} (whole call); CPU per image in-process / ray: "
          f"{base['cpu'] / one['cpu']:.2f} (1 worker), {base['cpu'] / two['cpu']:.2f} (2 workers)")
    print(f"goal: ray 2 workers / 1 worker >= 1.6: {two['steady'] / one['steady']:.2f} (steady), "
          f"{two['rate'] / one['rate']:.2f} (whole call)")


if __name__ == "__main__":
    main()
