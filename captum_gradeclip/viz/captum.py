"""Converters to the formats of Captum's own plots (``captum.attr.visualization``).

Captum draws channels-last numpy images and colours words by values in ``[-1, 1]``; these helpers turn a
Grad-ECLIP map and its image, or a word map and its tokens, into exactly that. Captum's visualisation module
(which imports pyplot) is imported when a converter runs, not when this module is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .inputs import ArrayLike, ImageLike, ScoresLike, check_tokens, display_image, scores_1d, single_map
from .normalize import upsample_map

if TYPE_CHECKING:  # pragma: no cover - typing only
    from captum.attr._utils.visualization import VisualizationDataRecord

__all__ = ["to_captum_image", "to_captum_text_record"]

_CAPTUM_SIGNS = ("positive", "negative", "absolute_value", "all")


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
        image: The image (see :mod:`captum_gradeclip.viz` for accepted forms).
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
    img = display_image(image, mean, std)
    m = single_map(map)
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

    s = scores_1d(scores)
    toks = check_tokens(tokens, s)
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
