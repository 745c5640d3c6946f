"""Coverage of open_clip (and its timm / HuggingFace towers).

- one tiny model per adapter family: image and text maps (shape, finite, non-negative, zero at special tokens and
  padding, grid of a non-square input);
- per family, the maps equal an independent computation written here from the explained module's weights:
  a hand-written forward of the explained attention, autograd for g = dS/do at the query,
  lam = min-max of cos(q_query, k_i) over the explained tokens, map = ReLU(sum_queries lam * (v @ g));
- the exhaustive sweep over ``open_clip.list_models()`` (marked slow).
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, UnsupportedModelError
from captum_gradeclip.adapters import text_tower
from captum_gradeclip.layers import default_layers, describe_layers
from openclip_families import IMAGE_FAMILIES, TEXT_FAMILIES, clip_tokens, images_for, pad_mask_model, tiny_clip, zoo
from fixtures import EMBED, build, native_image_size, text_tokens
from reference import attend, capture, grad_at, image_reference, merge_heads, reference_map, split_heads

warnings.filterwarnings("ignore")

def check_image_maps(maps: Tensor, n: int, grid: Tuple[int, int]) -> None:
    assert maps.shape == (n, 1) + tuple(grid)
    assert torch.isfinite(maps).all()
    assert (maps >= 0).all()
    assert maps.sum() > 0


def check_text_maps(maps: Tensor, tokens: Tensor, words: Tensor) -> None:
    assert maps.shape == tokens.shape
    assert torch.isfinite(maps).all()
    assert (maps >= 0).all()
    assert (maps[~words] == 0).all(), "non-zero score at a start/end/padding position"


# =============================================================================================================
# 1. one tiny model per family
# =============================================================================================================
@pytest.mark.parametrize("family", list(IMAGE_FAMILIES))
def test_image_family(family: str) -> None:
    builder, wide_grid = IMAGE_FAMILIES[family]
    model = builder()
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED))
    tower = scorer.tower
    images = images_for(model)
    ge = GradECLIP(scorer)
    maps = ge.attribute(images, target=[0, 2])
    check_image_maps(maps, 2, tower.layout(images).grid)
    # the tower encodes native-size images exactly as the model does
    torch.testing.assert_close(F.normalize(tower.encode(images), dim=-1), model.encode_image(images, normalize=True),
                               rtol=1e-4, atol=1e-5)
    wide = images_for(model, n=1, wide=True)
    if wide_grid is None:
        with pytest.raises(ValueError, match="accepts only its own image size"):
            ge.attribute(wide, target=0)
    else:
        check_image_maps(ge.attribute(wide, target=1), 1, wide_grid)
    names = describe_layers(ge)
    assert names == describe_layers(scorer) and len(names) == 1
    assert model.get_submodule(names[0]) is default_layers(scorer)[0]


def _expected_words(model: nn.Module, tokens: Tensor) -> Tensor:
    """Word positions, written out per tokenizer convention (independent of the library's rules)."""
    tower = text_tower(model)
    n, length = tokens.shape
    words = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        row = tokens[i].tolist()
        kind = type(tower).__name__
        if kind == "OpenClipHFTextTower":
            pad = model.text.config.pad_token_id
            real = [j for j, t in enumerate(row) if t != pad]
            start = 1 if model.text.config.bos_token_id is not None else 0
            if not tower.mean:
                start = 1
            for j in real[start:-1]:
                words[i, j] = True
        elif tower.pool_type == "argmax" or getattr(tower, "cls", False):
            end = row.index(max(row))
            words[i, 1:end] = True
        elif tower.pool_type == "eos":
            end = row.index(tower.eos_id)
            words[i, (0 if tower.eos_id == 1 else 1):end] = True
        else:  # last / first: the words precede the padding
            pad = row[-1]
            end = length
            while end > 0 and row[end - 1] == pad:
                end -= 1
            words[i, :end] = True
            if tower.pool_type == "first":
                words[i, 0] = False
    return words


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_text_family(family: str) -> None:
    model = TEXT_FAMILIES[family]()
    tokens = text_tokens(model) if "pad-mask" not in family else clip_tokens()
    scorer = TextImageSimilarity(model, torch.randn(2, EMBED))
    ge = GradECLIP(scorer)
    maps = ge.attribute(tokens, target=1)
    check_text_maps(maps, tokens, _expected_words(model, tokens))
    every = ge.attribute_all(tokens)
    torch.testing.assert_close(every[:, 1], maps)
    assert len(describe_layers(ge)) == min(8, len(scorer.tower.blocks()))


def test_coca_text_map_covers_the_input_tokens_only() -> None:
    model = zoo("coca_ViT-B-32")
    tokens = text_tokens(model)
    layout = text_tower(model).layout(tokens)
    assert layout.report_mask.shape[1] == tokens.shape[1] + 1  # keys include the appended class token
    assert (layout.query == tokens.shape[1]).all()
    maps = GradECLIP(TextImageSimilarity(model, torch.randn(2, EMBED))).attribute(tokens, target=0)
    assert maps.shape == tokens.shape


def test_attention_pooled_towers_explain_only_the_pooler() -> None:
    model = zoo("ViT-B-16-SigLIP")
    scorer = ImageTextSimilarity(model, torch.randn(2, EMBED))
    assert describe_layers(scorer) == ["visual.trunk.attn_pool"]
    with pytest.raises(UnsupportedModelError, match="pooler"):
        GradECLIP(scorer, model.visual.trunk.blocks[-1])
    coca = zoo("coca_ViT-B-32")
    scorer = ImageTextSimilarity(coca, torch.randn(2, EMBED))
    assert describe_layers(scorer) == ["visual.attn_pool"]
    assert describe_layers(ImageTextSimilarity(zoo("RN50"), torch.randn(2, EMBED))) == ["visual.attnpool"]


def test_describe_layers_names_text_blocks() -> None:
    model = zoo("ViT-B-32")
    scorer = TextImageSimilarity(model, torch.randn(2, EMBED))
    assert describe_layers(scorer) == ["transformer.resblocks.0", "transformer.resblocks.1"]
    ge = GradECLIP(scorer, model.transformer.resblocks[1].attn)
    assert describe_layers(ge) == ["transformer.resblocks.1.attn"]
    with pytest.raises(TypeError):
        describe_layers(model)


def test_models_are_left_unchanged() -> None:
    model = zoo("EVA02-B-16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = (model.training, model.visual.trunk.dynamic_img_size)
    ge = GradECLIP(ImageTextSimilarity(model, torch.randn(2, EMBED)))
    ge.attribute(images_for(model, n=1, wide=True), target=0)
    assert flags == (model.training, model.visual.trunk.dynamic_img_size)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "RN50", "roberta-ViT-B-32", "coca_ViT-B-32"])
def test_single_head_mode_runs_where_the_output_is_read_at_a_submodule(name: str) -> None:
    """single_head=True re-runs the explained attention inside the hook; adapters reading y at a submodule
    (MAP pool proj, BERT output.dense) must not re-enter it."""
    model = zoo(name)
    maps = GradECLIP(ImageTextSimilarity(model, torch.randn(2, EMBED)), single_head=True).attribute(
        images_for(model), target=0)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    tokens = text_tokens(model)
    tmaps = GradECLIP(TextImageSimilarity(model, torch.randn(2, EMBED)), single_head=True).attribute(tokens, target=0)
    assert torch.isfinite(tmaps).all() and tmaps.shape == tokens.shape


# =============================================================================================================
# 2. independent reference computations
# =============================================================================================================
def _vit_open_clip_case(model: nn.Module, images: Tensor, target: int) -> Tensor:
    """open_clip VisionTransformer, last block (CLS or average pooling; default or custom block)."""
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    v = model.visual
    blk = v.transformer.resblocks[-1]
    (x_in,), _ = capture(blk, lambda: scorer(images))
    a = blk.attn
    h = blk.ln_1(x_in)
    heads = a.num_heads
    q, k, vv = F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    custom = hasattr(a, "ln_q")
    if custom:  # per-head qk-norm, enters the logits
        q = merge_heads(a.ln_q(split_heads(q, heads)))
        k = merge_heads(a.ln_k(split_heads(k, heads)))
    o = attend(q, k, vv, heads)

    def tail(o: Tensor) -> Tensor:
        if custom:
            if a.head_scale is not None:
                o = merge_heads(split_heads(o, heads) * a.head_scale)
            y = a.out_proj(a.ln_inner(o))
            y = blk.ln_attn(y)
        else:
            y = F.linear(o, a.out_proj.weight, a.out_proj.bias)
        x = x_in + blk.ls_1(y)
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        if v.pool_type == "avg":
            pooled = x[:, 1:].mean(dim=1)
            pooled = v.ln_post(pooled) if v.final_ln_after_pool else pooled
        else:
            pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj

    n, length = x_in.shape[:2]
    patches = (torch.arange(length) >= 1)[None].expand(n, -1)
    queries = patches if v.pool_type == "avg" else F.one_hot(torch.zeros(n, dtype=torch.long), length).bool()
    grid = (images.shape[-2] // 8, images.shape[-1] // 8)
    expected = image_reference(scorer, images, target, q, k, vv, o, tail, queries, patches, 1, grid)
    return expected, GradECLIP(scorer).attribute(images, target=target)


@pytest.mark.parametrize("vision", [
    dict(),
    dict(pool_type="avg", no_ln_pre=True, final_ln_after_pool=True),
    dict(qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True, ls_init_value=0.5),
], ids=["cls", "avg", "custom-block"])
def test_reference_open_clip_vit(vision: dict) -> None:
    model = tiny_clip(vision=vision)
    with torch.no_grad():  # give the custom block's scales non-trivial values (a fresh model, built here)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))  # grid 4 x 8, interpolated
    expected, got = _vit_open_clip_case(model, images, target=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_reference_coca_attentional_pooler() -> None:
    model = zoo("coca_ViT-B-32")
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    images = images_for(model, wide=True)
    v = model.visual
    pool = v.attn_pool
    (x,), _ = capture(pool, lambda: scorer(images))
    a = pool.attn
    e = a.embed_dim
    xk = pool.ln_k(x)
    probes = pool.ln_q(pool.query)[None].expand(x.shape[0], -1, -1)
    if a._qkv_same_embed_dim:
        wq, wk, wv = a.in_proj_weight.chunk(3, dim=0)
    else:
        wq, wk, wv = a.q_proj_weight, a.k_proj_weight, a.v_proj_weight
    q = F.linear(probes, wq, a.in_proj_bias[:e])
    k = F.linear(xk, wk, a.in_proj_bias[e:2 * e])
    vv = F.linear(xk, wv, a.in_proj_bias[2 * e:])
    o = attend(q, k, vv, a.num_heads)

    def tail(o: Tensor) -> Tensor:
        return v.ln_post(a.out_proj(o))[:, 0] @ v.proj

    n, length = x.shape[:2]
    queries = F.one_hot(torch.zeros(n, dtype=torch.long), q.shape[1]).bool()
    patches = (torch.arange(length) >= 1)[None].expand(n, -1)
    expected = image_reference(scorer, images, 2, q, k, vv, o, tail, queries, patches, 1, (4, 8))
    torch.testing.assert_close(GradECLIP(scorer).attribute(images, target=2), expected, rtol=1e-4, atol=1e-6)


def test_reference_resnet_attnpool() -> None:
    model = zoo("RN50")
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    images = images_for(model)
    v = model.visual
    feats = {}
    handle = v.layer4.register_forward_hook(lambda m, a, out: feats.setdefault("x", out))
    with torch.no_grad():
        scorer(images)
    handle.remove()
    p = v.attnpool
    x = feats["x"].flatten(2).transpose(1, 2)
    t = torch.cat([x.mean(1, keepdim=True), x], dim=1) + p.positional_embedding[None]
    q, k, vv = p.q_proj(t[:, :1]), p.k_proj(t), p.v_proj(t)
    o = attend(q, k, vv, p.num_heads)
    n, length = t.shape[:2]
    queries = torch.ones(n, 1, dtype=torch.bool)
    spatial = (torch.arange(length) >= 1)[None].expand(n, -1)
    expected = image_reference(scorer, images, 0, q, k, vv, o, lambda o: p.c_proj(o)[:, 0], queries, spatial, 1,
                               (2, 2))
    torch.testing.assert_close(GradECLIP(scorer).attribute(images, target=0), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "PE-Core-T-16-384"])
def test_reference_timm_map_head(name: str) -> None:
    model = zoo(name)
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    images = images_for(model, wide=True)
    trunk = model.visual.trunk
    pool = trunk.attn_pool
    (x,), _ = capture(pool, lambda: scorer(images))
    n, length = x.shape[:2]
    q = pool.q(pool.latent.expand(n, -1, -1))
    k, vv = pool.kv(x).chunk(2, dim=-1)
    o = attend(q, k, vv, pool.num_heads)

    def tail(o: Tensor) -> Tensor:
        y = pool.proj(o)
        y = y + pool.mlp(pool.norm(y))
        return model.visual.head(trunk.head(trunk.fc_norm(y[:, 0])))

    prefix = trunk.num_prefix_tokens  # Eva (PE) pools the class token too; SigLIP has none
    assert length == prefix + 4 * 8
    queries = torch.ones(n, 1, dtype=torch.bool)
    keys = (torch.arange(length) >= prefix)[None].expand(n, -1)
    expected = image_reference(scorer, images, 1, q, k, vv, o, tail, queries, keys, prefix, (4, 8))
    torch.testing.assert_close(GradECLIP(scorer).attribute(images, target=1), expected, rtol=1e-4, atol=1e-6)


def _rotate(x: Tensor, rope: Tensor, prefix: int) -> Tensor:
    """Interleaved rotary embedding of the tokens after the prefix (sin and cos concatenated in ``rope``)."""
    sin, cos = rope.chunk(2, dim=-1)
    head, rest = x[..., :prefix, :], x[..., prefix:, :]
    pairs = torch.stack([-rest[..., 1::2], rest[..., ::2]], dim=-1).reshape(rest.shape)
    return torch.cat([head, rest * cos + pairs * sin], dim=-2)


@pytest.mark.parametrize("name,wide", [("EVA02-B-16", True), ("EVA01-g-14", True), ("EVA02-E-14", False),
                                       ("vit_medium_patch16_gap_256", True), ("MobileCLIP2-L-14", False)])
def test_reference_timm_block(name: str, wide: bool) -> None:
    model = zoo(name)
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    images = images_for(model, wide=wide)
    trunk = model.visual.trunk
    blk = trunk.blocks[-1]
    a = blk.attn
    (x_in,), kwargs = capture(blk, lambda: scorer(images))
    post_norm = type(blk).__name__ == "EvaBlockPostNorm"
    h = x_in if post_norm else blk.norm1(x_in)
    if a.qkv is not None:
        bias = a.qkv.bias if getattr(a, "q_bias", None) is None else torch.cat([a.q_bias, a.k_bias, a.v_bias])
        q, k, vv = F.linear(h, a.qkv.weight, bias).chunk(3, dim=-1)
    else:
        q, k, vv = a.q_proj(h), a.k_proj(h), a.v_proj(h)
    heads = a.num_heads
    q, k = merge_heads(a.q_norm(split_heads(q, heads))), merge_heads(a.k_norm(split_heads(k, heads)))
    rope = kwargs.get("rope")
    if rope is not None:
        q = merge_heads(_rotate(split_heads(q, heads), rope, a.num_prefix_tokens))
        k = merge_heads(_rotate(split_heads(k, heads), rope, a.num_prefix_tokens))
    o = attend(q, k, vv, heads)

    def tail(o: Tensor) -> Tensor:
        y = a.proj(a.norm(o)) if hasattr(a, "norm") else a.proj(o)
        if type(blk).__name__.startswith("Eva"):
            if post_norm:
                x = x_in + blk.norm1(y)
                x = x + blk.norm2(blk.mlp(x))
            else:
                x = x_in + (blk.gamma_1 * y if blk.gamma_1 is not None else y)
                m = blk.mlp(blk.norm2(x))
                x = x + (blk.gamma_2 * m if blk.gamma_2 is not None else m)
        else:
            x = x_in + blk.ls1(y)
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        return model.visual.head(trunk.forward_head(trunk.norm(x)))

    n, length = x_in.shape[:2]
    prefix = trunk.num_prefix_tokens
    patches = (torch.arange(length) >= prefix)[None].expand(n, -1)
    if trunk.global_pool == "avg":
        queries = patches
    else:
        queries = F.one_hot(torch.zeros(n, dtype=torch.long), length).bool()
    grid = scorer.tower.layout(images).grid
    expected = image_reference(scorer, images, 0, q, k, vv, o, tail, queries, patches, prefix, grid)
    torch.testing.assert_close(GradECLIP(scorer).attribute(images, target=0), expected, rtol=1e-4, atol=1e-6)


def test_rope_is_the_one_the_model_uses() -> None:
    """At the native size the rotary embedding reaching the attention is the model's own cached one."""
    model = zoo("EVA02-B-16")
    trunk = model.visual.trunk
    _, kwargs = capture(trunk.blocks[-1], lambda: ImageTextSimilarity(model, torch.randn(1, EMBED))(
        images_for(model, n=1)))
    torch.testing.assert_close(kwargs["rope"], trunk.rope.get_embed())


def _text_reference(model: nn.Module, tokens: Tensor, target: int) -> Tuple[Tensor, Tensor]:
    """Text towers built from open_clip transformer blocks: last block only."""
    scorer = TextImageSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    tower = scorer.tower
    text = getattr(model, "text", model)
    blk = (text.transformer if hasattr(text, "transformer") else model.transformer).resblocks[-1]
    (x_in,), kwargs = capture(blk, lambda: scorer(tokens))
    mask = kwargs.get("attn_mask")
    a = blk.attn
    n, length = x_in.shape[:2]
    heads = a.num_heads
    hm = None
    if mask is not None:
        hm = mask.reshape(-1, heads, mask.shape[-2], mask.shape[-1]) if mask.dim() == 3 else mask[None, None]
    q, k, vv = F.linear(blk.ln_1(x_in), a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    o = attend(q, k, vv, heads, bias=hm)
    cls = getattr(text, "cls_emb", None) is not None
    pool = getattr(text, "pool_type", getattr(model, "text_pool_type", "argmax"))

    def tail(o: Tensor) -> Tensor:
        x = x_in + blk.ls_1(F.linear(o, a.out_proj.weight, a.out_proj.bias))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        if cls:
            pooled = text.ln_final(x[:, -1])
        else:
            x = text.ln_final(x)
            idx = {"argmax": tokens.argmax(-1), "last": torch.full((n,), length - 1),
                   "first": torch.zeros(n, dtype=torch.long),
                   "eos": (tokens == getattr(tower, "eos_id", None)).int().argmax(-1)}[pool]
            pooled = x[torch.arange(n), idx]
        proj = text.text_projection
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    s, g = grad_at(o, tail, scorer.fixed_features, target)
    torch.testing.assert_close(s, scorer(tokens)[:, target], rtol=1e-4, atol=1e-5)
    query = torch.full((n,), length - 1) if cls or pool == "last" else \
        tokens.argmax(-1) if pool == "argmax" else torch.zeros(n, dtype=torch.long) if pool == "first" else \
        (tokens == tower.eos_id).int().argmax(-1)
    queries = F.one_hot(query, length).bool()
    if hm is None:
        seen = torch.ones(n, length, dtype=torch.bool)
    else:
        seen = torch.isfinite(hm[:, 0].expand(n, -1, -1)[torch.arange(n), query])
    m = F.relu(reference_map(q, k, vv, g, queries, seen))[:, :tokens.shape[1]]
    expected = m * _expected_words(model, tokens)
    got = GradECLIP(scorer, blk).attribute(tokens, target=target)
    return got, expected


@pytest.mark.parametrize("case", ["clip-causal-argmax", "clipa-last", "coca-cls-legacy-mask", "pad-mask-first",
                                  "worldwide-eos"])
def test_reference_text(case: str) -> None:
    if case == "clip-causal-argmax":
        model, tokens = zoo("ViT-B-32"), text_tokens(zoo("ViT-B-32"))
    elif case == "clipa-last":
        model = zoo("ViT-L-14-CLIPA")
        tokens = text_tokens(model)
    elif case == "coca-cls-legacy-mask":
        model = zoo("coca_ViT-B-32")
        tokens = text_tokens(model)
    elif case == "pad-mask-first":
        model, tokens = pad_mask_model("first"), clip_tokens()
    else:
        model = zoo("ViT-L-14-worldwide")
        tokens = text_tokens(model)
    got, expected = _text_reference(model, tokens, target=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["roberta-ViT-B-32", "nllb-clip-base"])
def test_reference_hf_text_encoder(name: str) -> None:
    model = zoo(name)
    scorer = TextImageSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(3)))
    tower = scorer.tower
    tokens = text_tokens(model)
    layer = tower.blocks()[-1]
    attn = tower.attention_of(layer)
    holder: Dict[str, Tensor] = {}
    handle = model.text.transformer.register_forward_hook(lambda m, a, out: holder.setdefault("out", out))
    args, kwargs = capture(attn, lambda: scorer(tokens))
    handle.remove()
    x_in = args[0] if args else kwargs["hidden_states"]
    n, length = tokens.shape
    valid = tokens != model.text.config.pad_token_id
    additive = torch.zeros(n, 1, 1, length).masked_fill(~valid[:, None, None, :], float("-inf"))
    bert = hasattr(attn, "self")
    if bert:
        sa = attn.self
        q, k, vv = sa.query(x_in), sa.key(x_in), sa.value(x_in)
        heads = sa.num_attention_heads
    else:
        q, k, vv = attn.q_proj(x_in), attn.k_proj(x_in), attn.v_proj(x_in)
        heads = attn.num_heads
    o = attend(q, k, vv, heads, bias=additive)

    def tail(o: Tensor) -> Tensor:
        if bert:
            a_out = attn.output.LayerNorm(attn.output.dense(o) + x_in)
            hidden = layer.output(layer.intermediate(a_out), a_out)
        else:  # M2M100 encoder layer (pre-norm), then the encoder's final norm
            residual = layer_in
            hs = residual + attn.out_proj(o)
            hs = hs + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hs))))
            hidden = model.text.transformer.layer_norm(hs)
        if tower.mean:
            pooled = (hidden * valid[..., None]).sum(1) / valid.sum(-1, keepdim=True)
        else:
            pooled = hidden[:, 0]
        return model.text.proj(pooled)

    if not bert:
        largs, lkwargs = capture(layer, lambda: scorer(tokens))
        layer_in = largs[0] if largs else lkwargs["hidden_states"]
    s, g = grad_at(o, tail, scorer.fixed_features, 0)
    torch.testing.assert_close(s, scorer(tokens)[:, 0], rtol=1e-4, atol=1e-5)
    queries = valid if tower.mean else F.one_hot(torch.zeros(n, dtype=torch.long), length).bool()
    expected = F.relu(reference_map(q, k, vv, g, queries, valid)) * _expected_words(model, tokens)
    got = GradECLIP(scorer, layer).attribute(tokens, target=0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# =============================================================================================================
# 3. every open_clip config (slow)
# =============================================================================================================
def _all_models() -> List[str]:
    return open_clip.list_models()


@pytest.mark.slow
@pytest.mark.parametrize("name", _all_models())
def test_every_open_clip_config(name: str) -> None:
    """Both sides of every config are explained, each scorer's fixed side encoded by the model itself."""
    model = build(name)
    images = images_for(model)
    tokens = text_tokens(model)
    scorer = ImageTextSimilarity(model, tokens)
    maps = GradECLIP(scorer).attribute(images, target=1)
    check_image_maps(maps, 2, scorer.tower.layout(images).grid)
    wide = images_for(model, n=1, wide=True)
    try:
        scorer.tower.validate(wide)
    except ValueError as err:
        assert "accepts only its own image size" in str(err)
    else:
        maps = GradECLIP(scorer).attribute(wide, target=0)
        check_image_maps(maps, 1, scorer.tower.layout(wide).grid)
    tscorer = TextImageSimilarity(model, images)
    with torch.no_grad():
        torch.testing.assert_close(scorer(images), tscorer(tokens).t(), rtol=1e-4, atol=1e-5)
    maps = GradECLIP(tscorer).attribute(tokens, target=0)
    check_text_maps(maps, tokens, _expected_words(model, tokens))


def test_single_head_on_a_one_head_map_head_equals_default() -> None:
    """A MAP head turned into ONE head: re-running it as one head changes nothing. Its output is read at a
    submodule (the output projection), so this checks that single_head takes q, k, v from the head's inputs."""
    model = zoo("ViT-B-16-SigLIP")
    pool = model.visual.trunk.attn_pool
    if not isinstance(getattr(pool.q_norm, "weight", None), type(None)) or not isinstance(pool.q_norm, nn.Identity):
        pytest.skip("this timm MAP head normalises q per head")
    dim = pool.q.out_features
    pool.num_heads, pool.head_dim, pool.scale = 1, dim, dim ** -0.5  # our own test model: now one head
    images = torch.randn(2, 3, *native_image_size(model))
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED))
    a = GradECLIP(scorer).attribute_all(images)
    b = GradECLIP(scorer, single_head=True).attribute_all(images)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert a.abs().sum() > 0
