"""Baselines against independent computations (reference.py), invariants, hooks and bad input."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, IntegratedGradients, Saliency
from fixtures import CONTEXT, make_hf_clip, make_open_clip, pooled

import reference as ref
from captum_gradeclip import ImageTextSimilarity, LayerNotExecutedError, TextImageSimilarity
from captum_gradeclip.baselines import (AttentionRollout, GradientWeightedAttention, MaskCLIPSimilarity,
                                        RawAttention, TokenGradCAM, patch_feature_mask, pool_to_grid)

ATOL, RTOL = 1e-5, 1e-4
CASES = [("open_clip", "image"), ("open_clip", "text"), ("hf", "image"), ("hf", "text")]
TOKEN_METHODS = [RawAttention, AttentionRollout, GradientWeightedAttention, TokenGradCAM]


def _hf_mask(tokens):
    return (torch.arange(CONTEXT)[None] <= tokens.argmax(-1)[:, None]).long()


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_intra_op_thread):
    """Tiny models: one intra-op thread (conftest.one_intra_op_thread) for every test of this module."""


class Case:
    """A scorer, its inputs, the hand-written forward of its tower and the fixed side's features."""

    def __init__(self, family, side, model, images, tokens):
        self.family, self.side, self.model = family, side, model
        mask = _hf_mask(tokens)
        with torch.no_grad():
            if family == "open_clip":
                tf, imf = model.encode_text(tokens), model.encode_image(images)
            else:
                tf = pooled(model.get_text_features(input_ids=tokens, attention_mask=mask))
                imf = pooled(model.get_image_features(pixel_values=images))
        if side == "image":
            texts = tokens if family == "open_clip" else {"input_ids": tokens, "attention_mask": mask}
            self.scorer, self.x, self.extra = ImageTextSimilarity(model, texts), images, None
            self.fixed = F.normalize(tf, dim=-1)
            self.hand = (lambda x: ref.records_open_clip_image(model, x)) if family == "open_clip" else \
                (lambda x: ref.records_hf_image(model, x))
            self.explained = torch.zeros(images.shape[0], 17, dtype=torch.bool)
            self.explained[:, 1:] = True
        else:
            self.scorer, self.x = TextImageSimilarity(model, images), tokens
            self.extra = None if family == "open_clip" else mask
            self.fixed = F.normalize(imf, dim=-1)
            self.hand = (lambda x: ref.records_open_clip_text(model, x)) if family == "open_clip" else \
                (lambda x: ref.records_hf_text(model, x, mask))
            pos = torch.arange(CONTEXT)[None]
            self.explained = (pos >= 1) & (pos < tokens.argmax(-1)[:, None])
        self.n_targets = self.fixed.shape[0]

    def blocks(self):
        m = self.model
        if self.family == "open_clip":
            return list(m.visual.transformer.resblocks if self.side == "image" else m.transformer.resblocks)
        return list((m.vision_model if self.side == "image" else m.text_model).encoder.layers)

    def flat(self, out):
        """Our output as (N, L) over token positions (the class token's column is zero)."""
        if self.side == "text":
            return out
        flat = torch.zeros(out.shape[0], 17)
        flat[:, 1:] = out.reshape(out.shape[0], -1)
        return flat

    def attribute(self, method, **kw):
        return method.attribute(self.x, additional_forward_args=self.extra, **kw)


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request, oc_model, hf_model, images, tokens):
    family, side = request.param
    return Case(family, side, oc_model if family == "open_clip" else hf_model, images, tokens)


def _close(ours, expected, explained):
    torch.testing.assert_close(ours, expected * explained, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------- against the hand-written forward
def test_raw_attention_matches_reference(case):
    emb, recs, query = case.hand(case.x)
    for layer in (-1, 0):
        ours = case.attribute(RawAttention(case.scorer, case.blocks()[layer]))
        _close(case.flat(ours), ref.raw_attention(recs, query, layer), case.explained)
    default = case.attribute(RawAttention(case.scorer))
    _close(case.flat(default), ref.raw_attention(recs, query), case.explained)
    assert default.sum() > 0


def test_rollout_matches_reference(case):
    emb, recs, query = case.hand(case.x)
    _close(case.flat(case.attribute(AttentionRollout(case.scorer))), ref.rollout(recs, query), case.explained)
    blocks = case.blocks()
    # layers given out of order are applied in execution order
    ours = case.attribute(AttentionRollout(case.scorer, [blocks[-1], blocks[0]]))
    _close(case.flat(ours), ref.rollout(recs, query, [0, len(blocks) - 1]), case.explained)


def test_rollout_of_one_layer_is_half_attention_plus_identity(case):
    emb, recs, query = case.hand(case.x)
    last = case.blocks()[-1]
    ours = case.flat(case.attribute(AttentionRollout(case.scorer, last)))
    n = query.shape[0]
    a = recs[-1]["probs"].mean(1)
    half = 0.5 * (a + torch.eye(a.shape[-1]))[torch.arange(n), query].detach()
    _close(ours, half, case.explained)
    # the identity only adds to the query itself, which is not reported: exactly half the raw attention
    torch.testing.assert_close(ours, 0.5 * case.flat(case.attribute(RawAttention(case.scorer, last))))


def test_game_matches_reference(case):
    emb, recs, query = case.hand(case.x)
    blocks = case.blocks()
    for target in range(case.n_targets):
        score = ref.similarity(emb, case.fixed, target)
        ours = case.attribute(GradientWeightedAttention(case.scorer), target=target)
        expected = ref.game(recs, query, score)
        _close(case.flat(ours), expected, case.explained)
        assert (expected * case.explained).sum() > 0
    score = ref.similarity(emb, case.fixed, 1)
    last = case.attribute(GradientWeightedAttention(case.scorer, blocks[-1]), target=1)
    _close(case.flat(last), ref.game(recs, query, score, [len(blocks) - 1]), case.explained)


def test_token_gradcam_matches_reference(case):
    emb, recs, query = case.hand(case.x)
    blocks = case.blocks()
    for target in range(case.n_targets):
        score = ref.similarity(emb, case.fixed, target)
        ours = case.attribute(TokenGradCAM(case.scorer), target=target)
        _close(case.flat(ours), ref.gradcam(recs, score, case.explained) * case.explained, case.explained)
    # the output of the first block is the input of the second
    score = ref.similarity(emb, case.fixed, 0)
    out0 = case.attribute(TokenGradCAM(case.scorer, blocks[0]), target=0)
    _close(case.flat(out0), ref.gradcam(recs, score, case.explained, layer=1), case.explained)
    in1 = case.attribute(TokenGradCAM(case.scorer, blocks[1], attribute_to_layer_input=True), target=0)
    torch.testing.assert_close(in1, out0)
    # an attention module: its output y = W_O o + b_O
    attn = case.scorer.tower.attention_of(blocks[0])
    ours = case.attribute(TokenGradCAM(case.scorer, attn), target=0)
    _close(case.flat(ours), ref.gradcam(recs, score, case.explained, layer=0, key="y"), case.explained)


def test_maskclip_matches_reference(case):
    if case.side == "text":
        with pytest.raises(ValueError, match="images only"):
            MaskCLIPSimilarity(case.scorer)
        return
    emb, recs, query = case.hand(case.x)
    fn = ref.maskclip_open_clip if case.family == "open_clip" else ref.maskclip_hf
    for target in range(case.n_targets):
        ours = case.attribute(MaskCLIPSimilarity(case.scorer), target=target)
        _close(case.flat(ours), fn(case.model, recs, case.fixed, target), case.explained)
        ours = case.attribute(MaskCLIPSimilarity(case.scorer, key_similarity=True), target=target)
        _close(case.flat(ours), fn(case.model, recs, case.fixed, target, key_similarity=True), case.explained)


# ------------------------------------------------------------------------------------------------- invariants
def test_game_replacement_leaves_the_scorer_output_unchanged(case):
    method = GradientWeightedAttention(case.scorer)
    extra = () if case.extra is None else (case.extra,)
    layout = case.scorer.tower.layout(case.x, *extra)
    scores, records = method._forward(case.x, extra, layout)
    with torch.no_grad():
        plain = case.scorer(case.x, *extra)
    torch.testing.assert_close(scores, plain, atol=1e-6, rtol=1e-6)
    assert scores.requires_grad and all(r.extra["probe"][0].requires_grad for r in records)
    assert _hook_count(case.model) == 0


@pytest.mark.parametrize("method_cls", TOKEN_METHODS + [MaskCLIPSimilarity])
def test_non_negative_batch_equals_one_at_a_time(case, method_cls):
    if method_cls is MaskCLIPSimilarity and case.side == "text":
        pytest.skip("image only")
    method = method_cls(case.scorer)
    n = case.x.shape[0]
    targets = [(i + 1) % case.n_targets for i in range(n)]
    batch = case.attribute(method, target=targets)
    assert torch.all(batch >= 0) and not batch.requires_grad
    assert torch.all(case.flat(batch)[~case.explained] == 0)
    singles = []
    for i, t in enumerate(targets):
        extra = None if case.extra is None else case.extra[i:i + 1]
        singles.append(method.attribute(case.x[i:i + 1], target=t, additional_forward_args=extra))
    torch.testing.assert_close(batch, torch.cat(singles), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method_cls", TOKEN_METHODS + [MaskCLIPSimilarity])
def test_tuple_in_tuple_out_and_tensor_targets(oc_model, images, tokens, method_cls):
    method = method_cls(ImageTextSimilarity(oc_model, tokens))
    plain = method.attribute(images, target=[2, 0])
    out = method.attribute((images,), target=torch.tensor([2, 0]))
    assert isinstance(out, tuple) and len(out) == 1 and torch.equal(out[0], plain)


def test_maskclip_checks_the_tower_tail(oc_model, images, tokens):
    method = MaskCLIPSimilarity(ImageTextSimilarity(oc_model, tokens))
    good = method.tail
    method.tail = lambda x, y: good(x, 2 * y)  # a tail that is not the model's
    with pytest.raises(RuntimeError, match="does not reproduce the scorer"):
        method.attribute(images, target=0)
    assert _hook_count(oc_model) == 0


def test_non_square_and_non_native_images(oc_model, hf_model, images, tokens):
    wide = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(7))
    for model, texts in ((oc_model, tokens), (hf_model, {"input_ids": tokens})):
        scorer = ImageTextSimilarity(model, texts)
        for cls in TOKEN_METHODS + [MaskCLIPSimilarity]:
            heat = cls(scorer).attribute(wide, target=1)
            assert heat.shape == (2, 1, 4, 6) and torch.all(heat >= 0) and heat.sum() > 0


def test_class_agnostic_methods_ignore_target(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    for cls in (RawAttention, AttentionRollout):
        method = cls(scorer)
        none = method.attribute(images)
        assert torch.equal(method.attribute(images, target=2), none)
        with pytest.raises(ValueError, match="out of range"):
            method.attribute(images, target=3)


def test_hf_sdpa_equals_eager(images, tokens):
    eager, sdpa = make_hf_clip(attn_implementation="eager"), make_hf_clip(attn_implementation="sdpa")
    mask = _hf_mask(tokens)
    for cls in (GradientWeightedAttention, AttentionRollout, MaskCLIPSimilarity):
        a, b = (cls(ImageTextSimilarity(m, {"input_ids": tokens, "attention_mask": mask})).attribute(images, target=1)
                for m in (eager, sdpa))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    a, b = (GradientWeightedAttention(TextImageSimilarity(m, images)).attribute(tokens, target=0,
                                                                               additional_forward_args=mask)
            for m in (eager, sdpa))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_recomputation_mismatch_is_an_error(images, tokens):
    model = make_hf_clip().train()
    for layer in model.vision_model.encoder.layers:  # attention dropout active in training mode
        layer.self_attn.dropout = 0.5
    scorer = ImageTextSimilarity(model, {"input_ids": tokens})
    for cls in (GradientWeightedAttention, RawAttention):
        with pytest.raises(RuntimeError, match="does not reproduce"):
            cls(scorer).attribute(images, target=0)
    assert _hook_count(model) == 0 and torch.is_grad_enabled()


# --------------------------------------------------------------------------------------- model and hooks untouched
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_untouched_hooks_removed_frozen_and_no_grad(images, tokens):
    model = make_open_clip()
    model.train()  # the user's choice must survive
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scorer, tscorer = ImageTextSimilarity(model, tokens), TextImageSimilarity(model, images)
    image_methods = [cls(scorer) for cls in TOKEN_METHODS + [MaskCLIPSimilarity]]
    text_methods = [cls(tscorer) for cls in TOKEN_METHODS]
    first = [m.attribute(images, target=1) for m in image_methods] + \
        [m.attribute(tokens, target=0) for m in text_methods]
    for p in model.parameters():
        p.requires_grad_(False)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    with torch.no_grad():
        again = [m.attribute(images, target=1) for m in image_methods] + \
            [m.attribute(tokens, target=0) for m in text_methods]
        assert not torch.is_grad_enabled()
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    assert torch.is_grad_enabled()
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert _hook_count(model) == 0


@pytest.mark.parametrize("method_cls", TOKEN_METHODS + [MaskCLIPSimilarity])
def test_hooks_removed_when_forward_raises(oc_model, images, tokens, method_cls):
    method = method_cls(ImageTextSimilarity(oc_model, tokens))

    def boom(module, args):
        raise RuntimeError("boom")

    h = oc_model.visual.ln_post.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            method.attribute(images, target=0)
    finally:
        h.remove()
    assert _hook_count(oc_model) == 0 and torch.is_grad_enabled()
    with pytest.raises(ValueError):
        method.attribute(images, target=7)  # an error after the forward pass
    assert _hook_count(oc_model) == 0 and torch.is_grad_enabled()


# ------------------------------------------------------------------------------------------------------ bad input
def test_bad_arguments(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    blocks = list(oc_model.visual.transformer.resblocks)
    for cls in TOKEN_METHODS:
        with pytest.raises(TypeError, match="scorer"):
            cls(lambda x: x)
    with pytest.raises(TypeError, match="scorer"):
        MaskCLIPSimilarity(lambda x: x)
    with pytest.raises(ValueError, match="one layer"):
        RawAttention(scorer, blocks)
    with pytest.raises(ValueError, match="one layer"):
        TokenGradCAM(scorer, blocks)
    with pytest.raises(ValueError, match="not part of the image tower"):
        AttentionRollout(scorer, oc_model.transformer.resblocks[-1])
    with pytest.raises(ValueError, match="not a block"):
        TokenGradCAM(scorer, oc_model.visual.ln_post)
    for cls in (GradientWeightedAttention, TokenGradCAM, MaskCLIPSimilarity):
        with pytest.raises(ValueError, match="target is required"):
            cls(scorer).attribute(images)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RawAttention(scorer).attribute(images[0])


def test_layer_that_does_not_run(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    method = GradientWeightedAttention(scorer, oc_model.visual.transformer.resblocks[-1])
    scorer.tower.encode = lambda x: oc_model.visual.ln_post(torch.zeros(x.shape[0], 48)) @ oc_model.visual.proj
    try:
        with pytest.raises(LayerNotExecutedError, match="did not run"):
            method.attribute(images, target=0)
    finally:
        del scorer.tower.encode
    assert _hook_count(oc_model) == 0 and torch.is_grad_enabled()


# --------------------------------------------------------------------------------------------- pixel attributions
def test_pool_to_grid_hand_values():
    a = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4) - 40
    pooled = pool_to_grid(a, (2, 2))
    assert pooled.shape == (2, 1, 2, 2)
    expected = a.abs().sum(1)[0, :2, :2].mean()
    assert torch.isclose(pooled[0, 0, 0, 0], expected)
    assert torch.isclose(pool_to_grid((a,), 2, reduce="sum")[1, 0, 1, 1], a.sum(1)[1, 2:, 2:].mean())
    assert torch.isclose(pool_to_grid(a, (1, 2), reduce="mean")[0, 0, 0, 1], a.mean(1)[0, :, 2:].mean())
    assert pool_to_grid(torch.ones(1, 3, 5, 7), (2, 3)).shape == (1, 1, 2, 3)  # adaptive pooling
    with pytest.raises(ValueError, match="reduce"):
        pool_to_grid(a, 2, reduce="max")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pool_to_grid(a[0], 2)


def test_patch_feature_mask_and_captum_pixel_methods(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    mask = patch_feature_mask(images, 8)
    assert mask.shape == (1, 1, 32, 32) and mask[0, 0, 8, 16] == 6 and mask.max() == 15
    assert patch_feature_mask(torch.zeros(1, 3, 20, 17), 8)[0, 0, 19, 16] == 3  # remainder joins the last patch
    ablation = FeatureAblation(scorer).attribute(images, target=1, feature_mask=mask)
    heat = pool_to_grid(ablation, (4, 4), reduce="mean")
    with torch.no_grad():
        base = scorer(images)[:, 1]
        for patch in (0, 6):
            ablated = images.masked_fill(mask == patch, 0.0)
            drop = base - scorer(ablated)[:, 1]
            torch.testing.assert_close(heat[:, 0].reshape(2, 16)[:, patch], drop, atol=1e-6, rtol=1e-5)
    saliency = Saliency(scorer).attribute(images, target=1)
    grid = pool_to_grid(saliency, (4, 4))
    assert grid.shape == (2, 1, 4, 4) and torch.all(grid >= 0)
    torch.testing.assert_close(grid[0, 0, 1, 2], saliency[0, :, 8:16, 16:24].abs().sum(0).mean())
    ig = IntegratedGradients(scorer).attribute(images, target=1, n_steps=4)
    assert pool_to_grid(ig, (4, 4)).shape == (2, 1, 4, 4)


def test_relative_position_bias_enters_the_recomputed_attention():
    """timm RelPosAttention adds a relative position bias to the logits: the attention baselines must recompute
    softmax(q k^T scale + bias). Ground truth: the probabilities timm itself computes on its eager path (read at
    its attention dropout, the identity in eval mode), on a copy of the model."""
    import copy

    from fixtures import EMBED, build, native_image_size
    model = build("vit_relpos_medium_patch16_cls_224")
    eager = copy.deepcopy(model)
    blocks = list(eager.visual.trunk.blocks)
    seen = []
    for b in blocks:
        b.attn.fused_attn = False
    handle = blocks[-1].attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    x = torch.randn(2, 3, *native_image_size(model), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager.encode_image(x)
    handle.remove()
    scorer = ImageTextSimilarity(model, torch.randn(2, EMBED))
    ours = RawAttention(scorer, model.visual.trunk.blocks[-1]).attribute(x)
    expected = seen[0].mean(1)[:, 0, 1:]  # the class token's row, heads averaged, patch columns
    torch.testing.assert_close(ours.reshape(2, -1), expected, atol=1e-5, rtol=1e-4)
