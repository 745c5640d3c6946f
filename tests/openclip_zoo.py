"""Tiny, offline builds of every open_clip model config (shared by the coverage tests and
``benchmarks/models_table.py``).

Each config of ``open_clip.list_models()`` is shrunk (two blocks, small widths) and built with random weights:
native towers from the shrunk config; timm trunks through open_clip's own ``TimmModel`` with shrinking keyword
arguments added to ``timm.create_model`` while the model is built; HuggingFace text towers through open_clip's
own ``HFTextEncoder`` with a small config of the same architecture in place of the download. Nothing is
downloaded and no built model is modified afterwards.
"""

from __future__ import annotations

import copy
import re
from contextlib import ExitStack
from typing import Any, Dict, Tuple
from unittest import mock

import torch
from torch import nn

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
