"""Train the tiny shapes-world CLIPs shipped in ``captum_gradeclip/zoo/weights``.

Each training batch is freshly generated (seeded): a mix of multi-object scenes
(1-3 objects) and single-object images, each captioned with a random template
naming one object ("a red circle", "a photo of a blue cross", ...). The loss is
the symmetric CLIP InfoNCE loss; because the world has only 24 classes, a batch
contains many duplicate captions and scenes that contain the object another
caption names, so by default the contrastive targets are *multi-positive*: text
``j`` counts as a positive of image ``i`` whenever image ``i`` contains the object
that text ``j`` names (the targets of each row/column are normalised to sum to 1).
``--strict-infonce`` falls back to the plain one-hot diagonal targets. The
architectures are unmodified ``open_clip.CLIP`` / ``transformers.CLIPModel``.

After training, weights are saved in fp16 (safetensors) together with a JSON
config, reloaded through :func:`captum_gradeclip.zoo.shapes_clip_from_files`,
and evaluated on held-out scenes:

* ``single_object_acc``: zero-shot accuracy of single-object images against all
  24 class prompts ``"a {colour} {shape}"``;
* ``multi_object_target_vs_absent``: fraction of 2-3 object scenes whose target
  caption scores higher than every caption of a class absent from the scene;
* ``multi_object_pairwise``: mean fraction of absent-class captions beaten by the
  target caption;
* ``multi_object_set_recall``: fraction of scenes whose top-``k`` class prompts
  (``k`` = number of objects) are exactly the classes present.

Example (about 20 minutes per model on one shared CPU thread)::

    PYTHONPATH=. python benchmarks/train_shapes_clip.py --arch both --threads 1

``--captions rich`` trains on the scene descriptions of :func:`captum_gradeclip.data.describe_scene` instead:
scenes of 1-4 objects, each captioned in one of the styles ``single`` (one object, the templates above),
``list`` (every object), ``relation`` (``"a red circle is left of a blue square"``, with a random second
object) or ``count`` (``"two circles and one cross"``), half of them behind a prefix of words without a visual
referent (``"a photo of"``, ``"there is"``, ``"a nice picture of"``, ``"a simple image with"``, ...). The
vocabulary is :data:`RICH_WORDS` and the context :data:`RICH_CONTEXT_LENGTH` tokens. A text is a positive of
every image of the batch it is *true of* (:func:`caption_holds`), and each relation caption brings its swapped
twin (``"a blue square is left of a red circle"``) as an extra hard negative text. ``--styles`` reweights the
styles (default :data:`RICH_STYLES`: single 0.35, list 0.25, relation 0.3, count 0.1).

``--init NAME`` starts from a shipped model instead of random weights (:func:`grow_shapes_clip`): its vocabulary
and context are extended for rich captions, and ``--layers`` / ``--text-layers`` above its depth add blocks that
start as the identity (attention and MLP output projections zero), so the start computes the shipped model's
features exactly. ``--name`` names the files. The shipped default models (6 blocks per tower, rich captions) were
grown from the 4-block models of version 0.1 and trained with::

    PYTHONPATH=. python benchmarks/train_shapes_clip.py --arch open_clip --captions rich --init open_clip_single \
        --layers 6 --text-layers 6 --name shapes_open_clip --steps 1000 --lr 2e-4 --warmup 50 --eval-every 250 \
        --threads 1
    PYTHONPATH=. python benchmarks/train_shapes_clip.py --arch hf --captions rich --init hf_single \
        --layers 6 --text-layers 6 --name shapes_hf --steps 1000 --lr 2e-4 --warmup 50 --eval-every 250 \
        --threads 1

(the 0.1 models, ``shapes_open_clip_single`` and ``shapes_hf_single``, with the example command above and
``--name``). Training times, machine and held-out metrics are in each model's JSON config.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from captum_gradeclip.data import (
    CAPTION_PREFIXES,
    CAPTION_STYLES,
    COLORS,
    SCENE_WORDS,
    SHAPES,
    ShapesBatch,
    class_names,
    describe_scene,
    generate_scenes,
    relation,
)
from captum_gradeclip.finetune.vocabulary import extend_text_embeddings
from captum_gradeclip.zoo.shapes_clip import MODELS, ShapesCLIP, build_model, load_shapes_clip, shapes_clip_from_files
from captum_gradeclip.zoo.tokenizer import DEFAULT_WORDS, ShapesTokenizer

#: Caption templates sampled during training (evaluation uses "a {} {}").
TRAIN_TEMPLATES = ("a {} {}", "the {} {}", "a photo of a {} {}", "an image of a {} {}", "{} {}")
MEAN = (0.45, 0.45, 0.45)
STD = (0.15, 0.15, 0.15)
IMAGE_SIZE = 64
PATCH_SIZE = 8
CONTEXT_LENGTH = 8
EVAL_SEED = 777_000  # held-out scenes; training seeds are (seed + 1) * 10_000_019 + step
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "captum_gradeclip" / "zoo" / "weights"

#: ``--captions rich``: prefixes without a visual referent, put before half of the captions.
RICH_PREFIXES = CAPTION_PREFIXES
#: ``--captions rich``: probabilities of the caption styles single, list, relation, count.
RICH_STYLES = (("single", 0.35), ("list", 0.25), ("relation", 0.3), ("count", 0.1))
#: ``--captions rich``: the vocabulary (the default words, the scene words, the prefix words).
RICH_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    DEFAULT_WORDS + SCENE_WORDS + tuple(w for p in RICH_PREFIXES for w in p.split())))
#: ``--captions rich``: context length; the longest caption (a prefix of 4 words + 4 listed objects, 17 words)
#: takes 19 tokens with sot and eot.
RICH_CONTEXT_LENGTH = 20


#: Per architecture: the key patterns of the image and text towers' blocks, the block parameters that are zeroed
#: in a new block (its attention output and MLP output: the block starts as the identity) and the text
#: embeddings (tokens, positions).
_BLOCK_KEYS = {"open_clip": (r"^(visual\.transformer\.resblocks\.)(\d+)(\..*)$", r"^(transformer\.resblocks\.)(\d+)(\..*)$"),
               "hf": (r"^(vision_model\.encoder\.layers\.)(\d+)(\..*)$", r"^(text_model\.encoder\.layers\.)(\d+)(\..*)$")}
_IDENTITY_ZEROS = {"open_clip": (".attn.out_proj.weight", ".attn.out_proj.bias", ".mlp.c_proj.weight", ".mlp.c_proj.bias"),
                   "hf": (".self_attn.out_proj.weight", ".self_attn.out_proj.bias", ".mlp.fc2.weight", ".mlp.fc2.bias")}
_TEXT_EMBEDDINGS = {"open_clip": ("token_embedding.weight", "positional_embedding"),
                    "hf": ("text_model.embeddings.token_embedding.weight",
                           "text_model.embeddings.position_embedding.weight")}


def block_positions(old: int, new: int) -> list[int]:
    """Where the ``old`` trained blocks go among ``new`` blocks: spread evenly, the first and the last kept in place
    (4 -> 6: ``[0, 2, 3, 5]``; the identity blocks are 1 and 4)."""
    if new < old or old < 1:
        raise ValueError(f"cannot grow {old} blocks into {new}")
    return [0] if old == 1 else [round(i * (new - 1) / (old - 1)) for i in range(old)]


def grow_shapes_clip(clip: ShapesCLIP, words: tuple[str, ...], context_length: int, layers: int | None,
                     text_layers: int | None) -> ShapesCLIP:
    """A deeper copy of a shipped shapes CLIP (open_clip or HF) with more words and a longer context that computes
    the same features as the original for every text its tokenizer accepts.

    The trained blocks keep their order (:func:`block_positions`); each new block is a fresh block whose attention
    output and MLP output projections are zero, so it adds nothing to the residual stream until training moves
    them. Vocabulary and context grow with
    :func:`captum_gradeclip.finetune.vocabulary.extend_text_embeddings`, as in ``extend_shapes_clip``.
    """
    kind = clip.kind
    old_tok = clip.tokenizer
    new_words = [w for w in dict.fromkeys(words) if w not in old_tok.words]
    tok = ShapesTokenizer(words=list(old_tok.words) + new_words, context_length=max(context_length,
                                                                                     old_tok.context_length))
    cfg = copy.deepcopy(clip.config["model_cfg"])
    if kind == "open_clip":
        old_depth = (cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"])
        layers, text_layers = layers or old_depth[0], text_layers or old_depth[1]
        cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"] = layers, text_layers
        cfg["text_cfg"].update(vocab_size=tok.vocab_size, context_length=tok.context_length, eos_id=tok.eot_id,
                               pad_id=tok.pad_id)
    else:
        old_depth = (cfg["vision_config"]["num_hidden_layers"], cfg["text_config"]["num_hidden_layers"])
        layers, text_layers = layers or old_depth[0], text_layers or old_depth[1]
        cfg["vision_config"]["num_hidden_layers"], cfg["text_config"]["num_hidden_layers"] = layers, text_layers
        cfg["text_config"].update(vocab_size=tok.vocab_size, max_position_embeddings=tok.context_length,
                                  eos_token_id=tok.eot_id, pad_token_id=tok.pad_id)
    moves = [dict(enumerate(block_positions(o, n))) for o, n in zip(old_depth, (layers, text_layers))]
    model = build_model(kind, cfg)
    state = model.state_dict()
    for pattern, where, depth in zip(_BLOCK_KEYS[kind], moves, (layers, text_layers)):
        fresh = set(range(depth)) - set(where.values())
        for key in state:
            m = re.match(pattern, key)
            if m and int(m.group(2)) in fresh and m.group(3) in _IDENTITY_ZEROS[kind]:
                state[key] = torch.zeros_like(state[key])
    old_state = clip.model.state_dict()
    tok_key, pos_key = _TEXT_EMBEDDINGS[kind]
    state[tok_key], state[pos_key] = extend_text_embeddings(old_state[tok_key], old_state[pos_key], old_tok, tok)
    for key, value in old_state.items():
        if key in (tok_key, pos_key):
            continue
        new_key = key
        for pattern, where in zip(_BLOCK_KEYS[kind], moves):
            m = re.match(pattern, key)
            if m:
                new_key = f"{m.group(1)}{where[int(m.group(2))]}{m.group(3)}"
        state[new_key] = value.clone()
    model.load_state_dict(state, strict=True)
    config = {**copy.deepcopy(clip.config), "model_cfg": cfg, "tokenizer": tok.to_dict()}
    return ShapesCLIP(model=model.float().eval(), tokenizer=tok, kind=kind, image_size=clip.image_size,
                      mean=clip.mean, std=clip.std, class_names=list(clip.class_names), config=config)


def parse_styles(text: str) -> tuple[tuple[str, float], ...]:
    """``"single=0.35,relation=0.65"`` -> ``(("single", 0.35), ("relation", 0.65))``: rich caption styles and their
    weights (:data:`~captum_gradeclip.data.CAPTION_STYLES`; weights >= 0, at least one > 0)."""
    out = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in CAPTION_STYLES:
            raise argparse.ArgumentTypeError(f"unknown caption style {name!r}; expected one of {CAPTION_STYLES}")
        try:
            w = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"style {name!r} needs a weight, e.g. {name}=0.3") from None
        if w < 0:
            raise argparse.ArgumentTypeError(f"style {name!r} has a negative weight {w}")
        out.append((name, w))
    if not any(w > 0 for _, w in out):
        raise argparse.ArgumentTypeError("at least one caption style needs a positive weight")
    return tuple(out)


def machine_description() -> str:
    """CPU model, architecture and core count of this machine (recorded with the training time)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: platform.processor() below
        lines = []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return f"{cpu or platform.processor() or 'CPU'} ({platform.machine()}, {os.cpu_count()} cores)"


def model_cfg(arch: str, tok: ShapesTokenizer, width: int, layers: int, text_width: int,
              text_layers: int, embed_dim: int) -> dict[str, Any]:
    """Architecture kwargs for :func:`captum_gradeclip.zoo.build_model`."""
    heads = 4
    if arch == "open_clip":
        return {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "image_size": IMAGE_SIZE,
                "patch_size": PATCH_SIZE,
                "width": width,
                "layers": layers,
                "head_width": width // heads,
            },
            "text_cfg": {
                "context_length": tok.context_length,
                "vocab_size": tok.vocab_size,
                "width": text_width,
                "heads": heads,
                "layers": text_layers,
                "pad_id": tok.pad_id,
                "eos_id": tok.eot_id,
            },
        }
    return {
        "projection_dim": embed_dim,
        "text_config": {
            "vocab_size": tok.vocab_size,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "max_position_embeddings": tok.context_length,
            "pad_token_id": tok.pad_id,
            "bos_token_id": tok.sot_id,
            "eos_token_id": tok.eot_id,
        },
        "vision_config": {
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
        },
    }


def make_batch(batch_size: int, single_frac: float, seed: int, tok: ShapesTokenizer):
    """One training batch: normalised images, ids, per-image classes, caption classes."""
    n_single = int(round(batch_size * single_frac))
    n_multi = batch_size - n_single
    parts = []
    if n_multi:
        parts.append(generate_scenes(n_multi, num_objects=(1, 3), seed=seed))
    if n_single:
        parts.append(generate_scenes(n_single, num_objects=1, seed=seed + 5_000_011))
    images = torch.cat([p.images for p in parts])
    present = torch.full((batch_size, 3), -1, dtype=torch.long)
    row = 0
    for p in parts:
        present[row : row + len(p), : p.class_ids.shape[1]] = p.class_ids
        row += len(p)
    target_cls = torch.cat([p.target_class for p in parts])
    g = torch.Generator().manual_seed(seed + 9_000_041)
    tmpl = torch.randint(len(TRAIN_TEMPLATES), (batch_size,), generator=g).tolist()
    caps = [
        TRAIN_TEMPLATES[t].format(COLORS[c // len(SHAPES)], SHAPES[c % len(SHAPES)])
        for t, c in zip(tmpl, target_cls.tolist())
    ]
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, tok(caps), present, target_cls


def forward_features(model: torch.nn.Module, arch: str, x: torch.Tensor, ids: torch.Tensor,
                     tok: ShapesTokenizer):
    """Unit-norm image and text features and the logit scale."""
    if arch == "open_clip":
        img, txt, scale = model(x, ids)
        return img, txt, scale
    out = model(input_ids=ids, pixel_values=x, attention_mask=(ids != tok.pad_id).long())
    return out.image_embeds, out.text_embeds, model.logit_scale.exp()


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, present: torch.Tensor,
              target_cls: torch.Tensor, strict: bool) -> torch.Tensor:
    """Symmetric InfoNCE with (optionally) multi-positive targets (single-object captions)."""
    if strict:
        pos = torch.eye(img.shape[0], txt.shape[0])
    else:
        pos = (present[:, :, None] == target_cls[None, None, :]).any(1).float()  # (images, texts)
    return multi_positive_loss(scale * img @ txt.T, pos)


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are the positives ``pos`` (images, texts), each row/column normalised.

    Every image needs a positive text; texts without a positive image (hard negatives) only enter the
    image-to-text term.
    """
    pos = pos.float()
    t_i = pos / pos.sum(1, keepdim=True)
    li = -(t_i * F.log_softmax(logits, dim=1)).sum(1).mean()
    has = pos.sum(0) > 0
    t_t = pos.T[has] / pos.T[has].sum(1, keepdim=True)
    lt = -(t_t * F.log_softmax(logits.T[has], dim=1)).sum(1).mean()
    return 0.5 * (li + lt)


def scene_facts(batch: ShapesBatch, i: int) -> dict[str, Any]:
    """What captions can be checked against in scene ``i``: its classes, shape counts and centres by class."""
    k = int(batch.num_objects[i])
    cls = [int(batch.colors[i, m]) * len(SHAPES) + int(batch.shapes[i, m]) for m in range(k)]
    counts = [0] * len(SHAPES)
    for m in range(k):
        counts[int(batch.shapes[i, m])] += 1
    return {"classes": frozenset(cls), "counts": tuple(counts),
            "centers": {c: batch.centers[i, m].tolist() for m, c in enumerate(cls)}}


def caption_holds(meaning: tuple, facts: dict[str, Any]) -> bool:
    """Whether a caption's meaning is true of a scene.

    Meanings: ``("single", cls)`` (the object is there), ``("list", classes)`` (exactly these objects),
    ``("count", counts)`` (these shape counts), ``("relation", cls_a, rel, cls_b)`` (both objects there and
    ``a`` is ``rel`` ``b`` by :func:`captum_gradeclip.data.relation`).
    """
    kind = meaning[0]
    if kind == "single":
        return meaning[1] in facts["classes"]
    if kind == "list":
        return meaning[1] == facts["classes"]
    if kind == "count":
        return meaning[1] == facts["counts"]
    _, a, rel, b = meaning
    c = facts["centers"]
    return a in c and b in c and relation(c[a], c[b]) == rel


def make_rich_batch(batch_size: int, single_frac: float, seed: int, tok: ShapesTokenizer,
                    styles: tuple[tuple[str, float], ...] = RICH_STYLES):
    """One ``--captions rich`` batch: images, ids (own captions, then swapped relation captions), positives;
    ``styles`` are the caption styles with their probabilities (:data:`RICH_STYLES` by default)."""
    n_single = int(round(batch_size * single_frac))
    parts = [generate_scenes(batch_size - n_single, num_objects=(1, 4), seed=seed)]
    if n_single:
        parts.append(generate_scenes(n_single, num_objects=1, seed=seed + 5_000_011))
    rng = random.Random(seed + 9_000_041)
    styles, weights = zip(*styles)
    caps: list[str] = []
    meanings: list[tuple] = []
    extra_caps: list[str] = []
    extra_meanings: list[tuple] = []
    facts = []
    for part in parts:
        for i in range(len(part)):
            f = scene_facts(part, i)
            facts.append(f)
            t = int(part.target[i])
            tcls = int(part.colors[i, t]) * len(SHAPES) + int(part.shapes[i, t])
            style = rng.choices(styles, weights)[0]
            k = int(part.num_objects[i])
            prefix = rng.choice(RICH_PREFIXES) + " " if rng.random() < 0.5 else ""
            if style == "single" or (style == "relation" and k == 1):
                tmpl = rng.choice(TRAIN_TEMPLATES)
                text = tmpl.format(COLORS[tcls // len(SHAPES)], SHAPES[tcls % len(SHAPES)])
                caps.append(prefix + text if tmpl == "a {} {}" else text)
                meanings.append(("single", tcls))
            elif style == "list":
                caps.append(prefix + describe_scene(part, i, "list"))
                meanings.append(("list", f["classes"]))
            elif style == "count":
                caps.append(prefix + describe_scene(part, i, "count"))
                meanings.append(("count", f["counts"]))
            else:
                o = rng.choice([m for m in range(k) if m != t])
                ocls = int(part.colors[i, o]) * len(SHAPES) + int(part.shapes[i, o])
                rel = relation(part.centers[i, t].tolist(), part.centers[i, o].tolist())
                caps.append(prefix + describe_scene(part, i, "relation", other=o))
                meanings.append(("relation", tcls, rel, ocls))
                name_t = f"{COLORS[tcls // len(SHAPES)]} {SHAPES[tcls % len(SHAPES)]}"
                name_o = f"{COLORS[ocls // len(SHAPES)]} {SHAPES[ocls % len(SHAPES)]}"
                extra_caps.append(f"{prefix}a {name_o} is {rel} a {name_t}")
                extra_meanings.append(("relation", ocls, rel, tcls))
    all_meanings = meanings + extra_meanings
    pos = torch.tensor([[caption_holds(m, f) for m in all_meanings] for f in facts])
    if not bool(pos.diagonal().all()):
        raise RuntimeError("a rich caption is not true of its own scene")
    images = torch.cat([p.images for p in parts])
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, tok(caps + extra_caps), pos


@torch.no_grad()
def evaluate_relations(clip: ShapesCLIP, n: int = 500) -> dict[str, float]:
    """Held-out two-object scenes: how often "A <rel> B" (true) outscores the swapped "B <rel> A"."""
    scenes = generate_scenes(n, num_objects=2, seed=EVAL_SEED + 2)
    true, swapped = [], []
    for i in range(n):
        t = int(scenes.target[i])
        o = 1 - t
        names = [f"{COLORS[int(scenes.colors[i, m])]} {SHAPES[int(scenes.shapes[i, m])]}" for m in (t, o)]
        rel = relation(scenes.centers[i, t].tolist(), scenes.centers[i, o].tolist())
        true.append(f"a {names[0]} is {rel} a {names[1]}")
        swapped.append(f"a {names[1]} is {rel} a {names[0]}")
    img = clip.encode_images(scenes.images)
    s_true = (img * clip.encode_texts(true)).sum(1)
    s_swap = (img * clip.encode_texts(swapped)).sum(1)
    return {"relation_swap_acc": round((s_true > s_swap).float().mean().item(), 4), "relation_eval_n": n}


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "class_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate(clip: ShapesCLIP, n: int = 1000) -> dict[str, float]:
    """Held-out zero-shot metrics of a loaded :class:`ShapesCLIP`."""
    single = generate_scenes(n, num_objects=1, seed=EVAL_SEED)
    logits = clip.classify(single.images)
    single_acc = (logits.argmax(1) == single.target_class).float().mean().item()

    multi = generate_scenes(n, num_objects=(2, 3), seed=EVAL_SEED + 1)
    logits = clip.classify(multi.images)  # (n, 24)
    cls = multi.class_ids
    present = torch.zeros_like(logits, dtype=torch.bool)
    present.scatter_(1, cls.clamp(min=0), cls >= 0)
    tgt = logits.gather(1, multi.target_class[:, None])
    absent_logits = logits.masked_fill(present, float("-inf"))
    beats_all = (tgt > absent_logits.max(1, keepdim=True).values).float().mean().item()
    beaten = ((tgt > logits) & ~present).float().sum(1) / (~present).float().sum(1)
    k = multi.num_objects
    order = logits.argsort(1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(logits.shape[1]).expand_as(order).contiguous())
    set_ok = ((ranks < k[:, None]) == present).all(1).float().mean().item()
    return {
        "single_object_acc": round(single_acc, 4),
        "multi_object_target_vs_absent": round(beats_all, 4),
        "multi_object_pairwise": round(beaten.mean().item(), 4),
        "multi_object_set_recall": round(set_ok, 4),
        "eval_n": n,
        "eval_seed": EVAL_SEED,
    }


def _wrap(model: torch.nn.Module, arch: str, tok: ShapesTokenizer) -> ShapesCLIP:
    """Wrap a model being trained so that :func:`evaluate` can use it."""
    return ShapesCLIP(model=model, tokenizer=tok, kind=arch, image_size=IMAGE_SIZE, mean=MEAN,
                      std=STD, class_names=class_names(), config={})


def train(arch: str, args: argparse.Namespace, command: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    rich = args.captions == "rich"
    if args.init:
        start = load_shapes_clip(args.init)
        start = grow_shapes_clip(start, RICH_WORDS if rich else (), RICH_CONTEXT_LENGTH if rich else 0,
                                 args.layers, args.text_layers)
        tok, mcfg, model = start.tokenizer, start.config["model_cfg"], start.model
    else:
        tok = (ShapesTokenizer(RICH_WORDS, RICH_CONTEXT_LENGTH) if rich
               else ShapesTokenizer(context_length=CONTEXT_LENGTH))
        mcfg = model_cfg(arch, tok, args.width, args.layers or 4, args.text_width, args.text_layers or args.layers or 4,
                         args.embed_dim)
        model = build_model(arch, mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{arch}] {n_params / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98),
                            eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * prog))

    t0 = time.time()
    model.train()
    ema = None
    for step in range(args.steps):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step)
        batch_seed = (args.seed + 1) * 10_000_019 + step
        if rich:
            x, ids, pos = make_rich_batch(args.batch_size, args.single_frac, batch_seed, tok, args.styles)
            if args.strict_infonce:
                pos = torch.eye(*pos.shape, dtype=torch.bool)
            img, txt, scale = forward_features(model, arch, x, ids, tok)
            loss = multi_positive_loss(scale * img @ txt.T, pos)
        else:
            x, ids, present, target_cls = make_batch(args.batch_size, args.single_frac, batch_seed, tok)
            img, txt, scale = forward_features(model, arch, x, ids, tok)
            loss = clip_loss(img, txt, scale, present, target_cls, args.strict_infonce)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0 or step == 0:
            msg = (f"[{arch}] step {step + 1}/{args.steps} loss {ema:.4f} "
                   f"scale {model.logit_scale.exp().item():.1f} lr {lr_at(step):.2e} "
                   f"{time.time() - t0:.0f}s")
            if args.eval_every and (step + 1) % args.eval_every == 0:
                model.eval()
                m = evaluate(_wrap(model, arch, tok), n=256)
                model.train()
                msg += (f" single {m['single_object_acc']:.3f}"
                        f" multi {m['multi_object_target_vs_absent']:.3f}")
                if rich:
                    r = evaluate_relations(_wrap(model, arch, tok), n=256)
                    msg += f" relation {r['relation_swap_acc']:.3f}"
                model.train()
            print(msg, flush=True)
    train_s = time.time() - t0
    model.eval()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"shapes_{arch}"
    wpath, cpath = out / f"{name}.safetensors", out / f"{name}.json"
    from safetensors.torch import save_file

    dtype = torch.float16 if args.store_dtype == "float16" else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(wpath))
    cfg: dict[str, Any] = {
        "kind": arch,
        "model_cfg": mcfg,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        "tokenizer": tok.to_dict(),
        "class_names": class_names(),
        "prompt_template": "a {} {}",
        "train_templates": list(TRAIN_TEMPLATES),
        **({"train_captions": {"styles": dict(args.styles), "prefixes": list(RICH_PREFIXES),
                               "prefix_probability": 0.5, "num_objects": [1, 4],
                               "hard_negatives": "swapped relation captions"}} if rich else {}),
        "stored_dtype": args.store_dtype,
        "num_parameters": n_params,
        "training": {
            "command": command,
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup": args.warmup,
            "weight_decay": args.weight_decay,
            "single_frac": args.single_frac,
            "loss": "strict InfoNCE" if args.strict_infonce else "multi-positive InfoNCE",
            "threads": args.threads,
            "captions": args.captions,
            "init": args.init or "random",
            "machine": machine_description(),
            "train_seconds": round(train_s, 1),
            "torch": torch.__version__,
        },
    }
    cpath.write_text(json.dumps(cfg, indent=2) + "\n")
    # Evaluate the model exactly as shipped (fp16 weights reloaded as fp32).
    clip = shapes_clip_from_files(wpath, cpath)
    metrics = evaluate(clip, n=args.eval_n)
    if rich:
        metrics.update(evaluate_relations(clip, n=args.eval_n))
    cfg["metrics"] = metrics
    cpath.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"[{arch}] trained in {train_s:.0f}s; metrics {metrics}; wrote {wpath} "
          f"({wpath.stat().st_size / 1e6:.2f} MB)", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("open_clip", "hf", "both"), default="both")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--single-frac", type=float, default=0.5,
                   help="fraction of each batch that are single-object images")
    p.add_argument("--strict-infonce", action="store_true",
                   help="plain one-hot InfoNCE targets instead of multi-positive targets")
    p.add_argument("--width", type=int, default=128, help="vision width")
    p.add_argument("--layers", type=int, default=None,
                   help="vision layers (default 4, or the --init model's; more than --init's add identity blocks)")
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=None, help="text layers (default as --layers)")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=250, help="0 disables progress evaluation")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--captions", choices=("simple", "rich"), default="simple",
                   help="simple: one-object captions; rich: lists, relations, counts and prefixes of 1-4 objects")
    p.add_argument("--styles", type=parse_styles, default=RICH_STYLES,
                   help="--captions rich: caption styles and weights, e.g. 'single=0.2,list=0.2,relation=0.5,count=0.1' "
                        "(default: " + ",".join(f"{k}={v}" for k, v in RICH_STYLES) + ")")
    p.add_argument("--init", choices=MODELS, default=None,
                   help="start from this shipped model (vocabulary/context extended for rich captions)")
    p.add_argument("--name", default=None, help="file name stem of the weights (default shapes_<arch>)")
    args = p.parse_args(argv)
    if not 0.0 <= args.single_frac <= 1.0:
        p.error("--single-frac must be in [0, 1]")
    if args.eval_every and args.eval_every % args.log_every:
        p.error("--eval-every must be a multiple of --log-every")
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=. python benchmarks/train_shapes_clip.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    archs = ("open_clip", "hf") if args.arch == "both" else (args.arch,)
    init_kind = args.init.removesuffix("_single") if args.init else None
    if args.init and archs != (init_kind,):
        p.error("--init needs --arch equal to the initial model's architecture")
    if args.name and len(archs) > 1:
        p.error("--name needs a single --arch")
    results = {a: train(a, args, command) for a in archs}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
