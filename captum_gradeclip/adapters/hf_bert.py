"""HuggingFace BERT-like text towers pooled at the first token (CLS / ``<s>``): ChineseCLIP (BERT), AltCLIP
(XLM-R) and BLIP's image-text contrastive path (BERT).

These encoders are bidirectional (padding masked by the attention mask) and post-LN: a block's attention is
``*Attention = *SelfAttention (query/key/value -> o) + *SelfOutput (dense, residual, LayerNorm)``. The explained
module is the ``*SelfAttention`` (its output is ``o``; see
:class:`~captum_gradeclip.adapters.hf_attention.BertSelfAttentionAdapter`). The query is position 0; the
loosened attention is normalised over the positions the query attends to (the attention mask, or every
position when no mask is given); the words are the positions after the first token and before the closing
token (the last non-padding position: ``[SEP]`` / ``</s>``), padding excluded.
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import Tower, TokenLayout, check_tokens, text_layout, words_from
from .hf_attention import BertSelfAttentionAdapter
from .hf_common import check_text_mask, encoder_layers, features, output_field, sub_config


class HFBertCLSTextTower(Tower):
    """A BERT-like encoder pooled at position 0. Subclasses give the encoder and :meth:`encode`."""

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module, text: nn.Module, encoder: nn.Module) -> None:
        super().__init__(model, text)
        self.text = text
        self.encoder = encoder
        cfg = sub_config(model, text, "text_config")
        self.pad_id = getattr(cfg, "pad_token_id", None)
        self.max_length = getattr(cfg, "max_position_embeddings", None)

    def blocks(self) -> List[nn.Module]:
        return encoder_layers(self.encoder)

    def attention_of(self, block: nn.Module) -> nn.Module:
        attn = getattr(getattr(block, "attention", None), "self", None)
        if isinstance(attn, nn.Module) and BertSelfAttentionAdapter.matches(attn):
            return attn
        raise UnsupportedModelError(
            f"cannot find the self-attention of {type(block).__name__} (expected block.attention.self)")

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs, "input_ids")
        check_text_mask(inputs, extra)
        if self.max_length is not None and inputs.shape[1] > self.max_length:
            raise ValueError(f"input_ids have length {inputs.shape[1]} > max_position_embeddings {self.max_length}")

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        mask = extra[0] if extra else None
        n, length = inputs.shape
        valid = torch.ones_like(inputs, dtype=torch.bool) if mask is None else mask.bool()
        query = torch.zeros(n, dtype=torch.long, device=inputs.device)
        layout = text_layout(inputs, query, words_from(valid, 1), valid, False, single_head, see_self="always")
        content = valid.clone()
        if self.pad_id is not None:
            content &= inputs != self.pad_id
        pos = torch.arange(length, device=inputs.device)
        closing = torch.where(content, pos[None, :], torch.full_like(pos[None, :], -1)).amax(dim=-1)  # (N,)
        layout.report_mask &= content & (pos[None, :] != closing[:, None])
        return layout


class HFChineseCLIPTextTower(HFBertCLSTextTower):
    """``ChineseCLIPModel``: BERT text model, CLS of the last hidden state, ``text_projection``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.text_model, model.text_model.encoder)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        return features(self.model.get_text_features(input_ids=inputs, attention_mask=mask))


class HFAltCLIPTextTower(HFBertCLSTextTower):
    """``AltCLIPModel``: XLM-R (``text_model.roberta``), ``pre_LN`` + ``transformation`` at ``<s>``,
    ``text_projection``."""

    def __init__(self, model: nn.Module) -> None:
        roberta = getattr(model.text_model, "roberta", model.text_model)
        super().__init__(model, model.text_model, roberta.encoder)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        return features(self.model.get_text_features(input_ids=inputs, attention_mask=mask))


class HFBlipTextTower(HFBertCLSTextTower):
    """``BlipForImageTextRetrieval`` with ``use_itm_head=False``: ``text_proj`` of the first token of
    ``text_encoder`` run without image (its cross-attention layers do not run)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.text_encoder, model.text_encoder.encoder)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        mask = extra[0] if extra else None
        out = self.text(input_ids=inputs, attention_mask=mask)
        return self.model.text_proj(output_field(out, "last_hidden_state", 0)[:, 0])
