"""What the display helpers accept, coerced to one form each: maps, word scores, tokens, colours and images.

Every function here validates one kind of input and returns it as a CPU tensor or array of a fixed layout, or
raises a :class:`ValueError` / :class:`TypeError` that names the argument and says what to pass instead. Nothing
here imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL.Image import Image as PILImage

ArrayLike = Union[torch.Tensor, np.ndarray]
ImageLike = Union[torch.Tensor, np.ndarray, "PILImage"]
ScoresLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
MapsLike = Union[ArrayLike, Sequence[ArrayLike], Mapping[str, ArrayLike]]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FLOAT_RANGE_TOLERANCE = 1e-3  # float images may overshoot [0, 1] by this much (resampling, rounding)
_DENORMALIZED_TOLERANCE = 0.05  # a de-normalised image further outside [0, 1] had another mean / std


# ----------------------------------------------------------------------------------------------- numbers
def to_float_tensor(x: Any, name: str) -> torch.Tensor:
    """A tensor, array or sequence of numbers as a detached CPU float tensor (float32 unless float64 is given).

    Raises:
        TypeError: ``x`` is not numeric, or holds complex or boolean values.
        ValueError: ``x`` contains NaN or infinite values.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a torch.Tensor, a numpy.ndarray or a sequence of numbers; "
                            f"got {type(x).__name__}") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def channel_stats(values: Sequence[float], name: str) -> np.ndarray:
    """``mean`` or ``std`` as a float64 array of 3 (one number is repeated for every channel)."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 numbers (one per channel) or one number, got {values!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be 3 finite numbers (one per channel) or one number, got {values!r}")
    return arr


# -------------------------------------------------------------------------------------------------- maps
def single_map(map: ArrayLike, name: str = "map") -> torch.Tensor:
    """One image map, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``, as a ``(h, w)`` float tensor."""
    t = to_float_tensor(map, name)
    shape = tuple(t.shape)
    if t.ndim == 2:
        out = t
    elif t.ndim == 3 and shape[0] == 1:
        out = t[0]
    elif t.ndim == 4 and shape[:2] == (1, 1):
        out = t[0, 0]
    elif t.ndim in (3, 4):
        raise ValueError(f"{name} must hold a single map of shape (h, w), (1, h, w) or (1, 1, h, w); "
                         f"got shape {shape}. Index the batch first, e.g. maps[i].")
    else:
        raise ValueError(f"{name} must be a 2-D (h, w), 3-D (1, h, w) or 4-D (1, 1, h, w) map; "
                         f"got a {t.ndim}-D array of shape {shape}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    return out


def _batch_of_maps(maps: ArrayLike) -> list[torch.Tensor]:
    """The single maps of a ``(h, w)``, ``(N, h, w)`` or ``(N, 1, h, w)`` tensor or array."""
    t = to_float_tensor(maps, "maps")
    if t.ndim == 2:
        return [t]
    if t.ndim == 3:
        return list(t.unbind(0))
    if t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"4-D maps must be (N, 1, h, w); got shape {tuple(t.shape)}")
        return list(t[:, 0].unbind(0))
    raise ValueError(f"maps must be (h, w), (N, h, w) or (N, 1, h, w); got a {t.ndim}-D array of shape "
                     f"{tuple(t.shape)}")


def collect_maps(maps: MapsLike, titles: Sequence[str] | None) -> tuple[list[torch.Tensor], list[str]]:
    """Split ``maps`` (a batch, a list of maps or a dict ``{title: map}``) into single maps, with a title each.

    Titles default to the dict's keys, else ``"map i"``; given ``titles`` must have one entry per map.
    """
    if isinstance(maps, Mapping):
        items = [single_map(v, f"maps[{k!r}]") for k, v in maps.items()]
        default_titles = [str(k) for k in maps.keys()]
    else:
        if isinstance(maps, (torch.Tensor, np.ndarray)):
            items = _batch_of_maps(maps)
        elif isinstance(maps, Sequence) and not isinstance(maps, str):
            items = [single_map(v, f"maps[{i}]") for i, v in enumerate(maps)]
        else:
            raise TypeError("maps must be a tensor/array, a list of maps or a dict {name: map}; "
                            f"got {type(maps).__name__}")
        default_titles = [f"map {i}" for i in range(len(items))]
    if not items:
        raise ValueError("maps is empty: nothing to plot")
    if titles is None:
        return items, default_titles
    names = [str(s) for s in titles]
    if len(names) != len(items):
        raise ValueError(f"titles must have one entry per map; got {len(names)} titles for {len(items)} maps")
    return items, names


# ------------------------------------------------------------------------------------------- words
def scores_1d(scores: ScoresLike, name: str = "scores") -> torch.Tensor:
    """One example's token scores, ``(L,)`` or ``(1, L)``, as a float64 ``(L,)`` tensor."""
    t = to_float_tensor(scores, name).to(torch.float64)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (L,) for one example (or (1, L)); got shape {tuple(t.shape)}")
    return t


def check_tokens(tokens: Sequence[str], scores: torch.Tensor) -> list[str]:
    """``tokens`` as a list of strings, one per score."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError("tokens must be a list of strings (one per score)")
    toks = list(tokens)
    for i, tok in enumerate(toks):
        if not isinstance(tok, str):
            raise TypeError(f"tokens[{i}] must be a str, got {type(tok).__name__}")
    if len(toks) != scores.shape[0]:
        raise ValueError(f"tokens and scores must have the same length; got {len(toks)} tokens and "
                         f"{scores.shape[0]} scores. If scores cover the whole context (e.g. 77 positions), "
                         "slice them to the word positions first.")
    if not toks:
        raise ValueError("tokens is empty: nothing to display")
    return toks


def check_color(color: Sequence[int]) -> tuple[int, int, int]:
    """An ``(R, G, B)`` triple of integers in ``[0, 255]``."""
    try:
        vals = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise ValueError(f"color must be three integers in [0, 255], got {color!r}") from None
    if len(vals) != 3 or any(v < 0 or v > 255 for v in vals):
        raise ValueError(f"color must be three integers in [0, 255], got {color!r}")
    return vals  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ images
def denormalize(image: ArrayLike, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
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
    m = channel_stats(mean, "mean")
    sd = channel_stats(std, "std")
    if (sd <= 0).any():
        raise ValueError(f"std must be positive, got {std!r}")
    t, channels = _normalized_image(image)
    shape = [1, 1, 1]
    shape[channels] = 3
    out = t.to(torch.float64) * torch.from_numpy(sd).view(shape) + torch.from_numpy(m).view(shape)
    if out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError("image contains NaN or infinite values")
    lo, hi = (float(out.min()), float(out.max())) if out.numel() else (0.0, 1.0)
    if lo < -_DENORMALIZED_TOLERANCE or hi > 1.0 + _DENORMALIZED_TOLERANCE:
        raise ValueError(
            f"once de-normalised with mean={list(m)} and std={list(sd)} the image spans [{lo:.3g}, {hi:.3g}], "
            "not [0, 1]: these are not the mean and std that normalised it (or the image was not normalised)")
    return out.clamp(0.0, 1.0).to(torch.float32)


def _normalized_image(image: ArrayLike) -> tuple[torch.Tensor, int]:
    """A normalised image as a CPU tensor and the index of its channel dimension (-3 for tensors, -1 for arrays)."""
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
    if t.ndim < 3 or t.ndim > 4 or t.shape[channels] != 3 or (t.ndim == 4 and t.shape[0] != 1):
        layout = "(3, H, W) or (1, 3, H, W) tensor" if channels == -3 else "(H, W, 3) array"
        raise ValueError(f"a normalised image must be a {layout}; got shape {tuple(t.shape)}")
    return t, channels


def display_image(image: ImageLike, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray:
    """``image`` as a float64 ``(H, W, 3)`` array in ``[0, 1]``, its normalisation undone when ``mean`` and
    ``std`` are given (see :func:`denormalize`)."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the normalisation to undo), or neither")
    if mean is not None:
        if not isinstance(image, (torch.Tensor, np.ndarray)):
            raise TypeError(f"mean/std undo the normalisation of a float tensor or array; got a "
                            f"{type(image).__name__}, which is displayed as it is: drop mean and std")
        image = denormalize(image, mean, std)  # type: ignore[arg-type]
    arr, channels_last = _image_array(image)
    return _unit_range(_three_channels_hwc(arr, channels_last))


def _image_array(image: ImageLike) -> tuple[np.ndarray, bool]:
    """The pixels of a PIL image, tensor or array, and whether their channels come last."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode in _ALPHA_MODES or "A" in image.getbands():
            raise ValueError(f"image has an alpha channel (PIL mode {image.mode!r}); expected 3 channels. "
                             "Use image.convert('RGB') first.")
        return np.asarray(image if image.mode in ("RGB", "L") else image.convert("RGB")), True
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"image tensor must be (3, H, W) or (1, 3, H, W); got batch shape "
                                 f"{tuple(t.shape)}. Index one image first.")
            t = t[0]
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)
        return t.numpy(), False
    if isinstance(image, np.ndarray):
        return image, True
    raise TypeError("image must be a torch.Tensor (3, H, W), a numpy.ndarray (H, W, 3) or a "
                    f"PIL.Image.Image; got {type(image).__name__}")


def _three_channels_hwc(arr: np.ndarray, channels_last: bool) -> np.ndarray:
    """A greyscale ``(H, W)`` or a 1- / 3-channel image as ``(H, W, 3)``."""
    if arr.dtype == np.bool_ or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"image must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        _check_channels(arr, channels_last)
        if not channels_last:
            arr = np.transpose(arr, (1, 2, 0))
    else:
        raise ValueError(f"image must be 3-D ((3, H, W) tensor or (H, W, 3) array) or 2-D greyscale; "
                         f"got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(arr.shape)})")
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _check_channels(arr: np.ndarray, channels_last: bool) -> None:
    """A 3-D image must have 1 or 3 channels where its layout puts them; the error spots a transposed one."""
    count, other = (arr.shape[2], arr.shape[0]) if channels_last else (arr.shape[0], arr.shape[2])
    if count in (1, 3):
        return
    kind = "numpy/PIL array (H, W, C)" if channels_last else "torch tensor (C, H, W)"
    hint = ""
    if other == 3:
        hint = (" It looks channels-first; numpy images must be channels-last (H, W, 3)." if channels_last
                else " It looks channels-last; torch images must be channels-first (3, H, W).")
    raise ValueError(f"image must have 3 channels (or 1 for greyscale); got {count} channels for a "
                     f"{kind} of shape {tuple(arr.shape)}.{hint}")


def _unit_range(arr: np.ndarray) -> np.ndarray:
    """Integer pixels in ``[0, 255]`` or float pixels in ``[0, 1]``, as float64 in ``[0, 1]``."""
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"integer images must lie in [0, 255]; got range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.float64) / 255.0
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < -_FLOAT_RANGE_TOLERANCE or hi > 1.0 + _FLOAT_RANGE_TOLERANCE:
        raise ValueError(f"float images must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]. Pass uint8 "
                         "values for [0, 255] images; for a tensor normalised for the model (CLIP "
                         "preprocessing), pass its mean= and std= so that the normalisation is undone.")
    return np.clip(out, 0.0, 1.0)
