"""Coverage of the HuggingFace families: one tiny random model per family, image and text maps, eager == sdpa,
and per-family maps against an independent, straightforward computation written here from the weights."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
T = transformers

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, UnsupportedModelError  # noqa: E402
from captum_gradeclip.adapters import SUPPORTED_MODELS, image_tower, text_tower  # noqa: E402
from captum_gradeclip.adapters.hf_siglip import patchify  # noqa: E402
from hf_families import FAMILIES, IMAGE, PATCH, SDPA, TEXT, VISION, build, images, text_inputs, texts  # noqa: E402
from reference import attend, block_input, grad_eclip_map  # noqa: E402

torch.set_num_threads(1)


def text_maps(model, family, imgs, layer=None, target=0):
    ids, mask, _ = texts(family)
    scorer = TextImageSimilarity(model, imgs)
    ge = GradECLIP(scorer, layer)
    return ge.attribute(ids, target=target, additional_forward_args=None if mask is None else (mask,))


# -- every family: image and text maps ----------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [(IMAGE, IMAGE), (IMAGE, 80)])
def test_image_maps(family, size):
    model = build(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = ImageTextSimilarity(model, text_inputs(family))
    maps = GradECLIP(scorer).attribute(images(*size), target=[0, 1])
    grid = (size[0] // PATCH, size[1] // PATCH)
    assert maps.shape == (2, 1) + grid
    assert torch.isfinite(maps).all() and (maps >= 0).all() and (maps > 0).any()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_maps(family):
    model = build(family)
    _, _, words = texts(family)
    ids, mask, _ = texts(family)
    ge = GradECLIP(TextImageSimilarity(model, images(IMAGE, 80, n=3)))
    maps = ge.attribute_all(ids, additional_forward_args=None if mask is None else (mask,))  # (N, 3, L)
    assert maps.shape == (words.shape[0], 3, words.shape[1])
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.permute(0, 2, 1)[~words] == 0).all(), "special tokens and padding must be zero"
    assert (maps.permute(0, 2, 1)[words] > 0).any()
    torch.testing.assert_close(maps[:, 1], text_maps(model, family, images(IMAGE, 80, n=3), target=1))


@pytest.mark.parametrize("family", SDPA)
def test_eager_equals_sdpa(family):
    try:
        eager, sdpa = build(family, "eager"), build(family, "sdpa")
    except ValueError as err:  # older transformers: no SDPA for this architecture
        if "does not support an attention implementation" in str(err):
            pytest.skip(str(err).split(".")[0])
        raise
    assert sdpa.config._attn_implementation == "sdpa"
    imgs = images(IMAGE, 80)
    maps = [GradECLIP(ImageTextSimilarity(m, text_inputs(family))).attribute(imgs, target=1) for m in (eager, sdpa)]
    torch.testing.assert_close(maps[0], maps[1], atol=1e-5, rtol=1e-4)
    tmaps = [text_maps(m, family, imgs, target=1) for m in (eager, sdpa)]
    torch.testing.assert_close(tmaps[0], tmaps[1], atol=1e-5, rtol=1e-4)


def test_default_layers():
    for family in FAMILIES:
        model = build(family)
        it, tt = image_tower(model), text_tower(model)
        assert len(tt.default_layers()) == 2  # min(8, depth)
        (layer,) = it.default_layers()
        if family.startswith("siglip"):
            assert layer is model.vision_model.head
        else:
            assert layer is it.blocks()[-1]


# -- single-tower classes --------------------------------------------------------------------------------------
def test_clip_single_towers_with_precomputed_embeddings():
    full = build("clip")
    vis = T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**VISION, projection_dim=16)).eval()
    txt = T.CLIPTextModelWithProjection(T.CLIPTextConfig(**TEXT, eos_token_id=3, bos_token_id=4, pad_token_id=0,
                                                         projection_dim=16)).eval()
    vis.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("vision_model.", "visual_proj"))})
    txt.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("text_model.", "text_proj"))})
    ids, mask, _ = texts("clip")
    imgs = images(IMAGE, 80)
    with torch.no_grad():
        temb = txt(input_ids=ids, attention_mask=mask).text_embeds
        iemb = vis(pixel_values=imgs, interpolate_pos_encoding=True).image_embeds
    ref = GradECLIP(ImageTextSimilarity(full, text_inputs("clip"))).attribute(imgs, target=1)
    got = GradECLIP(ImageTextSimilarity(vis, temb)).attribute(imgs, target=1)
    torch.testing.assert_close(got, ref)
    tref = text_maps(full, "clip", imgs, target=1)
    tgot = GradECLIP(TextImageSimilarity(txt, iemb)).attribute(ids, target=1, additional_forward_args=(mask,))
    torch.testing.assert_close(tgot, tref)
    with pytest.raises(UnsupportedModelError, match="precomputed text embeddings"):
        ImageTextSimilarity(vis, text_inputs("clip"))
    with pytest.raises(UnsupportedModelError, match="precomputed image embeddings"):
        TextImageSimilarity(txt, imgs)


# -- SigLIP 2 accepts ordinary images and the processor's patches ---------------------------------------------
def test_siglip2_patches_equal_images():
    if "siglip2" not in FAMILIES:
        pytest.skip("this transformers version has no Siglip2Model")
    model = build("siglip2")
    imgs = images(IMAGE, 80)
    scorer = ImageTextSimilarity(model, text_inputs("siglip2"))
    ref = GradECLIP(scorer).attribute(imgs, target=0)
    h, w = IMAGE // PATCH, 80 // PATCH
    pv = torch.cat([patchify(imgs, (PATCH, PATCH)), torch.zeros(2, 4, 3 * PATCH * PATCH)], dim=1)  # padded to 19
    mask = torch.zeros(2, h * w + 4, dtype=torch.long)
    mask[:, :h * w] = 1
    shapes = torch.tensor([[h, w], [h, w]])
    got = GradECLIP(scorer).attribute(pv, target=0, additional_forward_args=(mask, shapes))
    assert got.shape == (2, 1, h, w)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the scorer's patchify is the processor's layout: same embedding as the model's own call
        direct = model.get_image_features(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=shapes)
        direct = getattr(direct, "pooler_output", direct)
        torch.testing.assert_close(scorer.embed(imgs), direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="spatial_shapes"):
        GradECLIP(scorer).attribute(pv, target=0)
    # fixed side given as the processor's dict
    fixed = TextImageSimilarity(model, {"pixel_values": pv, "pixel_attention_mask": mask, "spatial_shapes": shapes})
    torch.testing.assert_close(fixed.fixed_features, TextImageSimilarity(model, imgs).fixed_features,
                               atol=1e-5, rtol=1e-4)


# -- what raises ---------------------------------------------------------------------------------------------
def test_unsupported_models():
    with pytest.raises(UnsupportedModelError, match="CLIPVisionModelWithProjection"):
        image_tower(T.CLIPVisionModel(T.CLIPVisionConfig(**VISION)))
    blip_model = T.BlipModel(FAMILIES["blip"][0]())
    with pytest.raises(UnsupportedModelError, match="BlipModel.*supported models.*SiglipModel"):
        image_tower(blip_model)
    cfg = FAMILIES["siglip"][0]()
    cfg.vision_config.vision_use_head = False
    with pytest.raises(UnsupportedModelError, match="attention-pooling head"):
        image_tower(T.SiglipModel(cfg))
    assert any("Siglip2Model" in s for s in SUPPORTED_MODELS)


def test_siglip_encoder_blocks_raise():
    model = build("siglip")
    scorer = ImageTextSimilarity(model, text_inputs("siglip"))
    with pytest.raises(UnsupportedModelError, match="no class token"):
        GradECLIP(scorer, model.vision_model.encoder.layers[-1])


def test_siglip_map_head_matches_independent_computation():
    model = build("siglip")
    imgs, t = images(IMAGE, 80), 1
    head, mha = model.vision_model.head, model.vision_model.head.attention
    ids, _, _ = texts("siglip")
    with torch.no_grad():
        text_emb = model.text_model(input_ids=ids).pooler_output
        x = model.vision_model(pixel_values=imgs, interpolate_pos_encoding=True).last_hidden_state  # (N, P, D)
    n, d = x.shape[0], x.shape[-1]
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    probe = head.probe.detach().expand(n, 1, d)
    q = probe @ w[:d].T + b[:d]
    k = x @ w[d:2 * d].T + b[d:2 * d]
    v = x @ w[2 * d:].T + b[2 * d:]

    def score(o):
        y = o @ mha.out_proj.weight.T + mha.out_proj.bias
        emb = (y + head.mlp(head.layernorm(y)))[:, 0]
        return F.cosine_similarity(emb, text_emb[t][None], dim=-1)

    m = grad_eclip_map(lambda: attend(q, k, v, mha.num_heads), q[:, 0], k, v,
                        torch.ones(k.shape[:2], dtype=torch.bool), score)
    ref = F.relu(m).reshape(n, 1, IMAGE // PATCH, 80 // PATCH)
    got = GradECLIP(ImageTextSimilarity(model, text_inputs("siglip"))).attribute(imgs, target=t)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    assert (ref > 0).any()


def _bert_cls_reference(layer, x, mask, pooled_to_embedding, other_emb):
    """Post-LN BERT layer by hand from its weights; query = position 0; returns the ReLU'd map (N, L)."""
    sa, so = layer.attention.self, layer.attention.output
    heads = sa.num_attention_heads
    q, k, v = (F.linear(x, lin.weight, lin.bias) for lin in (sa.query, sa.key, sa.value))
    valid = mask.bool()

    def score(o):
        a = F.layer_norm(F.linear(o, so.dense.weight, so.dense.bias) + x, (x.shape[-1],), so.LayerNorm.weight,
                         so.LayerNorm.bias, so.LayerNorm.eps)
        inter = layer.intermediate.intermediate_act_fn(F.linear(a, layer.intermediate.dense.weight,
                                                                layer.intermediate.dense.bias))
        out = layer.output
        h = F.layer_norm(F.linear(inter, out.dense.weight, out.dense.bias) + a, (x.shape[-1],), out.LayerNorm.weight,
                         out.LayerNorm.bias, out.LayerNorm.eps)
        return F.cosine_similarity(pooled_to_embedding(h[:, 0]), other_emb[None], dim=-1)

    m = grad_eclip_map(lambda: attend(q, k, v, heads, mask=valid[:, None]), q[:, 0], k, v, valid, score)
    return F.relu(m)


@pytest.mark.parametrize("family", ["chinese_clip", "blip"])
def test_bert_cls_text_matches_independent_computation(family):
    model = build(family)
    imgs, t = images(IMAGE, 80, n=3), 2
    ids, mask, words = texts(family)
    scorer = TextImageSimilarity(model, imgs)
    if family == "blip":
        encoder, layers = model.text_encoder, model.text_encoder.encoder.layer
        proj = model.text_proj
        call = lambda: encoder(input_ids=ids, attention_mask=mask)  # noqa: E731
    else:
        encoder, layers = model.text_model, model.text_model.encoder.layer
        proj = model.text_projection
        call = lambda: model.get_text_features(input_ids=ids, attention_mask=mask)  # noqa: E731
    x = block_input(call, layers[-1])
    ref = _bert_cls_reference(layers[-1], x, mask, proj, scorer.fixed_features[t]) * words
    got = GradECLIP(scorer, layers[-1]).attribute(ids, target=t, additional_forward_args=(mask,))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    assert (ref > 0).any()


def test_blip_image_matches_independent_computation():
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the test's block-input hook follows the transformers 5 BLIP call signature")
    model = build("blip")
    imgs, t = images(IMAGE, 80), 0
    vm = model.vision_model
    last = vm.encoder.layers[-1]
    attn = last.self_attn
    scorer = ImageTextSimilarity(model, text_inputs("blip"))
    x = block_input(lambda: vm(pixel_values=imgs, interpolate_pos_encoding=True), last)
    h1 = last.layer_norm1(x).detach()
    q, k, v = F.linear(h1, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)

    def score(o):
        h = x + F.linear(o, attn.projection.weight, attn.projection.bias)
        h = h + last.mlp(last.layer_norm2(h))
        emb = model.vision_proj(vm.post_layernorm(h)[:, 0])
        return F.cosine_similarity(emb, scorer.fixed_features[t][None], dim=-1)

    patches = torch.ones(k.shape[:2], dtype=torch.bool)
    patches[:, 0] = False
    m = grad_eclip_map(lambda: attend(q, k, v, attn.num_heads), q[:, 0], k, v, patches, score)
    ref = F.relu(m)[:, 1:].reshape(2, 1, IMAGE // PATCH, 80 // PATCH)
    for layer in (None, attn):  # default (fast path) and the attention module itself
        got = GradECLIP(scorer, layer).attribute(imgs, target=t)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    assert (ref > 0).any()


# -- smaller checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_single_head_runs(family):
    model = build(family)
    imgs = images(IMAGE, 80)
    heat = GradECLIP(ImageTextSimilarity(model, text_inputs(family)), single_head=True).attribute(imgs, target=0)
    assert heat.shape == (2, 1, 3, 5) and torch.isfinite(heat).all() and (heat >= 0).all()
    ids, mask, words = texts(family)
    ge = GradECLIP(TextImageSimilarity(model, imgs), single_head=True)
    tmap = ge.attribute(ids, target=0, additional_forward_args=None if mask is None else (mask,))
    assert torch.isfinite(tmap).all() and (tmap[~words] == 0).all()


def test_clip_legacy_eos_is_argmax():
    model = T.CLIPModel(T.CLIPConfig(text_config=dict(TEXT, eos_token_id=2), vision_config=VISION, projection_dim=16))
    ids = torch.tensor([[4, 50, 99, 51, 0], [4, 60, 61, 98, 0]])
    torch.testing.assert_close(text_tower(model).layout(ids).query, torch.tensor([2, 3]))
    ids, _, _ = texts("clip")
    torch.testing.assert_close(text_tower(build("clip")).layout(ids).query, torch.tensor([4, 3]))


def test_bert_text_without_attention_mask():
    # no mask: the CLS query attends to the padding too (lam over every position), but padding and the
    # closing token are never reported
    model = build("altclip")
    ids, _, words = texts("altclip")
    maps = GradECLIP(TextImageSimilarity(model, images())).attribute_all(ids)
    assert (maps.permute(0, 2, 1)[~words] == 0).all() and (maps.permute(0, 2, 1)[words] > 0).any()


@pytest.mark.parametrize("family", ["clip", "siglip", "blip"])
def test_no_interpolation_available_raises_clearly(family):
    tower = image_tower(build(family))
    tower.interpolates = False  # as with a transformers version whose tower lacks interpolate_pos_encoding
    tower.validate(images())  # the model's own size still works
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        tower.validate(images(IMAGE, 80))
