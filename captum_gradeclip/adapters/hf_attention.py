"""Attention adapters for HuggingFace modules that do not use ``q_proj``/``k_proj``/``v_proj``/``out_proj``.

- :class:`BertSelfAttentionAdapter`: BERT-style ``*SelfAttention`` modules with ``query``/``key``/``value``
  linears whose output is the attention output ``o`` itself (heads concatenated, BEFORE the output
  projection, which lives in the sibling ``*SelfOutput`` module together with the residual and a LayerNorm).
  Grad-ECLIP hooks this module, so ``dS/dy`` already is ``g = dS/do``: :meth:`project` is the identity.
  Used by the text towers of ChineseCLIP (BERT), AltCLIP (XLM-R) and BLIP (BERT).
- :class:`BertAttentionAdapter`: the ``*Attention`` module around them (``self`` and ``output.dense``), read at
  its output projection ``output.dense``: the RoBERTa / XLM-R encoders of open_clip's ``HFTextEncoder``.
- :class:`FusedQKVAttentionAdapter`: one ``qkv`` linear (``3 * C`` outputs laid out as q | k | v, heads
  contiguous inside each) and a ``projection`` linear: BLIP's vision ``BlipAttention``.
- :class:`T5AttentionAdapter`: T5 / mT5 attention (``q``/``k``/``v``/``o`` linears), in open_clip's mT5 encoders.

Like every adapter, they only read the module's parameters; the module's forward (eager, sdpa or flash) is
never patched or re-run, so every ``attn_implementation`` gives the same maps.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import QKV, AttentionAdapter, QKVLinearAttentionAdapter, split_heads


def _linear(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def _hidden_states(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _project_functionally(o: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(o)`` from its weights: calling a hooked output module would re-enter its hook."""
    return F.linear(o, linear.weight.to(o.dtype), None if linear.bias is None else linear.bias.to(o.dtype))


class BertSelfAttentionAdapter(AttentionAdapter):
    """``query``/``key``/``value`` self-attention returning ``o`` before the output projection (BERT family)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        sa = self.self_attention
        heads = getattr(sa, "num_attention_heads", None) or getattr(sa, "num_heads", None)
        if heads is None:
            heads = sa.config.num_attention_heads
        self.num_heads = int(heads)
        self.scale = getattr(sa, "scaling", None)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """``query``/``key``/``value`` linears and no output projection of its own."""
        return all(_linear(module, n) for n in ("query", "key", "value")) \
            and not any(hasattr(module, n) for n in ("out_proj", "o_proj", "dense", "output", "proj", "projection"))

    @property
    def self_attention(self) -> nn.Module:
        """The module holding the ``query``/``key``/``value`` linears."""
        return self.module

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        if kwargs.get("encoder_hidden_states") is not None:
            raise UnsupportedModelError("cross-attention (encoder_hidden_states) is not explained by Grad-ECLIP: "
                                        "explain a self-attention layer of the text or image tower")
        sa = self.self_attention
        x = _hidden_states(args, kwargs)
        h = self.num_heads
        return split_heads(sa.query(x), h), split_heads(sa.key(x), h), split_heads(sa.value(x), h)

    def project(self, o: Tensor) -> Tensor:
        return o  # the module's output IS o; the output projection follows in the *SelfOutput sibling


class BertAttentionAdapter(BertSelfAttentionAdapter):
    """BERT-style attention (``RobertaAttention``, ``XLMRobertaAttention``, ``BertAttention``): ``self`` holds the
    ``query``/``key``/``value`` linears, ``output.dense`` is the output projection (followed, inside the module, by
    dropout, the residual and a LayerNorm, so the attention output is read at ``output.dense``)."""

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        sa, out = getattr(module, "self", None), getattr(module, "output", None)
        return isinstance(sa, nn.Module) and all(_linear(sa, n) for n in ("query", "key", "value")) \
            and _linear(out, "dense")

    @property
    def self_attention(self) -> nn.Module:
        return self.module.self

    @property
    def output_module(self) -> nn.Module:
        return self.module.output.dense

    def project(self, o: Tensor) -> Tensor:
        return _project_functionally(o, self.module.output.dense)


class FusedQKVAttentionAdapter(AttentionAdapter):
    """One ``qkv`` linear (q | k | v) and a ``projection`` linear (BLIP's vision attention)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.read_heads()

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """BLIP-style: ``qkv`` linear with 3x the width, ``projection`` linear, ``num_heads``."""
        qkv = getattr(module, "qkv", None)
        return isinstance(qkv, nn.Linear) and _linear(module, "projection") and hasattr(module, "num_heads") \
            and qkv.out_features == 3 * module.projection.in_features

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        x = _hidden_states(args, kwargs)
        q, k, v = self.module.qkv(x).chunk(3, dim=-1)
        h = self.num_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def project(self, o: Tensor) -> Tensor:
        return _project_functionally(o, self.module.projection)


class T5AttentionAdapter(QKVLinearAttentionAdapter):
    """T5 / mT5 attention (``q``/``k``/``v``/``o`` linears, no logit scaling). The relative position bias is added
    to the logits only; lam uses q and k without it."""

    q_name, k_name, v_name, o_name = "q", "k", "v", "o"

    def __init__(self, module: nn.Module) -> None:
        AttentionAdapter.__init__(self, module)
        self.num_heads = int(module.n_heads)
        self.scale = 1.0

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return hasattr(module, "n_heads") and hasattr(module, "relative_attention_num_buckets") \
            and super().matches(module)
