"""Display helpers for Grad-ECLIP image and text explanation maps.

Everything here is headless-safe: figures are built with
:class:`matplotlib.figure.Figure` directly (never the global ``pyplot`` state)
and nothing depends on IPython, so the functions work in scripts, on servers
and in tests with the ``Agg`` backend.

Inputs accepted throughout this module
--------------------------------------
**Image maps** (the output of the image explainers) are non-negative raw scores
on the patch grid:

* ``(N, 1, h, w)`` or ``(N, h, w)`` -- a batch of ``N`` maps;
* ``(h, w)`` or ``(1, h, w)`` / ``(1, 1, h, w)`` -- one map.

They may be :class:`torch.Tensor` or :class:`numpy.ndarray`.

**Text maps** are scores over token positions, ``(L,)`` for one example or
``(N, L)`` for a batch, zero outside the words.

**Images** may be given as

* a :class:`torch.Tensor` ``(3, H, W)`` (or ``(1, 3, H, W)``), float in
  ``[0, 1]`` or ``uint8`` in ``[0, 255]`` (channels first, as produced by
  ``torchvision``-style transforms *before* mean/std normalisation);
* a :class:`numpy.ndarray` ``(H, W, 3)`` (channels last), ``uint8`` in
  ``[0, 255]`` or float in ``[0, 1]``;
* a :class:`PIL.Image.Image` in mode ``RGB`` or ``L`` (other single-band
  modes are converted to RGB too).

An image that was normalised for the model (``(x - mean) / std``, what CLIP
preprocessing returns) is accepted by :func:`overlay`, :func:`plot_image_maps`
and :func:`to_captum_image` when its ``mean`` and ``std`` are given: the
normalisation is undone before display (see :func:`denormalize`).

A two-dimensional ``(H, W)`` array/tensor or a single-channel image is treated
as greyscale and repeated to three channels. Images with four channels (RGBA)
are rejected with a :class:`ValueError`: drop or composite the alpha channel
yourself (for PIL: ``img.convert("RGB")``).

Empty word maps
---------------
A word map can be zero everywhere: with Grad-ECLIP's text rule (the sum over
layers, then ReLU) the explained layers' contributions can cancel. The text
helpers then say so (:func:`empty_words_message`) instead of shading nothing
silently, and suggest ``layer_rule="relu_then_sum"``.

Official display normalisations
-------------------------------
Grad-ECLIP's authors min-max normalise image maps per example and divide word
scores by their sum; :func:`normalize_map` and :func:`normalize_words`
implement exactly these and are what the plotting helpers use by default.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

if TYPE_CHECKING:  # pragma: no cover - typing only
    from captum.attr._utils.visualization import VisualizationDataRecord
    from PIL.Image import Image as PILImage

__all__ = [
    "denormalize",
    "normalize_map",
    "normalize_words",
    "empty_words_message",
    "upsample_map",
    "overlay",
    "plot_image_maps",
    "token_html",
    "tokens_html_page",
    "plot_tokens",
    "to_captum_image",
    "to_captum_text_record",
    "save_figure",
]

ArrayLike = Union[torch.Tensor, np.ndarray]
ImageLike = Union[torch.Tensor, np.ndarray, "PILImage"]
ScoresLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
MapsLike = Union[ArrayLike, Sequence[ArrayLike], Mapping[str, ArrayLike]]

_NORMALIZE_MODES = ("minmax", "max")
_UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")
_CAPTUM_SIGNS = ("positive", "negative", "absolute_value", "all")


# --------------------------------------------------------------------------- #
# Input conversion helpers
# --------------------------------------------------------------------------- #
def _to_float_tensor(x: Any, name: str) -> torch.Tensor:
    """Convert a tensor/ndarray/sequence to a detached CPU float tensor."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a torch.Tensor, a numpy.ndarray or a sequence of numbers; "
                f"got {type(x).__name__}"
            ) from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _single_map(map: ArrayLike, name: str = "map") -> torch.Tensor:
    """Return one image map as a ``(h, w)`` float tensor.

    Accepts ``(h, w)``, ``(1, h, w)`` and ``(1, 1, h, w)``.
    """
    t = _to_float_tensor(map, name)
    shape = tuple(t.shape)
    if t.ndim == 2:
        out = t
    elif t.ndim == 3 and shape[0] == 1:
        out = t[0]
    elif t.ndim == 4 and shape[0] == 1 and shape[1] == 1:
        out = t[0, 0]
    elif t.ndim in (3, 4):
        raise ValueError(
            f"{name} must hold a single map of shape (h, w), (1, h, w) or (1, 1, h, w); "
            f"got shape {shape}. Index the batch first, e.g. maps[i]."
        )
    else:
        raise ValueError(
            f"{name} must be a 2-D (h, w), 3-D (1, h, w) or 4-D (1, 1, h, w) map; "
            f"got a {t.ndim}-D array of shape {shape}"
        )
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    return out


def _channel_stats(values: Sequence[float], name: str) -> np.ndarray:
    """``mean`` or ``std`` as a float64 array of 3 (one value is repeated)."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 numbers (one per channel) or one number, got {values!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be 3 finite numbers (one per channel) or one number, got {values!r}")
    return arr


def denormalize(
    image: ArrayLike, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Undo a model's ``(x - mean) / std`` normalisation: ``image * std + mean``, clipped to ``[0, 1]``.

    Args:
        image: A normalised float image, ``(3, H, W)`` or ``(1, 3, H, W)`` (tensor, channels first, e.g. one
            item of ``torch.stack([preprocess(im) for im in pil_images])``) or ``(H, W, 3)`` (numpy, channels
            last).
        mean: The per-channel mean used by the preprocessing (3 numbers; e.g. open_clip's
            ``open_clip.get_model_preprocess_cfg(model)["mean"]`` or a HuggingFace
            ``processor.image_processor.image_mean``).
        std: The per-channel standard deviation (3 numbers), as ``mean``.

    Returns:
        A float32 CPU tensor of the same layout as ``image`` with values in ``[0, 1]``.

    Raises:
        TypeError: ``image`` is not a float tensor or array.
        ValueError: wrong shape, ``mean`` / ``std`` not 3 finite numbers, a non-positive ``std``, or values that
            lie far outside ``[0, 1]`` once de-normalised (the wrong ``mean`` / ``std`` for this image).

    Examples:
        >>> x = torch.full((3, 2, 2), 0.5)
        >>> denormalize((x - 0.4) / 0.2, mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2])[0, 0, 0].item()
        0.5
    """
    m = _channel_stats(mean, "mean")
    sd = _channel_stats(std, "std")
    if (sd <= 0).any():
        raise ValueError(f"std must be positive, got {std!r}")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if not t.is_floating_point():
            raise TypeError(f"a normalised image is a float tensor, got dtype {t.dtype}")
        channels = -3
    elif isinstance(image, np.ndarray):
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"a normalised image is a float array, got dtype {image.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(image))
        channels = -1
    else:
        raise TypeError(f"image must be a torch.Tensor or a numpy.ndarray, got {type(image).__name__}")
    if t.ndim < 3 or t.shape[channels] != 3 or (t.ndim == 4 and t.shape[0] != 1) or t.ndim > 4:
        layout = "(3, H, W) or (1, 3, H, W) tensor" if channels == -3 else "(H, W, 3) array"
        raise ValueError(f"a normalised image must be a {layout}; got shape {tuple(t.shape)}")
    shape = [1, 1, 1]
    shape[channels] = 3
    out = t.to(torch.float64) * torch.from_numpy(sd).view(shape) + torch.from_numpy(m).view(shape)
    if out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError("image contains NaN or infinite values")
    lo, hi = (float(out.min()), float(out.max())) if out.numel() else (0.0, 1.0)
    if lo < -0.05 or hi > 1.05:
        raise ValueError(
            f"once de-normalised with mean={list(m)} and std={list(sd)} the image spans [{lo:.3g}, {hi:.3g}], "
            "not [0, 1]: these are not the mean and std that normalised it (or the image was not normalised)"
        )
    return out.clamp(0.0, 1.0).to(torch.float32)


def _display_image(
    image: ImageLike, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    """:func:`_image_to_float_hwc`, after undoing the model's normalisation when ``mean`` and ``std`` are given."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the normalisation to undo), or neither")
    if mean is not None:
        if not isinstance(image, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"mean/std undo the normalisation of a float tensor or array; got a {type(image).__name__}, "
                "which is displayed as it is: drop mean and std"
            )
        image = denormalize(image, mean, std)  # type: ignore[arg-type]
    return _image_to_float_hwc(image)


def _image_to_float_hwc(image: ImageLike) -> np.ndarray:
    """Return ``image`` as a float64 ``(H, W, 3)`` array with values in [0, 1]."""
    try:
        from PIL import Image as _PILImageModule
    except ImportError:  # pragma: no cover - pillow is a dependency
        _PILImageModule = None  # type: ignore[assignment]

    if _PILImageModule is not None and isinstance(image, _PILImageModule.Image):
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "A" in image.getbands():
            raise ValueError(
                f"image has an alpha channel (PIL mode {image.mode!r}); expected 3 channels. "
                "Use image.convert('RGB') first."
            )
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        arr = np.asarray(image)
        channels_last = True
    elif isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(
                    f"image tensor must be (3, H, W) or (1, 3, H, W); got batch shape "
                    f"{tuple(arr.shape)}. Index one image first."
                )
            arr = arr[0]
        if arr.is_floating_point() and arr.dtype not in (torch.float32, torch.float64):
            arr = arr.to(torch.float32)
        arr = arr.numpy()
        channels_last = False
    elif isinstance(image, np.ndarray):
        arr = image
        channels_last = True
    else:
        raise TypeError(
            "image must be a torch.Tensor (3, H, W), a numpy.ndarray (H, W, 3) or a "
            f"PIL.Image.Image; got {type(image).__name__}"
        )

    if arr.dtype == np.bool_ or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"image must hold real numbers, got dtype {arr.dtype}")

    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3:
        kind = "torch tensor (C, H, W)" if not channels_last else "numpy/PIL array (H, W, C)"
        c = arr.shape[2] if channels_last else arr.shape[0]
        if c not in (1, 3):
            other = arr.shape[0] if channels_last else arr.shape[2]
            hint = ""
            if other == 3:
                hint = (" It looks channels-first; numpy images must be channels-last (H, W, 3)." if channels_last
                        else " It looks channels-last; torch images must be channels-first (3, H, W).")
            raise ValueError(
                f"image must have 3 channels (or 1 for greyscale); got {c} channels for a "
                f"{kind} of shape {tuple(arr.shape)}.{hint}"
            )
        if not channels_last:
            arr = np.transpose(arr, (1, 2, 0))
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    else:
        raise ValueError(
            f"image must be 3-D ((3, H, W) tensor or (H, W, 3) array) or 2-D greyscale; "
            f"got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(arr.shape)})")

    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(
                f"integer images must lie in [0, 255]; got range [{arr.min()}, {arr.max()}]"
            )
        return arr.astype(np.float64) / 255.0

    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    tol = 1e-3
    if lo < -tol or hi > 1.0 + tol:
        raise ValueError(
            f"float images must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]. Pass uint8 "
            "values for [0, 255] images; for a tensor normalised for the model (CLIP "
            "preprocessing), pass its mean= and std= so that the normalisation is undone."
        )
    return np.clip(out, 0.0, 1.0)


def _get_cmap(cmap: str | Colormap) -> Colormap:
    """Resolve a colormap name or object without touching pyplot."""
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name or a Colormap, got {type(cmap).__name__}")
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None


def _scores_1d(scores: ScoresLike, name: str = "scores") -> torch.Tensor:
    """Return one example's token scores as a float64 ``(L,)`` tensor."""
    t = _to_float_tensor(scores, name).to(torch.float64)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (L,) for one example (or (1, L)); got shape {tuple(t.shape)}"
        )
    return t


def _check_tokens(tokens: Sequence[str], scores: torch.Tensor) -> list[str]:
    """Validate a token list against its scores and return it as a list."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError("tokens must be a list of strings (one per score)")
    toks = list(tokens)
    for i, tok in enumerate(toks):
        if not isinstance(tok, str):
            raise TypeError(f"tokens[{i}] must be a str, got {type(tok).__name__}")
    if len(toks) != scores.shape[0]:
        raise ValueError(
            f"tokens and scores must have the same length; got {len(toks)} tokens and "
            f"{scores.shape[0]} scores. If scores cover the whole context (e.g. 77 positions), "
            "slice them to the word positions first."
        )
    if not toks:
        raise ValueError("tokens is empty: nothing to display")
    return toks


def _check_color(color: Sequence[int]) -> tuple[int, int, int]:
    """Validate an RGB triple of integers in [0, 255]."""
    try:
        vals = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise ValueError(f"color must be three integers in [0, 255], got {color!r}") from None
    if len(vals) != 3 or any(v < 0 or v > 255 for v in vals):
        raise ValueError(f"color must be three integers in [0, 255], got {color!r}")
    return vals  # type: ignore[return-value]


def _token_alphas(scores: torch.Tensor, normalize: bool) -> np.ndarray:
    """Opacity in [0, 1] per token (proportional to the score)."""
    s = scores.clamp_min(0.0)
    if normalize:
        # Sum normalisation (official), then rescale so the top word is opaque.
        shares = normalize_words(s)
        top = float(shares.max())
        a = shares / top if top > 0 else torch.zeros_like(shares)
    else:
        a = s.clamp(0.0, 1.0)
    return a.numpy()


def empty_words_message(layer_rule: str | None = None,
                        switch: str = 'GradECLIP(..., layer_rule="relu_then_sum")') -> str:
    """The sentence shown instead of a ranking when no word has a positive score.

    Args:
        layer_rule: How the explainer combined its layers (``GradECLIP.layer_rule``): ``"sum_then_relu"``
            (the paper's text rule), ``"relu_then_sum"``, or ``None`` when unknown.
        switch: How the reader selects the other rule (the CLI passes its flag).

    Returns:
        One sentence, without a final full stop.

    Examples:
        >>> empty_words_message("relu_then_sum")
        'no word has a positive contribution in any explained layer'
    """
    if layer_rule == "relu_then_sum":
        return "no word has a positive contribution in any explained layer"
    if layer_rule == "sum_then_relu":
        return ("no word has a positive contribution under the paper's rule (sum over layers, then ReLU): the "
                f"explained layers' contributions cancel; {switch} counts each layer's positive part")
    return ("no word has a positive contribution; under the paper's text rule (sum over layers, then ReLU) the "
            f"explained layers' contributions can cancel: {switch} counts each layer's positive part")


def _is_empty(scores: torch.Tensor) -> bool:
    """True when no token has a positive score (nothing to rank)."""
    return not bool((scores > 0).any())


def _root_figure(ax: Axes) -> Figure:
    """Return the root Figure of ``ax`` (works with SubFigures)."""
    try:
        fig = ax.get_figure(root=True)  # matplotlib >= 3.10
    except TypeError:  # pragma: no cover - older matplotlib
        fig = ax.figure
        while not isinstance(fig, Figure) and hasattr(fig, "figure"):
            fig = fig.figure
    return fig  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# Normalisation and resizing
# --------------------------------------------------------------------------- #
def normalize_map(maps: ArrayLike, mode: str = "minmax") -> torch.Tensor:
    """Normalise image maps to ``[0, 1]``, independently per example.

    This is the official display normalisation for image maps.

    Args:
        maps: One map ``(h, w)`` or a batch ``(N, h, w)`` / ``(N, 1, h, w)``, as a
            tensor or array. For 3-D/4-D input every leading index is one example.
        mode: ``"minmax"`` (default): ``(x - min) / (max - min)``, as Grad-ECLIP's
            authors do. ``"max"``: ``x / max`` (keeps zero at zero; for the
            non-negative raw Grad-ECLIP scores; negatives are clipped to 0).
            A constant map (including an all-zero one) becomes all zeros in
            both modes -- never NaN.

    Returns:
        A float tensor (CPU, same shape as ``maps``) with values in ``[0, 1]``.
        ``float64`` input stays ``float64``; anything else becomes ``float32``.

    Raises:
        ValueError: ``maps`` is not 2-, 3- or 4-D, contains NaN/inf, or ``mode``
            is unknown.

    Examples:
        >>> normalize_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
        tensor([[0.0000, 0.5000],
                [0.2500, 1.0000]])
        >>> normalize_map(torch.full((1, 1, 2, 2), 7.0)).sum().item()
        0.0
    """
    if mode not in _NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {_NORMALIZE_MODES}, got {mode!r}")
    t = _to_float_tensor(maps, "maps")
    if t.ndim not in (2, 3, 4):
        raise ValueError(
            "maps must be (h, w), (N, h, w) or (N, 1, h, w); "
            f"got a {t.ndim}-D array of shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        return t.clone()
    flat = t.reshape(1, -1) if t.ndim == 2 else t.reshape(t.shape[0], -1)
    if mode == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        shifted = flat - lo
        rng = hi - lo
    else:
        shifted = flat.clamp_min(0.0)
        rng = shifted.max(dim=1, keepdim=True).values
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    out = torch.where(rng > 0, shifted / safe, torch.zeros_like(shifted))
    return out.clamp(0.0, 1.0).reshape(t.shape)


def normalize_words(scores: ScoresLike) -> torch.Tensor:
    """Divide word scores by their sum over positions, per example.

    This is the official display normalisation for text maps (Grad-ECLIP's
    authors divide word importances by their sum). The divisor is the sum of
    absolute values, which equals the plain sum for the non-negative scores
    the explainers produce and avoids sign flips for signed inputs.

    Args:
        scores: ``(L,)`` for one example or ``(N, L)`` for a batch (tensor, array
            or list of floats).

    Returns:
        A float tensor with the same shape; each example sums to 1 (for
        non-negative input), or is all zeros if its scores are all zero.

    Raises:
        ValueError: ``scores`` is not 1- or 2-D or contains NaN/inf.

    Examples:
        >>> normalize_words([1.0, 3.0, 0.0])
        tensor([0.2500, 0.7500, 0.0000], dtype=torch.float64)
        >>> normalize_words(torch.zeros(2, 3)).sum().item()
        0.0
    """
    t = _to_float_tensor(scores, "scores")
    if t.ndim not in (1, 2):
        raise ValueError(
            f"scores must be (L,) or (N, L); got a {t.ndim}-D array of shape {tuple(t.shape)}"
        )
    flat = t.reshape(1, -1) if t.ndim == 1 else t
    total = flat.abs().sum(dim=1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = torch.where(total > 0, flat / safe, torch.zeros_like(flat))
    return out.reshape(t.shape)


def upsample_map(
    map: ArrayLike, size: int | tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resize one patch-grid map to an arbitrary ``(H, W)`` (square or not).

    Args:
        map: One map of shape ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        size: Target size, ``(H, W)`` (rows, columns -- the image's height and
            width), or an int for a square ``(size, size)``.
        mode: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``
            (``align_corners=False``). Bicubic may overshoot the input range
            slightly; values are not clipped.

    Returns:
        A float ``(H, W)`` tensor on the CPU.

    Raises:
        ValueError: wrong map rank or a batch with more than one map, a
            non-positive ``size``, or an unknown ``mode``.

    Examples:
        >>> upsample_map(torch.rand(7, 7), (224, 320)).shape
        torch.Size([224, 320])
        >>> upsample_map(torch.ones(1, 1, 2, 2), 5, mode="nearest").unique()
        tensor([1.])
    """
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {_UPSAMPLE_MODES}, got {mode!r}")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"size must be an int or a (H, W) pair, got {size!r}") from None
        if len(hw) != 2:
            raise ValueError(f"size must be an int or a (H, W) pair, got {size!r}")
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"size must be positive, got {hw}")
    m = _single_map(map)
    if m.dtype not in (torch.float32, torch.float64):
        m = m.to(torch.float32)
    kwargs: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(m[None, None], size=hw, mode=mode, **kwargs)
    return out[0, 0]


# --------------------------------------------------------------------------- #
# Image overlays and figures
# --------------------------------------------------------------------------- #
def overlay(
    image: ImageLike,
    map: ArrayLike,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Colour a map and blend it over an image.

    The map is upsampled (bilinear) to the image's own height and width (so
    non-square images keep their aspect ratio), min-max normalised if
    ``normalize`` (after upsampling, so the colours span the whole colormap),
    coloured with ``cmap`` and blended:
    ``out = (1 - alpha) * image + alpha * cmap(map)``, rounded to ``uint8``.

    Args:
        image: The image (see the module docstring for accepted forms).
        map: One map ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        cmap: Colormap name or :class:`~matplotlib.colors.Colormap`.
        alpha: Weight of the heat map, in ``[0, 1]``.
        normalize: Min-max normalise the map (default). If ``False`` the map is
            assumed to be in ``[0, 1]`` already and is clipped to it.
            An all-zero map with ``normalize=True`` is drawn as the colormap's
            colour at 0 everywhere.
        mean: With ``std``: the per-channel mean that normalised ``image`` for
            the model; the normalisation is undone for display
            (:func:`denormalize`). Leave both ``None`` for images in ``[0, 1]``
            or ``[0, 255]``.
        std: The per-channel standard deviation of that normalisation.

    Returns:
        An ``(H, W, 3)`` ``uint8`` array.

    Raises:
        ValueError: bad image/map shape, ``alpha`` outside ``[0, 1]``, unknown
            colormap.

    Examples:
        >>> img = torch.rand(3, 224, 300)
        >>> overlay(img, torch.rand(1, 1, 7, 7)).shape
        (224, 300, 3)
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap = _get_cmap(cmap)
    img = _display_image(image, mean, std)
    m = _single_map(map).to(torch.float64)
    up = upsample_map(m, img.shape[:2])
    up = normalize_map(up) if normalize else up.clamp(0.0, 1.0)
    heat = np.asarray(colormap(up.numpy()), dtype=np.float64)[..., :3]
    blended = (1.0 - float(alpha)) * img + float(alpha) * heat
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def _collect_maps(
    maps: MapsLike, titles: Sequence[str] | None
) -> tuple[list[torch.Tensor], list[str]]:
    """Split ``maps`` into single maps and pick a title for each."""
    if isinstance(maps, Mapping):
        names = [str(k) for k in maps.keys()]
        items = [_single_map(v, f"maps[{k!r}]") for k, v in maps.items()]
        default_titles = names
    elif isinstance(maps, (torch.Tensor, np.ndarray)):
        t = _to_float_tensor(maps, "maps")
        if t.ndim == 2:
            items = [t]
        elif t.ndim == 3:
            items = [t[i] for i in range(t.shape[0])]
        elif t.ndim == 4:
            if t.shape[1] != 1:
                raise ValueError(
                    f"4-D maps must be (N, 1, h, w); got shape {tuple(t.shape)}"
                )
            items = [t[i, 0] for i in range(t.shape[0])]
        else:
            raise ValueError(
                "maps must be (h, w), (N, h, w) or (N, 1, h, w); "
                f"got a {t.ndim}-D array of shape {tuple(t.shape)}"
            )
        default_titles = [f"map {i}" for i in range(len(items))]
    elif isinstance(maps, Sequence) and not isinstance(maps, str):
        items = [_single_map(v, f"maps[{i}]") for i, v in enumerate(maps)]
        default_titles = [f"map {i}" for i in range(len(items))]
    else:
        raise TypeError(
            "maps must be a tensor/array, a list of maps or a dict {name: map}; "
            f"got {type(maps).__name__}"
        )
    if not items:
        raise ValueError("maps is empty: nothing to plot")
    if titles is None:
        names = default_titles
    else:
        names = [str(s) for s in titles]
        if len(names) != len(items):
            raise ValueError(
                f"titles must have one entry per map; got {len(names)} titles for "
                f"{len(items)} maps"
            )
    return items, names


def plot_image_maps(
    image: ImageLike,
    maps: MapsLike,
    titles: Sequence[str] | None = None,
    *,
    scores: ScoresLike | None = None,
    ncols: int | None = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    figsize: tuple[float, float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """Plot an image followed by one overlay per map, in a grid.

    Typical uses: one map per prompt (``titles`` = prompts, ``scores`` = the
    CLIP similarities, giving titles like ``"a dog (0.31)"``), or several
    attribution methods side by side (``maps={"Grad-ECLIP": m1, "GradCAM": m2}``).

    Args:
        image: The image (see the module docstring for accepted forms).
        maps: ``(N, 1, h, w)`` / ``(N, h, w)`` / ``(h, w)`` tensor or array, a
            list of single maps, or a dict ``{title: map}``.
        titles: One title per map. Defaults to the dict keys, else ``"map i"``.
        scores: Optional number per map appended to its title as ``" (0.31)"``.
        ncols: Panels per row (default: all panels in one row, at most 5).
        cmap: Colormap for the overlays.
        alpha: Heat-map weight in ``[0, 1]``.
        figsize: Figure size in inches (default: 3 inches wide per panel, height
            following the image's aspect ratio).
        mean: With ``std``: the normalisation of ``image`` to undo for display,
            for an image straight from the model's preprocessing (see
            :func:`overlay`).
        std: See ``mean``.

    Returns:
        A :class:`matplotlib.figure.Figure` (not attached to pyplot) with
        exactly ``1 + N`` axes: the image (title ``"image"``) then the overlays.
        Grid cells left over in the last row are removed.

    Raises:
        ValueError: bad shapes, mismatched ``titles``/``scores`` lengths,
            ``ncols < 1``.

    Examples:
        >>> img, maps = torch.rand(3, 224, 300), torch.rand(2, 1, 7, 7)
        >>> fig = plot_image_maps(img, maps, ["a dog", "a cat"], scores=[0.31, 0.12])
        >>> [ax.get_title() for ax in fig.axes]
        ['image', 'a dog (0.31)', 'a cat (0.12)']
        >>> clip_mean, clip_std = [0.481, 0.458, 0.408], [0.269, 0.261, 0.276]
        >>> pixels = (img - torch.tensor(clip_mean).view(3, 1, 1)) / torch.tensor(clip_std).view(3, 1, 1)
        >>> fig = plot_image_maps(pixels, maps, mean=clip_mean, std=clip_std)  # a preprocessed image
    """
    items, names = _collect_maps(maps, titles)
    if scores is not None:
        sc = _to_float_tensor(scores, "scores").reshape(-1)
        if sc.numel() != len(items):
            raise ValueError(
                f"scores must have one value per map; got {sc.numel()} scores for "
                f"{len(items)} maps"
            )
        names = [f"{n} ({float(s):.2f})" for n, s in zip(names, sc.tolist())]
    n_panels = len(items) + 1
    if ncols is None:
        ncols = min(n_panels, 5)
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(int(ncols), n_panels)
    nrows = math.ceil(n_panels / ncols)
    img = _display_image(image, mean, std)
    if figsize is None:
        panel_h = 3.0 * img.shape[0] / img.shape[1]
        figsize = (3.0 * ncols, (panel_h + 0.4) * nrows)
    overlays = [overlay(img, m, cmap=cmap, alpha=alpha) for m in items]

    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    panels = [(img, "image")] + list(zip(overlays, names))
    for ax, (pic, title) in zip(axes, panels):
        ax.imshow(pic)
        ax.set_title(title)
        ax.set_axis_off()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig


# --------------------------------------------------------------------------- #
# Text: HTML and matplotlib
# --------------------------------------------------------------------------- #
def token_html(
    tokens: Sequence[str],
    scores: ScoresLike,
    *,
    title: str | None = None,
    normalize: bool = True,
    color: tuple[int, int, int] = (255, 140, 0),
    empty_message: str | None = None,
) -> str:
    """Render words shaded by importance as a self-contained HTML snippet.

    Each token becomes a ``<span>`` whose background is ``color`` with an
    opacity proportional to its score, and whose ``title`` attribute (hover
    tooltip) shows the raw score and its share of the total. Tokens, titles and
    attributes are HTML-escaped. Negative scores are shown with zero opacity.
    When no score is positive, a note (``empty_message``) says that no word has
    a positive contribution, instead of an unshaded line that reads as a ranking.

    Args:
        tokens: One display string per score (e.g. the caption's words; strip
            BPE markers such as ``</w>`` yourself if you want them hidden).
        scores: ``(L,)`` (or ``(1, L)``) scores for these tokens.
        title: Optional heading shown above the words.
        normalize: If ``True`` (default) scores are sum-normalised
            (:func:`normalize_words`) and rescaled so the most important word is
            fully opaque. If ``False``, scores are used as opacities directly
            (clipped to ``[0, 1]``).
        color: Highlight colour as ``(R, G, B)`` integers in ``[0, 255]``.
        empty_message: The note shown when no score is positive. Default:
            :func:`empty_words_message` for an unknown rule.

    Returns:
        An HTML fragment (a ``<div>``) with inline styles only.

    Raises:
        ValueError: ``len(tokens) != len(scores)``, no tokens, scores not 1-D,
            bad ``color``.
        TypeError: tokens that are not strings.

    Examples:
        >>> token_html(["a", "dog"], [0.1, 0.9]).count("<span")
        2
    """
    s = _scores_1d(scores)
    toks = _check_tokens(tokens, s)
    r, g, b = _check_color(color)
    alphas = _token_alphas(s, normalize)
    shares = normalize_words(s).numpy()
    parts = ['<div class="gradeclip-tokens" style="font-family: sans-serif; line-height: 2.2;">']
    if title is not None:
        parts.append(
            '<div class="gradeclip-title" style="font-weight: bold; margin-bottom: 2px;">'
            f"{html.escape(str(title))}</div>"
        )
    if _is_empty(s):
        note = empty_message if empty_message is not None else empty_words_message()
        parts.append(
            '<div class="gradeclip-empty" style="font-style: italic; color: #555; margin-bottom: 2px;">'
            f"{html.escape(note[:1].upper() + note[1:])}.</div>"
        )
    for tok, raw, share, a in zip(toks, s.tolist(), shares.tolist(), alphas.tolist()):
        tip = f"score: {raw:.4g} ({share * 100:.1f}% of total)"
        style = (
            f"background-color: rgba({r}, {g}, {b}, {a:.3f}); color: black; "
            "padding: 1px 3px; margin: 0 1px; border-radius: 3px; white-space: pre;"
        )
        parts.append(
            f'<span class="gradeclip-token" style="{style}" '
            f'title="{html.escape(tip, quote=True)}">{html.escape(tok, quote=True)}</span>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def tokens_html_page(
    rows: Sequence[tuple[str, Sequence[str], ScoresLike]],
    *,
    page_title: str = "Grad-ECLIP word importance",
    normalize: bool = True,
    color: tuple[int, int, int] = (255, 140, 0),
    empty_message: str | None = None,
) -> str:
    """Build a complete HTML page with one :func:`token_html` block per row.

    Args:
        rows: ``(title, tokens, scores)`` triples, e.g. one per caption.
        page_title: The page's ``<title>`` and top heading.
        normalize: Passed to :func:`token_html`.
        color: Passed to :func:`token_html`.
        empty_message: Passed to :func:`token_html` (the note of a row
            whose scores are all zero).

    Returns:
        A UTF-8 HTML document as a string (write it with
        ``Path("out.html").write_text(page, encoding="utf-8")``).

    Raises:
        ValueError: a row is not a 3-tuple, or any :func:`token_html` error
            (the message names the row index).

    Examples:
        >>> page = tokens_html_page([("caption 1", ["a", "dog"], [0.2, 0.8])])
        >>> page.startswith("<!DOCTYPE html>")
        True
    """
    blocks = []
    for i, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) != 3:
            raise ValueError(f"rows[{i}] must be a (title, tokens, scores) tuple")
        title, toks, sc = row
        try:
            blocks.append(
                token_html(toks, sc, title=title, normalize=normalize, color=color,
                           empty_message=empty_message)
            )
        except ValueError as exc:
            raise ValueError(f"rows[{i}]: {exc}") from exc
    esc_title = html.escape(page_title)
    body = '\n<hr style="border: none; border-top: 1px solid #ddd;">\n'.join(blocks)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc_title}</title>\n</head>\n"
        '<body style="font-family: sans-serif; margin: 1.5em;">\n'
        f"<h1 style=\"font-size: 1.3em;\">{esc_title}</h1>\n{body}\n</body>\n</html>\n"
    )


def plot_tokens(
    tokens: Sequence[str],
    scores: ScoresLike,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    normalize: bool = True,
    color: tuple[int, int, int] = (255, 140, 0),
    fontsize: float = 14,
    max_chars_per_line: int = 60,
    empty_message: str | None = None,
) -> Figure:
    """Draw words as boxes shaded by their score, with matplotlib.

    Words are laid out left to right and wrapped after roughly
    ``max_chars_per_line`` characters; each word's box is ``color`` with an
    opacity proportional to its score (same rule as :func:`token_html`). When
    no score is positive, the axes title says so (``empty_message``).

    Args:
        tokens: One display string per score.
        scores: ``(L,)`` (or ``(1, L)``) scores.
        ax: Axes to draw on. If ``None`` a new headless
            :class:`~matplotlib.figure.Figure` with one axes is created.
        title: Optional axes title.
        normalize: See :func:`token_html`.
        color: Box colour as ``(R, G, B)`` integers in ``[0, 255]``.
        fontsize: Font size in points.
        max_chars_per_line: Soft wrap width in characters.
        empty_message: The note shown when no score is positive. Default:
            :func:`empty_words_message` for an unknown rule.

    Returns:
        The (root) figure that holds the axes.

    Raises:
        ValueError: ``len(tokens) != len(scores)``, no tokens, bad ``color``.

    Examples:
        >>> fig = plot_tokens(["a", "photo", "of", "a", "dog"], [0, .2, 0, .1, .7])
        >>> len(fig.axes[0].texts)
        5
    """
    s = _scores_1d(scores)
    toks = _check_tokens(tokens, s)
    rgb = tuple(c / 255.0 for c in _check_color(color))
    alphas = _token_alphas(s, normalize)
    if max_chars_per_line < 1:
        raise ValueError(f"max_chars_per_line must be >= 1, got {max_chars_per_line}")
    if _is_empty(s):
        note = empty_message if empty_message is not None else empty_words_message()
        note = textwrap.fill(note[:1].upper() + note[1:] + ".", width=max(40, max_chars_per_line + 20))
        title = note if title is None else f"{title}\n{note}"

    lines: list[list[int]] = [[]]
    width = 0
    for i, tok in enumerate(toks):
        n = max(len(tok), 1) + 1
        if lines[-1] and width + n > max_chars_per_line:
            lines.append([])
            width = 0
        lines[-1].append(i)
        width += n

    pad_pts = fontsize * 0.65
    if ax is None:
        # Rough extent: ~0.6 em per character plus the gap and box padding per word.
        widest = max(
            sum(max(len(toks[i]), 1) * 0.6 * fontsize + pad_pts for i in line) for line in lines
        )
        fig_w = min(max(2.0, widest / 72.0 + 0.4), 16.0)
        fig_h = 0.3 + 2.0 * fontsize / 72.0 * len(lines) + (0.4 * (title.count("\n") + 1) if title else 0.0)
        fig = Figure(figsize=(fig_w, fig_h))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = _root_figure(ax)
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if title is not None:
        ax.set_title(title)

    for row, line in enumerate(lines):
        y = 1.0 - (row + 0.5) / len(lines)
        prev = None
        for i in line:
            box = dict(boxstyle="round,pad=0.25", facecolor=(*rgb, float(alphas[i])),
                       edgecolor=(0.6, 0.6, 0.6, 0.6), linewidth=0.5)
            text = toks[i] if toks[i] else " "
            if prev is None:
                prev = ax.text(0.01, y, text, fontsize=fontsize, va="center", ha="left",
                               bbox=box, transform=ax.transAxes)
            else:
                # Positioned relative to the previous word's extent at draw time,
                # so widths are exact without measuring text here.
                prev = ax.annotate(text, xy=(1.0, 0.5), xycoords=prev,
                                   xytext=(pad_pts, 0), textcoords="offset points",
                                   fontsize=fontsize, va="center", ha="left", bbox=box)
    return fig


# --------------------------------------------------------------------------- #
# Captum converters
# --------------------------------------------------------------------------- #
def to_captum_image(
    map: ArrayLike,
    image: ImageLike,
    *,
    sign: str = "positive",
    mode: str = "bilinear",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert a map and image to the HWC numpy arrays Captum's plots expect.

    The output is ready for::

        from captum.attr import visualization as cviz
        attr, img = to_captum_image(map, image)
        fig, ax = cviz.visualize_image_attr(attr, img, method="blended_heat_map",
                                            sign="positive", use_pyplot=False)

    Captum wants channels-last numpy arrays (tensors raise ``TypeError`` and
    channels-first arrays silently give garbage), so the map is upsampled to
    the image's ``(H, W)`` and returned as ``(H, W, 1)``. Values stay raw
    (Captum normalises by its own outlier percentile).

    **All-zero maps:** Captum's normalisation divides by a scale computed from
    the values kept by ``sign`` and asserts when that scale is 0 (e.g. an
    all-zero ReLU'd map with ``sign="positive"``). Adding an epsilon would make
    Captum paint a uniform, fully saturated map, which is misleading, so this
    function raises a :class:`ValueError` instead. Use :func:`overlay`, which
    draws such a map as the colormap's value at 0.

    Args:
        map: One map ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        image: The image (see the module docstring for accepted forms).
        sign: The ``sign`` you will pass to Captum (``"positive"``,
            ``"negative"``, ``"absolute_value"`` or ``"all"``); only used to
            check that Captum will have something to draw.
        mode: Upsampling mode, see :func:`upsample_map`.
        mean: With ``std``: the normalisation of ``image`` to undo (see
            :func:`overlay`).
        std: See ``mean``.

    Returns:
        ``(attr_hwc, image_hwc)``: ``float32`` ``(H, W, 1)`` attribution and
        ``float32`` ``(H, W, 3)`` image with values in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, unknown ``sign``, or a map with no values of
            the requested sign (e.g. all zeros).

    Examples:
        >>> attr, img = to_captum_image(torch.rand(7, 7), torch.rand(3, 224, 224))
        >>> attr.shape, img.shape
        ((224, 224, 1), (224, 224, 3))
    """
    if sign not in _CAPTUM_SIGNS:
        raise ValueError(f"sign must be one of {_CAPTUM_SIGNS}, got {sign!r}")
    img = _display_image(image, mean, std)
    m = _single_map(map)
    if sign == "positive":
        empty = not bool((m > 0).any())
    elif sign == "negative":
        empty = not bool((m < 0).any())
    else:
        empty = not bool((m != 0).any())
    if empty:
        what = {"positive": "no positive values", "negative": "no negative values"}.get(
            sign, "only zeros"
        )
        raise ValueError(
            f"map has {what}, so Captum's visualize_image_attr(sign={sign!r}) would fail with "
            "'Cannot normalize by scale factor = 0'. Nothing to show: use viz.overlay() "
            "for such maps."
        )
    up = upsample_map(m, img.shape[:2], mode=mode)
    attr = up.numpy().astype(np.float32)[:, :, None]
    return attr, img.astype(np.float32)


def to_captum_text_record(
    tokens: Sequence[str],
    scores: ScoresLike,
    *,
    similarity: float,
    label: str = "",
) -> "VisualizationDataRecord":
    """Wrap word scores in a Captum ``VisualizationDataRecord``.

    Captum colours words by values clipped to ``[-1, 1]``, so the scores are
    divided by their largest absolute value (an all-zero row stays zero).

    Notes:
        ``captum.attr.visualization.visualize_text`` asserts that IPython is
        installed; outside notebooks use :func:`token_html` /
        :func:`tokens_html_page` instead. Captum does not HTML-escape tokens.

    Args:
        tokens: One display string per score.
        scores: ``(L,)`` (or ``(1, L)``) raw scores for these tokens.
        similarity: The image-text score shown as Captum's "predicted"
            probability column.
        label: Text shown in the label columns (e.g. the caption or prompt).

    Returns:
        A ``VisualizationDataRecord`` with ``word_attributions`` a float ``(L,)``
        tensor in ``[-1, 1]``, ``pred_prob=similarity``, ``pred_class``,
        ``true_class`` and ``attr_class`` set to ``label``, ``attr_score`` the
        sum of the raw scores, ``raw_input_ids=tokens`` and
        ``convergence_score=None``.

    Raises:
        ValueError: ``len(tokens) != len(scores)``, no tokens, scores not 1-D,
            non-finite ``similarity``.

    Examples:
        >>> rec = to_captum_text_record(["a", "dog"], [0.5, 2.0], similarity=0.31)
        >>> rec.word_attributions
        tensor([0.2500, 1.0000])
    """
    from captum.attr import visualization as cviz  # lazy: imports pyplot

    s = _scores_1d(scores)
    toks = _check_tokens(tokens, s)
    sim = float(similarity)
    if not math.isfinite(sim):
        raise ValueError(f"similarity must be finite, got {similarity!r}")
    peak = float(s.abs().max())
    words = (s / peak if peak > 0 else torch.zeros_like(s)).to(torch.float32)
    return cviz.VisualizationDataRecord(
        word_attributions=words,
        pred_prob=sim,
        pred_class=label,  # type: ignore[arg-type]
        true_class=label,  # type: ignore[arg-type]
        attr_class=label,  # type: ignore[arg-type]
        attr_score=float(s.sum()),
        raw_input_ids=toks,
        convergence_score=None,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #
def save_figure(
    fig: Figure, path: str | Path, dpi: int = 150, **savefig_kwargs: Any
) -> Path:
    """Save a figure to disk (format from the file suffix) and return the path.

    Parent directories are created. ``bbox_inches="tight"`` is used unless
    overridden in ``savefig_kwargs``.

    Args:
        fig: A :class:`matplotlib.figure.Figure` (e.g. from
            :func:`plot_image_maps`).
        path: Destination file, e.g. ``"out/maps.png"`` or ``"maps.pdf"``.
        dpi: Resolution in dots per inch.
        **savefig_kwargs: Extra arguments for :meth:`Figure.savefig`.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError: ``fig`` is not a matplotlib Figure.

    Examples:
        >>> import tempfile
        >>> out_dir = Path(tempfile.mkdtemp())
        >>> save_figure(plot_tokens(["a", "dog"], [0.2, 0.8]), out_dir / "words.png").name
        'words.png'
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    fig.savefig(out, dpi=dpi, **savefig_kwargs)
    return out
