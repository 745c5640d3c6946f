"""open_clip towers: native ``VisionTransformer`` (class-token, average and attentional pooling, custom blocks),
``ModifiedResNet`` (the attention pool of the ResNet CLIPs), the text transformer of ``CLIP`` and the
``TextTransformer`` of ``CustomTextCLIP`` / ``CoCa``.

The models are never modified: image tokens are computed from the model's own modules (with positional
embeddings interpolated into new tensors when the input grid differs from the model's), and the attention pool of
``ModifiedResNet`` is evaluated by :class:`AttentionPool2dView`, a read-only view that calls the same
``F.multi_head_attention_forward`` with the pool's own weights.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import QKV, AttentionAdapter, split_heads
from .base import PoolerOnlyMixin, RowTail, Tower, TokenLayout, check_images, check_tokens, grid_layout, \
    interpolate_positions, pair, tail_blocks, text_layout


# ----------------------------------------------------------------------------------------------------------
# VisionTransformer
# ----------------------------------------------------------------------------------------------------------
class OpenClipVisionTower(PoolerOnlyMixin, Tower):
    """open_clip ``VisionTransformer``.

    - class-token pooling (``pool_type='tok'``): the query is the class token;
    - average pooling (``pool_type='avg'``, the CLIPA models): every patch token is a query and the per-query maps
      are summed (the averaging weight is in the gradient);
    - attentional pooler (CoCa): the pooler's attention is explained by default, its query (the first learned
      probe, or the single probe of ``attn_pool_contrastive``) attends to the class token and the patches.

    Custom blocks (qk-norm, scaled cosine attention, head scale, inner norm, layer scale) and
    ``final_ln_after_pool`` are supported. Images of any size are encoded by the model's own modules, with the
    positional embedding interpolated on the fly (bicubic, class position kept) when the patch grid differs
    from the model's; patch dropout is not applied (inference).
    """

    side = "image"

    def __init__(self, model: nn.Module, visual: Optional[nn.Module] = None) -> None:
        v = model.visual if visual is None else visual
        super().__init__(model, v)
        self.visual = v
        self.family = f"open_clip {type(model).__name__} ({type(v).__name__})"
        self.patch = pair(v.conv1.kernel_size)
        self.grid = pair(v.grid_size)
        self.pooler = None
        self.pooled_queries: Optional[Tensor] = None  # queries of the pooler that are averaged
        self.avg = False  # average of the patch tokens (no pooler)
        attn_pool = getattr(v, "attn_pool", None)
        contrastive = getattr(v, "attn_pool_contrastive", None)
        if attn_pool is not None:
            if contrastive is not None:
                if getattr(v, "attn_pool_type", "") != "parallel":
                    raise UnsupportedModelError(
                        f"{self.family} with attentional_pool={v.attn_pool_type!r}: the contrastive pooler attends "
                        "to the outputs of another pooler, not to image positions; supported: "
                        "attentional_pool=True or 'parallel'")
                self.pooler = contrastive
            else:
                self.pooler = attn_pool
                if v.pool_type == "avg":
                    n_queries = attn_pool.query.shape[0]
                    self.pooled_queries = torch.arange(n_queries) >= 1
                elif v.pool_type != "tok":
                    raise UnsupportedModelError(
                        f"{self.family} with an attentional pooler and pool_type={v.pool_type!r} returns every "
                        "pooled query, not one embedding; supported: 'tok' or 'avg'")
        elif v.pool_type == "avg":
            self.avg = True
        elif v.pool_type != "tok":
            raise UnsupportedModelError(
                f"{self.family} with pool_type={v.pool_type!r} returns tokens, not an embedding; supported: "
                "'tok' (class token), 'avg' (average of the patch tokens) and attentional pooling")

    def blocks(self) -> List[nn.Module]:
        blocks = list(self.visual.transformer.resblocks)
        return blocks + [self.pooler] if self.pooler is not None else blocks

    def attention_of(self, block: nn.Module) -> nn.Module:
        if self.pooler is not None and block is self.pooler:
            return self.pooler.attn
        return super().attention_of(block)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch)

    def tokens(self, images: Tensor) -> Tensor:
        """Token embeddings entering the first block, ``(N, 1 + h*w, D)``."""
        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_positions(v.positional_embedding, self.grid, grid).to(x.dtype)
        return v.ln_pre(x)

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        return self.embed_tokens(self.visual.transformer(self.tokens(inputs)))

    def embed_tokens(self, tokens: Tensor, *unused: Any) -> Tensor:
        """The embedding of the output tokens of any block (batch first): the model's own pooling, then ``proj``."""
        v = self.visual
        pooled, _ = v._pool(tokens)
        if pooled.dim() == 3 and pooled.shape[1] == 1:  # the single query of attn_pool_contrastive
            pooled = pooled[:, 0]
        return pooled @ v.proj if v.proj is not None else pooled

    def token_head(self) -> Optional[Callable[..., Tensor]]:
        return self.embed_tokens

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        n = inputs.shape[0]
        if self.pooler is not None:
            return grid_layout(n, grid, inputs.device, pooled_queries=self.pooled_queries)
        if self.avg:  # average of the patch tokens, class token excluded
            pooled = torch.arange(1 + grid[0] * grid[1], device=inputs.device) >= 1
            return grid_layout(n, grid, inputs.device, pooled_queries=pooled)
        return grid_layout(n, grid, inputs.device)

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        v = self.visual
        if self.pooler is not None or self.avg:
            return None
        last = v.transformer.resblocks[-1]
        if attention is not getattr(last, "attn", None):
            return None
        if not hasattr(last, "ln_2") or not hasattr(last, "mlp"):
            return None
        ln_attn = getattr(last, "ln_attn", nn.Identity())

        def tail(x_in: Tensor, y: Tensor) -> Tensor:
            h = x_in + last.ls_1(ln_attn(y))
            h = h + last.ls_2(last.mlp(last.ln_2(h)))
            h = v.ln_post(h)
            return h @ v.proj if v.proj is not None else h

        return tail


# ----------------------------------------------------------------------------------------------------------
# ModifiedResNet
# ----------------------------------------------------------------------------------------------------------
class AttentionPool2dView(nn.Module):
    """A read-only view of open_clip's ``AttentionPool2d`` that works at any feature-map size.

    ``forward(features)`` equals ``pool(features)`` at the model's own grid; at another grid the positional
    embedding is interpolated into a new tensor (bicubic, mean-token row kept). Only the mean token's query is
    evaluated (the pool returns only that row). The pool's parameters are read, never written.
    """

    def __init__(self, pool: nn.Module, grid: Tuple[int, int]) -> None:
        super().__init__()
        self.pool = pool
        self.grid = grid

    def tokens(self, x: Tensor) -> Tensor:
        """Tokens of a feature map ``(N, C, h, w)``: ``(N, 1 + h*w, C)``, the mean token then the grid, with
        positional embeddings."""
        p = self.pool
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pos = interpolate_positions(p.positional_embedding, self.grid, grid)
        return x + pos.to(x.dtype)[None]

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        t = self.tokens(x).transpose(0, 1)  # (L, N, C)
        out, _ = F.multi_head_attention_forward(
            query=t[:1], key=t, value=t, embed_dim_to_check=t.shape[-1], num_heads=p.num_heads,
            q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=p.c_proj.weight,
            out_proj_bias=p.c_proj.bias, use_separate_proj_weight=True, training=self.pool.training,
            need_weights=False)
        return out[0]


class AttentionPool2dAdapter(AttentionAdapter):
    """The mean token of a ``ModifiedResNet`` attention pool attends to the feature-map positions.

    The query axis has one position (the mean token); the key axis is the mean token followed by the grid.
    """

    def __init__(self, module: AttentionPool2dView) -> None:
        super().__init__(module)
        self.num_heads = module.pool.num_heads

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, AttentionPool2dView)

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        view: AttentionPool2dView = self.module  # type: ignore[assignment]
        p = view.pool
        t = view.tokens(args[0] if args else kwargs["x"])
        q = p.q_proj(t[:, :1])
        k, v = p.k_proj(t), p.v_proj(t)
        h = self.num_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def project(self, o: Tensor) -> Tensor:
        return self.module.pool.c_proj(o)

    def output_tensor(self, output: Any) -> Tensor:
        return output[:, None, :]

    def replace_output(self, output: Any, y: Tensor) -> Any:
        return y[:, 0, :]


def _resnet_grid(size: int) -> int:
    """Feature-map side after the ``ModifiedResNet`` stem and the three strided stages (reduction 32)."""
    s = (size + 1) // 2  # conv 3x3 stride 2 padding 1
    for _ in range(4):  # stem average pool, then layer2..layer4 anti-aliased average pools
        s //= 2
    return s


class OpenClipResNetTower(Tower):
    """open_clip ``ModifiedResNet`` (RN50, RN101, RN50x4 ...): the attention pool is explained.

    The pool's query is the mean of the feature map (with its positional embedding); the keys are that mean
    token and the ``h x w`` positions; the map is returned on the ``h x w`` grid. Images of any size at least 32
    pixels a side are accepted: the pool's positional embedding is interpolated on the fly (in a new tensor).
    """

    side = "image"

    def __init__(self, model: nn.Module, visual: Optional[nn.Module] = None) -> None:
        visual = model.visual if visual is None else visual
        super().__init__(model, visual)
        self.visual = visual
        pool = getattr(visual, "attnpool", None)
        if pool is None or not hasattr(pool, "positional_embedding"):
            raise UnsupportedModelError(
                f"open_clip ModifiedResNet without its AttentionPool2d ({type(pool).__name__}) has no pooling "
                "attention to explain")
        side = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
        self.view = AttentionPool2dView(pool, (side, side))

    def blocks(self) -> List[nn.Module]:
        return [self.visual.attnpool]

    def attention_of(self, block: nn.Module) -> nn.Module:
        if block is self.visual.attnpool:
            return self.view
        raise UnsupportedModelError(
            f"{type(block).__name__} is not the attention pool of this ModifiedResNet; Grad-ECLIP explains only "
            "visual.attnpool (pass layer=None)")

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, (32, 32))

    def features(self, images: Tensor) -> Tensor:
        v = self.visual
        x = v.stem(images)
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        return self.view(self.features(inputs))

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (_resnet_grid(inputs.shape[-2]), _resnet_grid(inputs.shape[-1]))
        return grid_layout(inputs.shape[0], grid, inputs.device)


# ----------------------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------------------
def _trailing_run(tokens: Tensor) -> Tensor:
    """``(N, L)`` True on the run of ids equal to the last id at the end of each row (the padding)."""
    same = tokens == tokens[:, -1:]
    return same.flip(-1).int().cumprod(-1).flip(-1).bool()


def word_mask(tokens: Tensor, pool_type: str, eos_id: Optional[int]) -> Tensor:
    """Positions of the words (not start, end or padding tokens) of open_clip token ids.

    - ``argmax`` (CLIP BPE): between the start token (position 0) and the end token (the largest id);
    - ``eos``: before the first ``eos_id``; position 0 is a start token unless ``eos_id == 1`` (T5-style
      sentencepiece vocabularies have no start token);
    - ``last`` / ``first`` (SigLIP, CLIPA, bidirectional towers): before the padding, which is the run of ids
      equal to the last id at the end of the row (a start or end token that the tokenizer puts before the
      padding, such as CLIPA's ``[CLS]`` or SigLIP 2's EOS, counts as a word).
    """
    n, length = tokens.shape
    pos = torch.arange(length, device=tokens.device)[None, :]
    if pool_type == "argmax":
        end = tokens.argmax(dim=-1, keepdim=True)
        return (pos >= 1) & (pos < end)
    if pool_type == "eos":
        end = (tokens == eos_id).int().argmax(dim=-1, keepdim=True)
        start = 0 if eos_id == 1 else 1
        return (pos >= start) & (pos < end)
    return ~_trailing_run(tokens)


def text_query(tokens: Tensor, pool_type: str, eos_id: Optional[int]) -> Tensor:
    """Pooling position ``(N,)`` of open_clip's ``text_global_pool``."""
    n, length = tokens.shape
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    if pool_type == "last":
        return torch.full((n,), length - 1, dtype=torch.long, device=tokens.device)
    return torch.zeros(n, dtype=torch.long, device=tokens.device)


class OpenClipTextTower(Tower):
    """open_clip text transformer of ``CLIP`` (token embedding, blocks, ``ln_final``, projection).

    Pooled at the EOS token (``argmax`` of the ids, or the tokenizer's ``eos`` id), the last token or the first
    token (``text_pool_type``); causal or bidirectional (``no_causal_mask``).
    """

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, model.transformer)
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise UnsupportedModelError(
                f"open_clip text pooling {self.pool_type!r} is not supported; supported: argmax, eos, last, first")
        self.eos_id = getattr(model, "text_eos_id", None)
        self.causal = getattr(model, "attn_mask", None) is not None

    def blocks(self) -> List[nn.Module]:
        return list(self.model.transformer.resblocks)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs)
        ctx = self.model.positional_embedding.shape[0]
        if inputs.shape[1] > ctx or (not self.causal and inputs.shape[1] != ctx):
            raise ValueError(f"token ids have length {inputs.shape[1]} but the text tower's context length is "
                             f"{ctx}; tokenize with open_clip.get_tokenizer(...) (it pads to the context)")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        m = self.model
        length = inputs.shape[1]
        if length == m.positional_embedding.shape[0]:
            return m.encode_text(inputs)
        # a causal tower cropped after its last EOS: the first `length` positions are exactly those of the full
        # context (later positions cannot reach them), so the model's own modules run on the shorter sequence
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(inputs).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=x.device), self.query(inputs)]
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def crop_length(self, inputs: Any, *extra: Any) -> Optional[int]:
        if not self.causal or self.pool_type not in ("argmax", "eos"):
            return None
        return int(self.query(inputs).max()) + 1

    def query(self, tokens: Tensor) -> Tensor:
        return text_query(tokens, self.pool_type, self.eos_id)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        words = word_mask(inputs, self.pool_type, self.eos_id)
        return text_layout(inputs, self.query(inputs), words, None, self.causal, single_head)

    def row_tail(self, attentions: Sequence[nn.Module], single_head: bool = False) -> Optional[RowTail]:
        if single_head or not self.causal or self.pool_type not in ("argmax", "eos"):
            return None
        m = self.model
        return _row_tail(self.blocks(), attentions, m.transformer, m.ln_final, m.text_projection)


def _row_tail(blocks: List[nn.Module], attentions: Sequence[nn.Module], transformer: nn.Module, ln_final: nn.Module,
              proj: Any) -> Optional[RowTail]:
    """The row tail of an open_clip text transformer pooled at one token: blocks, then ``ln_final`` and the
    projection (a Parameter, an ``nn.Linear`` or None)."""
    tail = tail_blocks(blocks, attentions, "attn")
    if tail is None or not getattr(transformer, "batch_first", False) or not all(_plain_block(b) for b in tail):
        return None

    def pre(j: int, x: Tensor) -> Tensor:
        return tail[j].ln_1(x)

    def post(j: int, x: Tensor, y: Tensor) -> Tensor:
        b = tail[j]
        x = x + b.ls_1(getattr(b, "ln_attn", nn.Identity())(y))
        return x + b.ls_2(b.mlp(b.ln_2(x)))

    def head(x: Tensor) -> Tensor:
        x = ln_final(x)
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    return RowTail([b.attn for b in tail], tail[0], pre, post, head)


def _plain_block(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` self-attending with a plain ``nn.MultiheadAttention``."""
    attn = getattr(block, "attn", None)
    return type(block).__name__ == "ResidualAttentionBlock" and type(block).__module__.startswith("open_clip") \
        and type(attn) is nn.MultiheadAttention and attn.bias_k is None and not attn.add_zero_attn \
        and not hasattr(block, "ln_1_kv") and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))


class OpenClipTextTransformerTower(Tower):
    """open_clip ``TextTransformer`` (``model.text`` of ``CustomTextCLIP`` and ``CoCa``).

    Pooling: ``argmax`` / ``eos`` / ``last`` / ``first`` as in :class:`OpenClipTextTower`; with an appended class
    token (CoCa, ``embed_cls``) the query is that token (the last position) and the map covers the input
    positions only. Padding masks (``use_pad_mask`` of bidirectional towers, and the class-token mask of CoCa,
    legacy or corrected) are reproduced exactly, so lam is normalised over the keys the query really sees.
    """

    side = "text"
    default_depth = 8

    def __init__(self, model: nn.Module) -> None:
        text = self.text = model.text
        super().__init__(model, text)
        self.pool_type = text.pool_type
        if text.cls_emb is None and self.pool_type not in ("argmax", "eos", "last", "first"):
            raise UnsupportedModelError(
                f"open_clip TextTransformer with pool_type={self.pool_type!r} returns tokens, not an embedding; "
                "supported: argmax, eos, last, first, or an appended class token")
        self.eos_id = getattr(text, "eos_id", None)
        self.causal = text.attn_mask is not None
        self.cls = text.cls_emb is not None
        self.pad_mask = bool(getattr(text, "use_pad_mask", False)) or self.cls

    def blocks(self) -> List[nn.Module]:
        return list(self.text.transformer.resblocks)

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_tokens(inputs)
        t = self.text
        room = t.num_pos - (1 if self.cls else 0)
        if inputs.shape[1] > room or (self.causal and not self.pad_mask and inputs.shape[1] != room):
            raise ValueError(f"token ids have length {inputs.shape[1]} but the text tower's context length is "
                             f"{t.context_length}; tokenize with open_clip.get_tokenizer(...)")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        out = self.text(inputs)
        return out[0] if isinstance(out, tuple) else out

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        t = self.text
        n, length = inputs.shape
        key_valid = None
        if self.pad_mask:
            valid = inputs != t.pad_id
            if self.cls:
                ones = valid.new_ones(n, 1)
                valid = torch.cat([valid, ones] if getattr(t, "correct_cls_mask", False) else [ones, valid], 1)
            key_valid = valid
        if self.cls:
            query = torch.full((n,), length, dtype=torch.long, device=inputs.device)
            words = word_mask(inputs, self.pool_type if self.pool_type in ("argmax", "eos") else "argmax",
                              self.eos_id)
            return text_layout(inputs, query, words, key_valid, self.causal, single_head, length + 1)
        words = word_mask(inputs, self.pool_type, self.eos_id)
        if key_valid is not None:
            words = words & key_valid
        query = text_query(inputs, self.pool_type, self.eos_id)
        return text_layout(inputs, query, words, key_valid, self.causal, single_head)

    def row_tail(self, attentions: Sequence[nn.Module], single_head: bool = False) -> Optional[RowTail]:
        t = self.text
        if single_head or not self.causal or self.cls or self.pad_mask or self.pool_type not in ("argmax", "eos"):
            return None
        return _row_tail(self.blocks(), attentions, t.transformer, t.ln_final, t.text_projection)
