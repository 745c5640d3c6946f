"""Attention adapters for HuggingFace modules that do not use ``q_proj``/``k_proj``/``v_proj``/``out_proj``.

- :class:`BertSelfAttentionAdapter`: BERT-style ``*SelfAttention`` modules with ``query``/``key``/``value``
  linears whose output is the attention output ``o`` itself (heads concatenated, BEFORE the output
  projection, which lives in the sibling ``*SelfOutput`` module together with the residual and a LayerNorm).
  Grad-ECLIP hooks this module, so ``dS/dy`` already is ``g = dS/do``: :meth:`project` is the identity.
  Used by the text towers of ChineseCLIP (BERT), AltCLIP (XLM-R) and BLIP (BERT).
- :class:`FusedQKVAttentionAdapter`: one ``qkv`` linear (``3 * C`` outputs laid out as q | k | v, heads
  contiguous inside each) and a ``projection`` linear: BLIP's vision ``BlipAttention``.

Like every adapter, they only read the module's parameters; the module's forward (eager, sdpa or flash) is
never patched or re-run, so every ``attn_implementation`` gives the same maps.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import QKV, AttentionAdapter, _heads, register_attention_adapter


def _linear(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def _hidden_states(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class BertSelfAttentionAdapter(AttentionAdapter):
    """``query``/``key``/``value`` self-attention returning ``o`` before the output projection (BERT family)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
        if heads is None:
            heads = module.config.num_attention_heads
        self.num_heads = int(heads)
        self.scale = getattr(module, "scaling", None)

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        if kwargs.get("encoder_hidden_states") is not None:
            raise UnsupportedModelError("cross-attention (encoder_hidden_states) is not explained by Grad-ECLIP: "
                                        "explain a self-attention layer of the text or image tower")
        x = _hidden_states(args, kwargs)
        h = self.num_heads
        return _heads(m.query(x), h), _heads(m.key(x), h), _heads(m.value(x), h)

    def project(self, o: Tensor) -> Tensor:
        return o  # the module's output IS o; the output projection follows in the *SelfOutput sibling


class FusedQKVAttentionAdapter(AttentionAdapter):
    """One ``qkv`` linear (q | k | v) and a ``projection`` linear (BLIP's vision attention)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.num_heads = int(module.num_heads)
        self.scale = getattr(module, "scale", None)

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        x = _hidden_states(args, kwargs)
        q, k, v = m.qkv(x).chunk(3, dim=-1)
        h = self.num_heads
        return _heads(q, h), _heads(k, h), _heads(v, h)

    def project(self, o: Tensor) -> Tensor:
        proj = self.module.projection
        return F.linear(o, proj.weight.to(o.dtype), None if proj.bias is None else proj.bias.to(o.dtype))


def is_bert_self_attention(module: nn.Module) -> bool:
    """``query``/``key``/``value`` linears and no output projection of its own."""
    return all(_linear(module, n) for n in ("query", "key", "value")) \
        and not any(hasattr(module, n) for n in ("out_proj", "o_proj", "dense", "output", "proj", "projection"))


def is_fused_qkv_attention(module: nn.Module) -> bool:
    """BLIP-style: ``qkv`` linear with 3x the width, ``projection`` linear, ``num_heads``."""
    qkv = getattr(module, "qkv", None)
    return isinstance(qkv, nn.Linear) and _linear(module, "projection") and hasattr(module, "num_heads") \
        and qkv.out_features == 3 * module.projection.in_features


register_attention_adapter(is_bert_self_attention, BertSelfAttentionAdapter,
                           "BERT-style self-attention with query/key/value linears (HuggingFace)")
register_attention_adapter(is_fused_qkv_attention, FusedQKVAttentionAdapter,
                           "fused qkv + projection attention (HuggingFace BLIP vision)")
