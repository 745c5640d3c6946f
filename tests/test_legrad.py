"""LeGrad against independent computations (reference.py), its invariants, and what it refuses."""

import threading

import pytest
import torch
import torch.nn.functional as F
from fixtures import make_hf_clip, make_open_clip, make_tokens, pooled

import reference as ref
from captum_gradeclip import ImageTextSimilarity, TextImageSimilarity, UnsupportedModelError
from captum_gradeclip.baselines import LeGrad

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_intra_op_thread):
    """Tiny models: one intra-op thread (conftest.one_intra_op_thread) for every test of this module."""


def _hf_mask(tokens):
    return (torch.arange(tokens.shape[1])[None] <= tokens.argmax(-1)[:, None]).long()


class ClsCase:
    """A class-token tower (open_clip or HF CLIP), its scorer, hand-written forward and head."""

    def __init__(self, family):
        tokens = make_tokens()
        self.family = family
        if family == "open_clip":
            self.model = make_open_clip(layers=3)
            with torch.no_grad():
                tf = self.model.encode_text(tokens)
            self.scorer = ImageTextSimilarity(self.model, tokens)
            v = self.model.visual
            self.blocks = list(v.transformer.resblocks)
            self.hand = lambda x: ref.records_open_clip_image(self.model, x)
            self.head = lambda t: v.ln_post(t) @ v.proj
        else:
            self.model = make_hf_clip()
            mask = _hf_mask(tokens)
            with torch.no_grad():
                tf = pooled(self.model.get_text_features(input_ids=tokens, attention_mask=mask))
            self.scorer = ImageTextSimilarity(self.model, {"input_ids": tokens, "attention_mask": mask})
            vm = self.model.vision_model
            self.blocks = list(vm.encoder.layers)
            self.hand = lambda x: ref.records_hf_image(self.model, x)
            self.head = lambda t: self.model.visual_projection(vm.post_layernorm(t))
        self.fixed = F.normalize(tf, dim=-1)

    def reference(self, images, target, layers=None, mean_tokens=False):
        _, recs, _ = self.hand(images)
        return ref.legrad(recs, self.head, self.fixed, target, layers, mean_tokens)


@pytest.fixture(scope="module", params=["open_clip", "hf"])
def cls_case(request):
    return ClsCase(request.param)


def _images(n=2, h=32, w=32, seed=2):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _flat(out):
    return out.reshape(out.shape[0], -1)


# --------------------------------------------------------------------------------- against the hand-written forward
@pytest.mark.parametrize("target", [0, [2, 1]])
def test_matches_reference_every_layer(cls_case, target):
    x = _images()
    ours = LeGrad(cls_case.scorer).attribute(x, target=target)
    torch.testing.assert_close(_flat(ours), cls_case.reference(x, target), atol=ATOL, rtol=RTOL)


def test_matches_reference_chosen_layers_and_mean_feature(cls_case):
    x = _images()
    blocks = cls_case.blocks
    # layers given out of order, as blocks or as their attention modules
    attn = blocks[-1].attn if cls_case.family == "open_clip" else blocks[-1].self_attn
    ours = LeGrad(cls_case.scorer, [attn, blocks[0]]).attribute(x, target=1)
    torch.testing.assert_close(_flat(ours), cls_case.reference(x, 1, [0, len(blocks) - 1]), atol=ATOL, rtol=RTOL)
    ours = LeGrad(cls_case.scorer, blocks[-1]).attribute(x, target=0)
    torch.testing.assert_close(_flat(ours), cls_case.reference(x, 0, [len(blocks) - 1]), atol=ATOL, rtol=RTOL)
    ours = LeGrad(cls_case.scorer, feature="mean").attribute(x, target=2)
    torch.testing.assert_close(_flat(ours), cls_case.reference(x, 2, mean_tokens=True), atol=ATOL, rtol=RTOL)


def test_class_token_feature_is_the_class_rows_gradient(cls_case):
    """Hand-checked special case: with the class token as the feature of the last layer, only the class row of the
    last attention has a gradient; LeGrad is then min-max(ReLU of that row's gradient, averaged over heads)."""
    x = _images()
    _, recs, _ = cls_case.hand(x)
    emb = cls_case.head(recs[-1]["out"][:, 0])
    (g,) = torch.autograd.grad(ref.similarity(emb, cls_case.fixed, 0).sum(), [recs[-1]["probs"]])
    assert g[:, :, 1:].abs().max() == 0  # no other query row reaches the class token's output
    expected = ref.minmax(g[:, :, 0, 1:].clamp(min=0).mean(1))
    ours = LeGrad(cls_case.scorer, cls_case.blocks[-1]).attribute(x, target=0)
    torch.testing.assert_close(_flat(ours), expected, atol=ATOL, rtol=RTOL)


def test_hf_siglip_attention_pooler_matches_reference():
    transformers = pytest.importorskip("transformers")
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                  patch_size=8, initializer_range=0.05)
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, initializer_range=0.05, pad_token_id=1, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.SiglipModel._from_config(
        transformers.SiglipConfig(text_config=text, vision_config=vision), attn_implementation="eager").eval()
    fixed = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    scorer = ImageTextSimilarity(model, fixed)
    x = _images()
    ours = LeGrad(scorer).attribute(x, target=[1, 2])
    expected = ref.legrad_siglip_hf(model, x, F.normalize(fixed, dim=-1), [1, 2])
    torch.testing.assert_close(_flat(ours), expected, atol=ATOL, rtol=RTOL)
    layers = model.vision_model.encoder.layers
    ours = LeGrad(scorer, layers[-1]).attribute(x, target=0)
    expected = ref.legrad_siglip_hf(model, x, F.normalize(fixed, dim=-1), 0, [len(layers) - 1])
    torch.testing.assert_close(_flat(ours), expected, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="attention pooler"):
        LeGrad(scorer, feature="mean")
    with pytest.raises(ValueError, match="token_blocks"):
        LeGrad(scorer, model.vision_model.head)


# ------------------------------------------------------------------------------------------------- invariants
def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: ("forward" in m.__dict__, len(m._forward_hooks), len(m._forward_pre_hooks))
             for n, m in model.named_modules()},
            model.training)


def _assert_unchanged(model, before):
    after = _snapshot(model)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:  # bitwise, NaN included (some tiny builds leave unused parameters uninitialised)
        torch.testing.assert_close(after[0][k], before[0][k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert before[1:] == after[1:]


def test_range_batch_equals_one_at_a_time_and_model_unchanged(cls_case):
    x = _images(n=3, h=40, w=24)  # non-square: a 5 x 3 grid
    before = _snapshot(cls_case.model)
    method = LeGrad(cls_case.scorer)
    batch = method.attribute(x, target=[0, 2, 1])
    assert batch.shape == (3, 1, 5, 3)
    assert torch.isfinite(batch).all() and (batch >= 0).all() and (batch <= 1).all()
    flat = _flat(batch)
    torch.testing.assert_close(flat.min(-1).values, torch.zeros(3))
    torch.testing.assert_close(flat.max(-1).values, torch.ones(3))
    for i, t in enumerate([0, 2, 1]):
        torch.testing.assert_close(batch[i:i + 1], method.attribute(x[i:i + 1], target=t), atol=1e-6, rtol=1e-5)
    assert method.attribute((x,), target=[0, 2, 1])[0].shape == batch.shape  # Captum's tuple convention
    _assert_unchanged(cls_case.model, before)


def test_bad_input_leaves_nothing_behind(cls_case):
    before = _snapshot(cls_case.model)
    method = LeGrad(cls_case.scorer)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(_images(), target=7)
    with pytest.raises(ValueError, match="target is required"):
        method.attribute(_images())
    with pytest.raises(ValueError, match="smaller than one patch|shape"):
        method.attribute(torch.randn(2, 3, 4, 4), target=0)
    _assert_unchanged(cls_case.model, before)
    with pytest.raises(ValueError, match="feature must be one of"):
        LeGrad(cls_case.scorer, feature="cls")
    with pytest.raises(ValueError, match="not a transformer block"):
        LeGrad(cls_case.scorer, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="given twice"):
        LeGrad(cls_case.scorer, [cls_case.blocks[0], cls_case.blocks[0]])


def test_concurrent_calls_from_threads_agree_with_sequential_ones(cls_case):
    method = LeGrad(cls_case.scorer)
    inputs = [(_images(seed=s), t) for s, t in [(3, 0), (4, 1), (5, 2), (6, 0)]]
    expected = [method.attribute(x, target=t) for x, t in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                results[i] = method.attribute(inputs[i][0], target=inputs[i][1])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_refuses_text_towers_and_models_without_blocks():
    open_clip = pytest.importorskip("open_clip")
    model = make_open_clip()
    with pytest.raises(ValueError, match="images only"):
        LeGrad(TextImageSimilarity(model, _images()))
    torch.manual_seed(0)
    rn = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=8),
                        text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=1)).eval()
    with pytest.raises(UnsupportedModelError, match="ResNet"):
        LeGrad(ImageTextSimilarity(rn, torch.randn(2, 32)))
    from fixtures import EMBED, build
    convnext = build("convnext_base")  # a feature map averaged into the embedding: no attention to differentiate
    with pytest.raises(UnsupportedModelError, match="LeGrad needs transformer blocks"):
        LeGrad(ImageTextSimilarity(convnext, torch.randn(2, EMBED)))


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "ViT-B-16-SigLIP", "EVA02-B-16", "vit_medium_patch16_gap_256",
                                  "vit_relpos_medium_patch16_cls_224"])
def test_other_open_clip_towers(name):
    """Attention poolers (CoCa, timm SigLIP MAP), rotary EVA, average pooling and relative position biases: maps in
    [0, 1] on a wide image (relpos: its own size), batch equals one at a time, the pooler's attention runs once per
    explained layer, the model is unchanged."""
    from fixtures import EMBED, build, native_image_size
    model = build(name)
    scorer = ImageTextSimilarity(model, torch.randn(3, EMBED, generator=torch.Generator().manual_seed(0)))
    h, w = native_image_size(model)
    wide = 1 if "relpos" in name else 2  # relative position tables are built for the model's grid
    x = _images(n=2, h=h, w=wide * w)
    before = _snapshot(model)
    method = LeGrad(scorer)
    out = method.attribute(x, target=[0, 2])
    tower = scorer.tower
    assert out.shape[-2:] == (h // tower.patch[0], wide * w // tower.patch[1])
    assert (out >= 0).all() and (out <= 1).all() and torch.allclose(_flat(out).max(-1).values, torch.ones(2))
    torch.testing.assert_close(out[1:], method.attribute(x[1:], target=2), atol=1e-5, rtol=1e-4)
    assert len(method.probed) == (1 if tower.attention_pooler() is not None else len(tower.token_blocks()))
    _assert_unchanged(model, before)


def _hf_families():
    pytest.importorskip("transformers")
    import hf_families
    return hf_families


@pytest.mark.parametrize("family", ["clip", "siglip", "altclip", "chinese_clip", "blip", "siglip2", "metaclip2"])
def test_hf_families_wide_images(family):
    hf = _hf_families()
    if family not in hf.FAMILIES:
        pytest.skip(f"{family} needs a newer transformers")
    model = hf.build(family)
    scorer = ImageTextSimilarity(model, hf.text_inputs(family))
    x = hf.images(48, 96)
    before = _snapshot(model)
    method = LeGrad(scorer)
    out = method.attribute(x, target=[0, 1])
    assert out.shape == (2, 1, 3, 6) and (out >= 0).all() and (out <= 1).all()
    torch.testing.assert_close(_flat(out).max(-1).values, torch.ones(2))
    torch.testing.assert_close(out[1:], method.attribute(x[1:], target=1), atol=1e-5, rtol=1e-4)
    _assert_unchanged(model, before)


def test_siglip2_padded_patches_equal_images():
    hf = _hf_families()
    if "siglip2" not in hf.FAMILIES:
        pytest.skip("SigLIP 2 needs a newer transformers")
    from captum_gradeclip.adapters.hf_siglip import patchify
    model = hf.build("siglip2")
    scorer = ImageTextSimilarity(model, hf.text_inputs("siglip2"))
    x = hf.images(48, 48)
    pv = patchify(x, (16, 16))
    n, p, d = pv.shape
    padded = torch.cat([pv, torch.zeros(n, 3, d)], 1)  # the processor pads to a fixed number of patches
    mask = torch.cat([torch.ones(n, p), torch.zeros(n, 3)], 1).long()
    shapes = torch.tensor([[3, 3]] * n)
    method = LeGrad(scorer)
    ours = method.attribute(padded, target=0, additional_forward_args=(mask, shapes))
    torch.testing.assert_close(ours, method.attribute(x, target=0), atol=1e-5, rtol=1e-4)


def _open_clip_configs():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.list_models()


@pytest.mark.slow
@pytest.mark.parametrize("name", _open_clip_configs())
def test_every_open_clip_config(name):
    """Every image tower with transformer blocks gets LeGrad maps in [0, 1] (batch = one at a time, at its own size
    and, where the tower takes it, at twice its width); the others (ResNet, ConvNeXt, FastViT, Swin) are refused
    with UnsupportedModelError."""
    from fixtures import EMBED, build, native_image_size
    model = build(name)
    scorer = ImageTextSimilarity(model, torch.randn(2, EMBED, generator=torch.Generator().manual_seed(0)))
    if scorer.tower.token_head() is None or not scorer.tower.token_blocks():
        with pytest.raises(UnsupportedModelError):
            LeGrad(scorer)
        return
    h, w = native_image_size(model)
    method = LeGrad(scorer)
    sizes = [(h, w)]
    try:
        scorer.tower.validate(_images(n=1, h=h, w=2 * w))
        sizes.append((h, 2 * w))
    except ValueError as err:
        assert "accepts only its own image size" in str(err)
    for hh, ww in sizes:
        x = _images(n=2, h=hh, w=ww)
        out = method.attribute(x, target=[0, 1])
        assert out.shape[:2] == (2, 1) and torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
        torch.testing.assert_close(out[1:], method.attribute(x[1:], target=1), atol=1e-4, rtol=1e-3)
