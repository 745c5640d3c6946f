"""Attention-module adapters: how to read q, k, v and the output projection of one attention module.

An adapter wraps one attention module of a user's model and answers, from the arguments that the module
received in a forward pass, the questions Grad-ECLIP asks of it:

- ``qkv(args, kwargs)``: queries, keys and values of every token, per head, ``(N, H, L, d)`` each, exactly as
  they enter the attention logits (after any per-head q/k normalisation or rotary embedding);
- ``project(o)``: the map from the concatenated attention output ``o`` (``(..., C)``, before the output
  projection) to the module's output ``y``;
- ``output_tensor(output)`` / ``replace_output(output, y)``: read and replace ``y`` in whatever structure
  the module returns (a tensor, or a tuple such as ``(y, attention_weights)``);
- ``output_module``: the module whose output is ``y`` (the attention module itself, or a submodule such as the
  output projection of an attention pooler whose own output comes after an MLP and pooling).

Adapters never patch or re-run the module: they only read its parameters. Each says which modules it reads
(``matches``); the registry (:mod:`.registry`) tries them in its order, and :func:`attention_adapter`,
:func:`is_attention_module` and :func:`register_attention_adapter` are the registry's, named here too.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .registry import SUPPORTED_ATTENTION, attention_adapter, is_attention_module, register_attention_adapter

QKV = Tuple[Tensor, Tensor, Tensor]

__all__ = ["QKV", "SUPPORTED_ATTENTION", "AttentionAdapter", "MultiheadAttentionAdapter", "OpenClipAttentionAdapter",
           "QKVLinearAttentionAdapter", "attention_adapter", "attention_output_at", "full_width",
           "is_attention_module", "register_attention_adapter", "single_head_output", "split_heads"]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, C) -> (N, H, L, C / H)."""
    n, length, width = x.shape
    return x.reshape(n, length, num_heads, width // num_heads).transpose(1, 2)


class AttentionAdapter(abc.ABC):
    """Base class: one explained attention module.

    Subclasses set :attr:`num_heads` and implement :meth:`qkv`, :meth:`project` and, where the module does
    not return a plain tensor, :meth:`output_tensor` and :meth:`replace_output`.
    """

    #: True when :meth:`project` is affine, so its gradient does not depend on ``o``.
    linear_projection: bool = True
    #: False for a pooling that weighs every position alike (a global average, seen as an attention whose query
    #: is zero): it has no query-key similarity, so Grad-ECLIP's spatial weight is lambda = 1 on every position.
    spatial_weight: bool = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.num_heads: int = 1
        self.scale: Optional[float] = None  # None: 1 / sqrt(head_dim)

    def read_heads(self) -> None:
        """Set :attr:`num_heads` and :attr:`scale` from the module's own ``num_heads`` and ``scale`` attributes (timm
        and BLIP attention modules)."""
        self.num_heads = int(self.module.num_heads)
        self.scale = getattr(self.module, "scale", None)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether this adapter reads ``module`` (how :data:`~.registry.ATTENTION_KINDS` recognises modules)."""
        return False

    @property
    def output_module(self) -> nn.Module:
        """The module whose forward output is ``y = project(o)`` (hooked to read and probe ``y``).

        When it is a submodule (such as an output projection), :meth:`project` must not call it as a module (use
        its weights functionally): the hook on it would fire again.
        """
        return self.module

    @abc.abstractmethod
    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        """Queries, keys and values ``(N, H, L, d)`` from the arguments the module received."""

    @abc.abstractmethod
    def project(self, o: Tensor) -> Tensor:
        """The module's output for attention output ``o`` (heads concatenated, before the output projection)."""

    def output_tensor(self, output: Any) -> Tensor:
        return output[0] if isinstance(output, tuple) else output

    def replace_output(self, output: Any, y: Tensor) -> Any:
        if isinstance(output, tuple):
            return (y,) + tuple(output[1:])
        return y

    def row_qkv(self, x: Tensor) -> QKV:
        """Queries, keys and values ``(N, H, L, d)`` of a self-attention module whose input is ``x`` ``(N, L, C)``
        (batch first, whatever layout the module itself uses); needed by :class:`~.base.RowTail`."""
        raise NotImplementedError(f"{type(self).__name__} cannot recompute q, k, v from one input")

    def logit_bias(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """An additive bias of the attention logits, broadcastable to ``(N, H, Lq, Lk)``, that the module applies
        besides ``q k^T`` (a relative position bias), from the arguments it received; None (the default): none.
        Used where attention probabilities are recomputed (the attention baselines)."""
        return None

    def logits(self, q: Tensor, k: Tensor) -> Tensor:
        """Attention logits of the module (without mask), ``(N, H, Lq, Lk)``."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        return torch.matmul(q, k.transpose(-1, -2)) * scale


class MultiheadAttentionAdapter(AttentionAdapter):
    """``torch.nn.MultiheadAttention`` (open_clip and OpenAI CLIP blocks, attention poolers)."""

    def __init__(self, module: nn.MultiheadAttention) -> None:
        super().__init__(module)
        self.num_heads = module.num_heads
        self.batch_first = module.batch_first

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def _bf(self, x: Tensor) -> Tensor:
        return x if self.batch_first else x.transpose(0, 1)

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m: nn.MultiheadAttention = self.module  # type: ignore[assignment]
        names = ("query", "key", "value")
        query, key, value = (args[i] if len(args) > i else kwargs[names[i]] for i in range(3))
        query, key, value = self._bf(query), self._bf(key), self._bf(value)
        e = m.embed_dim
        bias = m.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else (bias[:e], bias[e:2 * e], bias[2 * e:])
        if m._qkv_same_embed_dim:
            w = m.in_proj_weight
            wq, wk, wv = w[:e], w[e:2 * e], w[2 * e:]
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        q = F.linear(query, wq.to(query.dtype), None if bq is None else bq.to(query.dtype))
        k = F.linear(key, wk.to(key.dtype), None if bk is None else bk.to(key.dtype))
        v = F.linear(value, wv.to(value.dtype), None if bv is None else bv.to(value.dtype))
        if m.bias_k is not None:
            raise UnsupportedModelError("nn.MultiheadAttention with add_bias_kv=True is not supported")
        h = self.num_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def row_qkv(self, x: Tensor) -> QKV:
        x = self._bf(x)
        return self.qkv((x, x, x), {})

    def project(self, o: Tensor) -> Tensor:
        proj = self.module.out_proj
        return F.linear(o, proj.weight.to(o.dtype), None if proj.bias is None else proj.bias.to(o.dtype))

    def output_tensor(self, output: Any) -> Tensor:
        y = output[0] if isinstance(output, tuple) else output
        return self._bf(y)

    def replace_output(self, output: Any, y: Tensor) -> Any:
        return super().replace_output(output, self._bf(y))


class OpenClipAttentionAdapter(AttentionAdapter):
    """open_clip's custom ``Attention`` (qk-norm, scaled cosine attention, head scale, inner norm)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.num_heads = module.num_heads
        self.scale = module.scale
        self.linear_projection = isinstance(module.ln_inner, nn.Identity)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return type(module).__name__ == "Attention" and type(module).__module__.startswith("open_clip") \
            and hasattr(module, "in_proj_weight") and hasattr(module, "out_proj")

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        x = args[0] if args else kwargs["x"]
        bias = None if m.in_proj_bias is None else m.in_proj_bias.to(x.dtype)
        q, k, v = F.linear(x, m.in_proj_weight.to(x.dtype), bias).chunk(3, dim=-1)
        h = self.num_heads
        q, k, v = split_heads(q, h), split_heads(k, h), split_heads(v, h)
        if m.logit_scale is not None:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        else:
            q, k = m.ln_q(q), m.ln_k(k)
        return q, k, v

    def row_qkv(self, x: Tensor) -> QKV:
        return self.qkv((x,), {})

    def logits(self, q: Tensor, k: Tensor) -> Tensor:
        m = self.module
        if m.logit_scale is not None:
            scale = torch.clamp(m.logit_scale, max=m.logit_scale_max).exp().to(q.dtype)
            return torch.matmul(q, k.transpose(-1, -2)) * scale
        return super().logits(q, k)

    def project(self, o: Tensor) -> Tensor:
        m = self.module
        if m.head_scale is not None:
            shape = o.shape
            o = o.reshape(*shape[:-1], self.num_heads, shape[-1] // self.num_heads)
            o = (o * m.head_scale.reshape(self.num_heads, 1).to(o.dtype)).reshape(shape)
        o = m.ln_inner(o)
        return m.out_proj(o)


class QKVLinearAttentionAdapter(AttentionAdapter):
    """Attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears (HuggingFace CLIP family).

    Works for every ``attn_implementation`` (eager, sdpa, flash): only the projections are read.
    """

    q_name, k_name, v_name, o_name = "q_proj", "k_proj", "v_proj", "out_proj"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.num_heads = int(getattr(module, "num_heads", 0) or module.config.num_attention_heads)
        self.scale = getattr(module, "scale", None) or getattr(module, "scaling", None)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return all(isinstance(getattr(module, n, None), nn.Linear)
                   for n in (cls.q_name, cls.k_name, cls.v_name, cls.o_name))

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        x = args[0] if args else kwargs["hidden_states"]
        h = self.num_heads
        q = getattr(m, self.q_name)(x)
        k = getattr(m, self.k_name)(x)
        v = getattr(m, self.v_name)(x)
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def row_qkv(self, x: Tensor) -> QKV:
        return self.qkv((x,), {})

    def project(self, o: Tensor) -> Tensor:
        return getattr(self.module, self.o_name)(o)


def full_width(x: Tensor) -> Tensor:
    """(N, H, L, d) -> (N, L, H * d): heads concatenated as the output projection sees them."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def attention_output_at(adapter: AttentionAdapter, q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor]
                        ) -> Tensor:
    """Attention output ``o`` (heads concatenated) for the queries ``q`` ``(N, H, Lq, d)``.

    ``allowed`` is a boolean ``(N, Lq, Lk)`` mask of keys each query may attend to (None: all).
    """
    logits = adapter.logits(q, k)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    attn = logits.softmax(dim=-1)
    return full_width(torch.matmul(attn, v))


def single_head_output(adapter: AttentionAdapter, q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor]
                       ) -> Tensor:
    """The module's output re-computed as ONE head over the full width (the authors' released code).

    Scale ``1 / sqrt(C)`` with ``C = heads x head_dim``; the output projection is the module's own.
    """
    qf, kf, vf = full_width(q)[:, None], full_width(k)[:, None], full_width(v)[:, None]
    logits = torch.matmul(qf, kf.transpose(-1, -2)) / math.sqrt(qf.shape[-1])
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    o = torch.matmul(logits.softmax(dim=-1), vf)[:, 0]
    return adapter.project(o)
