"""Evaluation metrics for (Grad-ECLIP) explanation maps of CLIP-style models.

Faithfulness (image): :func:`deletion_curve`, :func:`insertion_curve`,
:func:`deletion_auc`, :func:`insertion_auc`, :func:`auc`.

Faithfulness (text): :func:`word_deletion_curve`, :func:`word_insertion_curve`,
:func:`word_deletion_auc`, :func:`word_insertion_auc`, :func:`clip_word_mask`.

Localization: :func:`pointing_game` (strict, or the literature's tolerance of 15 px at 224 px with
``tolerance="standard"``), :func:`energy_pointing_game`.

Captum interop: :func:`expand_to_input` (for ``captum.metrics.infidelity``) and
:func:`tuple_output` (for ``captum.metrics.sensitivity_max``).

A *scorer* is any callable ``scorer(inputs, *additional_forward_args)`` that
returns a ``(N, T)`` tensor of similarities (images ``(N, 3, H, W)`` or token
ids ``(N, L)``); ``target`` picks the column as in Captum.
"""

from ._captum import expand_to_input, tuple_output
from ._localization import STANDARD_TOLERANCE, energy_pointing_game, pointing_game, tolerance_pixels  # noqa: F401
from ._perturbation import auc, deletion_auc, deletion_curve, insertion_auc, insertion_curve
from ._text import (
    clip_word_mask,
    word_deletion_auc,
    word_deletion_curve,
    word_insertion_auc,
    word_insertion_curve,
)

__all__ = [
    "auc",
    "clip_word_mask",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "expand_to_input",
    "insertion_auc",
    "insertion_curve",
    "pointing_game",
    "tolerance_pixels",
    "tuple_output",
    "word_deletion_auc",
    "word_deletion_curve",
    "word_insertion_auc",
    "word_insertion_curve",
]
