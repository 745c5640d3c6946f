"""open_clip's ``HFTextEncoder``: a HuggingFace text encoder (RoBERTa, XLM-R, mT5, NLLB/M2M100 ...) with an
open_clip pooler and projection.

Pooling: ``mean_pooler`` (every non-padding token is a query; the per-query maps are summed, the averaging weight is
in the gradient), ``cls_pooler`` / ``cls_last_hidden_state_pooler`` (the first token is the query). The encoder's
attention sees every non-padding token (bidirectional, padding masked), and so does lam. Words are the non-padding
tokens other than the end token (the last non-padding one) and, when the architecture defines a start token, the
first token. The encoders' attention modules are read by :mod:`.hf_attention` (BERT-style, T5) and
:class:`~.attention.QKVLinearAttentionAdapter` (M2M100 / NLLB).
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import Tower, TokenLayout, check_tokens


class OpenClipHFTextTower(Tower):
    """open_clip ``HFTextEncoder`` (see the module docstring)."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.text)
        self.text = model.text
        pooler = type(self.text.pooler).__name__
        if pooler == "MeanPooler":
            self.mean = True
        elif pooler in ("ClsPooler", "ClsLastHiddenStatePooler"):
            self.mean = False
        else:
            raise UnsupportedModelError(
                f"open_clip HFTextEncoder with {pooler}: no attention query pools the text; supported poolers: "
                "MeanPooler, ClsPooler, ClsLastHiddenStatePooler")
        self.pad_id = self.text.config.pad_token_id
        self.start = getattr(self.text.config, "bos_token_id", None) is not None
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
