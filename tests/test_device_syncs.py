"""No host-device synchronisation in GradECLIP's hot path, checked on the CPU.

An op that hands a value back to Python (``.item()``, ``bool(t)``, ``torch.allclose``), or whose output size
depends on tensor values (``nonzero``, boolean indexing, ``masked_select``), blocks the host until a GPU has
finished the work queued so far. A dispatch mode sees every aten op of a call, whatever the device, so the same
check runs here without a GPU (tests/test_cuda.py repeats it with ``torch.cuda.set_sync_debug_mode`` where CUDA is
available).

Allowed: at most one such op per call at each of three named sites, outside the loops over targets and examples:
the self-check of a fast path (the re-computed similarities must equal the forward's, or the full path is taken),
the crop length of a causal text tower (the number of positions to keep must be known on the host to slice
the ids), and the check of the input values before anything runs (NaN or infinite pixels, token ids outside the
vocabulary: a ValueError must name them; at the start of a call the device has little queued work to wait for).
"""

import traceback
from collections import Counter

import pytest
import torch
from fixtures import EMBED, make_tokens, text_tokens
from openclip_families import IMAGE_FAMILIES, TEXT_FAMILIES, clip_tokens, images_for
from torch.utils._python_dispatch import TorchDispatchMode

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity

aten = torch.ops.aten
_SCALAR_OUT = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
               aten.allclose.default, aten.item.default}
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                   aten.unique_consecutive.default, aten.unique_dim.default}
ALLOWED = {"reproduces", "crop_length", "check_values"}  # the functions whose single sync each is by design
MODEL_CODE = "the model's own forward"


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None)


class SyncRecorder(TorchDispatchMode):
    """Records the ops that would synchronise a GPU with the host, with the library line that called them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        syncs = func in _SCALAR_OUT or func in _DATA_DEPENDENT or (
            func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default)
            and _has_bool_index(args[1]))
        if syncs:
            # the innermost caller outside torch: this library, or the model's own code (transformers, ...), whose
            # syncs a plain forward pass has as well
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            f = frames[-1]
            where = f"{f.filename.rsplit('captum_gradeclip', 1)[-1]}:{f.name}" if "captum_gradeclip" in f.filename \
                else MODEL_CODE
            self.sites[(str(func), where)] += 1
        return func(*args, **kwargs)


def _record(fn):
    fn()  # warm-up: lazy initialisation outside the measured call
    with SyncRecorder() as rec:
        fn()
    return rec.sites


def _check(sites: Counter) -> None:
    sites = Counter({k: v for k, v in sites.items() if k[1] != MODEL_CODE})
    bad = {k: v for k, v in sites.items() if k[1].rsplit(":", 1)[-1] not in ALLOWED}
    assert not bad, f"host-device syncs outside the allowed sites: {bad}"
    assert all(count == 1 for count in sites.values()), f"a site synced more than once per call: {dict(sites)}"


@pytest.mark.parametrize("stack", ["open_clip", "hf"])
@pytest.mark.parametrize("layers", ["default", "all"])
def test_image_side_at_most_one_sync_and_none_per_target(stack, layers, oc_model, hf_model, tokens, images):
    model = oc_model if stack == "open_clip" else hf_model
    blocks = None
    if layers == "all":
        blocks = list(model.visual.transformer.resblocks) if stack == "open_clip" \
            else list(model.vision_model.encoder.layers)
    few = ImageTextSimilarity(model, tokens[:1])  # scorers built once, outside the measured calls
    many = ImageTextSimilarity(model, make_tokens((5, 7, 9, 12, 6, 8), seed=3))
    one = _record(lambda: GradECLIP(few, blocks).attribute_all(images[:1]))
    lots = _record(lambda: GradECLIP(many, blocks, chunk_size=2).attribute_all(images))
    _check(one)
    assert lots == one  # K chunks and N examples add no syncs
    per_example = _record(lambda: GradECLIP(many, blocks).attribute(images, target=[0, 3]))
    _check(per_example)


@pytest.mark.parametrize("stack", ["open_clip", "hf"])
def test_text_side_at_most_one_sync_and_none_per_target(stack, oc_model, hf_model, images):
    model = oc_model if stack == "open_clip" else hf_model
    one_image = TextImageSimilarity(model, images[:1])  # scorers built once, outside the calls
    five_images = TextImageSimilarity(model, torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    one = _record(lambda: GradECLIP(one_image).attribute_all(make_tokens((6,))))
    lots = _record(lambda: GradECLIP(five_images, chunk_size=2).attribute_all(make_tokens((6, 9, 12, 4))))
    _check(one)
    assert lots == one


def test_recorder_sees_syncs():
    """The recorder itself: it must flag the ops it claims to flag."""
    t = torch.arange(6.0)
    with SyncRecorder() as rec:
        t.max().item()
        bool((t > 2).any())
        t[t > 2]
        torch.allclose(t, t)
        t[torch.tensor([1, 2])]  # an integer index does not sync
    names = Counter()
    for (name, _), count in rec.sites.items():
        names[name] += count
    assert names["aten._local_scalar_dense.default"] + names["aten.is_nonzero.default"] >= 2
    assert names["aten.index.Tensor"] == 1
    assert names["aten.allclose.default"] == 1


def test_every_hf_family_at_most_the_allowed_syncs():
    """Every HuggingFace family of the coverage tests (tests/hf_families.py), image and text side (SigLIP's probe
    layouts, BERT-like text towers, BLIP, ...): only the allowed sites, at most once each per call, K and N
    independent."""
    hf = pytest.importorskip("hf_families")  # skipped without transformers
    for family in hf.FAMILIES:
        model = hf.build(family)
        ids, mask, _ = hf.texts(family)
        extra = None if mask is None else (mask,)
        imgs = hf.images(n=2)
        image_scorer = ImageTextSimilarity(model, hf.text_inputs(family))
        text_scorer = TextImageSimilarity(model, imgs)
        _check(_record(lambda: GradECLIP(image_scorer, chunk_size=1).attribute_all(imgs)))
        _check(_record(lambda: GradECLIP(text_scorer, chunk_size=1).attribute_all(ids, additional_forward_args=extra)))


def test_every_open_clip_family_at_most_the_allowed_syncs():
    """Every image and text family of the coverage tests (tests/openclip_families.py: timm trunks, rotary
    embeddings, attention pools, ResNets, HF text encoders, ...), default layers."""
    for family, (builder, _) in IMAGE_FAMILIES.items():
        model = builder()
        scorer = ImageTextSimilarity(model, torch.randn(3, EMBED))
        images = images_for(model)
        _check(_record(lambda: GradECLIP(scorer, chunk_size=1).attribute_all(images)))
    for family, builder in TEXT_FAMILIES.items():
        model = builder()
        tokens = text_tokens(model) if "pad-mask" not in family else clip_tokens()
        scorer = TextImageSimilarity(model, torch.randn(3, EMBED))
        _check(_record(lambda: GradECLIP(scorer, chunk_size=1).attribute_all(tokens)))
