"""Independent, straightforward Grad-ECLIP computations used as ground truth in the tests.

Everything here is written from the formula (method.md) and the models' weights: attention is re-written by
hand, the channel weights come from autograd on the hand-written forward, lam is a plain min-max. No code of
the library is used.
"""

from typing import List

import torch
import torch.nn.functional as F


def _attention(x, w_in, b_in, w_out, b_out, heads, mask=None):
    """Hand-written multi-head self-attention. Returns y, o (before out-projection), q, k, v (full width)."""
    n, length, c = x.shape
    q, k, v = (x @ w_in.t() + b_in).chunk(3, dim=-1)
    d = c // heads
    split = lambda t: t.reshape(n, length, heads, d).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-1, -2) / d ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    o = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, length, c)
    return o, q, k, v


def _minmax(s, mask):
    s = s.clone()
    out = torch.zeros_like(s)
    for i in range(s.shape[0]):
        vals = s[i][mask[i]]
        out[i][mask[i]] = (vals - vals.min()) / (vals.max() - vals.min())
    return out


def _combine(maps, rule):
    """The layers' signed maps combined by hand: ReLU of the sum, or the sum of the ReLUs."""
    maps = list(maps)
    if rule == "sum_then_relu":
        total = maps[0]
        for m in maps[1:]:
            total = total + m
        return total.clamp_min(0)
    assert rule == "relu_then_sum"
    total = maps[0].clamp_min(0)
    for m in maps[1:]:
        total = total + m.clamp_min(0)
    return total


def _map(o_grad, q, k, v, query, lam_mask):
    """lam * sum_c g_c v_ic for one layer: (N, L)."""
    rows = torch.arange(q.shape[0])
    g = o_grad[rows, query]  # (N, C)
    sim = F.cosine_similarity(q[rows, query][:, None], k, dim=-1)
    lam = _minmax(sim, lam_mask)
    return lam * torch.einsum("nc,nlc->nl", g, v)


def open_clip_image(model, images, text_features, target: int, explained: List[int], single_head=False,
                    pos=None, layer_rule="relu_then_sum"):
    """Reference image map (N, h, w) for an open_clip ViT with class token; ``pos`` overrides the
    positional embedding (for non-native sizes)."""
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride)
    n, width, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.reshape(1, 1, -1).expand(n, 1, width), x], 1)
    x = x + (v.positional_embedding if pos is None else pos)
    x = v.ln_pre(x)
    saved = {}
    for i, b in enumerate(v.transformer.resblocks):
        heads = 1 if (single_head and i in explained) else b.attn.num_heads
        o, q, k, val = _attention(b.ln_1(x), b.attn.in_proj_weight, b.attn.in_proj_bias, None, None, heads)
        if i in explained:
            saved[i] = (o, q, k, val)
        x = x + b.attn.out_proj(o)
        x = x + b.mlp(b.ln_2(x))
    pooled = v.ln_post(x[:, 0]) @ v.proj
    s = F.cosine_similarity(pooled, text_features[target][None], dim=-1)
    grads = torch.autograd.grad(s.sum(), [saved[i][0] for i in explained])
    lam_mask = torch.zeros(n, x.shape[1], dtype=torch.bool)
    lam_mask[:, 1:] = True
    query = torch.zeros(n, dtype=torch.long)
    total = _combine((_map(g, *saved[i][1:], query, lam_mask) for g, i in zip(grads, explained)), layer_rule)
    return total[:, 1:].reshape(n, h, w).detach()


def open_clip_text(model, tokens, image_features, target: int, explained: List[int], single_head=False,
                   layer_rule="sum_then_relu"):
    """Reference word map (N, L) for the open_clip CLIP text tower (causal, argmax pooling)."""
    n, length = tokens.shape
    x = model.token_embedding(tokens) + model.positional_embedding
    causal = torch.ones(length, length).tril().bool()[None].expand(n, -1, -1)
    saved = {}
    for i, b in enumerate(model.transformer.resblocks):
        heads = 1 if (single_head and i in explained) else b.attn.num_heads
        o, q, k, val = _attention(b.ln_1(x), b.attn.in_proj_weight, b.attn.in_proj_bias, None, None, heads,
                                  mask=causal)
        if i in explained:
            saved[i] = (o, q, k, val)
        x = x + b.attn.out_proj(o)
        x = x + b.mlp(b.ln_2(x))
    eos = tokens.argmax(-1)
    pooled = model.ln_final(x)[torch.arange(n), eos] @ model.text_projection
    s = F.cosine_similarity(pooled, image_features[target][None], dim=-1)
    grads = torch.autograd.grad(s.sum(), [saved[i][0] for i in explained])
    pos = torch.arange(length)
    lam_mask = torch.ones(n, length, dtype=torch.bool) if single_head else pos[None] <= eos[:, None]
    total = _combine((_map(g, *saved[i][1:], eos, lam_mask) for g, i in zip(grads, explained)), layer_rule)
    words = (pos[None] >= 1) & (pos[None] < eos[:, None])
    return (total * words).detach()


def _hf_attention(attn, x, mask=None, heads=None):
    n, length, c = x.shape
    heads = heads or attn.num_heads
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    d = c // heads
    split = lambda t: t.reshape(n, length, heads, d).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-1, -2) / d ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    o = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, length, c)
    return o, q, k, v


def hf_clip_image(model, pixel_values, text_features, target: int, explained: List[int], layer_rule="relu_then_sum"):
    vm = model.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixel_values))
    n = x.shape[0]
    saved = {}
    for i, layer in enumerate(vm.encoder.layers):
        o, q, k, v = _hf_attention(layer.self_attn, layer.layer_norm1(x))
        if i in explained:
            saved[i] = (o, q, k, v)
        x = x + layer.self_attn.out_proj(o)
        x = x + layer.mlp(layer.layer_norm2(x))
    pooled = model.visual_projection(vm.post_layernorm(x[:, 0]))
    s = F.cosine_similarity(pooled, text_features[target][None], dim=-1)
    grads = torch.autograd.grad(s.sum(), [saved[i][0] for i in explained])
    lam_mask = torch.zeros(n, x.shape[1], dtype=torch.bool)
    lam_mask[:, 1:] = True
    query = torch.zeros(n, dtype=torch.long)
    total = _combine((_map(g, *saved[i][1:], query, lam_mask) for g, i in zip(grads, explained)), layer_rule)
    side = int((x.shape[1] - 1) ** 0.5)
    return total[:, 1:].reshape(n, side, side).detach()


def hf_clip_text(model, input_ids, attention_mask, image_features, target: int, explained: List[int],
                 layer_rule="sum_then_relu"):
    tm = model.text_model
    n, length = input_ids.shape
    x = tm.embeddings(input_ids=input_ids)
    pos = torch.arange(length)
    valid = attention_mask.bool()
    mask = (pos[None, :, None] >= pos[None, None, :]) & valid[:, None, :]
    saved = {}
    for i, layer in enumerate(tm.encoder.layers):
        o, q, k, v = _hf_attention(layer.self_attn, layer.layer_norm1(x), mask=mask)
        if i in explained:
            saved[i] = (o, q, k, v)
        x = x + layer.self_attn.out_proj(o)
        x = x + layer.mlp(layer.layer_norm2(x))
    eos = (input_ids == model.config.text_config.eos_token_id).int().argmax(-1)
    pooled = model.text_projection(tm.final_layer_norm(x)[torch.arange(n), eos])
    s = F.cosine_similarity(pooled, image_features[target][None], dim=-1)
    grads = torch.autograd.grad(s.sum(), [saved[i][0] for i in explained])
    lam_mask = (pos[None] <= eos[:, None]) & valid
    total = _combine((_map(g, *saved[i][1:], eos, lam_mask) for g, i in zip(grads, explained)), layer_rule)
    words = (pos[None] >= 1) & (pos[None] < eos[:, None]) & valid
    return (total * words).detach()
