"""Display helpers for Grad-ECLIP image and text explanation maps.

The package is split by what is shown: :mod:`~captum_gradeclip.viz.inputs` (what the helpers accept),
:mod:`~captum_gradeclip.viz.normalize` (display normalisations, resizing), :mod:`~captum_gradeclip.viz.image`
(overlays and grids), :mod:`~captum_gradeclip.viz.text` (word maps), :mod:`~captum_gradeclip.viz.captum`
(Captum's formats) and :mod:`~captum_gradeclip.viz.figures` (saving). Importing it does not import matplotlib:
the drawing functions do, when they run.

Everything here is headless-safe: figures are built with
:class:`matplotlib.figure.Figure` directly (never the global ``pyplot`` state)
and nothing depends on IPython, so the functions work in scripts, on servers
and in tests with the ``Agg`` backend.

Inputs accepted throughout this package
---------------------------------------
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

from .captum import to_captum_image, to_captum_text_record
from .figures import save_figure
from .image import overlay, plot_image_maps
from .inputs import denormalize
from .normalize import normalize_map, normalize_words, upsample_map
from .text import empty_words_message, plot_tokens, token_html, tokens_html_page

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
