"""open_clip's ``HFTextEncoder``: a HuggingFace text encoder (RoBERTa, XLM-R, mT5, NLLB/M2M100 ...) with an
open_clip pooler and projection.

Pooling: ``mean_pooler`` (every non-padding token is a query; the per-query maps are summed, the averaging weight is
in the gradient), ``cls_pooler`` / ``cls_last_hidden_state_pooler`` (the first token is the query). The encoder's
attention sees every non-padding token (bidirectional, padding masked), and so does lam. Words are the non-padding
tokens other than the end token (the last non-padding one) and, when the architecture defines a start token, the
first token.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import QKV, AttentionAdapter, QKVLinearAttentionAdapter, _heads, register_attention_adapter
from .base import Tower, TokenLayout, check_tokens


class BertStyleAttentionAdapter(AttentionAdapter):
    """BERT-style attention (``RobertaAttention``, ``XLMRobertaAttention``, ``BertAttention``): ``self`` holds the
    ``query``/``key``/``value`` linears, ``output.dense`` is the output projection (followed, inside the module, by
    dropout, the residual and a LayerNorm, so the attention output is read at ``output.dense``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        sa = module.self
        self.num_heads = int(getattr(sa, "num_attention_heads", 0) or sa.config.num_attention_heads)
        self.scale = getattr(sa, "scaling", None)

    @property
    def output_module(self) -> nn.Module:
        return self.module.output.dense

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        sa = self.module.self
        x = args[0] if args else kwargs["hidden_states"]
        h = self.num_heads
        return _heads(sa.query(x), h), _heads(sa.key(x), h), _heads(sa.value(x), h)

    def project(self, o: Tensor) -> Tensor:
        dense = self.module.output.dense  # applied functionally: calling the hooked module would re-enter its hook
        return F.linear(o, dense.weight.to(o.dtype), None if dense.bias is None else dense.bias.to(o.dtype))


def _is_bert_style(module: nn.Module) -> bool:
    sa, out = getattr(module, "self", None), getattr(module, "output", None)
    return isinstance(sa, nn.Module) and all(isinstance(getattr(sa, n, None), nn.Linear)
                                             for n in ("query", "key", "value")) \
        and isinstance(getattr(out, "dense", None), nn.Linear)


class T5AttentionAdapter(QKVLinearAttentionAdapter):
    """T5 / mT5 attention (``q``/``k``/``v``/``o`` linears, no logit scaling). The relative position bias is added
    to the logits only; lam uses q and k without it."""

    q_name, k_name, v_name, o_name = "q", "k", "v", "o"

    def __init__(self, module: nn.Module) -> None:
        AttentionAdapter.__init__(self, module)
        self.num_heads = int(module.n_heads)
        self.scale = 1.0


def _is_t5_attention(module: nn.Module) -> bool:
    return hasattr(module, "n_heads") and hasattr(module, "relative_attention_num_buckets") and all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("q", "k", "v", "o"))


register_attention_adapter(_is_bert_style, BertStyleAttentionAdapter,
                           "BERT-style attention (self.query/key/value, output.dense)")
register_attention_adapter(_is_t5_attention, T5AttentionAdapter, "T5 attention (q/k/v/o)")


class OpenClipHFTextTower(Tower):
    """open_clip ``HFTextEncoder`` (see the module docstring)."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module, text: nn.Module) -> None:
        super().__init__(model, text)
        self.text = text
        pooler = type(text.pooler).__name__
        if pooler == "MeanPooler":
            self.mean = True
        elif pooler in ("ClsPooler", "ClsLastHiddenStatePooler"):
            self.mean = False
        else:
            raise UnsupportedModelError(
                f"open_clip HFTextEncoder with {pooler}: no attention query pools the text; supported poolers: "
                "MeanPooler, ClsPooler, ClsLastHiddenStatePooler")
        self.pad_id = text.config.pad_token_id
        self.start = getattr(text.config, "bos_token_id", None) is not None
        self._blocks = self._find_blocks()

    def _find_blocks(self) -> List[nn.Module]:
        tr = self.text.transformer
        root = getattr(tr, "encoder", tr)
        for name in ("layer", "layers", "block"):
            blocks = getattr(root, name, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks):
                return list(blocks)
        raise UnsupportedModelError(
            f"open_clip HFTextEncoder around {type(tr).__name__}: cannot find its encoder layers")

    def blocks(self) -> List[nn.Module]:
        return list(self._blocks)

    def attention_of(self, block: nn.Module) -> nn.Module:
        for name in ("attention", "self_attn"):
            sub = getattr(block, name, None)
            if isinstance(sub, nn.Module):
                return sub
        layers = getattr(block, "layer", None)  # T5 block: layer[0].SelfAttention
        if isinstance(layers, nn.ModuleList) and hasattr(layers[0], "SelfAttention"):
            return layers[0].SelfAttention
        return super().attention_of(block)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        out = self.text(inputs)
        return out[0] if isinstance(out, tuple) else out

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        n, length = inputs.shape
        device = inputs.device
        valid = inputs != self.pad_id
        pos = torch.arange(length, device=device)
        last = torch.where(valid, pos[None, :], -1).amax(dim=-1, keepdim=True)
        words = valid & (pos[None, :] != last)
        if self.start:
            words &= pos[None, :] >= 1
        allowed = valid[:, None, :].expand(n, length, length) | torch.eye(length, dtype=torch.bool,
                                                                              device=device)[None]
        query = torch.zeros(n, dtype=torch.long, device=device)
        if self.mean:
            lam_mask = torch.ones_like(valid) if single_head else valid
            return TokenLayout(query=query, lam_mask=lam_mask, report_mask=words, allowed=allowed,
                               query_mask=valid)
        words &= pos[None, :] != 0
        lam_mask = torch.ones_like(valid) if single_head else valid
        return TokenLayout(query=query, lam_mask=lam_mask, report_mask=words, allowed=allowed)
