"""The text-side row tail (``Tower.row_tail``): the query row re-run from the first explained block gives the same
maps as differentiating the whole sequence, under every layer choice, batch shape and precision; it declines what
it does not recognise, and the core falls back to the full path when its self-check fails."""

import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F
from fixtures import CONTEXT, RouteLog, make_hf_clip, make_open_clip, make_tokens, pooled
from torch import nn

import reference
from captum_gradeclip import GradECLIP, TextImageSimilarity

EMBED = 32


@pytest.fixture
def row_calls():
    """Outcomes of the row tail in this test (pass as ``on_route``): True (used) or False (self-check failed)."""
    return RouteLog("row_tail")


def full_path(scorer, layers, fn):
    """``fn(GradECLIP(scorer, layers))`` on the full backward (the route before the row tail existed)."""
    return fn(GradECLIP(scorer, layers, gradient_route="backward"))


def assert_maps_close(ours, ref):
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def fixed_images(k=5, seed=3):
    return F.normalize(torch.randn(k, EMBED, generator=torch.Generator().manual_seed(seed)), dim=-1)


def hf_mask(tokens):
    return (torch.arange(tokens.shape[1])[None] <= tokens.argmax(-1)[:, None]).long()


_MODELS = {}


def model(kind):
    if kind not in _MODELS:
        _MODELS[kind] = make_open_clip() if kind == "open_clip" else make_hf_clip()
    return _MODELS[kind]


LAYERS = {"default": None, "last": [2], "first only": [0], "middle": [1], "non-contiguous": [2, 0], "all": [0, 1, 2]}


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
@pytest.mark.parametrize("layers", list(LAYERS))
def test_row_tail_equals_full_path(kind, layers, row_calls):
    mdl = model(kind)
    scorer = TextImageSimilarity(mdl, fixed_images())
    blocks = None if LAYERS[layers] is None else [scorer.tower.blocks()[i] for i in LAYERS[layers]]
    tokens = make_tokens(lengths=(6, 9, 12, 4))  # EOS at different positions
    extra = hf_mask(tokens) if kind == "hf" else None

    def run(ge):
        ge.chunk_size = 2  # K = 5 targets in three chunks
        every = ge.attribute_all(tokens, additional_forward_args=extra)
        some = ge.attribute_all(tokens, targets=[4, 0, 2], additional_forward_args=extra)
        one = ge.attribute(tokens, target=[3, 1, 0, 4], additional_forward_args=extra)
        return every, some, one

    ours = run(GradECLIP(scorer, blocks, on_route=row_calls))
    assert row_calls and all(row_calls)
    ref = full_path(scorer, blocks, run)
    for a, b in zip(ours, ref):
        assert_maps_close(a, b)
    torch.testing.assert_close(ours[1], ours[0][:, [4, 0, 2]])
    torch.testing.assert_close(ours[2], ours[0][torch.arange(4), [3, 1, 0, 4]])


def test_row_tail_hf_padding_and_batch(row_calls):
    """HF ids padded to different lengths with an attention mask (padding id 0 and a pad id equal to nothing the
    model knows), a batch equal to its captions one at a time."""
    mdl = model("hf")
    scorer = TextImageSimilarity(mdl, fixed_images(7))
    tokens = make_tokens(lengths=(3, 10, 7))
    mask = hf_mask(tokens)
    tokens = tokens.masked_fill(mask == 0, 5)  # padding that is not id 0: only the mask hides it
    ge = GradECLIP(scorer, chunk_size=3, on_route=row_calls)
    batch = ge.attribute_all(tokens, additional_forward_args=mask)
    single = torch.cat([ge.attribute_all(tokens[i:i + 1], additional_forward_args=mask[i:i + 1]) for i in range(3)])
    assert_maps_close(batch, single)
    assert row_calls and all(row_calls)
    ref = full_path(scorer, None, lambda g: g.attribute_all(tokens, additional_forward_args=mask))
    assert_maps_close(batch, ref)
    assert (batch[mask[:, None, :].expand_as(batch) == 0] == 0).all()


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_row_tail_matches_reference_non_contiguous(kind, images, tokens, row_calls):
    """The independent reference (tests/reference.py) through the row tail, with a gap between explained blocks."""
    mdl = model(kind)
    scorer = TextImageSimilarity(mdl, images)
    explained = [0, 2]
    ge = GradECLIP(scorer, [scorer.tower.blocks()[i] for i in explained], on_route=row_calls)
    with torch.no_grad():
        if kind == "open_clip":
            imf = F.normalize(mdl.encode_image(images), dim=-1)
        else:
            imf = F.normalize(pooled(mdl.get_image_features(pixel_values=images)), dim=-1)
    mask = hf_mask(tokens)
    for target in range(images.shape[0]):
        if kind == "open_clip":
            ours = ge.attribute(tokens, target=target)
            ref = reference.open_clip_text(mdl, tokens, imf, target, explained)
        else:
            ours = ge.attribute(tokens, target=target, additional_forward_args=mask)
            ref = reference.hf_clip_text(mdl, tokens, mask, imf, target, explained)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert len(row_calls) == images.shape[0] and all(row_calls)


def text_case(kind):
    """A text scorer of the ``kind`` stack against fixed images, tokens, and the HF attention mask (or None)."""
    tokens = make_tokens()
    return TextImageSimilarity(model(kind), fixed_images()), tokens, hf_mask(tokens) if kind == "hf" else None


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_row_tail_autocast_bf16(kind, row_calls):
    scorer, tokens, extra = text_case(kind)
    ge = GradECLIP(scorer, chunk_size=2, on_route=row_calls)
    ref = ge.attribute_all(tokens, additional_forward_args=extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ge.attribute_all(tokens, additional_forward_args=extra)
        full = full_path(scorer, None, lambda g: g.attribute_all(tokens, additional_forward_args=extra))
    assert row_calls == [True, True]  # fp32, then bf16: the self-check passed under autocast too
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # the tolerance of tests/test_grad_eclip.py::test_autocast_bf16_close_to_fp32
    assert float((low - ref).abs().max() / ref.abs().max()) < 0.03
    assert float((low - full).abs().max() / ref.abs().max()) < 0.03


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_row_tail_self_check_falls_back(kind, row_calls, monkeypatch):
    scorer, tokens, extra = text_case(kind)
    good = GradECLIP(scorer, on_route=row_calls).attribute_all(tokens, additional_forward_args=extra)
    tower_cls = type(scorer.tower)
    original = tower_cls.row_tail

    def wrong(self, *args, **kwargs):  # a tail that is not the model's: its head ignores half the width
        tail = original(self, *args, **kwargs)
        return dataclasses.replace(tail, head=lambda x: tail.head(x * (torch.arange(x.shape[-1]) % 2)))

    monkeypatch.setattr(tower_cls, "row_tail", wrong)
    fallback = GradECLIP(scorer, on_route=row_calls).attribute_all(tokens, additional_forward_args=extra)
    assert row_calls == [True, False]
    ref = full_path(scorer, None, lambda g: g.attribute_all(tokens, additional_forward_args=extra))
    torch.testing.assert_close(fallback, ref)
    assert_maps_close(fallback, good)


def _tiny_text_clip(cls=open_clip.CLIP, **text):
    torch.manual_seed(0)
    cfg = {**dict(context_length=CONTEXT, vocab_size=100, width=48, heads=3, layers=3), **text}
    vision = dict(image_size=32, patch_size=8, width=48, layers=1, head_width=24)
    return cls(embed_dim=EMBED, vision_cfg=vision, text_cfg=cfg).eval()


@pytest.mark.parametrize("cls, text", [(open_clip.CLIP, dict(proj_bias=True)),
                                       (open_clip.CLIP, dict(proj_type="none", width=EMBED, heads=2)),
                                       (open_clip.CLIP, dict(ls_init_value=0.5)),
                                       (open_clip.CustomTextCLIP, dict()),
                                       (open_clip.CustomTextCLIP, dict(pool_type="eos", eos_id=99))],
                         ids=["linear projection", "no projection", "layer scale", "TextTransformer",
                              "TextTransformer eos"])
def test_row_tail_open_clip_variants(cls, text, row_calls):
    mdl = _tiny_text_clip(cls, **text)
    scorer = TextImageSimilarity(mdl, fixed_images())
    tokens = make_tokens()
    ours = GradECLIP(scorer, chunk_size=2, on_route=row_calls).attribute_all(tokens)
    assert row_calls == [True]
    assert_maps_close(ours, full_path(scorer, None, lambda g: g.attribute_all(tokens)))


def test_row_tail_declines_what_it_does_not_know(row_calls):
    tower = TextImageSimilarity(model("open_clip"), fixed_images()).tower
    attns = [b.attn for b in tower.blocks()]
    assert tower.row_tail(attns) is not None
    assert tower.row_tail(attns, single_head=True) is None
    assert tower.row_tail([nn.MultiheadAttention(48, 3)]) is None  # not a block of the tower
    for cls, text in ((open_clip.CLIP, dict(no_causal_mask=True)), (open_clip.CLIP, dict(pool_type="last")),
                      (open_clip.CLIP, dict(qk_norm=True)),  # custom blocks
                      (open_clip.CustomTextCLIP, dict(embed_cls=True)),  # CoCa-style appended class token
                      (open_clip.CustomTextCLIP, dict(no_causal_mask=True, pool_type="first"))):
        t = TextImageSimilarity(_tiny_text_clip(cls, **text), fixed_images()).tower
        assert t.row_tail([t.attention_of(b) for b in t.blocks()]) is None, text

    class MyAttention(nn.MultiheadAttention):  # a custom attention class: its forward may do anything
        pass

    mdl = make_open_clip()
    block = mdl.transformer.resblocks[-1]
    custom = MyAttention(48, 3, batch_first=True)
    custom.load_state_dict(block.attn.state_dict())
    block.attn = custom
    t = TextImageSimilarity(mdl, fixed_images()).tower
    assert t.row_tail([b.attn for b in t.blocks()]) is None
    assert t.row_tail([b.attn for b in t.blocks()[:-1]]) is None  # the tail runs through the custom block

    hf = TextImageSimilarity(model("hf"), fixed_images()).tower
    attns = [b.self_attn for b in hf.blocks()]
    assert hf.row_tail(attns) is not None and hf.row_tail(attns, single_head=True) is None

    # single_head=True never takes the row tail
    tokens = make_tokens()
    GradECLIP(TextImageSimilarity(model("open_clip"), fixed_images()), single_head=True,
              on_route=row_calls).attribute_all(tokens)
    assert row_calls == []


def test_row_tail_hf_with_projection_and_metaclip2(row_calls):
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                max_position_embeddings=CONTEXT, eos_token_id=99, bos_token_id=98, pad_token_id=0)
    models = [transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**text, projection_dim=EMBED))]
    if hasattr(transformers, "MetaClip2Model"):
        cfg = transformers.MetaClip2Config(text_config=text, vision_config=dict(hidden_size=48, intermediate_size=96,
                                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
                                           projection_dim=EMBED)
        models.append(transformers.MetaClip2Model(cfg))
    tokens = make_tokens()
    mask = hf_mask(tokens)
    for mdl in models:
        torch.manual_seed(0)
        scorer = TextImageSimilarity(mdl.eval(), fixed_images())
        row_calls.clear()
        ours = GradECLIP(scorer, on_route=row_calls).attribute_all(tokens, additional_forward_args=mask)
        assert row_calls == [True], type(mdl).__name__
        ref = full_path(scorer, None, lambda g: g.attribute_all(tokens, additional_forward_args=mask))
        assert_maps_close(ours, ref)
