"""Builders shared by the tests (plain functions and constants; the pytest fixtures built from them live in
conftest.py): tiny seeded CLIP models, token ids, every open_clip config shrunk, image files on disk.

Nothing here downloads anything.
"""

from __future__ import annotations

import copy
import re
import struct
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Tuple
from unittest import mock

import torch
from torch import nn


# ================================================================================ tiny CLIP models and token ids
CONTEXT = 12
EOT = 99  # the largest id: open_clip pools at argmax


def make_open_clip(heads: int = 2, text_heads: int = 3, layers: int = 2, text_layers: int = 3, seed: int = 0,
                   image_size: int = 32):
    import open_clip
    torch.manual_seed(seed)
    cfg = dict(embed_dim=32,
               vision_cfg=dict(image_size=image_size, patch_size=8, width=48, layers=layers, head_width=48 // heads),
               text_cfg=dict(context_length=CONTEXT, vocab_size=100, width=48, heads=text_heads, layers=text_layers))
    return open_clip.CLIP(**cfg).eval()


def make_hf_clip(seed: int = 0, attn_implementation: str = "eager"):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=3, max_position_embeddings=CONTEXT, eos_token_id=EOT,
                         bos_token_id=98, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    cfg._attn_implementation = attn_implementation
    return CLIPModel(cfg).eval()


def pooled(out):
    """The embedding of a ``get_*_features`` result: a tensor in transformers 4.x, an output object in 5.x."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def make_tokens(lengths=(6, 9, 12), seed: int = 1) -> torch.Tensor:
    """Token ids (N, CONTEXT): start 98, random words, EOT 99 at position length-1, then padding 0."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    for i, n in enumerate(lengths):
        tok[i, 0] = 98
        tok[i, 1:n - 1] = torch.randint(1, 90, (n - 2,), generator=g)
        tok[i, n - 1] = EOT
    return tok


# ============================================================================ every open_clip config, shrunk
# Each config of ``open_clip.list_models()`` is shrunk (two blocks, small widths) and built with random weights:
# native towers from the shrunk config; timm trunks through open_clip's own ``TimmModel`` with shrinking keyword
# arguments added to ``timm.create_model`` while the model is built; HuggingFace text towers through open_clip's
# own ``HFTextEncoder`` with a small config of the same architecture in place of the download. Nothing is
# downloaded and no built model is modified afterwards. (Also used by ``benchmarks/models_table.py``.)
EMBED = 64


def _patch_of(name: str, default: int = 16) -> int:
    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else default


def timm_shrink_kwargs(name: str) -> Dict[str, Any]:
    """Keyword arguments that make the timm model ``name`` tiny (same classes, same options)."""
    if name.startswith("convnext"):
        return dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    if name.startswith("swin"):
        return dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    if name.startswith("fastvit"):
        stages = 5 if name in ("fastvit_mci3", "fastvit_mci4") else 4
        return dict(layers=(1,) * stages, embed_dims=tuple(8 * 2 ** i for i in range(stages)))
    if name.startswith("vitamin"):
        return dict(depth=1, img_size=64)
    if name.startswith("vit_base_mci"):
        return dict(depth=1, img_size=64)
    patch = _patch_of(name)
    kwargs: Dict[str, Any] = dict(depth=2, embed_dim=64, num_heads=2, img_size=4 * patch)
    if "pe_core" in name:
        kwargs.update(attn_pool_num_heads=2)
    return kwargs


_HF_CONFIGS = {
    "roberta": lambda: __import__("transformers").RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128,
        max_position_embeddings=80, pad_token_id=1),
    "xlm-roberta": lambda: __import__("transformers").XLMRobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128,
        max_position_embeddings=80, pad_token_id=1),
    "mt5": lambda: __import__("transformers").MT5Config(
        d_model=32, d_kv=16, num_layers=2, num_decoder_layers=1, num_heads=2, d_ff=64, vocab_size=128, pad_token_id=0),
    "nllb": lambda: __import__("transformers").M2M100Config(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=80, pad_token_id=1),
}


def hf_tiny_config(hf_name: str):
    key = "nllb" if "nllb" in hf_name else "mt5" if "mt5" in hf_name else \
        "xlm-roberta" if "xlm-roberta" in hf_name else "roberta"
    return _HF_CONFIGS[key]()


def shrunk_config(name: str) -> Tuple[str, Dict[str, Any]]:
    """(model class name, constructor kwargs) of a tiny version of the open_clip config ``name``."""
    from open_clip.factory import get_model_config
    cfg = copy.deepcopy(get_model_config(name))
    custom_text = cfg.pop("custom_text", False)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    cfg["embed_dim"] = EMBED
    if v.get("timm_model_name"):
        v["timm_model_pretrained"] = False
    else:
        if isinstance(v.get("layers"), (list, tuple)):
            v.update(layers=[1, 1, 1, 1], width=8, head_width=8, image_size=64)
        else:
            v.update(layers=2, width=64, head_width=32, image_size=4 * int(v.get("patch_size", 16)))
            if "attn_pooler_heads" in v:
                v["attn_pooler_heads"] = 2
            if v.get("attentional_pool"):
                v["attn_pooler_queries"] = 4
    if t.get("hf_model_name"):
        custom_text = True
        t["hf_model_pretrained"] = False
    else:
        t.update(width=EMBED, heads=2, layers=2)
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(width=32, heads=2, layers=1, attn_pooler_heads=2, n_queries=4)
        cfg["multimodal_cfg"].pop("dim_head", None)
        return "CoCa", cfg
    return ("CustomTextCLIP" if custom_text else "CLIP"), cfg


def build(name: str) -> nn.Module:
    """A tiny random ``open_clip`` model of the config ``name``, in eval mode, built offline."""
    return build_from(*shrunk_config(name))


def build_from(cls_name: str, cfg: Dict[str, Any]) -> nn.Module:
    """A tiny random ``open_clip`` model of class ``cls_name`` from a (shrunk) config, in eval mode, built offline
    (timm trunks and HuggingFace text towers shrunk as in :func:`build`)."""
    import open_clip
    import open_clip.hf_model
    import open_clip.timm_model
    cls = {"CLIP": open_clip.CLIP, "CustomTextCLIP": open_clip.CustomTextCLIP, "CoCa": open_clip.CoCa}[cls_name]
    timm_mod = open_clip.timm_model.timm
    real_create = timm_mod.create_model

    def create_model(model_name: str, *args: Any, **kwargs: Any) -> nn.Module:
        return real_create(model_name, *args, **{**kwargs, **timm_shrink_kwargs(model_name)})

    def from_pretrained(hf_name: str, *args: Any, **kwargs: Any):
        return hf_tiny_config(hf_name)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(timm_mod, "create_model", create_model))
        stack.enter_context(mock.patch.object(open_clip.hf_model.AutoConfig, "from_pretrained", from_pretrained))
        torch.manual_seed(0)
        model = cls(**cfg)
    return model.eval()


def native_image_size(model: nn.Module) -> Tuple[int, int]:
    """The image size a built model expects."""
    v = model.visual
    trunk = getattr(v, "trunk", None)
    if trunk is not None and getattr(getattr(trunk, "patch_embed", None), "img_size", None) is not None:
        s = trunk.patch_embed.img_size
        return (int(s[0]), int(s[1]))
    if trunk is not None:
        cfg = getattr(trunk, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size", (3, 224, 224))
        return int(size[1]), int(size[2])
    s = getattr(v, "image_size", 224)
    return (int(s[0]), int(s[1])) if isinstance(s, (tuple, list)) else (int(s), int(s))


def text_tokens(model: nn.Module, n: int = 2) -> torch.Tensor:
    """Token ids shaped like the model's tokenizer output: start token, words, end token, padding."""
    from captum_gradeclip.adapters import text_tower
    tower = text_tower(model)
    text = getattr(model, "text", None)
    length = int(getattr(model, "context_length", 0) or getattr(text, "context_length", 0) or 77)
    if type(text).__name__ == "HFTextEncoder":
        cfg = text.config
        length = 16
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        ids = torch.full((n, length), pad, dtype=torch.long)
        for i in range(n):
            k = 3 + i
            ids[i, :k] = torch.arange(5, 5 + k)
        return ids
    vocab = int(getattr(model, "vocab_size", 0) or getattr(text, "vocab_size", 0))
    pool = getattr(tower, "pool_type", "argmax")
    eos = getattr(tower, "eos_id", None)
    ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        words = torch.arange(10, 13 + i)
        if pool == "argmax":
            row = [vocab - 2] + words.tolist() + [vocab - 1]
        elif pool == "eos":
            row = ([] if eos == 1 else [0]) + words.tolist() + [eos]
        else:
            row = words.tolist()
        ids[i, :len(row)] = torch.tensor(row)
    return ids


# ======================================================================================= image and model files
def write_scenes(root: Path, count: int, seed: int = 0, nested: bool = True) -> List[Path]:
    """``count`` shapes scenes under ``root`` (every other one in ``sub/``, PNG there, JPEG at the top; every
    third one 64 x 96 instead of 64 x 64), returned in the order written."""
    from PIL import Image

    from captum_gradeclip.data.shapes import generate_scenes
    scenes = generate_scenes(count, image_size=64, num_objects=2, seed=seed)
    paths = []
    for i in range(count):
        image = Image.fromarray((scenes.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        if i % 3 == 0:
            image = image.resize((64, 96))
        folder = root / "sub" if nested and i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"scene{i:03d}.{'png' if i % 2 else 'jpg'}"
        image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def write_truncated_jpeg(path: Path, like: Path) -> Path:
    """The first half of the JPEG ``like``: a header that opens, data that ends early."""
    data = like.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def in_process_maps(paths: Dict[str, Path], prompts_of: Dict[str, List[str]], size: str = "native"):
    """Reference results computed here, image by image, straight with ``GradECLIP.attribute_all`` (and
    ``attribute`` on the text side) on the shipped shapes model: ``{(key, text): (score, map, words, scores)}``."""
    import torch

    from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
    from captum_gradeclip.loading import load_demo, prepare_image
    from captum_gradeclip.image_io import load_image
    lm = load_demo("cpu")
    mean, std = torch.tensor(lm.mean).view(1, 3, 1, 1), torch.tensor(lm.std).view(1, 3, 1, 1)
    out = {}
    for key, path in paths.items():
        prompts = prompts_of[key]
        pixels = (prepare_image(load_image(path), lm.image_size, 8, size)[None] - mean) / std
        tokens = lm.tokenize(prompts)
        scorer = ImageTextSimilarity(lm.model, tokens)
        with torch.no_grad():
            scores = scorer(pixels)[0]
        maps = GradECLIP(scorer).attribute_all(pixels)[0]
        tscorer = TextImageSimilarity(lm.model, pixels)
        words = GradECLIP(tscorer).attribute(tokens, target=[0] * len(prompts))
        keep = tscorer.tower.layout(tokens).report_mask
        for t, text in enumerate(prompts):
            positions = keep[t].nonzero().flatten().tolist()
            tokens_t = lm.token_strings(tokens[t])
            out[key, text] = (float(scores[t]), maps[t].numpy(), [tokens_t[p] for p in positions],
                              words[t, positions].numpy())
    return out


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (its data stream is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def write_hf_clip(root: Path) -> Path:
    """A tiny HuggingFace CLIP saved under ``root`` with a real CLIPProcessor (a character-level BPE vocabulary
    written here), so that ``--hf PATH`` runs ``AutoModel`` / ``AutoProcessor.from_pretrained`` offline; the
    model's folder."""
    import json
    import string

    import transformers
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"),
                                           pad_token="<|endoftext|>")
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=3, max_position_embeddings=32, eos_token_id=eos, bos_token_id=bos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    out = root / "model"
    transformers.CLIPModel(config).save_pretrained(out)
    transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


class RouteLog(list):
    """Outcomes of one gradient route during a test, as ``GradECLIP(..., on_route=log)`` reports them: True for
    each call whose maps that route made, False for each call where it was chosen but failed its self-check (and
    the full backward made the maps)."""

    def __init__(self, route: str) -> None:
        super().__init__()
        self.route = route

    def __call__(self, report) -> None:
        if report.chosen == self.route:
            self.append(report.used == self.route)
