"""Several explained image layers: the graph is cut at the last block's attention input.

Only the last block's query row reaches the embedding, so Grad-ECLIP keeps an autograd graph from the first
explained layer up to the last block's attention input and re-computes that block's query row from it (keys and
values of every row, with their graph) before the pooled tail. These tests check that the cut path is taken,
gives the maps of the full backward, falls back when its self-check fails, and works under autocast. The
independent references in tests/test_grad_eclip.py (layers [0, 1] and [0]) run through it as well.
"""

import pytest
import torch
from fixtures import RouteLog, make_tokens

from captum_gradeclip import GradECLIP, ImageTextSimilarity


def blocks_of(model, stack):
    return list(model.visual.transformer.resblocks) if stack == "open_clip" else list(model.vision_model.encoder.layers)


@pytest.fixture
def cut_calls():
    """Outcomes of the cut path in this test (pass as ``on_route``): True (used) or False (self-check failed)."""
    return RouteLog("cut")


@pytest.mark.parametrize("stack", ["open_clip", "hf"])
@pytest.mark.parametrize("which", [(0, 1), (0,), (1, 0)])
def test_cut_path_equals_full_backward(stack, which, oc_model, hf_model, images, cut_calls):
    model = oc_model if stack == "open_clip" else hf_model
    tokens = make_tokens((5, 7, 9, 12, 6), seed=9)
    blocks = [blocks_of(model, stack)[i] for i in which]
    ge = GradECLIP(ImageTextSimilarity(model, tokens), blocks, chunk_size=2, on_route=cut_calls)
    every = ge.attribute_all(images)
    per_example = ge.attribute(images, target=[4, 1])
    assert cut_calls == [True, True]
    full = GradECLIP(ImageTextSimilarity(model, tokens), blocks, chunk_size=2, gradient_route="backward",
                     on_route=cut_calls)
    ref_every = full.attribute_all(images)
    ref_example = full.attribute(images, target=[4, 1])
    assert len(cut_calls) == 2  # the references did not take it
    scale = ref_every.abs().amax()
    assert scale > 0
    torch.testing.assert_close(every / scale, ref_every / scale, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(per_example / scale, ref_example / scale, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stack", ["open_clip", "hf"])
def test_cut_path_falls_back_when_the_tail_is_wrong(stack, oc_model, hf_model, images, tokens, cut_calls,
                                                    monkeypatch):
    model = oc_model if stack == "open_clip" else hf_model
    ge = GradECLIP(ImageTextSimilarity(model, tokens), blocks_of(model, stack), on_route=cut_calls)
    good = ge.attribute_all(images)
    original = type(ge.tower).pooled_tail

    def wrong(self, attention):
        tail = original(self, attention)
        return None if tail is None else (lambda x, y: 2.0 * tail(x, y) + 1.0)  # not the model's tail

    monkeypatch.setattr(type(ge.tower), "pooled_tail", wrong)
    fallback = ge.attribute_all(images)
    assert cut_calls == [True, False]
    torch.testing.assert_close(fallback, good, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("stack", ["open_clip", "hf"])
def test_cut_path_under_autocast(stack, oc_model, hf_model, images, tokens, cut_calls):
    model = oc_model if stack == "open_clip" else hf_model
    ge = GradECLIP(ImageTextSimilarity(model, tokens), blocks_of(model, stack), on_route=cut_calls)
    ref = ge.attribute_all(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ge.attribute_all(images)
    assert cut_calls == [True, True]  # the self-check passed under autocast too
    assert low.dtype == torch.float32
    assert float((low - ref).abs().max() / ref.abs().max()) < 0.03


def test_cut_path_leaves_grad_mode_and_model_alone(oc_model, images, tokens, cut_calls):
    before = {k: v.clone() for k, v in oc_model.state_dict().items()}
    flags = [p.requires_grad for p in oc_model.parameters()]
    ge = GradECLIP(ImageTextSimilarity(oc_model, tokens), blocks_of(oc_model, "open_clip"), on_route=cut_calls)
    with torch.no_grad():
        ge.attribute_all(images)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    ge.attribute_all(images)
    assert torch.is_grad_enabled() and cut_calls == [True, True]
    assert [p.requires_grad for p in oc_model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in oc_model.state_dict().items())
