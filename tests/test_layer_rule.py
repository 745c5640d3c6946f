"""``GradECLIP(..., layer_rule=...)``: how the maps of several explained layers are combined.

``"sum_then_relu"`` (the paper's text rule) is ReLU of the sum of the layers' signed maps; ``"relu_then_sum"`` (the
paper's image rule) is the sum of their ReLUs. Checked here: a hand-built cancelling case, the independent
references under both rules, equality of the rules for one explained layer, ``attribute_all`` against stacked
``attribute`` on every gradient route (pooled tail, cut path, row tail, full backward, ``single_head``), the
decomposition of ``relu_then_sum`` into single-layer maps, and real empty word maps of the shipped model.
"""

import pytest
import torch
import torch.nn.functional as F
from fixtures import CONTEXT, make_tokens, pooled

import reference
from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
from captum_gradeclip.grad_eclip import LAYER_RULES, PAPER_LAYER_RULES, combine_layer_maps

RULES = list(LAYER_RULES)


# ------------------------------------------------------------------------------------------- the rule itself
def test_hand_built_cancelling_layers():
    """Two layers whose word contributions cancel exactly: empty under the paper's text rule, not under the other."""
    layer1 = torch.tensor([[0.0, 0.5, -0.2, 0.3, 0.0]])
    layer2 = torch.tensor([[0.0, -0.5, 0.2, -0.3, 0.0]])
    assert torch.equal(combine_layer_maps([layer1, layer2], "sum_then_relu"), torch.zeros(1, 5))
    assert torch.equal(combine_layer_maps([layer1, layer2], "relu_then_sum"),
                       torch.tensor([[0.0, 0.5, 0.2, 0.3, 0.0]]))
    # partial cancelling: 0.5 - 0.4 = 0.1 survives the sum; a negative sum is cut
    layer3 = torch.tensor([[0.0, -0.4, 0.1, -0.6, 0.0]])
    torch.testing.assert_close(combine_layer_maps([layer1, layer3], "sum_then_relu"),
                               torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(combine_layer_maps([layer1, layer3], "relu_then_sum"),
                               torch.tensor([[0.0, 0.5, 0.1, 0.3, 0.0]]))
    for rule in RULES:  # one layer: both rules are its ReLU
        assert torch.equal(combine_layer_maps([layer1], rule), F.relu(layer1))
    with pytest.raises(ValueError, match="layer_rule"):
        combine_layer_maps([layer1], "max")
    with pytest.raises(ValueError, match="at least one layer"):
        combine_layer_maps([], "sum_then_relu")


def test_default_is_the_papers_rule_per_side_and_bad_values_are_refused(oc_model, images, tokens):
    assert GradECLIP(ImageTextSimilarity(oc_model, tokens)).layer_rule == PAPER_LAYER_RULES["image"] == \
        "relu_then_sum"
    assert GradECLIP(TextImageSimilarity(oc_model, images)).layer_rule == PAPER_LAYER_RULES["text"] == \
        "sum_then_relu"
    for rule in RULES:
        assert GradECLIP(TextImageSimilarity(oc_model, images), layer_rule=rule).layer_rule == rule
    for bad in ("relu", "SUM_THEN_RELU", 1):
        with pytest.raises(ValueError, match=r"layer_rule must be None .* 'relu_then_sum'"):
            GradECLIP(ImageTextSimilarity(oc_model, tokens), layer_rule=bad)


# ------------------------------------------------------------------------------------ independent references
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("single_head", [False, True])
def test_open_clip_text_reference_under_both_rules(oc_model, images, tokens, rule, single_head):
    scorer = TextImageSimilarity(oc_model, images)
    with torch.no_grad():
        imf = F.normalize(oc_model.encode_image(images), dim=-1)
    ge = GradECLIP(scorer, list(oc_model.transformer.resblocks), single_head=single_head, layer_rule=rule)
    for target in range(images.shape[0]):
        ref = reference.open_clip_text(oc_model, tokens, imf, target, [0, 1, 2], single_head, layer_rule=rule)
        torch.testing.assert_close(ge.attribute(tokens, target=target), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_open_clip_image_reference_under_both_rules(oc_model, images, tokens, rule):
    scorer = ImageTextSimilarity(oc_model, tokens)
    with torch.no_grad():
        tf = F.normalize(oc_model.encode_text(tokens), dim=-1)
    ge = GradECLIP(scorer, list(oc_model.visual.transformer.resblocks), layer_rule=rule)
    for target in range(tokens.shape[0]):
        ref = reference.open_clip_image(oc_model, images, tf, target, [0, 1], layer_rule=rule)
        torch.testing.assert_close(ge.attribute(images, target=target)[:, 0], ref, atol=1e-5, rtol=1e-4)


def test_hf_references_under_the_other_rule(hf_model, images, tokens):
    mask = (torch.arange(CONTEXT)[None] <= tokens.argmax(-1)[:, None]).long()
    with torch.no_grad():
        imf = F.normalize(pooled(hf_model.get_image_features(pixel_values=images)), dim=-1)
        tf = F.normalize(pooled(hf_model.get_text_features(input_ids=tokens, attention_mask=mask)), dim=-1)
    words = GradECLIP(TextImageSimilarity(hf_model, images), layer_rule="relu_then_sum").attribute(
        tokens, target=1, additional_forward_args=mask)
    ref = reference.hf_clip_text(hf_model, tokens, mask, imf, 1, [0, 1, 2], layer_rule="relu_then_sum")
    torch.testing.assert_close(words, ref, atol=1e-5, rtol=1e-4)
    heat = GradECLIP(ImageTextSimilarity(hf_model, {"input_ids": tokens, "attention_mask": mask}),
                     list(hf_model.vision_model.encoder.layers), layer_rule="sum_then_relu").attribute(images, target=2)
    ref = reference.hf_clip_image(hf_model, images, tf, 2, [0, 1], layer_rule="sum_then_relu")
    torch.testing.assert_close(heat[:, 0], ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- every route
# (model, side, explained blocks, single_head, force the full backward, the route the call must take)
ROUTES = {
    "image pooled tail": ("open_clip", "image", [1], False, False, "pooled_tail"),
    "image cut path": ("open_clip", "image", [0, 1], False, False, "cut"),
    "image cut path, first block only": ("open_clip", "image", [0], False, False, "cut"),
    "image full backward": ("open_clip", "image", [0, 1], False, True, "backward"),
    "image single_head": ("open_clip", "image", [0, 1], True, False, "backward"),
    "text row tail": ("open_clip", "text", [0, 1, 2], False, False, "row_tail"),
    "text row tail, one block": ("open_clip", "text", [1], False, False, "row_tail"),
    "text full backward": ("open_clip", "text", [0, 1, 2], False, True, "backward"),
    "text single_head": ("open_clip", "text", [0, 1, 2], True, False, "backward"),
    "hf image cut path": ("hf", "image", [0, 1], False, False, "cut"),
    "hf text row tail": ("hf", "text", [0, 2], False, False, "row_tail"),
    "hf text full backward": ("hf", "text", [0, 1, 2], False, True, "backward"),
}


def _blocks(model, side):
    if side == "image":
        return list(model.visual.transformer.resblocks) if hasattr(model, "visual") else \
            list(model.vision_model.encoder.layers)
    return list(model.transformer.resblocks) if hasattr(model, "transformer") else list(model.text_model.encoder.layers)


class RoutesTaken(list):
    """The gradient routes of the calls it is passed to as ``on_route``: the route chosen and, where a fast route
    fell back, the full backward as well."""

    def __call__(self, report):
        self.extend([report.chosen, report.used] if report.fell_back else [report.chosen])


@pytest.fixture
def routes_taken():
    return RoutesTaken()


@pytest.fixture
def models(oc_model, hf_model):
    return {"open_clip": oc_model, "hf": hf_model}


def _explainers(models, images, route, on_route=None):
    """The route's inputs, extra forward arguments and one explainer per rule (on the full backward where the
    route says so)."""
    kind, side, explained, single_head, full, _ = ROUTES[route]
    model = models[kind]
    tokens = make_tokens((5, 7, 9, 12), seed=4) if side == "image" else make_tokens((6, 9, 12), seed=3)
    mask = (torch.arange(CONTEXT)[None] <= tokens.argmax(-1)[:, None]).long()
    extra = None
    if side == "image":
        scorer = ImageTextSimilarity(model, tokens if kind == "open_clip" else
                                     {"input_ids": tokens, "attention_mask": mask})
        inputs = images
    else:
        scorer = TextImageSimilarity(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8)))
        inputs, extra = tokens, (None if kind == "open_clip" else mask)
    blocks = [_blocks(model, side)[i] for i in explained]
    gradient_route = "backward" if full else "auto"
    return inputs, extra, {rule: GradECLIP(scorer, blocks, single_head=single_head, chunk_size=3, layer_rule=rule,
                                           gradient_route=gradient_route, on_route=on_route)
                           for rule in RULES}


@pytest.mark.parametrize("route", list(ROUTES))
def test_attribute_all_equals_stacked_attribute_under_both_rules(route, models, images, routes_taken):
    _, _, explained, _, _, expected = ROUTES[route]
    inputs, extra, explainers = _explainers(models, images, route, routes_taken)
    maps = {}
    for rule, ge in explainers.items():
        every = ge.attribute_all(inputs, additional_forward_args=extra)
        k = every.shape[1]
        stacked = torch.stack([ge.attribute(inputs, target=j, additional_forward_args=extra).reshape(every[:, j].shape)
                               for j in range(k)], dim=1)
        scale = float(stacked.abs().max())
        assert scale > 0
        torch.testing.assert_close(every / scale, stacked / scale, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ge.attribute_all(inputs, [k - 1, 0], additional_forward_args=extra),
                                   every[:, [k - 1, 0]])
        assert torch.all(every >= 0)
        maps[rule] = every
    assert set(routes_taken) == {expected}, routes_taken
    if len(explained) == 1:  # one layer: the rules agree exactly
        torch.testing.assert_close(maps["sum_then_relu"], maps["relu_then_sum"], atol=0, rtol=0)
    else:  # ReLU of a sum never exceeds the sum of ReLUs, and here the layers disagree somewhere
        assert torch.all(maps["sum_then_relu"] <= maps["relu_then_sum"] + 1e-6)
        assert not torch.allclose(maps["sum_then_relu"], maps["relu_then_sum"])


@pytest.mark.parametrize("route", ["image cut path", "image full backward", "text row tail", "text full backward",
                                   "hf image cut path", "hf text row tail"])
def test_relu_then_sum_is_the_sum_of_single_layer_maps(route, models, images):
    """dS/do of a layer does not depend on which other layers are explained: ReLU per layer, then sum, equals the
    sum of the one-layer maps (each computed on its own route). Not with ``single_head``: it re-runs every explained
    block with one head, so explaining other blocks changes the model being explained."""
    kind, side, explained, _, full, _ = ROUTES[route]
    inputs, extra, explainers = _explainers(models, images, route)
    ge = explainers["relu_then_sum"]
    together = ge.attribute_all(inputs, additional_forward_args=extra)
    blocks = _blocks(models[kind], side)
    alone = sum(GradECLIP(ge.forward_func, blocks[i], gradient_route=ge.gradient_route).attribute_all(
        inputs, additional_forward_args=extra) for i in explained)
    scale = float(together.abs().max())
    torch.testing.assert_close(together / scale, alone / scale, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------- the shipped model's captions
def test_shipped_model_has_empty_word_maps_that_the_other_rule_fills():
    """Real cancelling on matched caption-image pairs of the shipped shapes model: some captions get an all-zero
    map under the paper's text rule (sum over layers, then ReLU); ReLU per layer, then sum, gives them words."""
    from captum_gradeclip.data.shapes import generate_scenes
    from captum_gradeclip.zoo import load_shapes_clip
    clip = load_shapes_clip("open_clip")
    scenes = generate_scenes(40, image_size=clip.image_size, num_objects=(2, 3), seed=12345)
    ids = clip.tokenize(scenes.captions)
    scorer = TextImageSimilarity(clip.model, clip.normalize(scenes.images))
    targets = list(range(40))
    paper = GradECLIP(scorer).attribute(ids, target=targets)
    other = GradECLIP(scorer, layer_rule="relu_then_sum").attribute(ids, target=targets)
    empty = paper.sum(-1) == 0
    assert 0 < int(empty.sum()) < 40
    assert torch.all(other[empty].sum(-1) > 0)
    assert torch.all(paper <= other + 1e-6)

    def content_share(maps):  # "a <colour> <shape>": positions 2 and 3
        return float((maps[:, 2:4].sum(-1) / maps.sum(-1).clamp_min(1e-12)).mean())

    # docs/benchmarks.md (200 captions): 0.66 under the paper's rule, 0.78 with relu_then_sum
    assert content_share(other) > content_share(paper) + 0.05, (content_share(other), content_share(paper))
