"""Tiny CLIP models trained on the synthetic shapes world, and their loader.

Four models are shipped (see ``benchmarks/train_shapes_clip.py`` for how
they were trained), named by :data:`MODELS`:

* ``"open_clip"`` (the default): an :class:`open_clip.CLIP` (ViT vision tower, patch 8 on 64x64 images, and a
  causal text transformer pooling at ``argmax(ids)``), 6 blocks per tower, trained on rich captions: 1-4 objects,
  object lists, spatial relations, counts and prefixes without a visual referent such as ``"a photo of"``
  (vocabulary :data:`~captum_gradeclip.data.SCENE_WORDS` and more, context of 20 tokens);
* ``"hf"``: a :class:`transformers.CLIPModel` of the same size, trained the same way;
* ``"open_clip_single"`` and ``"hf_single"``: the models of version 0.1, 4 blocks per tower, trained on captions
  that name one object (``"a red circle"``; 16 words, context of 8 tokens). Their ``kind`` is ``"open_clip"`` and
  ``"hf"``.

Weights live next to this module in ``weights/shapes_<name>.safetensors`` (fp16
on disk, loaded as fp32) with a ``weights/shapes_<name>.json`` config holding
everything needed to rebuild the model: architecture kwargs, normalisation,
image size, tokenizer vocabulary, training command/seed, time and machine, and measured accuracies.

The models were trained only on the default :func:`~captum_gradeclip.data.generate_scenes`
geometry (64x64 images, ``grid=2``, object radius 8-12 px). They
generalise poorly to other object scales (``grid=1`` or ``grid=3``: roughly
65-80% single-object accuracy instead of ~99%), so use the defaults.

Examples:
    >>> from captum_gradeclip.zoo import load_shapes_clip
    >>> clip = load_shapes_clip("open_clip")
    >>> from captum_gradeclip.data import generate_scenes
    >>> batch = generate_scenes(4, num_objects=1, seed=123)
    >>> logits = clip.classify(batch.images)        # (4, 24) over clip.class_names
    >>> pred = logits.argmax(-1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..data.shapes import DEFAULT_TEMPLATE
from .tokenizer import ShapesTokenizer

__all__ = [
    "KINDS",
    "MODELS",
    "ShapesCLIP",
    "build_model",
    "load_shapes_clip",
    "shapes_clip_from_files",
    "weights_paths",
]

#: Model kinds accepted by :func:`load_shapes_clip`.
KINDS: tuple[str, ...] = ("open_clip", "hf")

#: Names of the shipped models (:func:`load_shapes_clip`, :func:`weights_paths`): the defaults ``"open_clip"`` and
#: ``"hf"`` (6 blocks, rich captions) and the 0.1 models ``"open_clip_single"`` and ``"hf_single"`` (4 blocks,
#: one-object captions).
MODELS: tuple[str, ...] = ("open_clip", "hf", "open_clip_single", "hf_single")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    return kind


def build_model(kind: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Build an untrained model of the given kind from its architecture kwargs.

    Args:
        kind: ``"open_clip"`` or ``"hf"``.
        model_cfg: For ``"open_clip"`` the kwargs of :class:`open_clip.CLIP`
            (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...); for ``"hf"`` the
            kwargs of :class:`transformers.CLIPConfig` (``text_config``,
            ``vision_config``, ``projection_dim``, ...).

    Returns:
        The freshly initialised model (train mode, fp32, CPU).

    Raises:
        ValueError: For an unknown ``kind``.
        ImportError: If ``kind="hf"`` and transformers is not installed.

    Examples:
        >>> import json
        >>> cfg = json.loads(weights_paths("open_clip")[1].read_text())
        >>> model = build_model("open_clip", cfg["model_cfg"])
    """
    _check_kind(kind)
    if kind == "open_clip":
        import open_clip

        return open_clip.CLIP(**model_cfg)
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'hf' shapes model needs transformers: pip install transformers"
        ) from e
    return CLIPModel(CLIPConfig(**model_cfg))


def weights_paths(kind: str) -> tuple[Path, Path]:
    """Return the ``(safetensors, json)`` paths of a shipped shapes model.

    Args:
        kind: a name of :data:`MODELS`: ``"open_clip"``, ``"hf"``, ``"open_clip_single"`` or ``"hf_single"``.

    Returns:
        Paths of the weight file and of its config inside the installed package.

    Raises:
        ValueError: For an unknown ``kind``.

    Examples:
        >>> weights_paths("hf")[1].name
        'shapes_hf.json'
    """
    if kind not in MODELS:
        raise ValueError(f"unknown shipped model kind {kind!r}; expected one of {MODELS}")
    root = Path(str(resources.files("captum_gradeclip.zoo").joinpath("weights")))
    return root / f"shapes_{kind}.safetensors", root / f"shapes_{kind}.json"


@dataclass
class ShapesCLIP:
    """A loaded shapes-world CLIP with its tokenizer and preprocessing.

    Attributes:
        model: The model in eval mode (:class:`open_clip.CLIP` or
            :class:`transformers.CLIPModel`).
        tokenizer: The word-level :class:`ShapesTokenizer`.
        kind: ``"open_clip"`` or ``"hf"``.
        image_size: Input height and width in pixels.
        mean: Per-channel normalisation mean (3 floats).
        std: Per-channel normalisation std (3 floats).
        class_names: ``"red circle"``-style names of all zero-shot classes.
        config: The full JSON config the model was built from.

    Examples:
        >>> clip = load_shapes_clip("hf")
        >>> enc = clip.tokenize(["a red circle"])
        >>> sorted(enc)
        ['attention_mask', 'input_ids']
    """

    model: torch.nn.Module
    tokenizer: ShapesTokenizer
    kind: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    config: dict[str, Any] = field(repr=False)

    @property
    def device(self) -> torch.device:
        """Device of the model parameters."""
        return next(self.model.parameters()).device

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Map ``[0, 1]`` images to the normalised model input.

        Args:
            images01: ``(N, 3, H, W)`` or ``(3, H, W)`` float images in ``[0, 1]``
                with ``H == W == image_size``.

        Returns:
            ``(images01 - mean) / std`` on the same device and dtype, always 4-D.

        Raises:
            ValueError: For a wrong number of dimensions/channels or image size.

        Examples:
            >>> clip = load_shapes_clip()
            >>> clip.normalize(torch.zeros(3, 64, 64)).shape
            torch.Size([1, 3, 64, 64])
        """
        if not isinstance(images01, torch.Tensor) or not images01.is_floating_point():
            raise TypeError("images01 must be a floating point tensor")
        if images01.dim() == 3:
            images01 = images01.unsqueeze(0)
        if images01.dim() != 4 or images01.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images01.shape)}")
        if tuple(images01.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got "
                f"{images01.shape[-2]}x{images01.shape[-1]}"
            )
        kw = dict(dtype=images01.dtype, device=images01.device)
        mean = torch.tensor(self.mean, **kw).view(1, 3, 1, 1)
        std = torch.tensor(self.std, **kw).view(1, 3, 1, 1)
        return (images01 - mean) / std

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Tokenize texts into what :attr:`model` takes, on the model's device.

        Args:
            texts: One text or a sequence of texts.

        Returns:
            ``(N, L)`` long ids for ``"open_clip"``; ``{"input_ids",
            "attention_mask"}`` for ``"hf"``.

        Raises:
            ValueError: For words outside the vocabulary or too long texts.

        Examples:
            >>> load_shapes_clip("open_clip").tokenize("a red circle").shape
            torch.Size([1, 8])
        """
        dev = self.device
        if self.kind == "open_clip":
            return self.tokenizer(texts).to(dev)
        return {k: v.to(dev) for k, v in self.tokenizer.hf(texts).items()}

    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised image embeddings of ``[0, 1]`` images.

        Args:
            images01: ``(N, 3, H, W)`` images in ``[0, 1]``.

        Returns:
            ``(N, D)`` unit-norm embeddings.
        """
        x = self.normalize(images01.to(self.device))
        if self.kind == "open_clip":
            feats = self.model.encode_image(x)
        else:
            feats = self.model.get_image_features(pixel_values=x)
            feats = getattr(feats, "pooler_output", feats)
        return F.normalize(feats, dim=-1)

    def encode_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Return L2-normalised text embeddings.

        Args:
            texts: One text or a sequence of texts.

        Returns:
            ``(N, D)`` unit-norm embeddings.
        """
        tok = self.tokenize(texts)
        if self.kind == "open_clip":
            feats = self.model.encode_text(tok)
        else:
            feats = self.model.get_text_features(**tok)
            feats = getattr(feats, "pooler_output", feats)
        return F.normalize(feats, dim=-1)

    @property
    def logit_scale(self) -> float:
        """The learned temperature ``exp(logit_scale)``."""
        return float(self.model.logit_scale.detach().exp())

    def class_prompts(self, template: str = DEFAULT_TEMPLATE) -> list[str]:
        """Return the prompts of :attr:`class_names` with a template.

        Args:
            template: Template with two ``{}`` fields (colour, shape).

        Returns:
            One prompt per class, e.g. ``"a red circle"``.
        """
        return [template.format(*name.split(" ")) for name in self.class_names]

    @torch.no_grad()
    def classify(
        self, images01: torch.Tensor, texts: Sequence[str] | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Zero-shot logits of images against texts (default: all class prompts).

        Args:
            images01: ``(N, 3, H, W)`` images in ``[0, 1]``.
            texts: Candidate texts; defaults to :meth:`class_prompts`.
            batch_size: Images per forward pass.

        Returns:
            ``(N, len(texts))`` logits ``logit_scale * cos(image, text)`` (CPU).

        Examples:
            >>> clip = load_shapes_clip()
            >>> clip.classify(torch.rand(2, 3, 64, 64)).shape
            torch.Size([2, 24])
        """
        txt = self.encode_texts(list(texts) if texts is not None else self.class_prompts())
        out = []
        for i in range(0, images01.shape[0], batch_size):
            out.append(self.encode_images(images01[i : i + batch_size]) @ txt.T)
        return (self.logit_scale * torch.cat(out)).cpu()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


def shapes_clip_from_files(
    weights: str | Path,
    config: str | Path,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> ShapesCLIP:
    """Load a shapes CLIP from an explicit weight/config pair.

    Args:
        weights: Path of the ``.safetensors`` file.
        config: Path of the JSON config.
        device: Target device.
        attn_implementation: HF only: e.g. ``"eager"`` to get attention weights
            (``output_attentions=True``); ``None`` keeps the transformers default.

    Returns:
        The :class:`ShapesCLIP` (model in eval mode, fp32).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: For an invalid config.
    """
    weights, config = Path(weights), Path(config)
    for p in (weights, config):
        if not p.is_file():
            raise FileNotFoundError(f"shapes model file not found: {p}")
    cfg = json.loads(config.read_text())
    for key in ("kind", "model_cfg", "tokenizer", "image_size", "mean", "std", "class_names"):
        if key not in cfg:
            raise ValueError(f"config {config} lacks the key {key!r}")
    kind = _check_kind(cfg["kind"])
    model = build_model(kind, cfg["model_cfg"])
    model.load_state_dict(_load_state_dict(weights), strict=True)
    if kind == "hf" and attn_implementation is not None:
        if hasattr(model, "set_attn_implementation"):  # transformers 5
            model.set_attn_implementation(attn_implementation)
        else:  # transformers 4.4x: the implementation is read from the config at every forward
            for cfg_ in (model.config, model.config.text_config, model.config.vision_config):
                cfg_._attn_implementation = attn_implementation
    elif kind != "hf" and attn_implementation is not None:
        raise ValueError("attn_implementation only applies to kind='hf'")
    model = model.float().to(device).eval()
    return ShapesCLIP(
        model=model,
        tokenizer=ShapesTokenizer.from_dict(cfg["tokenizer"]),
        kind=kind,
        image_size=int(cfg["image_size"]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        class_names=list(cfg["class_names"]),
        config=cfg,
    )


def load_shapes_clip(
    kind: str = "open_clip",
    device: str | torch.device = "cpu",
    *,
    attn_implementation: str | None = None,
) -> ShapesCLIP:
    """Load a shipped tiny CLIP trained on the shapes world (offline).

    Args:
        kind: ``"open_clip"`` (an :class:`open_clip.CLIP`), ``"hf"`` (a
            :class:`transformers.CLIPModel`), both 6 blocks per tower and trained on rich captions, or the 4-block
            models of version 0.1 trained on one-object captions, ``"open_clip_single"`` and ``"hf_single"``
            (see :data:`MODELS`).
        device: Target device.
        attn_implementation: HF only: e.g. ``"eager"`` so that
            ``output_attentions=True`` returns attention maps; ``None`` keeps the
            transformers default (``"sdpa"``).

    Returns:
        A :class:`ShapesCLIP` with the model in eval mode (fp32), its tokenizer and
        preprocessing.

    Raises:
        ValueError: For an unknown ``kind``.
        FileNotFoundError: If the package was installed without its weight files.

    Examples:
        >>> clip = load_shapes_clip("open_clip")
        >>> clip.model.training
        False
        >>> img = clip.normalize(torch.rand(1, 3, 64, 64))
        >>> clip.model.encode_image(img).shape
        torch.Size([1, 128])
    """
    weights, config = weights_paths(kind)
    return shapes_clip_from_files(
        weights, config, device=device, attn_implementation=attn_implementation
    )
