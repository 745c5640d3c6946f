"""Tests of the shipped shapes CLIPs and their tokenizer (captum_gradeclip.zoo)."""

from __future__ import annotations

import json

import pytest
import torch

from captum_gradeclip.data import class_names, generate_scenes
from captum_gradeclip.zoo import (
    KINDS,
    MODELS,
    ShapesCLIP,
    ShapesTokenizer,
    load_shapes_clip,
    shapes_clip_from_files,
    weights_paths,
)

# Held-out accuracy thresholds, a bit below what the shipped models measure
# (see the "metrics" entry of the JSON configs).
MIN_SINGLE_ACC = 0.95
MIN_MULTI_TARGET_VS_ABSENT = 0.78


@pytest.fixture(scope="module", params=MODELS)
def clip(request: pytest.FixtureRequest) -> ShapesCLIP:
    torch.manual_seed(0)
    return load_shapes_clip(request.param)


@pytest.fixture(scope="module")
def tok() -> ShapesTokenizer:
    return ShapesTokenizer()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids(tok: ShapesTokenizer) -> None:
    assert tok.pad_id == 0 and tok.sot_id == 1
    assert tok.eot_id == tok.vocab_size - 1 == max(range(tok.vocab_size))
    ids = tok(["a red circle", "a photo of a blue cross"])
    assert ids.shape == (2, tok.context_length) and ids.dtype == torch.long
    assert ids[0].tolist()[:5] == [tok.sot_id, tok.vocab.index("a"), tok.vocab.index("red"),
                                   tok.vocab.index("circle"), tok.eot_id]
    assert (ids[0, 5:] == tok.pad_id).all()
    # open_clip pools at argmax(ids): that must be the eot position
    assert ids.argmax(-1).tolist() == [4, 7]


def test_tokenizer_round_trip(tok: ShapesTokenizer) -> None:
    texts = ["a red circle", "the yellow triangle", "a photo of a magenta square", "cyan cross"]
    for text in texts:
        ids = tok(text)[0]
        assert tok.decode(ids) == text
        assert tok.tokens(ids) == ["<sot>", *text.split(), "<eot>"]
    assert tok.decode(tok("A Red Circle.")[0]) == "a red circle"
    assert len(tok.tokens(tok("a red circle")[0], skip_pad=False)) == tok.context_length
    assert ShapesTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).vocab == tok.vocab


def test_tokenizer_hf(tok: ShapesTokenizer) -> None:
    enc = tok.hf(["a red circle", "a blue square"])
    assert set(enc) == {"input_ids", "attention_mask"}
    assert torch.equal(enc["attention_mask"], (enc["input_ids"] != 0).long())
    assert enc["attention_mask"][0].tolist() == [1] * 5 + [0] * 3


def test_tokenizer_errors(tok: ShapesTokenizer) -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        tok("a purple circle")
    with pytest.raises(ValueError, match="context_length"):
        tok("a photo of a red circle a red")
    with pytest.raises(ValueError):
        tok([])
    with pytest.raises(ValueError):
        tok.tokens(torch.tensor([999]))
    with pytest.raises(ValueError):
        tok.tokens(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        ShapesTokenizer(words=["a", "a"])
    with pytest.raises(ValueError):
        ShapesTokenizer(context_length=2)


# --------------------------------------------------------------------------- loaders


def test_weight_files_are_small() -> None:
    assert MODELS == ("open_clip", "hf", "open_clip_single", "hf_single")
    for name in MODELS:
        w, c = weights_paths(name)
        assert w.is_file() and c.is_file()
        assert w.name == f"shapes_{name}.safetensors" and w.stat().st_size < 6e6
        cfg = json.loads(c.read_text())
        assert cfg["kind"] == name.removesuffix("_single") and "metrics" in cfg and "training" in cfg
        assert cfg["metrics"]["single_object_acc"] >= 0.98  # 1000 held-out scenes, measured as shipped (fp16)


def test_loader_contract(clip: ShapesCLIP) -> None:
    assert clip.kind in KINDS
    assert not clip.model.training
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    assert clip.image_size == 64 and len(clip.mean) == 3 and len(clip.std) == 3
    assert clip.class_names == class_names()
    assert clip.tokenizer.vocab == clip.config["tokenizer"]["vocab"]
    x = clip.normalize(torch.full((2, 3, 64, 64), 0.5))
    expected = (0.5 - torch.tensor(clip.mean)) / torch.tensor(clip.std)
    assert torch.allclose(x[0, :, 0, 0], expected)
    tokens = clip.tokenize(["a red circle", "a blue cross"])
    if clip.kind == "open_clip":
        import open_clip

        assert isinstance(clip.model, open_clip.CLIP)
        assert isinstance(tokens, torch.Tensor) and tokens.shape == (2, clip.tokenizer.context_length)
        img, txt, scale = clip.model(x, tokens)
    else:
        from transformers import CLIPModel

        assert isinstance(clip.model, CLIPModel)
        assert isinstance(tokens, dict) and set(tokens) == {"input_ids", "attention_mask"}
        out = clip.model(pixel_values=x, **tokens)
        img, txt = out.image_embeds, out.text_embeds
    assert img.shape[0] == 2 and txt.shape[0] == 2 and img.shape[1] == txt.shape[1]


def test_hf_pools_at_eot() -> None:
    clip = load_shapes_clip("hf")
    assert clip.model.text_model.eos_token_id == clip.tokenizer.eot_id
    assert clip.model.config.text_config.pad_token_id == clip.tokenizer.pad_id
    enc = clip.tokenize(["a red circle"])
    out = clip.model.text_model(**enc)
    eot_pos = int((enc["input_ids"][0] == clip.tokenizer.eot_id).nonzero())
    assert torch.allclose(out.pooler_output[0], out.last_hidden_state[0, eot_pos])


def test_hf_eager_attention() -> None:
    clip = load_shapes_clip("hf", attn_implementation="eager")
    x = clip.normalize(torch.rand(1, 3, 64, 64))
    out = clip.model.vision_model(pixel_values=x, output_attentions=True)
    assert out.attentions is not None and out.attentions[0].shape[-1] == 65


def test_open_clip_and_hf_agree_with_encode_helpers(clip: ShapesCLIP) -> None:
    imgs = generate_scenes(3, seed=99).images
    e = clip.encode_images(imgs)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    t = clip.encode_texts(["a red circle"])
    assert t.shape == (1, e.shape[1])


def test_zero_shot_single_object(clip: ShapesCLIP) -> None:
    b = generate_scenes(200, num_objects=1, seed=424242)
    logits = clip.classify(b.images)
    assert logits.shape == (200, len(class_names()))
    acc = (logits.argmax(1) == b.target_class).float().mean().item()
    assert acc >= MIN_SINGLE_ACC, f"{clip.kind}: single-object zero-shot accuracy {acc:.3f}"


def test_zero_shot_multi_object(clip: ShapesCLIP) -> None:
    b = generate_scenes(200, num_objects=(2, 3), seed=434343)
    logits = clip.classify(b.images)
    cls = b.class_ids
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, cls.clamp(min=0), cls >= 0)
    tgt = logits.gather(1, b.target_class[:, None])
    frac = (tgt > logits.masked_fill(present, float("-inf")).max(1, keepdim=True).values)
    frac = frac.float().mean().item()
    assert frac >= MIN_MULTI_TARGET_VS_ABSENT, f"{clip.kind}: target beats absent in {frac:.3f}"


def test_loader_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="kind"):
        load_shapes_clip("timm")
    with pytest.raises(ValueError):
        load_shapes_clip("open_clip", attn_implementation="eager")
    w, c = weights_paths("open_clip")
    with pytest.raises(FileNotFoundError):
        shapes_clip_from_files(tmp_path / "missing.safetensors", c)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "open_clip"}))
    with pytest.raises(ValueError, match="lacks"):
        shapes_clip_from_files(w, bad)
    clip = load_shapes_clip("open_clip")
    with pytest.raises(ValueError):
        clip.normalize(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError):
        clip.normalize(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="vocabulary"):
        clip.tokenize("a purple circle")


# --------------------------------------------------------------------------- the defaults: rich captions, 6 blocks


@pytest.mark.parametrize("name", ["open_clip", "hf"])
def test_default_models_read_rich_captions(name: str) -> None:
    from captum_gradeclip.data import SCENE_WORDS

    clip = load_shapes_clip(name)
    cfg = clip.config
    assert clip.kind == name and cfg["training"]["captions"] == "rich" and cfg["training"]["init"] == f"{name}_single"
    assert set(SCENE_WORDS) <= set(clip.tokenizer.words) and clip.tokenizer.context_length == 20
    blocks = (cfg["model_cfg"]["vision_cfg"]["layers"], cfg["model_cfg"]["text_cfg"]["layers"]) if name == "open_clip" \
        else (cfg["model_cfg"]["vision_config"]["num_hidden_layers"], cfg["model_cfg"]["text_config"]["num_hidden_layers"])
    assert blocks == (6, 6)
    longest = "a simple image with a magenta triangle, a yellow circle, a green cross and a cyan square"
    ids = clip.tokenizer([longest, "there is a red circle", "two circles and one cross"])
    assert ids.shape == (3, 20) and ids[0].argmax().item() == 18  # sot + 17 words, then eot
    f = clip.encode_texts(["a red circle is left of a blue square", "there is a red circle"])
    assert f.shape == (2, 128) and torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name, kind", [("open_clip_single", "open_clip"), ("hf_single", "hf")])
def test_models_of_version_0_1_stay_available(name: str, kind: str) -> None:
    clip = load_shapes_clip(name)
    assert clip.kind == kind and name not in KINDS
    assert clip.tokenizer.context_length == 8 and len(clip.tokenizer.words) == 16
    assert "train_captions" not in clip.config and clip.config["training"]["steps"] == 1500
