"""Explain a whole dataset on Ray Data: the driver of ``gradeclip explain-dataset``.

The driver lists the source, reads the output folder's done-set, and streams the remaining images through a
pool of model actors (:class:`~captum_gradeclip.scale.workers.Explainer`) that decode
(:func:`~captum_gradeclip.scale.workers.decode_batch`) and explain their batches; with GPU workers (or
``readers``) decoding is a Ray Data stage of its own, in tasks beside the actors. It gathers the results of each
shard and writes the shard's Parquet file atomically as soon as the shard is complete (see
:mod:`captum_gradeclip.scale.store`), so memory stays bounded by what is in flight and an interrupted job keeps
every finished file.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .sources import Item, list_source
from .store import OutputFolder, Shard, pairs_table, plan_shards
from .workers import Explainer, decode_batch

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ModelSpec:
    """Which model to explain: the model flags of ``gradeclip explain``.

    Attributes:
        demo (bool): the shipped shapes model (offline).
        hf (str, optional): a HuggingFace CLIP-family model id or local folder.
        checkpoint (str, optional): an open_clip checkpoint file for ``model``.
        model (str): an open_clip model name.
        pretrained (str): an open_clip pretrained tag (``none``: random weights).
    """

    demo: bool = False
    hf: Optional[str] = None
    checkpoint: Optional[str] = None
    model: str = "ViT-B-16"
    pretrained: str = "openai"


@dataclass
class DatasetSummary:
    """What a run of :func:`explain_dataset` did.

    Attributes:
        out (Path): the output folder.
        images (int): images in the source.
        files (int): Parquet files of the job (complete ones, after the run).
        files_skipped (int): files that were already complete when the run started.
        images_explained (int): images explained in this run (errors included).
        pairs (int): (image, text) rows written in this run.
        errors (int): images of the whole job that could not be explained (see ``errors.jsonl``).
        seconds (float): wall time of the Ray part of this run (0 when there was nothing to do).
        notes (list of str): what was cleaned up in the output folder before starting.
    """

    out: Path
    images: int
    files: int
    files_skipped: int
    images_explained: int = 0
    pairs: int = 0
    errors: int = 0
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def explain_dataset(source: Any, out: Any, *, texts: Sequence[str] = (), model: ModelSpec = ModelSpec(),
                    layers: Optional[int] = None, single_head: bool = False, layer_rule: Optional[str] = None,
                    size: str = "native",
                    word_maps: bool = False, workers: int = 1, cpus_per_worker: int = 1,
                    gpus_per_worker: float = 0, readers: Optional[int] = None, batch_size: int = 8,
                    images_per_file: int = 256, address: Optional[str] = None, max_pixels: Optional[int] = None,
                    max_bytes: Optional[int] = None, image_column: Optional[str] = None,
                    caption_column: Optional[str] = None, progress: bool = True,
                    on_file_written: Optional[Callable[[Path], None]] = None,
                    arguments: Optional[Dict[str, Any]] = None) -> DatasetSummary:
    """Grad-ECLIP maps of every (image, text) pair of a dataset, written as Parquet under ``out``.

    Runs on the Ray instance this process is connected to, else on the cluster at ``address``, else on an
    embedded local Ray started (and stopped) for the call. Re-running the same call on the same ``out`` is
    idempotent and resumes an interrupted run; a folder holding a different job is refused.

    Args:
        source: a folder, a CSV/Parquet table of image paths (with optional captions) or webdataset ``.tar``
            shards; see :func:`captum_gradeclip.scale.list_source`.
        out (str or Path): the output folder (see :mod:`captum_gradeclip.scale.store` for its layout).
        texts (sequence of str): prompts every image is explained against, before its own captions.
        model (ModelSpec): the model. Default: open_clip ViT-B-16, OpenAI weights.
        layers (int, optional): explain the last ``layers`` blocks (default: the last one for images, 8 for
            word maps).
        single_head (bool): reproduce the authors' released code. Default: False
        layer_rule (str, optional): how several layers are combined (``sum_then_relu`` or ``relu_then_sum``, as
            :class:`~captum_gradeclip.GradECLIP`). Default: the paper's rule for each side.
        size (str): ``native`` (keep the aspect ratio) or ``model`` (centre crop); as ``gradeclip explain``.
        word_maps (bool): add each pair's word tokens and scores. Default: False
        workers (int): model actors. Default: 1
        cpus_per_worker (int): CPUs reserved by each actor, and its torch threads. Default: 1
        gpus_per_worker (float): GPUs per actor; above 0 the actors run on CUDA. Default: 0
        readers (int, optional): decode the images in separate Ray tasks, this many at once (they reserve no
            CPU). Default: CPU workers decode their own batches (no decoding process competes with them for
            their cores); GPU workers get 2 decoding tasks per worker, which overlap decoding with the GPU.
        batch_size (int): images per actor call. Default: 8
        images_per_file (int): images per output file, the unit of resuming. Default: 256
        address (str, optional): a Ray cluster address (``HOST:6379`` as ``ray start --head`` prints it, or
            ``auto``). Default: a local Ray started for the call, unless this process is connected to one.
        max_pixels (int, optional), max_bytes (int, optional): refuse larger images (recorded as errors).
            Default: the limits of :func:`captum_gradeclip.image_io.load_image`.
        image_column (str, optional), caption_column (str, optional): a table source's columns.
        progress (bool): show a progress bar. Default: True
        on_file_written (callable, optional): called with the path of each file once it is written.
        arguments (dict, optional): recorded in the manifest as the command's arguments.

    Returns:
        DatasetSummary: counts and timing of the run.

    Raises:
        ImportError: Ray Data or pyarrow is not installed (the ``scale`` extra).
        ValueError: bad arguments, an unusable source (:class:`~captum_gradeclip.scale.SourceError`) or an
            output folder of another job (:class:`~captum_gradeclip.scale.OutputFolderError`); raised before
            anything is written.

    Examples::

        >>> from captum_gradeclip.scale import ModelSpec, explain_dataset, read_results
        >>> summary = explain_dataset("photos/", "maps_out", texts=["a dog", "a cat"], workers=2)
        >>> table = read_results("maps_out")            # image, text, score, map, map_shape
    """
    from ..image_io import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
    require_scale_packages()
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    prompts = [t.strip() for t in texts]
    _check_arguments(prompts, layer_rule=layer_rule, workers=workers, cpus_per_worker=cpus_per_worker,
                     gpus_per_worker=gpus_per_worker, readers=readers, batch_size=batch_size,
                     images_per_file=images_per_file, layers=layers, size=size, max_pixels=max_pixels,
                     max_bytes=max_bytes)
    items = list_source(source, image_column=image_column, caption_column=caption_column)
    if not prompts and not any(it.captions for it in items):
        raise ValueError("give at least one prompt with --text: the source has no captions")
    folder = OutputFolder(out)
    job = {"source": _source_id(source), "model": asdict(model), "texts": prompts, "layers": layers,
           "single_head": single_head, "layer_rule": layer_rule, "size": size, "word_maps": word_maps,
           "images_per_file": images_per_file, "max_pixels": max_pixels, "max_bytes": max_bytes,
           "image_column": image_column, "caption_column": caption_column}
    folder.check_job(job)
    described = _describe_model(model, prompts, layers, word_maps)  # bad flags fail here, before any work
    shards = plan_shards(items, images_per_file)
    manifest = {"format": MANIFEST_FORMAT, "job": job, **described, "versions": _versions(),
                "arguments": arguments or {}, "status": "running", "images": len(items), "files": len(shards)}
    folder.write_manifest(manifest)
    pending, notes = folder.pending(shards)
    summary = DatasetSummary(out=folder.root, images=len(items), files=len(shards),
                             files_skipped=len(shards) - len(pending), notes=notes)
    status = "failed"
    try:
        if pending:
            _run(pending, folder, summary, prompts=prompts, model=model, layers=layers, single_head=single_head,
                 layer_rule=layer_rule, size=size, word_maps=word_maps, workers=workers,
                 cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, readers=readers,
                 batch_size=batch_size, address=address, max_pixels=max_pixels, max_bytes=max_bytes,
                 image_size=described["image_size"], patch=described["patch"], progress=progress,
                 on_file_written=on_file_written)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary.errors = len(folder.collect_errors())
        manifest.update(status=status, errors=summary.errors,
                        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        folder.write_manifest(manifest)
    return summary


# ------------------------------------------------------------------------------------------------------ checks
def require_scale_packages() -> None:
    """Raise an ``ImportError`` naming the install command when Ray Data or pyarrow is missing."""
    import importlib.util
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if not missing and importlib.util.find_spec("ray.data") is None:
        missing = ["ray[data]"]
    if missing:
        raise ImportError(f"dataset jobs need {' and '.join(missing)}: pip install 'captum-gradeclip[scale]'")


def _check_arguments(prompts: List[str], **kw: Any) -> None:
    if any(not p for p in prompts):
        raise ValueError("empty prompt: every --text needs some words")
    for name in ("workers", "cpus_per_worker", "batch_size", "images_per_file", "max_pixels", "max_bytes"):
        if not isinstance(kw[name], int) or kw[name] < 1:
            raise ValueError(f"{name.replace('_', '-')} must be a positive whole number, got {kw[name]!r}")
    if kw["readers"] is not None and (not isinstance(kw["readers"], int) or kw["readers"] < 1):
        raise ValueError(f"readers must be a positive whole number, got {kw['readers']!r}")
    if kw["gpus_per_worker"] < 0:
        raise ValueError(f"gpus-per-worker must be 0 (CPU) or more, got {kw['gpus_per_worker']!r}")
    if kw["layers"] is not None and kw["layers"] < 1:
        raise ValueError(f"layers must be a positive number of blocks, got {kw['layers']}")
    from ..grad_eclip import LAYER_RULES
    if kw["layer_rule"] is not None and kw["layer_rule"] not in LAYER_RULES:
        raise ValueError(f"layer_rule must be one of {list(LAYER_RULES)} or None, got {kw['layer_rule']!r}")
    if kw["size"] not in ("native", "model"):
        raise ValueError(f"size must be 'native' or 'model', got {kw['size']!r}")


def _source_id(source: Any) -> str:
    text = str(source)
    path = Path(text)
    return str(path.resolve()) if path.exists() else str(Path(text).absolute())


def _describe_model(model: ModelSpec, prompts: List[str], layers: Optional[int], word_maps: bool) -> Dict[str, Any]:
    """Load the model on the CPU of the driver: its name, image size and native stride (which the decoding tasks
    need), and the checks of ``gradeclip explain`` (the prompts tokenize, ``layers`` fits the towers)."""
    from ..loading import check_layers, load_model, native_stride
    lm = load_model("cpu", **asdict(model))
    if prompts:
        lm.tokenize(prompts)  # raises ValueError naming the unknown words (the shapes model's vocabulary)
    check_layers(lm, layers, "both" if word_maps else "image")
    patch = native_stride(lm)
    return {"model_name": lm.name, "image_size": int(lm.image_size), "patch": patch}


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for dist in ("captum-gradeclip", "torch", "captum", "open_clip_torch", "transformers", "ray", "pyarrow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------------------- Ray
def _start_ray(address: Optional[str]) -> bool:
    """Connect to Ray unless this process already is; True when this call started it (and must stop it).
    Without an address a new local instance is started, never one that happens to run on the machine."""
    import ray
    if ray.is_initialized():
        return False
    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=True)
    return True


def _check_resources(workers: int, cpus_per_worker: int, gpus_per_worker: float, local: bool) -> None:
    import ray
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need
             if need[k] and need[k] > have.get(k, 0)]
    if short:
        message = f"{workers} worker(s) need " + " and ".join(short)
        if local:
            raise ValueError(message + ": lower --workers, --cpus-per-worker or --gpus-per-worker")
        logging.getLogger(__name__).warning("%s; waiting for the cluster to provide them", message)


def _decoding_tasks(readers: Optional[int], workers: int, gpu: bool) -> int:
    """How many decoding tasks run beside the model workers; 0: each worker decodes its own batches.

    On CPU workers decoding costs a few milliseconds per image against a model pass of a few hundred, and
    separate decoding tasks (which reserve no CPU) would run on the cores the workers reserved: every one of
    them is also a process that imports torch and this package once per run, seconds of CPU that the workers
    lose. GPU workers leave their CPU idle while the GPU computes, so their images are decoded by tasks that
    run meanwhile (2 per worker unless ``readers`` says otherwise)."""
    if readers is not None:
        return readers
    return 2 * workers if gpu else 0


def _rows(pending: Sequence[Shard]) -> List[Dict[str, Any]]:
    rows = []
    for shard in pending:
        for index, item in enumerate(shard.items):
            rows.append(_row(shard.index, index, item))
    return rows


def _row(shard: int, index: int, item: Item) -> Dict[str, Any]:
    return {"shard": shard, "index": index, "key": item.key, "path": item.path, "captions": list(item.captions),
            "offset": item.offset, "size": item.size}


def _run(pending: Sequence[Shard], folder: OutputFolder, summary: DatasetSummary, *, prompts: List[str],
         model: ModelSpec, layers: Optional[int], single_head: bool, layer_rule: Optional[str], size: str,
         word_maps: bool, workers: int, cpus_per_worker: int, gpus_per_worker: float, readers: Optional[int],
         batch_size: int, address: Optional[str], max_pixels: int, max_bytes: int, image_size: int,
         patch: Optional[int], progress: bool, on_file_written: Optional[Callable[[Path], None]]) -> None:
    import ray
    import ray.data
    from tqdm.auto import tqdm
    started = _start_ray(address)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start") if hasattr(ctx, k)}
    try:
        _check_resources(workers, cpus_per_worker, gpus_per_worker, local=started and address is None)
        for k in saved:  # one progress bar, ours, counting images; restored below
            setattr(ctx, k, False)
        rows = _rows(pending)
        blocks = max(1, min(len(rows), math.ceil(len(rows) / batch_size), 4096))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        decoding = dict(image_size=image_size, patch=patch, mode=size, max_pixels=max_pixels, max_bytes=max_bytes)
        gpu = gpus_per_worker > 0
        decoders = _decoding_tasks(readers, workers, gpu)
        if decoders:
            ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="pyarrow", num_cpus=0,
                                compute=ray.data.TaskPoolStrategy(size=min(decoders, blocks)), fn_kwargs=decoding)
        ds = ds.map_batches(Explainer, batch_size=batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                            num_gpus=gpus_per_worker if gpu else None,
                            fn_constructor_kwargs=dict(model_args=asdict(model), prompts=prompts, layers=layers,
                                                       single_head=single_head, layer_rule=layer_rule,
                                                       word_maps=word_maps, device="cuda" if gpu else "cpu",
                                                       threads=cpus_per_worker,
                                                       decode=None if decoders else decoding))
        by_index = {s.index: s for s in pending}
        received: Dict[int, Dict[int, Dict[str, Any]]] = {}
        start = time.perf_counter()
        batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        with tqdm(total=len(rows), disable=not progress, desc="explaining", unit="image") as bar, \
                contextlib.closing(batches):  # an interruption stops the workers now, not when collected
            for batch in batches:
                for row in batch.to_pylist():
                    if row["shard"] not in by_index:
                        continue  # a retried batch of a shard already written
                    got = received.setdefault(row["shard"], {})
                    if row["index"] not in got:
                        bar.update(1)
                    got[row["index"]] = row  # a retry can only replace a row, never add one
                    shard = by_index[row["shard"]]
                    if len(got) == len(shard.items):
                        table, errors = pairs_table([got[i] for i in range(len(shard.items))], word_maps)
                        path = folder.write_part(shard, table, errors)
                        summary.images_explained += len(shard.items)
                        summary.pairs += table.num_rows
                        del received[shard.index], by_index[shard.index]
                        if on_file_written is not None:
                            on_file_written(path)
        summary.seconds = time.perf_counter() - start
        if by_index:
            missing = sum(len(s.items) - len(received.get(s.index, {})) for s in by_index.values())
            raise RuntimeError(f"Ray returned no result for {missing} image(s) of {len(by_index)} file(s); the "
                               "finished files are kept: run the same command again to resume")
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        if started:
            ray.shutdown()
