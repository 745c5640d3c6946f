"""The registry of what Grad-ECLIP explains: model families, their towers and the attention modules they use.

Everything is in one explicit table, :data:`FAMILIES` (and :data:`ATTENTION_KINDS`, the attention modules in the
order they are tried), written in this module and nowhere else: no adapter module registers anything when it is
imported, so the registry is the same whatever was imported first. Users add their own attention modules with
:func:`register_attention_adapter`.

Entries name adapter classes by reference (``"module:name"`` inside :mod:`captum_gradeclip.adapters`), loaded on
first use: towers look attention adapters up here (to check the blocks they are given), so this module imports
none of them and sits below every adapter module.

The supported-model list (:data:`SUPPORTED_MODELS`) and the family tables of ``docs/models.md`` and
``docs/models_hf.md`` are generated from the table (:mod:`captum_gradeclip.adapters.registry_docs`).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Type

from torch import nn

from ..errors import UnsupportedModelError

if TYPE_CHECKING:  # annotations only: the adapter modules import this one
    from .attention import AttentionAdapter
    from .base import Tower

Predicate = Callable[[nn.Module], bool]


def load(ref: str) -> Any:
    """The object that a ``"module:name"`` reference names inside :mod:`captum_gradeclip.adapters`."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


@dataclass(frozen=True)
class AttentionKind:
    """A kind of attention module that Grad-ECLIP can read.

    Attributes:
        description: what the module is, as error messages and the docs list it.
        adapter: reference to its :class:`~captum_gradeclip.adapters.attention.AttentionAdapter` subclass, whose
            ``matches(module)`` classmethod recognises the modules.
    """

    description: str
    adapter: str


@dataclass(frozen=True)
class TowerKind:
    """One tower that a family gives a model.

    Attributes:
        label: what the tower is (listed in error messages and the docs).
        build: reference to ``build(model) -> Tower``.
        classes: names of the model classes that get this tower (any class of the model's MRO that comes from the
            family's library, so that user subclasses keep working).
        matches: for families that recognise a tower by the model's parts rather than its class: whether a model
            (already claimed by the family) gets this tower.
        notes: what the docs say about the tower.
    """

    label: str
    build: str
    classes: Tuple[str, ...] = ()
    matches: Optional[Predicate] = None
    notes: str = ""


@dataclass(frozen=True)
class DocRow:
    """A row of the class table of ``docs/models_hf.md``: the class(es), the image and text towers, notes."""

    classes: str
    image: str
    text: str
    notes: str = ""


@dataclass(frozen=True)
class Family:
    """A family of CLIP-style models.

    Attributes:
        name: the family's name (docs, messages).
        library: the top-level module its model classes come from (``open_clip``, ``transformers``).
        supported: its line of :data:`SUPPORTED_MODELS`.
        image: the image towers it gives, tried in order.
        text: the text towers it gives, tried in order.
        attention: the attention modules its towers explain (entries of :data:`ATTENTION_KINDS`).
        claims: ``claims(model, side)``: whether the family owns that side of the model, so that a model it
            owns but whose tower is none of ``image`` / ``text`` gets the family's own message (which lists its
            towers) instead of the general one; None: models are recognised by ``classes`` alone.
        parts: the model attribute holding each side's module (named in the family's own message).
        without_projection: ``(class, class to load instead)`` for classes whose towers output hidden states.
        checkpoints: example checkpoints (docs).
        rows: rows of the class table of ``docs/models_hf.md``.
    """

    name: str
    library: str
    supported: str
    image: Tuple[TowerKind, ...] = ()
    text: Tuple[TowerKind, ...] = ()
    attention: Tuple[AttentionKind, ...] = ()
    claims: Optional[Callable[[nn.Module, str], bool]] = None
    parts: Tuple[Tuple[str, str], ...] = ()
    without_projection: Tuple[Tuple[str, str], ...] = ()
    checkpoints: Tuple[str, ...] = ()
    rows: Tuple[DocRow, ...] = ()

    def towers(self, side: str) -> Tuple[TowerKind, ...]:
        return self.image if side == "image" else self.text

    def owns(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith(self.library)


# ---------------------------------------------------------------------------------------------------------------
# attention modules, in the order they are tried
# ---------------------------------------------------------------------------------------------------------------
MULTIHEAD = AttentionKind("torch.nn.MultiheadAttention", "attention:MultiheadAttentionAdapter")
OPEN_CLIP_ATTENTION = AttentionKind("open_clip Attention", "attention:OpenClipAttentionAdapter")
QKV_LINEAR = AttentionKind("attention modules with q_proj/k_proj/v_proj/out_proj linears (HuggingFace)",
                           "attention:QKVLinearAttentionAdapter")
BERT_SELF_ATTENTION = AttentionKind("BERT-style self-attention with query/key/value linears (HuggingFace)",
                                    "hf_attention:BertSelfAttentionAdapter")
FUSED_QKV = AttentionKind("fused qkv + projection attention (HuggingFace BLIP vision)",
                          "hf_attention:FusedQKVAttentionAdapter")
RESNET_POOL = AttentionKind("open_clip ModifiedResNet AttentionPool2d", "open_clip:AttentionPool2dAdapter")
BERT_ATTENTION = AttentionKind("BERT-style attention (self.query/key/value, output.dense)",
                               "hf_attention:BertAttentionAdapter")
T5_ATTENTION = AttentionKind("T5 attention (q/k/v/o)", "hf_attention:T5AttentionAdapter")
MAP_HEAD = AttentionKind("timm AttentionPoolLatent (MAP head)", "timm:TimmAttentionPoolLatentAdapter")
TIMM_ATTENTION = AttentionKind("timm Attention / EvaAttention / AttentionRope / RelPosAttention",
                               "timm:TimmAttentionAdapter")
GLOBAL_POOL = AttentionKind("timm global average pool (SelectAdaptivePool2d 'avg', towers without a pooling "
                            "attention)", "timm:GlobalAveragePoolAdapter")

ATTENTION_KINDS: Tuple[AttentionKind, ...] = (
    MULTIHEAD, OPEN_CLIP_ATTENTION, QKV_LINEAR, BERT_SELF_ATTENTION, FUSED_QKV, RESNET_POOL, BERT_ATTENTION,
    T5_ATTENTION, MAP_HEAD, TIMM_ATTENTION, GLOBAL_POOL)

#: what error messages list as supported attention modules (besides those users register)
SUPPORTED_ATTENTION = tuple(kind.description for kind in ATTENTION_KINDS)


# ---------------------------------------------------------------------------------------------------------------
# model families
# ---------------------------------------------------------------------------------------------------------------
def _part_is(attribute: str, class_name: str) -> Predicate:
    """Whether ``model.<attribute>`` is an instance of a class named ``class_name``."""
    return lambda model: type(getattr(model, attribute, None)).__name__ == class_name


def _open_clip_claims(model: nn.Module, side: str) -> bool:
    """open_clip models with a ``visual`` tower; for text, the three classes whose text tower is explained."""
    if side == "image":
        return hasattr(model, "visual")
    return type(model).__name__ in ("CLIP", "CustomTextCLIP", "CoCa")


def _one_class(name: str, cls: str, image: str, text: str, **fields: Any) -> Family:
    """A transformers family of one two-tower class ``cls`` (``image`` and ``text``: references to its towers)."""
    fields.setdefault("supported", f"transformers.{cls}")
    return Family(name=name, library="transformers", image=(TowerKind(cls, image, classes=(cls,)),),
                  text=(TowerKind(cls, text, classes=(cls,)),), **fields)


_CLIP_IMAGE = "last ViT block; CLS; `(H/p, W/p)` patch grid"
_SIGLIP_IMAGE = ("the attention-pooling (MAP) head `vision_model.head`: the learned probe is the query, the "
                 "patches are the keys; no class token")
_SIGLIP_TEXT = ("bidirectional, pooled at the LAST position; words = not padding (mask), not the last position, not "
                "a special id of the config")

FAMILIES: Tuple[Family, ...] = (
    Family(
        name="open_clip", library="open_clip",
        supported="open_clip CLIP, CustomTextCLIP and CoCa (image towers: VisionTransformer, ModifiedResNet, timm "
                  "ViT/EVA/ViTamin, timm ConvNeXt/FastViT/Swin (last feature map, lambda = 1); text towers: "
                  "transformer, TextTransformer, HFTextEncoder); see docs/models.md",
        image=(
            TowerKind("VisionTransformer", "open_clip:OpenClipVisionTower", matches=_part_is("visual",
                                                                                         "VisionTransformer"),
                      notes="class-token, average or attentional (CoCa) pooling; custom blocks"),
            TowerKind("ModifiedResNet", "open_clip:OpenClipResNetTower",
                      matches=_part_is("visual", "ModifiedResNet"), notes="the attention pool is explained"),
            TowerKind("TimmModel (ViT, EVA, ViTamin, ConvNeXt, FastViT, Swin)", "timm:timm_image_tower",
                      matches=_part_is("visual", "TimmModel"),
                      notes="timm vision transformers (class token, average, MAP head); trunks without a pooling "
                            "attention at their last feature map, lambda = 1"),
        ),
        text=(
            TowerKind("the CLIP text transformer", "open_clip:OpenClipTextTower",
                      matches=lambda model: type(model).__name__ == "CLIP" and hasattr(model, "transformer"),
                      notes="`CLIP.transformer`: argmax, eos, last or first pooling, causal or bidirectional"),
            TowerKind("TextTransformer", "open_clip:OpenClipTextTransformerTower",
                      matches=_part_is("text", "TextTransformer"),
                      notes="`CustomTextCLIP` / `CoCa` `model.text`, appended class token (CoCa)"),
            TowerKind("HFTextEncoder", "open_clip_hf:OpenClipHFTextTower", matches=_part_is("text", "HFTextEncoder"),
                      notes="a HuggingFace encoder (RoBERTa, XLM-R, mT5, NLLB) with mean or CLS pooling"),
        ),
        attention=(MULTIHEAD, OPEN_CLIP_ATTENTION, RESNET_POOL, MAP_HEAD, TIMM_ATTENTION, GLOBAL_POOL, QKV_LINEAR,
                   BERT_ATTENTION, T5_ATTENTION),
        claims=_open_clip_claims, parts=(("image", "visual"), ("text", "text")),
        checkpoints=("ViT-B-32", "RN50", "coca_ViT-B-32", "ViT-B-16-SigLIP", "EVA02-B-16", "convnext_base_w",
                     "xlm-roberta-base-ViT-B-32"),
    ),
    _one_class(
        "CLIP", "CLIPModel", "hf:HFCLIPVisionTower", "hf:HFCLIPTextTower",
        attention=(QKV_LINEAR,),
        without_projection=(("CLIPVisionModel", "CLIPVisionModelWithProjection"),
                            ("CLIPTextModel", "CLIPTextModelWithProjection")),
        checkpoints=("openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"),
        rows=(DocRow("`CLIPModel`", _CLIP_IMAGE,
                     "causal, EOS (`eos_token_id`, or argmax of ids for legacy configs with `eos_token_id == 2`); "
                     "words between start and EOS"),),
    ),
    Family(
        name="CLIP, one tower", library="transformers",
        supported="transformers.CLIPVisionModelWithProjection / CLIPTextModelWithProjection (one tower; the other "
                  "side as precomputed embeddings)",
        image=(TowerKind("CLIPVisionModelWithProjection", "hf:HFCLIPVisionTower",
                         classes=("CLIPVisionModelWithProjection",)),),
        text=(TowerKind("CLIPTextModelWithProjection", "hf:HFCLIPTextTower",
                        classes=("CLIPTextModelWithProjection",)),),
        attention=(QKV_LINEAR,),
        checkpoints=("openai/clip-vit-base-patch32",),
        rows=(DocRow("`CLIPVisionModelWithProjection`", "as `CLIPModel`", "—",
                     "the fixed texts must be precomputed text embeddings `(T, E)` (e.g. "
                     "`CLIPTextModelWithProjection(...)(**tok).text_embeds`)"),
              DocRow("`CLIPTextModelWithProjection`", "—", "as `CLIPModel`",
                     "the fixed images must be precomputed image embeddings `(I, E)`")),
    ),
    Family(
        name="MetaCLIP 2", library="transformers",
        supported="transformers.MetaClip2Model (and MetaClip2VisionModelWithProjection / "
                  "MetaClip2TextModelWithProjection)",
        image=(TowerKind("MetaClip2Model", "hf:HFCLIPVisionTower",
                         classes=("MetaClip2Model", "MetaClip2VisionModelWithProjection")),),
        text=(TowerKind("MetaClip2Model", "hf:HFMetaClip2TextTower",
                        classes=("MetaClip2Model", "MetaClip2TextModelWithProjection")),),
        attention=(QKV_LINEAR,),
        without_projection=(("MetaClip2VisionModel", "MetaClip2VisionModelWithProjection"),
                            ("MetaClip2TextModel", "MetaClip2TextModelWithProjection")),
        checkpoints=("facebook/metaclip-2-worldwide-huge-quickgelu",),
        rows=(DocRow("`MetaClip2Model` (+ `MetaClip2VisionModelWithProjection`, `MetaClip2TextModelWithProjection`)",
                     "as `CLIPModel`", "causal, first `eos_token_id` (no legacy argmax)"),),
    ),
    Family(
        name="SigLIP", library="transformers",
        supported="transformers.SiglipModel, SiglipVisionModel, SiglipTextModel (image: attention-pooling head)",
        image=(TowerKind("SiglipModel", "hf_siglip:HFSiglipVisionTower",
                         classes=("SiglipModel", "SiglipVisionModel")),),
        text=(TowerKind("SiglipModel", "hf_siglip:HFSiglipTextTower", classes=("SiglipModel", "SiglipTextModel")),),
        attention=(QKV_LINEAR, MULTIHEAD),
        checkpoints=("google/siglip-base-patch16-224", "google/siglip-so400m-patch14-384"),
        rows=(DocRow("`SiglipModel` (+ `SiglipVisionModel`, `SiglipTextModel`)", _SIGLIP_IMAGE, _SIGLIP_TEXT,
                     "encoder blocks of the image tower raise `UnsupportedModelError` (no pooling query there); "
                     "`vision_use_head=False` raises"),),
    ),
    Family(
        name="SigLIP 2", library="transformers",
        supported="transformers.Siglip2Model, Siglip2VisionModel, Siglip2TextModel (image: attention-pooling head)",
        image=(TowerKind("Siglip2Model", "hf_siglip:HFSiglip2VisionTower",
                         classes=("Siglip2Model", "Siglip2VisionModel")),),
        text=(TowerKind("Siglip2Model", "hf_siglip:HFSiglipTextTower", classes=("Siglip2Model", "Siglip2TextModel")),),
        attention=(QKV_LINEAR, MULTIHEAD),
        checkpoints=("google/siglip2-base-patch16-naflex", "google/siglip2-base-patch16-224"),
        rows=(DocRow("`Siglip2Model` (+ `Siglip2VisionModel`, `Siglip2TextModel`)", "as SigLIP",
                     "as SigLIP (left padding handled by the mask)",
                     "image inputs: ordinary images `(N, 3, H, W)` (patchified here exactly as the processor does, "
                     "grid `(H/p, W/p)`), or the processor's `pixel_values (N, P, C*p*p)` with "
                     "`additional_forward_args=(pixel_attention_mask, spatial_shapes)` (one grid per batch); the "
                     "fixed side of `TextImageSimilarity` may also be the processor's dict"),),
    ),
    _one_class(
        "AltCLIP", "AltCLIPModel", "hf:HFCLIPVisionTower", "hf_bert:HFAltCLIPTextTower",
        attention=(QKV_LINEAR, BERT_SELF_ATTENTION),
        checkpoints=("BAAI/AltCLIP",),
        rows=(DocRow("`AltCLIPModel`", "as `CLIPModel`",
                     "XLM-R, bidirectional with padding mask, pooled at `<s>` (position 0); words between `<s>` and "
                     "`</s>`"),),
    ),
    _one_class(
        "ChineseCLIP", "ChineseCLIPModel", "hf:HFCLIPVisionTower", "hf_bert:HFChineseCLIPTextTower",
        attention=(QKV_LINEAR, BERT_SELF_ATTENTION),
        checkpoints=("OFA-Sys/chinese-clip-vit-base-patch16",),
        rows=(DocRow("`ChineseCLIPModel`", "as `CLIPModel`",
                     "BERT, bidirectional, pooled at `[CLS]`; words between `[CLS]` and `[SEP]`"),),
    ),
    _one_class(
        "BLIP", "BlipForImageTextRetrieval", "hf:HFBlipVisionTower", "hf_bert:HFBlipTextTower",
        supported="transformers.BlipForImageTextRetrieval (image-text contrastive path, use_itm_head=False)",
        attention=(FUSED_QKV, BERT_SELF_ATTENTION),
        checkpoints=("Salesforce/blip-itm-base-coco",),
        rows=(DocRow("`BlipForImageTextRetrieval`", "last ViT block; CLS; `vision_proj` of the post-LN class token",
                     "BERT `text_encoder` without the image (its cross-attention does not run), first token, "
                     "`text_proj`",
                     "explains the image-text contrastive score (`use_itm_head=False`), not the ITM head; BLIP's "
                     "attention is eager-only in transformers"),),
    ),
)

SUPPORTED_MODELS: Tuple[str, ...] = tuple(family.supported for family in FAMILIES)

#: what to pass for the side that a single-tower class lacks, by the side it has
_SINGLE_TOWER_HINTS = {
    "image": ("precomputed text embeddings (T, E) as `texts` of ImageTextSimilarity, e.g. "
              "CLIPTextModelWithProjection(...)(**tokens).text_embeds"),
    "text": ("precomputed image embeddings (I, E) as `images` of TextImageSimilarity, e.g. "
             "CLIPVisionModelWithProjection(...)(pixel_values).image_embeds"),
}


# ---------------------------------------------------------------------------------------------------------------
# towers
# ---------------------------------------------------------------------------------------------------------------
def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def uncompiled(model: nn.Module, side: str) -> nn.Module:
    """The module that ``torch.compile`` wrapped (the wrapper shares its parameters and submodules), or ``model``
    itself. Grad-ECLIP explains that module and runs it eagerly: its hooks need the modules' own forward. A model
    with separately compiled submodules cannot be run eagerly: UnsupportedModelError names them."""
    model = model._orig_mod if _is_compiled(model) else model
    if any(_is_compiled(sub) for sub in model.modules()):
        raise _unsupported(model, side)
    return model


def _unsupported(model: nn.Module, side: str) -> UnsupportedModelError:
    compiled = [name for name, sub in model.named_modules() if name and _is_compiled(sub)]
    hint = (f"; its submodule(s) {', '.join(compiled)} are compiled with torch.compile: pass a model whose towers "
            "are not compiled (e.g. model.visual = model.visual._orig_mod), or compile the whole model instead"
            ) if compiled else ""
    return UnsupportedModelError(
        f"cannot explain the {side} tower of {type(model).__module__}.{type(model).__name__}{hint}; "
        f"supported models: {'; '.join(SUPPORTED_MODELS)}")


def _class_named(model: nn.Module, named: Sequence[Tuple[str, str]]) -> Optional[str]:
    """The first class of ``type(model)``'s MRO that is one of ``named`` ``(library, class name)`` pairs."""
    for cls in type(model).__mro__:
        for library, name in named:
            if cls.__name__ == name and cls.__module__.startswith(library):
                return name
    return None


def _tower_kind(model: nn.Module, families: Sequence[Family], side: str) -> Optional[TowerKind]:
    """The tower of ``side`` that ``families`` give ``model``: by class (first in the MRO), else by its parts."""
    by_class = {name: kind for family in families for kind in family.towers(side) for name in kind.classes}
    name = _class_named(model, [(family.library, n) for family in families for kind in family.towers(side)
                                for n in kind.classes])
    if name is not None:
        return by_class[name]
    for family in families:
        if family.claims is not None and family.claims(model, side):
            for kind in family.towers(side):
                if kind.matches is not None and kind.matches(model):
                    return kind
    return None


def _refusal(model: nn.Module, families: Sequence[Family], side: str) -> UnsupportedModelError:
    """Why no tower of ``side`` fits ``model``, as precisely as the registry can say."""
    for family in families:
        if family.claims is not None and family.claims(model, side):
            part = getattr(model, dict(family.parts)[side], None)
            labels = ", ".join(kind.label for kind in family.towers(side))
            return UnsupportedModelError(
                f"cannot explain the {side} tower {type(part).__module__}.{type(part).__name__} of "
                f"{type(model).__name__}; supported {family.name} {side} towers: {labels}")
    instead = {name: (family.library, other) for family in families for name, other in family.without_projection}
    name = _class_named(model, [(library, n) for n, (library, _) in instead.items()])
    if name is not None:
        library, other = instead[name]
        return UnsupportedModelError(
            f"{library}.{name} outputs hidden states, not CLIP embeddings (it has no projection); load "
            f"{library}.{other} (or the two-tower model) instead")
    present = "text" if side == "image" else "image"
    named = [(family.library, n) for family in families for kind in family.towers(present) for n in kind.classes]
    name = _class_named(model, named)
    if name is not None:
        library = next(lib for lib, n in named if n == name)
        return UnsupportedModelError(
            f"{library}.{name} has a {present} tower only, no {side} tower: pass {_SINGLE_TOWER_HINTS[present]}")
    return _unsupported(model, side)


def _tower(model: nn.Module, side: str) -> "Tower":
    model = uncompiled(model, side)
    families = [family for family in FAMILIES if family.owns(model)]
    kind = _tower_kind(model, families, side)
    if kind is None:
        raise _refusal(model, families, side)
    return load(kind.build)(model)


def image_tower(model: nn.Module) -> "Tower":
    """The image tower adapter (:class:`~captum_gradeclip.adapters.base.Tower`) of ``model``, as :data:`FAMILIES`
    says; a ``torch.compile`` wrapper is explained through its original.

    Raises:
        UnsupportedModelError: for models of no family, or without an image tower (the message says what to pass).

    Examples::

        >>> type(image_tower(open_clip.create_model("ViT-B-32"))).__name__
        'OpenClipVisionTower'
    """
    return _tower(model, "image")


def text_tower(model: nn.Module) -> "Tower":
    """The text tower adapter of ``model``, as :data:`FAMILIES` says (see :func:`image_tower`).

    Raises:
        UnsupportedModelError: for models of no family, or without a text tower (the message says what to pass).

    Examples::

        >>> type(text_tower(transformers.CLIPModel(config))).__name__
        'HFCLIPTextTower'
    """
    return _tower(model, "text")


# ---------------------------------------------------------------------------------------------------------------
# attention modules
# ---------------------------------------------------------------------------------------------------------------
class _AttentionTable:
    """The attention adapters, tried in order: :data:`ATTENTION_KINDS`, loaded on first use, then the users'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builtin: Optional[List[Tuple[Predicate, type]]] = None
        self._added: List[Tuple[Predicate, type, Optional[str]]] = []

    def entries(self) -> List[Tuple[Predicate, type]]:
        with self._lock:
            if self._builtin is None:
                classes = [load(kind.adapter) for kind in ATTENTION_KINDS]
                self._builtin = [(cls.matches, cls) for cls in classes]
            return self._builtin + [(pred, cls) for pred, cls, _ in self._added]

    def descriptions(self) -> List[str]:
        with self._lock:
            return list(SUPPORTED_ATTENTION) + [d for _, _, d in self._added if d]

    def add(self, predicate: Predicate, cls: type, description: Optional[str]) -> None:
        entries = self.entries()
        with self._lock:
            if not any(c is cls for _, c in entries):
                self._added.append((predicate, cls, description))


_ATTENTION = _AttentionTable()


def register_attention_adapter(predicate: Predicate, cls: Type["AttentionAdapter"], description: Optional[str] = None
                               ) -> None:
    """Teach Grad-ECLIP a new kind of attention module: ``cls`` adapts modules for which ``predicate`` is True.

    Adapters registered later are tried after the built-in ones (:data:`ATTENTION_KINDS`); registering a class
    twice does nothing.

    Args:
        predicate (callable): ``predicate(module) -> bool``.
        cls (type): an :class:`~captum_gradeclip.adapters.attention.AttentionAdapter` subclass.
        description (str, optional): what the modules are, listed in error messages. Default: None

    Examples::

        >>> register_attention_adapter(lambda m: isinstance(m, MyAttention), MyAttentionAdapter, "MyAttention")
        >>> attention_adapter(model.blocks[0].attn)
        <MyAttentionAdapter ...>
    """
    _ATTENTION.add(predicate, cls, description)


def is_attention_module(module: nn.Module) -> bool:
    """Whether an adapter exists for ``module``."""
    return any(pred(module) for pred, _ in _ATTENTION.entries())


def attention_adapter(module: nn.Module) -> "AttentionAdapter":
    """The adapter (:class:`~captum_gradeclip.adapters.attention.AttentionAdapter`) for an attention module.

    Raises:
        UnsupportedModelError: if no adapter knows ``type(module)``.
    """
    for pred, cls in _ATTENTION.entries():
        if pred(module):
            return cls(module)
    raise UnsupportedModelError(
        f"{type(module).__module__}.{type(module).__name__} is not an attention module that Grad-ECLIP can "
        f"explain; supported: {', '.join(_ATTENTION.descriptions())}, or a transformer block containing one.")
