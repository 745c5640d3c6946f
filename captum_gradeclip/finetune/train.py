"""The fine-tuning loop and its command line (single process or torchrun / DDP).

One step on a global batch of image-caption pairs (each rank holds a slice):

1. images and captions are encoded by the DDP-wrapped model; with ``loss="grad_eclip"`` the phrases of every
   caption (:class:`~.phrases.WordListPhrases` by default, each as ``phrase_template.format(phrase)``) are
   encoded in the same text pass, and the image pass also returns the dense patch features
   (:class:`~.regions.DenseImageEncoder`);
2. ``grad_eclip`` only: the Grad-ECLIP maps of the batch's distinct phrases on all its images come from one
   :func:`~.regions.phrase_maps` call (no gradients through them); each (image, phrase) region feature is the
   image's dense features pooled with the phrase's normalised map on that image;
3. image, caption, region and phrase features are gathered across ranks with gradients
   (:func:`~.distributed.gather_rows`) and the loss is
   ``clip_contrastive_loss + region_weight * region_phrase_loss(temperature=region_temperature)``;
4. AdamW step (linear warm-up, cosine decay), ``logit_scale`` clamped to ``[0, ln 100]`` as open_clip does.

Rank 0 shows a tqdm bar, logs to ``OUT/train.log`` and ``OUT/metrics.jsonl`` and writes checkpoints to
``OUT/checkpoints`` (:mod:`~.checkpoint`). Runs are seeded: the same configuration gives the same parameters,
whether it ran in one go or was interrupted and resumed, and (up to float rounding) on any number of ranks.

Command line (``python -m captum_gradeclip.finetune --help``)::

    torchrun --standalone --nproc_per_node 2 -m captum_gradeclip.finetune --data shapes --steps 300 --out run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .data import DataRowError, StepBatches, collate, open_caption_data
from .distributed import DistributedContext, all_true, gather_rows, init_distributed
from .losses import clip_contrastive_loss, region_phrase_loss
from .phrases import PhraseExtractor, WordListPhrases, extract_all
from .regions import DenseImageEncoder, normalize_maps, phrase_maps, pool_regions

__all__ = ["FineTuneConfig", "TrainableCLIP", "TrainResult", "FeatureEncoder", "load_trainable", "load_finetuned",
           "step_loss", "train", "main", "LOSSES", "SHAPES_MODELS"]

#: Losses of :func:`train`: CLIP's contrastive loss alone, or with the Grad-ECLIP region-phrase loss.
LOSSES = ("global", "grad_eclip")
#: Shipped shapes models that ``model="shapes:<name>"`` can start from (the open_clip ones of ``zoo.MODELS``).
SHAPES_MODELS = ("open_clip_single", "open_clip")


@dataclass
class FineTuneConfig:
    """Everything a fine-tuning run depends on (stored in every checkpoint).

    Attributes:
        model: ``"shapes"`` (the shipped tiny open_clip model of version 0.1, ``"open_clip_single"``, trained on
            one-object captions, its vocabulary extended for scene captions), ``"shapes:<name>"`` for another
            shipped open_clip shapes model (``"shapes:open_clip"``: the default 6-block model trained on rich
            captions) or an
            open_clip model name (``"ViT-B-16"``).
        pretrained: open_clip pretrained tag or checkpoint path (open_clip models only).
        data: ``"shapes"`` / ``"shapes:<style>"`` or a folder, CSV or Parquet file of image paths and captions.
        out: output directory (log, metrics, checkpoints).
        loss: ``"global"`` or ``"grad_eclip"``.
        steps: optimisation steps.
        batch_size: global batch (all ranks together; a multiple of the number of ranks).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings of tokens and positions, and
            the logit scale).
        warmup: linear warm-up steps.
        region_weight: weight of the region-phrase loss.
        region_temperature: temperature of the region-phrase loss.
        max_phrases: phrases per caption (default extractor).
        phrase_template: prompt of a phrase; None: ``"a {}"`` for the shapes model, ``"a photo of a {}"`` else.
        context_length: text context of the shapes model (its vocabulary gains the scene words).
        seed: seed of the initialisation, the data order and the shapes data.
        dataset_size: number of shapes scenes.
        save_every: checkpoint every this many steps (and at the end).
        keep: checkpoints kept.
        resume: ``"auto"`` (the newest good checkpoint in ``OUT/checkpoints``, if any), a checkpoint directory
            or file, or None (start afresh; existing checkpoints of ``OUT`` are then replaced as it goes).
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        num_workers: DataLoader worker processes.
        log_every: metrics written every this many steps.
        progress: show the tqdm bar (rank 0).
    """

    model: str = "shapes"
    pretrained: Optional[str] = None
    data: str = "shapes"
    out: str = "finetune-run"
    loss: str = "grad_eclip"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: int = 20
    region_weight: float = 1.0
    region_temperature: float = 0.07
    max_phrases: int = 5
    phrase_template: Optional[str] = None
    context_length: int = 16
    seed: int = 0
    dataset_size: int = 100_000
    save_every: int = 100
    keep: int = 2
    resume: Optional[str] = None
    device: Optional[str] = None
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError for an invalid configuration."""
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        for name in ("steps", "batch_size", "save_every", "keep", "max_phrases", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup >= 0")
        if not self.region_temperature > 0 or self.region_weight < 0:
            raise ValueError("region_temperature must be > 0 and region_weight >= 0")
        if self.model.startswith("shapes:") and self.shapes_model not in SHAPES_MODELS:
            raise ValueError(f"unknown shipped shapes model {self.model!r}; expected 'shapes' or one of "
                             f"{['shapes:' + m for m in SHAPES_MODELS]}")
        if self.phrase_template is not None and self.phrase_template.count("{}") != 1:
            raise ValueError(f"phrase_template must contain one '{{}}', got {self.phrase_template!r}")

    @property
    def template(self) -> str:
        """The phrase prompt template in use."""
        if self.phrase_template is not None:
            return self.phrase_template
        return "a {}" if self.shapes_model else "a photo of a {}"

    @property
    def shapes_model(self) -> Optional[str]:
        """The shipped shapes model to start from (``"shapes"`` is ``"open_clip_single"``), or None."""
        if self.model == "shapes":
            return "open_clip_single"
        return self.model.partition(":")[2] if self.model.startswith("shapes:") else None


@dataclass
class TrainableCLIP:
    """A CLIP model with what training needs to feed it.

    Attributes:
        model: the open_clip model.
        tokenize: texts -> token ids ``(N, L)`` (any device; moved by the trainer).
        image_size: image side.
        mean: normalisation mean.
        std: normalisation std.
        description: JSON description (to check that a resumed checkpoint belongs to the same model).
    """

    model: nn.Module
    tokenize: Callable[[List[str]], Tensor]
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    description: Dict[str, Any] = field(default_factory=dict)

    def normalize(self, images01: Tensor) -> Tensor:
        """``[0, 1]`` images -> model input."""
        mean = torch.tensor(self.mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
        return (images01 - mean) / std


def load_trainable(config: FineTuneConfig, device: torch.device) -> TrainableCLIP:
    """The model to fine-tune: the shipped shapes model with room for scene captions, or an open_clip model.

    Args:
        config: the run's configuration (``model``, ``pretrained``, ``context_length``).
        device: where the model goes.

    Returns:
        TrainableCLIP: the model in train mode.
    """
    if config.shapes_model:
        from ..data.scene_descriptions import SCENE_WORDS
        from ..zoo import load_shapes_clip
        from .vocabulary import extend_shapes_clip

        base = load_shapes_clip(config.shapes_model)
        context = max(config.context_length, base.tokenizer.context_length)
        clip = extend_shapes_clip(base, SCENE_WORDS, context)
        model = clip.model.to(device).train()
        tok = clip.tokenizer
        return TrainableCLIP(model=model, tokenize=lambda texts: tok(list(texts)), image_size=clip.image_size,
                             mean=tuple(clip.mean), std=tuple(clip.std),
                             description={"model": config.model, "context_length": context,
                                          "vocab": tok.vocab})
    from ..loading import load_open_clip

    lm = load_open_clip(config.model, config.pretrained, str(device))
    return TrainableCLIP(model=lm.model.train(), tokenize=lm.tokenize, image_size=lm.image_size, mean=lm.mean,
                         std=lm.std, description={"model": config.model, "pretrained": config.pretrained})


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank).

    Attributes:
        model: the fine-tuned model (unwrapped, on the training device).
        trainable: the model with its tokenizer and preprocessing.
        losses: per step ``{"loss", "clip", "region"}`` of the steps run by this call.
        step_seconds: wall time of each step run by this call.
        checkpoint: the last checkpoint written (rank 0), or None.
        start_step: the step this call started from (after a resume).
    """

    model: nn.Module
    trainable: TrainableCLIP
    losses: List[Dict[str, float]]
    step_seconds: List[float]
    checkpoint: Optional[Path]
    start_step: int


def load_finetuned(path: str | Path, device: str | torch.device = "cpu") -> TrainableCLIP:
    """A fine-tuned model from one of its checkpoints (rebuilt from the configuration stored in it).

    Args:
        path: a checkpoint ``.json`` (or ``.safetensors``) file, or a run's checkpoint directory (the newest good
            checkpoint is used).
        device: where the model goes.

    Returns:
        TrainableCLIP: the model in eval mode with its tokenizer and preprocessing.

    Raises:
        CheckpointError: For a missing, truncated or corrupt checkpoint, or one without its configuration.
    """
    path = Path(path)
    ckpt = latest_checkpoint(path) if path.is_dir() else load_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"no usable checkpoint in {path}")
    try:
        config = FineTuneConfig(**ckpt.extra["config"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {ckpt.path} does not record its fine-tuning configuration ({err})"
                              ) from None
    trainable = load_trainable(config, torch.device(device))
    ckpt.restore(trainable.model)
    trainable.model.eval()
    return trainable


def phrase_id(text: str) -> int:
    """A stable integer id of a phrase text (CRC-32; equal texts, equal ids on every rank)."""
    return zlib.crc32(text.encode("utf-8"))


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith(".bias")
        (rest if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def learning_rate(step: int, config: FineTuneConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


class FeatureEncoder(nn.Module):
    """What DDP wraps: one forward that returns every feature the losses need.

    ``forward(images, tokens)`` returns ``(image_features, dense, text_features, logit_scale)``; ``dense`` (the
    patch features of :class:`~.regions.DenseImageEncoder`) only when built with ``dense=True``, else None.

    Args:
        model (nn.Module): the open_clip model.
        dense (bool): also return the dense patch features (for the region-phrase loss).
    """

    def __init__(self, model: nn.Module, dense: bool) -> None:
        super().__init__()
        self.model = model
        self.dense = DenseImageEncoder(model) if dense else None

    def forward(self, images: Tensor, tokens: Tensor) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
        if self.dense is not None:
            image_features, dense = self.dense(images)
        else:
            image_features, dense = self.model.encode_image(images), None
        text_features = self.model.encode_text(tokens)
        return image_features, dense, text_features, self.model.logit_scale.exp()


def _resolve_resume(config: FineTuneConfig, ckpt_dir: Path) -> Optional[Checkpoint]:
    if config.resume is None:
        return None
    target = ckpt_dir if config.resume == "auto" else Path(config.resume)
    if target.is_dir():
        found = latest_checkpoint(target)
        if found is None and config.resume != "auto":
            raise CheckpointError(f"no usable checkpoint in {target}")
        return found
    return load_checkpoint(target)


def _logger(out: Path, main: bool) -> logging.Logger:
    log = logging.getLogger(f"captum_gradeclip.finetune.{out.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if main:
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    else:
        log.addHandler(logging.NullHandler())
    return log


def train(config: FineTuneConfig, *, phrase_extractor: Optional[PhraseExtractor] = None,
          ctx: Optional[DistributedContext] = None) -> TrainResult:
    """Fine-tune a CLIP model (one process, or one rank of a torchrun job).

    Args:
        config: the run's configuration.
        phrase_extractor: phrases of a caption (``loss="grad_eclip"``). Default:
            ``WordListPhrases(max_phrases=config.max_phrases)``.
        ctx: the distributed context; default :func:`~.distributed.init_distributed` (reads torchrun's
            environment; a single process without it).

    Returns:
        TrainResult: the model and what the run measured.

    Raises:
        DataRowError: For a bad data row (the message names it); checkpoints written before stay in place.
        CheckpointError: For a ``resume`` checkpoint that cannot be used.
    """
    config.check()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(config.device)
    try:
        return _train(config, phrase_extractor or WordListPhrases(max_phrases=config.max_phrases), ctx)
    finally:
        if own_ctx:
            ctx.close()


def _train(config: FineTuneConfig, extractor: PhraseExtractor, ctx: DistributedContext) -> TrainResult:
    from tqdm.auto import tqdm

    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    log = _logger(out, ctx.is_main)
    torch.manual_seed(config.seed)
    trainable = load_trainable(config, ctx.device)
    model = trainable.model
    data = open_caption_data(config.data, trainable.image_size, size=config.dataset_size, seed=config.seed)
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the number of ranks "
                         f"{ctx.world_size}")
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    start = 0
    ckpt = _resolve_resume(config, ckpt_dir)
    if ckpt is not None:
        stored = ckpt.extra.get("model")
        if stored is not None and stored != trainable.description:
            raise CheckpointError(f"checkpoint {ckpt.path} is for model {stored}, not {trainable.description}")
        ckpt.restore(model, optimizer)
        start = ckpt.step
        log.info("resumed from %s at step %d", ckpt.path, start)
    grad_eclip = config.loss == "grad_eclip"
    encoder = FeatureEncoder(model, dense=grad_eclip)
    wrapped: nn.Module = encoder
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(encoder, device_ids=ids)
    sampler = StepBatches(len(data), config.batch_size, config.seed, ctx.rank, ctx.world_size, start=start,
                          stop=config.steps)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers)
    description = {"config": asdict(config), "model": trainable.description, "data": data.describe(),
                   "world_size": ctx.world_size}
    log.info("start: %s", json.dumps(description))
    metrics = open(out / "metrics.jsonl", "a") if ctx.is_main else None
    losses: List[Dict[str, float]] = []
    seconds: List[float] = []
    last: Optional[Path] = None
    template = config.template
    bar = tqdm(total=config.steps, initial=start, desc=f"fine-tuning ({config.loss})", unit="step",
               disable=not (ctx.is_main and config.progress))
    batches = iter(loader)
    try:
        for step in range(start, config.steps):
            error: Optional[DataRowError] = None
            try:
                images01, captions = next(batches)
                try:  # a caption the model's tokenizer refuses is a bad row too (word-level shapes tokenizer)
                    trainable.tokenize(list(captions))
                except ValueError as err:
                    raise DataRowError(f"a caption of step {step} cannot be tokenized: {err}") from None
            except DataRowError as err:
                error = err
            if not all_true(error is None, ctx):
                log.info("stopped at step %d: %s", step, error or "a bad data row on another rank")
                if error is not None:
                    raise error
                raise DataRowError(f"another rank hit a bad data row at step {step} (its error names it)")
            t0 = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(step, config)
            images = trainable.normalize(images01.to(ctx.device))
            parts = step_loss(wrapped, encoder, trainable, images, captions, extractor, template, config, ctx,
                              grad_eclip)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            values = {k: float(v.detach()) for k, v in parts.items()}
            seconds.append(time.perf_counter() - t0)
            losses.append(values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}")
            done = step + 1
            if metrics is not None and (done % config.log_every == 0 or done == config.steps or done == start + 1):
                row = {"step": done, "lr": learning_rate(step, config), "seconds": seconds[-1], **values}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                log.info("step %d %s", done, json.dumps(row))
            if done % config.save_every == 0 or done == config.steps:
                if ctx.is_main:
                    last = save_checkpoint(ckpt_dir, done, model, optimizer, description, keep=config.keep)
                    log.info("checkpoint %s", last)
                ctx.barrier()
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        log.info("%s: %d steps run, median %.3f s/step", "done" if len(seconds) == config.steps - start else
                 "stopped", len(seconds), sorted(seconds)[len(seconds) // 2] if seconds else float("nan"))
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    return TrainResult(model=model, trainable=trainable, losses=losses, step_seconds=seconds, checkpoint=last,
                       start_step=start)


def step_loss(wrapped: nn.Module, encoder: FeatureEncoder, trainable: TrainableCLIP, images: Tensor,
              captions: List[str], extractor: PhraseExtractor, template: str, config: FineTuneConfig,
              ctx: DistributedContext, grad_eclip: bool) -> Dict[str, Tensor]:
    """The loss of one step on this rank's slice of the global batch (steps 1 to 3 of the module docstring).

    Args:
        wrapped: ``encoder``, or the DDP module wrapping it.
        encoder: the :class:`FeatureEncoder` (``dense=grad_eclip``).
        trainable: the model with its tokenizer.
        images: normalised images ``(n, 3, H, W)`` of this rank.
        captions: their captions.
        extractor: phrase extractor.
        template: phrase prompt template.
        config: the run's configuration (``region_weight``, ``region_temperature``).
        ctx: the distributed context.
        grad_eclip: add the region-phrase loss.

    Returns:
        dict: ``loss`` (with its graph), ``clip`` and ``region`` (detached).
    """
    dev = images.device
    n = len(captions)
    owners: List[int] = []    # image of each region
    slots: List[int] = []     # position of the phrase in its caption
    targets: List[int] = []   # index of the region's phrase among this rank's distinct phrases
    phrases: Dict[str, int] = {}
    if grad_eclip:
        for i, ps in enumerate(extract_all(extractor, captions)):
            for j, p in enumerate(ps):
                owners.append(i)
                slots.append(j)
                targets.append(phrases.setdefault(p, len(phrases)))
    tokens = trainable.tokenize(list(captions) + [template.format(p) for p in phrases]).to(dev)
    image_features, dense, text_all, scale = wrapped(images, tokens)
    caption_features, phrase_features = text_all[:n], text_all[n:]
    clip = clip_contrastive_loss(gather_rows(image_features, ctx), gather_rows(caption_features, ctx), scale)
    if not grad_eclip:
        return {"loss": clip, "clip": clip.detach(), "region": torch.zeros((), device=dev)}
    e = image_features.shape[-1]
    if phrases:
        # maps of this rank's distinct phrases on its images, one attribute_all call, no gradients
        maps = phrase_maps(encoder.model, images.detach(), phrase_features.detach())  # (N, P, h, w)
        own, slot = torch.tensor(owners, device=dev), torch.tensor(slots, device=dev)
        tgt = torch.tensor(targets, device=dev)
        weights, valid = normalize_maps(maps[own, tgt])  # (R, h*w), (R,)
        per_image = torch.zeros(n, max(slots) + 1, weights.shape[-1], device=dev, dtype=weights.dtype)
        per_image[own, slot] = weights
        regions = pool_regions(dense, per_image)[own, slot]  # (R, E)
        ids = torch.tensor([phrase_id(p) for p in phrases], device=dev, dtype=torch.long)
    else:  # no phrase in this rank's captions: contribute no rows, but take part in every gather
        regions = dense.sum() * torch.zeros(0, e, device=dev)
        phrase_features = text_all.sum() * torch.zeros(0, e, device=dev)
        valid = torch.zeros(0, dtype=torch.bool, device=dev)
        ids = torch.zeros(0, dtype=torch.long, device=dev)
        tgt = torch.zeros(0, dtype=torch.long, device=dev)
    # phrase indexes of the gathered batch: this rank's phrases come after those of the ranks before it
    counts = gather_rows(torch.tensor([len(phrases)], device=dev), ctx, grad=False)
    offset = counts[:ctx.rank].sum()
    all_regions = gather_rows(regions, ctx)
    all_phrases = gather_rows(phrase_features, ctx)
    all_targets = gather_rows(tgt + offset, ctx, grad=False)
    all_ids = gather_rows(ids, ctx, grad=False)
    all_valid = gather_rows(valid.float(), ctx, grad=False)
    if all_regions.shape[0] == 0:
        region = (all_regions.sum() + all_phrases.sum()) * 0.0
    else:
        region = region_phrase_loss(all_regions, all_phrases, all_targets, all_ids, all_valid,
                                    config.region_temperature)
    return {"loss": clip + config.region_weight * region, "clip": clip.detach(), "region": region.detach()}


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main` (one flag per :class:`FineTuneConfig` field)."""
    d = FineTuneConfig()
    p = argparse.ArgumentParser(
        prog="python -m captum_gradeclip.finetune",
        description="Grad-ECLIP-guided fine-tuning of an open_clip model (one process, or torchrun / DDP: "
                    "torchrun --nproc_per_node N -m captum_gradeclip.finetune ...).")
    p.add_argument("--model", default=d.model,
                   help="'shapes' (the shipped tiny model open_clip_single), 'shapes:open_clip' (the default 6-block "
                        "shapes model) or an open_clip model name")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path")
    p.add_argument("--data", default=d.data, help="'shapes', 'shapes:<style>', or a folder / CSV / Parquet file")
    p.add_argument("--out", default=d.out, help="output directory (log, metrics, checkpoints)")
    p.add_argument("--loss", choices=LOSSES, default=d.loss)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch over all ranks")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--region-weight", type=float, default=d.region_weight)
    p.add_argument("--region-temperature", type=float, default=d.region_temperature)
    p.add_argument("--max-phrases", type=int, default=d.max_phrases)
    p.add_argument("--phrase-template", default=None, help="prompt of a phrase, e.g. 'a photo of a {}'")
    p.add_argument("--context-length", type=int, default=d.context_length, help="shapes model only")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dataset-size", type=int, default=d.dataset_size, help="number of shapes scenes")
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--keep", type=int, default=d.keep)
    p.add_argument("--resume", default=None, help="'auto', a checkpoint directory or a checkpoint .json file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(args: argparse.Namespace) -> FineTuneConfig:
    """A :class:`FineTuneConfig` from parsed arguments."""
    return FineTuneConfig(**{k: v for k, v in vars(args).items() if k in FineTuneConfig.__dataclass_fields__})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: train, print one line, exit 0; a bad row or checkpoint prints one line, exit 2."""
    import sys

    from ..errors import InputError

    args = build_parser().parse_args(argv)
    try:
        result = train(config_from_args(args))
    except (DataRowError, CheckpointError, InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.checkpoint is not None:
        print(f"done: {len(result.step_seconds)} steps; checkpoint {result.checkpoint}")
    return 0
