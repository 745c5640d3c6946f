"""Image towers without a pooling attention (ConvNeXt, FastViT / MobileCLIP-S, Swin): Grad-ECLIP's channel weights on
the last spatial feature map with lambda = 1, and the fixed side of every scorer encoded by the model itself.

The maps are checked against a hand computation written here from the trunk's own ``forward_features`` (no hooks):
the global average of the feature map ``A``, the rest of the head applied to it, autograd for the per-position
gradients ``dS/dA_i``, then Grad-CAM: ``ReLU(sum_c mean_i(dS/dA_ic) A_ic)``, times ``h*w`` (our channel weights are
``g = dS/d(pooled) = sum_i dS/dA_i``); and, for NCHW trunks, against Captum's own ``LayerGradCam``.
"""

from __future__ import annotations

import json
import warnings
from typing import Dict

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel
from torch import Tensor, nn

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity, UnsupportedModelError
from captum_gradeclip.adapters import _own_encoder, image_tower, text_tower
from captum_gradeclip.adapters.attention import attention_adapter, attention_output_at
from captum_gradeclip.adapters.base import Tower
from captum_gradeclip.adapters.open_clip import grid_layout
from captum_gradeclip.layers import default_layers, describe_layers
from captum_gradeclip.scorers import _Similarity
from fixtures import (EMBED, build, build_from, make_hf_clip, make_open_clip, make_tokens, native_image_size,
                      shrunk_config, text_tokens)

warnings.filterwarnings("ignore")

# config -> (feature-map layout of the trunk, the module whose output is the last feature map)
FAMILIES = {
    "convnext_base": ("NCHW", "norm_pre"),
    "MobileCLIP2-S0": ("NCHW", "final_conv"),  # FastViT mci0 (4 stages, reduction 32)
    "MobileCLIP2-S4": ("NCHW", "final_conv"),  # FastViT mci4 (5 stages, reduction 64)
    "swin_base_patch4_window7_224": ("NHWC", "norm"),
}
_CACHE: Dict[str, nn.Module] = {}


def zoo(name: str) -> nn.Module:
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


def _images(model: nn.Module, n: int = 2, wide: bool = False, seed: int = 1) -> Tensor:
    h, w = native_image_size(model)
    return torch.randn(n, 3, h, 2 * w if wide else w, generator=torch.Generator().manual_seed(seed))


def _fixed(k: int = 3) -> Tensor:
    return torch.randn(k, EMBED, generator=torch.Generator().manual_seed(3))


def hand_grad_cam(model: nn.Module, fmt: str, images: Tensor, fixed: Tensor, target: int) -> Dict[str, Tensor]:
    """Grad-CAM of S = cos(f_I, fixed[target]) on the trunk's last feature map, computed by hand."""
    trunk = model.visual.trunk
    with torch.no_grad():
        a = trunk.forward_features(images)
    a = (a if fmt == "NCHW" else a.permute(0, 3, 1, 2)).detach().requires_grad_(True)  # (N, C, h, w)

    def embed(feature_map: Tensor) -> Tensor:
        pooled = feature_map.mean(dim=(2, 3))  # the global average
        one = pooled[:, :, None, None] if fmt == "NCHW" else pooled[:, None, None, :]
        return model.visual.head(trunk.forward_head(one))  # the head's own pool of a 1 x 1 map is the identity

    s = F.cosine_similarity(embed(a), F.normalize(fixed[target], dim=-1)[None], dim=-1)
    (grad,) = torch.autograd.grad(s.sum(), a)
    alpha = grad.mean(dim=(2, 3))  # Grad-CAM's channel weights: the spatially averaged gradient
    h, w = a.shape[-2:]
    cam = F.relu((alpha[:, :, None, None] * a).sum(dim=1, keepdim=True))
    return {"S": s.detach(), "map": (cam * h * w).detach(), "grid": torch.tensor([h, w])}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_maps_equal_a_hand_computed_grad_cam(name: str) -> None:
    model = zoo(name)
    fmt, _ = FAMILIES[name]
    fixed = _fixed()
    scorer = ImageTextSimilarity(model, fixed)
    images = _images(model, wide=fmt == "NCHW")  # Swin: its own size only
    ref = hand_grad_cam(model, fmt, images, fixed, target=2)
    torch.testing.assert_close(ref["S"], scorer(images)[:, 2], rtol=1e-4, atol=1e-5)  # the hand forward is right
    got = GradECLIP(scorer).attribute(images, target=2)
    assert tuple(got.shape[-2:]) == tuple(ref["grid"].tolist()) == scorer.tower.layout(images).grid
    assert ref["map"].sum() > 0
    torch.testing.assert_close(got, ref["map"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, (fmt, _) in FAMILIES.items() if fmt == "NCHW"])
def test_maps_are_captum_layer_grad_cam_times_the_grid_size(name: str) -> None:
    model = zoo(name)
    scorer = ImageTextSimilarity(model, _fixed())
    images = _images(model)
    layer = getattr(model.visual.trunk, FAMILIES[name][1])
    captum_map = LayerGradCam(scorer, layer).attribute(images, target=[0, 1], relu_attributions=True)
    got = GradECLIP(scorer).attribute(images, target=[0, 1])
    h, w = got.shape[-2:]
    torch.testing.assert_close(got, captum_map * h * w, rtol=1e-4, atol=1e-6)


def test_a_hand_checked_two_by_two_case() -> None:
    """A feature map of 2 x 2 positions and 2 channels, hand-set weights: the map is worked out on paper.

    Head: pooled p (2,) -> embedding p itself (proj = identity); fixed text t = (1, 0); S = p_0 / |p|.
    A[:, 0] = [[1, 2], [3, 2]] (mean 2), A[:, 1] = [[0, 0], [0, 4]] (mean 1): p = (2, 1), |p| = sqrt(5).
    g = dS/dp = (1/|p| - p_0^2/|p|^3, -p_0 p_1/|p|^3) = (1/sqrt(5) - 4/5^1.5, -2/5^1.5) = (1, -2) / 5^1.5.
    m_i = g . A_i = (A_0i - 2 A_1i) / 5^1.5 = [[1, 2], [3, -6]] / 5^1.5 -> ReLU -> [[1, 2], [3, 0]] / 5^1.5.
    """
    model = zoo("convnext_base")
    trunk = model.visual.trunk
    a = torch.tensor([[[1.0, 2.0], [3.0, 2.0]], [[0.0, 0.0], [0.0, 4.0]]])[None]  # (1, 2, 2, 2)
    pool = trunk.head.global_pool

    class Toy(nn.Module):  # a stand-in tower around timm's real pool: images are the feature map itself
        def __init__(self) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: Tensor) -> Tensor:
            return self.pool(x).flatten(1)

    adapter = attention_adapter(pool)
    assert not adapter.spatial_weight
    q, k, v = adapter.qkv((a,), {})
    assert q.abs().sum() == 0 and torch.equal(v[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [2.0, 4.0]]))
    # the zero query attends uniformly: the attention output is the pool's own output
    torch.testing.assert_close(attention_output_at(adapter, q, k, v, None), adapter.output_tensor(Toy()(a)))
    # the full computation through a scorer over this toy tower
    class ToyTower(Tower):
        def encode(self, inputs, *extra):
            return self.root(inputs)

        def blocks(self):
            return [pool]

        def layout(self, inputs, *extra, single_head=False):
            return grid_layout(inputs.shape[0], (2, 2), inputs.device, prefix=0)

    toy = Toy().eval()
    scorer = _Similarity(toy, ToyTower(toy, toy), torch.tensor([[1.0, 0.0]]))
    got = GradECLIP(scorer).attribute(a, target=0)
    expected = torch.tensor([[1.0, 2.0], [3.0, 0.0]]) / 5 ** 1.5
    torch.testing.assert_close(got[0, 0], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["convnext_base", "MobileCLIP2-S0", "swin_base_patch4_window7_224"])
def test_both_sides_with_the_fixed_side_encoded_by_the_model(name: str) -> None:
    model = zoo(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(model)
    tokens = text_tokens(model)
    scorer = ImageTextSimilarity(model, tokens)  # texts encoded by the model
    tscorer = TextImageSimilarity(model, images)  # images encoded by the model (refused before)
    with torch.no_grad():
        torch.testing.assert_close(scorer.fixed_features, model.encode_text(tokens, normalize=True))
        torch.testing.assert_close(tscorer.fixed_features, model.encode_image(images, normalize=True))
        torch.testing.assert_close(scorer(images), tscorer(tokens).t(), rtol=1e-4, atol=1e-5)
    ge = GradECLIP(scorer)
    every = ge.attribute_all(images)
    assert every.shape[:2] == (2, tokens.shape[0]) and (every >= 0).all() and every.sum() > 0
    for t in range(tokens.shape[0]):
        torch.testing.assert_close(every[:, t:t + 1], ge.attribute(images, target=t))
    # Captum target forms: one int per example as a list or a tensor
    per_example = ge.attribute(images, target=[1, 0])
    torch.testing.assert_close(per_example, ge.attribute(images, target=torch.tensor([1, 0])))
    torch.testing.assert_close(per_example, torch.stack([every[0, 1:2], every[1, 0:1]]))
    # (N, 1, h, w), ready for LayerAttribution.interpolate
    up = LayerAttribution.interpolate(per_example, images.shape[-2:], "bilinear")
    assert up.shape == (2, 1) + tuple(images.shape[-2:])
    smooth = NoiseTunnel(ge).attribute(images, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=[1, 0])
    torch.testing.assert_close(smooth, per_example, rtol=1e-5, atol=1e-6)
    # the text side
    words = GradECLIP(tscorer).attribute(tokens, target=[0, 1])
    assert words.shape == tokens.shape and (words >= 0).all()
    # single_head has no attention to re-run here: the same maps
    torch.testing.assert_close(GradECLIP(scorer, single_head=True).attribute_all(images), every)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_explained_layer_is_the_global_pool_of_the_last_feature_map(name: str) -> None:
    model = zoo(name)
    scorer = ImageTextSimilarity(model, _fixed())
    assert describe_layers(scorer) == ["visual.trunk.head.global_pool"]
    assert describe_layers(GradECLIP(scorer)) == ["visual.trunk.head.global_pool"]
    assert default_layers(scorer) == [model.visual.trunk.head.global_pool]
    last = getattr(model.visual.trunk, FAMILIES[name][1])
    with pytest.raises(UnsupportedModelError, match="LayerGradCam"):
        GradECLIP(scorer, last)
    with pytest.raises(ValueError, match="not part of the image tower"):
        GradECLIP(scorer, nn.Linear(2, 2))


def test_image_sizes() -> None:
    convnext = ImageTextSimilarity(zoo("convnext_base"), _fixed())
    maps = GradECLIP(convnext).attribute(torch.randn(1, 3, 96, 160), target=0)  # any multiple of 32
    assert maps.shape == (1, 1, 3, 5)
    with pytest.raises(ValueError, match="multiples of the trunk's reduction"):
        convnext(torch.randn(1, 3, 100, 160))
    mci4 = ImageTextSimilarity(zoo("MobileCLIP2-S4"), _fixed())
    assert mci4.tower.patch == (64, 64)
    with pytest.raises(ValueError, match="multiples"):
        GradECLIP(mci4).attribute(torch.randn(1, 3, 224, 224), target=0)  # 224 = 3.5 x 64
    swin = ImageTextSimilarity(zoo("swin_base_patch4_window7_224"), _fixed())
    with pytest.raises(ValueError, match="accepts only its own image size"):
        GradECLIP(swin).attribute(torch.randn(1, 3, 224, 448), target=0)


def test_fixed_side_of_a_tower_that_is_not_explained_is_encoded_by_the_model() -> None:
    # image: a ConvNeXt with open_clip's own attention-pool head (timm_pool='abs_attn') is not explained ...
    cls_name, cfg = shrunk_config("convnext_base")
    cfg["vision_cfg"].update(timm_pool="abs_attn", timm_proj="")
    model = build_from(cls_name, cfg)
    with pytest.raises(UnsupportedModelError, match="abs_attn"):
        image_tower(model)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tscorer = TextImageSimilarity(model, images)  # ... but its images are encoded for the text side
    with torch.no_grad():
        torch.testing.assert_close(tscorer.fixed_features, model.encode_image(images, normalize=True))
    tokens = text_tokens(model)
    assert GradECLIP(tscorer).attribute(tokens, target=1).shape == tokens.shape
    # text: every text tower of open_clip and of the HF families has an adapter (the sweep checks it); the model's own
    # text encoder, used where one has none, gives the same embeddings as the adapters
    ids = make_tokens()
    mask = (ids != 0).long()
    for clip, extra in ((make_open_clip(), ()), (make_hf_clip(), (mask,))):
        with torch.no_grad():
            own = _own_encoder(clip, "text")(ids, extra[0] if extra else None)
            torch.testing.assert_close(own, text_tower(clip).encode(ids, *extra), rtol=1e-5, atol=1e-6)
            pixels = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(_own_encoder(clip, "image")(pixels, None), image_tower(clip).encode(pixels),
                                       rtol=1e-5, atol=1e-6)
    # a model with no encoder of its own for the missing side keeps the clear error
    with pytest.raises(UnsupportedModelError):
        TextImageSimilarity(nn.Linear(2, 2), torch.randn(1, 3, 8, 8))


def test_cli_explains_a_convnext_config(tmp_path, monkeypatch, capsys) -> None:
    """``gradeclip explain --model <convnext config> --pretrained none``, on a small ConvNeXt config registered with
    open_clip for this test (the shipped configs build the same classes at full size; see the slow test below)."""
    from PIL import Image

    from captum_gradeclip.cli import main
    name = "test-convnext-atto"
    cfg = {"embed_dim": 32,
           "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                          "timm_proj": "linear", "image_size": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, json.loads(json.dumps(cfg)))
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((60, 100, 3)) * 255).astype("uint8")).save(photo)
    out = tmp_path / "out"
    assert main(["explain", str(photo), "--model", name, "--pretrained", "none", "--text", "a dog",
                 "--text", "a cat", "--out", str(out)]) == 0
    data = np.load(out / "photo_maps.npz")
    # native size: shorter side 64, both sides multiples of the reduction 32 -> 64 x 96 -> a 2 x 3 feature map
    assert data["image_maps"].shape == (2, 2, 3) and (data["image_maps"] >= 0).all()
    assert data["word_maps"].shape[0] == 2
    assert "photo" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_explains_convnext_base_at_full_size(tmp_path) -> None:
    from PIL import Image

    from captum_gradeclip.cli import main
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((150, 200, 3)) * 255).astype("uint8")).save(photo)
    assert main(["explain", str(photo), "--model", "convnext_base", "--pretrained", "none", "--text", "a dog",
                 "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "photo_maps.npz")["image_maps"].shape == (1, 7, 9)


def test_attention_baselines_refuse_towers_without_attention() -> None:
    from captum_gradeclip.baselines import AttentionRollout, GradientWeightedAttention, MaskCLIPSimilarity, \
        RawAttention, TokenGradCAM
    scorer = ImageTextSimilarity(zoo("convnext_base"), _fixed())
    for method in (AttentionRollout, GradientWeightedAttention, MaskCLIPSimilarity, RawAttention, TokenGradCAM):
        with pytest.raises(UnsupportedModelError, match="has none .*LayerGradCam"):
            method(scorer)
