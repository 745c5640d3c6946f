"""Independent, straightforward baseline computations used as ground truth in tests/test_baselines.py.

The towers are re-written by hand from the models' weights (attention as softmax(q k^T / sqrt(d) + mask) v per
head); attention probabilities and block inputs are kept in the autograd graph so that gradients come from
plain autograd; relevance matrices are full L x L products. No code of the library is used.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

Rec = Dict[str, torch.Tensor]


def _heads(t, heads):
    n, length, c = t.shape
    return t.reshape(n, length, heads, c // heads).transpose(1, 2)


def _attend(q, k, v, heads, mask):
    """Per-head attention: probabilities (N, H, L, L) and concatenated output (N, L, C)."""
    n, length, c = q.shape
    logits = _heads(q, heads) @ _heads(k, heads).transpose(-1, -2) / (c // heads) ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    probs = logits.softmax(-1)
    return probs, (probs @ _heads(v, heads)).transpose(1, 2).reshape(n, length, c)


def _oc_block(b, x, mask, recs: List[Rec]):
    h = b.ln_1(x)
    q, k, v = (h @ b.attn.in_proj_weight.t() + b.attn.in_proj_bias).chunk(3, dim=-1)
    probs, o = _attend(q, k, v, b.attn.num_heads, mask)
    y = b.attn.out_proj(o)
    recs.append(dict(x_in=x, probs=probs, k=k, v=v, y=y))
    x = x + y
    recs[-1]["out"] = x + b.mlp(b.ln_2(x))
    return recs[-1]["out"]


def _hf_block(layer, x, mask, recs: List[Rec]):
    a = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
    probs, o = _attend(q, k, v, a.num_heads, mask)
    y = a.out_proj(o)
    recs.append(dict(x_in=x, probs=probs, k=k, v=v, y=y))
    x = x + y
    recs[-1]["out"] = x + layer.mlp(layer.layer_norm2(x))
    return recs[-1]["out"]


def open_clip_image(model, images) -> Tuple[torch.Tensor, List[Rec], torch.Tensor]:
    """Embedding (N, E), per-block records, query positions (CLS = 0)."""
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride)
    n, width = x.shape[:2]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.reshape(1, 1, -1).expand(n, 1, width), x], 1)
    x = v.ln_pre(x + v.positional_embedding)
    recs: List[Rec] = []
    for b in v.transformer.resblocks:
        x = _oc_block(b, x, None, recs)
    return v.ln_post(x[:, 0]) @ v.proj, recs, torch.zeros(n, dtype=torch.long)


def open_clip_text(model, tokens):
    n, length = tokens.shape
    x = model.token_embedding(tokens) + model.positional_embedding
    causal = torch.ones(length, length).tril().bool()[None].expand(n, -1, -1)
    recs: List[Rec] = []
    for b in model.transformer.resblocks:
        x = _oc_block(b, x, causal, recs)
    eos = tokens.argmax(-1)
    return model.ln_final(x)[torch.arange(n), eos] @ model.text_projection, recs, eos


def hf_image(model, pixel_values):
    vm = model.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixel_values))
    recs: List[Rec] = []
    for layer in vm.encoder.layers:
        x = _hf_block(layer, x, None, recs)
    return model.visual_projection(vm.post_layernorm(x[:, 0])), recs, torch.zeros(x.shape[0], dtype=torch.long)


def hf_text(model, input_ids, attention_mask):
    tm = model.text_model
    n, length = input_ids.shape
    x = tm.embeddings(input_ids=input_ids)
    pos = torch.arange(length)
    mask = (pos[None, :, None] >= pos[None, None, :]) & attention_mask.bool()[:, None, :]
    recs: List[Rec] = []
    for layer in tm.encoder.layers:
        x = _hf_block(layer, x, mask, recs)
    eos = (input_ids == model.config.text_config.eos_token_id).int().argmax(-1)
    return model.text_projection(tm.final_layer_norm(x)[torch.arange(n), eos]), recs, eos


def similarity(emb, fixed, target):
    """cos(emb[n], fixed[target[n]]) for every example: (N,)."""
    return F.cosine_similarity(emb, fixed[torch.as_tensor(target).expand(emb.shape[0])], dim=-1)


def _row(matrix, query):
    return matrix[torch.arange(matrix.shape[0]), query]


def raw_attention(recs, query, layer=-1):
    return _row(recs[layer]["probs"].mean(1), query).detach()


def rollout(recs, query, layers=None):
    layers = range(len(recs)) if layers is None else layers
    n, length = recs[0]["probs"].shape[0], recs[0]["probs"].shape[-1]
    eye = torch.eye(length).expand(n, length, length)
    r = eye.clone()
    for i in layers:
        a = recs[i]["probs"].mean(1) + eye
        a = a / a.sum(-1, keepdim=True)
        r = a @ r
    return _row(r, query).detach()


def game(recs, query, score, layers=None):
    layers = list(range(len(recs))) if layers is None else list(layers)
    grads = torch.autograd.grad(score.sum(), [recs[i]["probs"] for i in layers], retain_graph=True)
    n, length = recs[0]["probs"].shape[0], recs[0]["probs"].shape[-1]
    r = torch.eye(length).expand(n, length, length).clone()
    for g, i in zip(grads, layers):
        a = (g * recs[i]["probs"]).clamp(min=0).mean(1)
        r = r + a @ r
    return _row(r, query).detach()


def gradcam(recs, score, explained, layer=-1, key="x_in"):
    """ReLU(sum_c w_c a_ic) with a = input tokens of ``layer`` (or its attention output, key="y"), w = gradient
    averaged over ``explained``."""
    act = recs[layer][key]
    (grad,) = torch.autograd.grad(score.sum(), [act], retain_graph=True)
    e = explained.float()
    w = (grad * e[..., None]).sum(1) / e.sum(1, keepdim=True)
    return F.relu((act * w[:, None]).sum(-1)).detach()


def maskclip_open_clip(model, recs, text_features, target, key_similarity=False):
    v = model.visual
    b = v.transformer.resblocks[-1]
    x, val, k = recs[-1]["x_in"], recs[-1]["v"], recs[-1]["k"]
    h = x + b.attn.out_proj(val)
    h = h + b.mlp(b.ln_2(h))
    dense = v.ln_post(h) @ v.proj
    return _maskclip_map(dense, text_features, target, b.attn.out_proj(k) if key_similarity else None)


def maskclip_hf(model, recs, text_features, target, key_similarity=False):
    vm = model.vision_model
    layer = vm.encoder.layers[-1]
    x, val, k = recs[-1]["x_in"], recs[-1]["v"], recs[-1]["k"]
    h = x + layer.self_attn.out_proj(val)
    h = h + layer.mlp(layer.layer_norm2(h))
    dense = model.visual_projection(vm.post_layernorm(h))
    return _maskclip_map(dense, text_features, target, layer.self_attn.out_proj(k) if key_similarity else None)


def _maskclip_map(dense, text_features, target, keys):
    t = text_features[torch.as_tensor(target).expand(dense.shape[0])]
    sim = F.cosine_similarity(dense, t[:, None], dim=-1)
    if keys is not None:
        sim = sim * F.cosine_similarity(keys[:, :1], keys, dim=-1)
    return F.relu(sim).detach()


# ---------------------------------------------------------------------------------------------------------- LeGrad
def _min_max(m):
    low, high = m.min(-1, keepdim=True).values, m.max(-1, keepdim=True).values
    return (m - low) / (high - low)


def legrad(recs, head, fixed, target, layers=None, mean_tokens=False):
    """LeGrad over the patch columns (1:) of blocks with a class token: for each layer, the layer's own output
    through ``head`` (the class token, or the mean of all tokens), its cosine with the target's features, the
    gradient w.r.t. THAT layer's probabilities, ReLU, mean over heads and rows; mean over layers; min-max."""
    layers = list(range(len(recs))) if layers is None else list(layers)
    maps = []
    for i in layers:
        out = recs[i]["out"]
        emb = head(out.mean(1) if mean_tokens else out[:, 0])
        (g,) = torch.autograd.grad(similarity(emb, fixed, target).sum(), [recs[i]["probs"]], retain_graph=True)
        maps.append(g.clamp(min=0).mean(1).mean(1)[:, 1:])
    return _min_max(torch.stack(maps).mean(0)).detach()


def legrad_siglip_hf(model, pixel_values, fixed, target, layers=None):
    """LeGrad of a HuggingFace SigLIP image tower: each layer's hidden states through post_layernorm and the MAP
    head re-written by hand (probe attends to the tokens); gradient w.r.t. the head's probabilities."""
    vm = model.vision_model
    hidden = vm(pixel_values=pixel_values, output_hidden_states=True).hidden_states[1:]
    head = vm.head
    attn = head.attention
    heads, width = attn.num_heads, attn.embed_dim
    layers = list(range(len(hidden))) if layers is None else list(layers)
    maps = []
    for i in layers:
        z = vm.post_layernorm(hidden[i].detach())
        n = z.shape[0]
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        q = head.probe.expand(n, 1, width) @ wq.t() + bq
        k, v = z @ wk.t() + bk, z @ wv.t() + bv
        logits = _heads(q, heads) @ _heads(k, heads).transpose(-1, -2) / (width // heads) ** 0.5
        probs = logits.softmax(-1)
        o = (probs @ _heads(v, heads)).transpose(1, 2).reshape(n, 1, width)
        y = attn.out_proj(o)
        emb = (y + head.mlp(head.layernorm(y)))[:, 0]
        (g,) = torch.autograd.grad(similarity(emb, fixed, target).sum(), [probs])
        maps.append(g.clamp(min=0).mean(1).mean(1))
    return _min_max(torch.stack(maps).mean(0)).detach()
