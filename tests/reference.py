"""Independent, straightforward computations used as ground truth in the tests: Grad-ECLIP maps, the baselines
(raw attention, rollout, GAME, GradCAM, MaskCLIP, LeGrad) and the primitives they are written with.

Everything here is written from the formulas (method.md) and the models' weights: attention is re-written by
hand (softmax(q k^T / sqrt(d) + mask) v per head), gradients come from plain autograd on the hand-written forward,
lam is a plain min-max, relevance matrices are full L x L products. No code of the library is used.
"""

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rec = Dict[str, Tensor]  # one block of a hand-written forward: its input, attention probabilities, k, v, output


# ======================================================================================================= primitives
def split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, C) -> (N, heads, L, C // heads)."""
    n, length, c = x.shape
    return x.reshape(n, length, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(N, heads, L, d) -> (N, L, heads * d)."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def attention_probs(q: Tensor, k: Tensor, heads: int, scale: Optional[float] = None, mask: Optional[Tensor] = None,
                    bias: Optional[Tensor] = None) -> Tensor:
    """Per-head attention probabilities (N, heads, Lq, Lk) of full-width q (N, Lq, C) and k (N, Lk, C): logits
    scaled by ``scale`` (default 1 / sqrt(d)), plus ``bias`` (an additive mask), -inf where the boolean ``mask``
    ((N, Lq, Lk) or (N, 1, Lk)) is False."""
    qh, kh = split_heads(q, heads), split_heads(k, heads)
    logits = qh @ kh.transpose(-1, -2)
    logits = logits / qh.shape[-1] ** 0.5 if scale is None else logits * scale
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return logits.softmax(-1)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: Optional[float] = None, mask: Optional[Tensor] = None,
           bias: Optional[Tensor] = None) -> Tensor:
    """Multi-head attention output (heads concatenated, before the out-projection): see :func:`attention_probs`."""
    return merge_heads(attention_probs(q, k, heads, scale, mask, bias) @ split_heads(v, heads))


def minmax(s: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """(s - min) / (max - min) along the last dimension, the extremes taken where ``mask`` is True; zero outside."""
    if mask is None:
        low, high = s.min(-1, keepdim=True).values, s.max(-1, keepdim=True).values
        return (s - low) / (high - low)
    low = s.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
    high = s.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    return (s - low) / (high - low) * mask


def similarity(emb, fixed, target):
    """cos(emb[n], fixed[target[n]]) for every example: (N,)."""
    return F.cosine_similarity(emb, fixed[torch.as_tensor(target).expand(emb.shape[0])], dim=-1)


def capture(module: nn.Module, run: Callable[[], object]) -> Tuple[tuple, dict]:
    """The positional and keyword arguments ``module`` receives while ``run()`` executes (no gradients)."""
    seen: Dict[str, object] = {}

    def hook(m, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen["args"], seen["kwargs"]  # type: ignore[return-value]


def block_input(run: Callable[[], object], block: nn.Module) -> Tensor:
    """The first positional input of ``block`` during ``run()`` (read with a hook, the model untouched)."""
    (x, *_), _ = capture(block, run)
    return x.detach()


# ======================================================================================= Grad-ECLIP, one layer by hand
def grad_at(o: Tensor, tail: Callable[[Tensor], Tensor], fixed: Tensor, target: int) -> Tuple[Tensor, Tensor]:
    """S = cos(tail(o), fixed[target]) and dS/do."""
    o = o.detach().requires_grad_(True)
    emb = tail(o)
    s = F.cosine_similarity(emb, fixed[target][None], dim=-1)
    (g,) = torch.autograd.grad(s.sum(), o)
    return s.detach(), g


def reference_map(q: Tensor, k: Tensor, v: Tensor, g: Tensor, queries: Tensor, lam_mask: Tensor) -> Tensor:
    """sum over queries of lam_q * (v @ g_q), lam_q = min-max over lam_mask of cos(q_q, k). (N, Lk), no ReLU."""
    n, lk = k.shape[:2]
    out = torch.zeros(n, lk)
    for i in range(n):
        for j in torch.nonzero(queries[i]).flatten().tolist():
            s = F.cosine_similarity(q[i, j][None], k[i], dim=-1)
            lam = minmax(s[None], lam_mask[i][None])[0]
            out[i] += lam * (v[i] @ g[i, j])
    return out


def image_reference(scorer, images: Tensor, target: int, q, k, v, o, tail, queries, lam_mask, prefix: int,
                    grid) -> Tensor:
    """The ReLU'd map (N, 1, *grid) of one layer from its q, k, v and output ``o`` (``tail``: o -> embedding);
    first checks that the hand-written forward gives the scorer's score."""
    s, g = grad_at(o, tail, scorer.fixed_features, target)
    torch.testing.assert_close(s, scorer(images)[:, target], rtol=1e-4, atol=1e-5)  # the hand forward is right
    m = F.relu(reference_map(q, k, v, g, queries, lam_mask))
    return m[:, prefix:].reshape(images.shape[0], 1, *grid)


def grad_eclip_map(o_fn: Callable[[], Tensor], q_query: Tensor, k: Tensor, v: Tensor, lam_mask: Tensor,
                   heads_out: Callable[[Tensor], Tensor]) -> Tensor:
    """g = dS/do at the query (autograd), lam = min-max cos(q_query, k_i), map = lam * (v . g); no ReLU."""
    o = o_fn().detach().requires_grad_(True)
    (g,) = torch.autograd.grad(heads_out(o).sum(), o)
    lam = minmax(F.cosine_similarity(q_query[:, None, :], k, dim=-1), lam_mask)
    return lam * torch.einsum("nlc,nc->nl", v, g[:, 0])


# ============================================================================ Grad-ECLIP of whole CLIP towers by hand
def _open_clip_attention(block: nn.Module, x: Tensor, heads: int, mask: Optional[Tensor] = None):
    """An open_clip block's attention by hand: o (before out-projection), q, k, v (full width)."""
    q, k, v = (x @ block.attn.in_proj_weight.t() + block.attn.in_proj_bias).chunk(3, dim=-1)
    return attend(q, k, v, heads, mask=mask), q, k, v


def _hf_attention(attn: nn.Module, x: Tensor, mask: Optional[Tensor] = None):
    """A HuggingFace CLIP attention by hand: o (before out-projection), q, k, v (full width)."""
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    return attend(q, k, v, attn.num_heads, mask=mask), q, k, v


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
    lam = minmax(sim, lam_mask)
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
        o, q, k, val = _open_clip_attention(b, b.ln_1(x), heads)
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
        o, q, k, val = _open_clip_attention(b, b.ln_1(x), heads, mask=causal)
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


# ================================================================================================ baselines by hand
def _oc_block(b, x, mask, recs: List[Rec]):
    h = b.ln_1(x)
    q, k, v = (h @ b.attn.in_proj_weight.t() + b.attn.in_proj_bias).chunk(3, dim=-1)
    probs = attention_probs(q, k, b.attn.num_heads, mask=mask)
    o = merge_heads(probs @ split_heads(v, b.attn.num_heads))
    y = b.attn.out_proj(o)
    recs.append(dict(x_in=x, probs=probs, k=k, v=v, y=y))
    x = x + y
    recs[-1]["out"] = x + b.mlp(b.ln_2(x))
    return recs[-1]["out"]


def _hf_block(layer, x, mask, recs: List[Rec]):
    a = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
    probs = attention_probs(q, k, a.num_heads, mask=mask)
    o = merge_heads(probs @ split_heads(v, a.num_heads))
    y = a.out_proj(o)
    recs.append(dict(x_in=x, probs=probs, k=k, v=v, y=y))
    x = x + y
    recs[-1]["out"] = x + layer.mlp(layer.layer_norm2(x))
    return recs[-1]["out"]


def records_open_clip_image(model, images) -> Tuple[torch.Tensor, List[Rec], torch.Tensor]:
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


def records_open_clip_text(model, tokens):
    n, length = tokens.shape
    x = model.token_embedding(tokens) + model.positional_embedding
    causal = torch.ones(length, length).tril().bool()[None].expand(n, -1, -1)
    recs: List[Rec] = []
    for b in model.transformer.resblocks:
        x = _oc_block(b, x, causal, recs)
    eos = tokens.argmax(-1)
    return model.ln_final(x)[torch.arange(n), eos] @ model.text_projection, recs, eos


def records_hf_image(model, pixel_values):
    vm = model.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixel_values))
    recs: List[Rec] = []
    for layer in vm.encoder.layers:
        x = _hf_block(layer, x, None, recs)
    return model.visual_projection(vm.post_layernorm(x[:, 0])), recs, torch.zeros(x.shape[0], dtype=torch.long)


def records_hf_text(model, input_ids, attention_mask):
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
    return minmax(torch.stack(maps).mean(0)).detach()


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
        probs = attention_probs(q, k, heads)
        o = merge_heads(probs @ split_heads(v, heads))
        y = attn.out_proj(o)
        emb = (y + head.mlp(head.layernorm(y)))[:, 0]
        (g,) = torch.autograd.grad(similarity(emb, fixed, target).sum(), [probs])
        maps.append(g.clamp(min=0).mean(1).mean(1))
    return minmax(torch.stack(maps).mean(0)).detach()
