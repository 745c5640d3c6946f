"""Word deletion / insertion curves for text explanations."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from ._perturbation import auc
from ._utils import (
    MetricTarget,
    check_finite,
    check_positive_int,
    format_forward_args,
    normalize_target,
    run_chunked,
)


def clip_word_mask(token_ids: Tensor) -> Tensor:
    r"""Word positions of CLIP-tokenized text: strictly between SOT and EOT.

    CLIP's text encoder pools the feature at ``token_ids.argmax(-1)``, the end
    of text token (EOT, id 49407, the largest id of the CLIP BPE vocabulary).
    This returns True at positions ``1 .. eot - 1``: the start token, the EOT
    token and the padding after it (0 in open_clip, EOT again in HuggingFace)
    are excluded, punctuation tokens are included. This is also where
    Grad-ECLIP text maps can be non-zero. For other tokenizers (e.g. SigLIP)
    build the mask yourself.

    Args:
        token_ids (Tensor): ``(N, L)`` integer token ids.

    Returns:
        Tensor: ``(N, L)`` bool mask.

    Raises:
        ValueError: If ``token_ids`` is not a 2-D integer tensor.

    Examples::

        >>> import torch
        >>> clip_word_mask(torch.tensor([[49406, 320, 1929, 269, 49407, 0, 0]]))
        tensor([[False,  True,  True,  True, False, False, False]])
    """
    _check_token_ids(token_ids)
    eot = token_ids.argmax(dim=-1, keepdim=True)
    pos = torch.arange(token_ids.shape[1], device=token_ids.device).unsqueeze(0)
    return (pos >= 1) & (pos < eot)


def _check_token_ids(token_ids: Tensor) -> None:
    if not isinstance(token_ids, Tensor):
        raise TypeError(f"`token_ids` must be a torch.Tensor, got {type(token_ids).__name__}.")
    if token_ids.dim() != 2 or token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise ValueError(
            "`token_ids` must be a 2-D integer (N, L) tensor; got shape "
            f"{tuple(token_ids.shape)} with dtype {token_ids.dtype}."
        )


def _word_setup(
    token_ids: Tensor,
    word_maps: Tensor,
    word_mask: Optional[Tensor],
    steps: Optional[int],
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Validate the text arguments; return (rank, word_mask, n_words, steps)."""
    _check_token_ids(token_ids)
    n, length = token_ids.shape
    if n == 0:
        raise ValueError("`token_ids` is an empty batch (N=0).")
    if not isinstance(word_maps, Tensor):
        raise TypeError(f"`word_maps` must be a torch.Tensor, got {type(word_maps).__name__}.")
    if word_maps.dim() == 3 and word_maps.shape[1] == 1:
        word_maps = word_maps[:, 0]
    if word_maps.shape != token_ids.shape:
        raise ValueError(
            f"`word_maps` must have the shape of `token_ids` {tuple(token_ids.shape)} "
            f"(one score per token); got {tuple(word_maps.shape)}."
        )
    word_maps = word_maps.to(token_ids.device)
    if not word_maps.is_floating_point():
        word_maps = word_maps.float()
    check_finite(word_maps, "word_maps")
    if word_mask is None:
        word_mask = clip_word_mask(token_ids)
    else:
        if not isinstance(word_mask, Tensor):
            raise TypeError(
                f"`word_mask` must be a bool torch.Tensor, got {type(word_mask).__name__}."
            )
        if word_mask.shape != token_ids.shape:
            raise ValueError(
                f"`word_mask` must have the shape of `token_ids` {tuple(token_ids.shape)}; "
                f"got {tuple(word_mask.shape)}."
            )
        if word_mask.dtype != torch.bool:
            if not bool(((word_mask == 0) | (word_mask == 1)).all()):
                raise ValueError("`word_mask` must be bool (or numeric with only 0/1 values).")
            word_mask = word_mask != 0
        word_mask = word_mask.to(token_ids.device)
    n_words = word_mask.sum(1)
    if steps is None:
        steps = max(1, int(n_words.max()))
    else:
        steps = check_positive_int(steps, "steps")
    keyed = torch.where(word_mask, word_maps, torch.full_like(word_maps, -torch.inf))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(length, device=order.device).expand(n, length))
    return rank, word_mask, n_words, steps


def _word_curve(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget,
    word_mask: Optional[Tensor],
    replace_with: int,
    steps: Optional[int],
    additional_forward_args: Any,
    batch_size: int,
    insertion: bool,
) -> Tuple[Tensor, Tensor]:
    """Shared implementation; returns (curve, per-example number of used steps)."""
    if isinstance(replace_with, bool) or not isinstance(replace_with, numbers.Integral):
        raise ValueError(f"`replace_with` must be an int token id, got {replace_with!r}.")
    rank, word_mask, n_words, steps = _word_setup(token_ids, word_maps, word_mask, steps)
    batch_size = check_positive_int(batch_size, "batch_size")
    n = token_ids.shape[0]
    tgt = normalize_target(target, n)
    fwd_args = format_forward_args(additional_forward_args, n)

    ids = token_ids.detach()
    replaced = torch.where(word_mask, torch.full_like(ids, int(replace_with)), ids)
    start, end = (replaced, ids) if insertion else (ids, replaced)
    example_of_row = torch.arange(n).repeat_interleave(steps + 1)
    step_of_row = torch.arange(steps + 1).repeat(n)

    def build(rows: Tensor) -> Tensor:
        ex = example_of_row[rows].to(ids.device)
        st = step_of_row[rows].to(ids.device)
        # the first min(k, n_words) words of the ranking are changed at step k
        changed = rank[ex] < torch.minimum(st, n_words[ex]).unsqueeze(1)
        return torch.where(changed, end[ex], start[ex])

    flat = run_chunked(
        text_scorer, n * (steps + 1), build, example_of_row, tgt, fwd_args, batch_size
    )
    return flat.view(n, steps + 1), n_words.clamp(max=steps).cpu()


_SHARED_ARGS_DOC = """
        text_scorer (Callable): ``text_scorer(token_ids, *additional_forward_args)``
            returning a ``(M, T)`` (or ``(M,)``) tensor of similarities for
            ``M`` token sequences ``(M, L)``.
        token_ids (Tensor): ``(N, L)`` integer token ids.
        word_maps (Tensor): ``(N, L)`` token scores aligned with ``token_ids``
            (``(N, 1, L)`` is accepted). Only the ordering among word positions
            matters.
        target (int, list[int], Tensor or None, optional): Captum semantics,
            see :func:`deletion_curve`. Default: None
        word_mask (Tensor, optional): ``(N, L)`` bool, True at the tokens that
            may be replaced. Default: None, meaning :func:`clip_word_mask`
            (positions strictly between SOT and the EOT found by
            ``argmax``, so special tokens and padding are never touched).
            ``word_maps != 0`` is deliberately *not* the default: a word whose
            score is exactly 0 (our text maps are zero outside the words, but
            also after the ReLU) must still be replaced, last.
        replace_with (int, optional): Token id written at removed words. 0 is
            open_clip's padding id (in the CLIP BPE vocabulary it decodes to
            "!"); choose a neutral token for your tokenizer if that matters.
            Default: 0
        steps (int, optional): Number of steps (>= 1). Step ``k`` changes the
            ``min(k, W_i)`` best-ranked words of example ``i`` (``W_i`` words),
            so an example with fewer words keeps its final value. Default:
            None, meaning the largest ``W_i`` in the batch (at least 1).
        additional_forward_args (Any, optional): Extra scorer arguments;
            tensors must be per-example (first dimension ``N``). Default: None
        batch_size (int, optional): Maximum sequences per scorer call.
            Default: 64
"""


def word_deletion_curve(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget = None,
    *,
    word_mask: Optional[Tensor] = None,
    replace_with: int = 0,
    steps: Optional[int] = None,
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> Tensor:
    r"""Word deletion curve: similarity as the most important words are replaced.

    Words (positions where ``word_mask`` is True) are ranked by decreasing
    ``word_maps`` (stable sort: ties go to the earlier position). At step ``k``
    the ``min(k, W_i)`` best-ranked words are replaced by ``replace_with``;
    index 0 is the original text. All sequences are scored in chunks of
    ``batch_size`` under ``torch.no_grad()``.

    Args:{args}
    Returns:
        Tensor: ``(N, steps + 1)`` selected similarities.

    Raises:
        ValueError: Shape mismatch between ``word_maps``/``word_mask`` and
            ``token_ids``, non-finite maps, ``steps`` < 1, a ``target`` of the
            wrong length or out of range, a non-integer ``replace_with``.
        TypeError: Arguments of an unsupported type.

    Examples::

        >>> import torch
        >>> ids = torch.tensor([[49406, 5, 7, 9, 49407, 0]])
        >>> scorer = lambda t: ((t == 5) * 3.0 + (t == 7) * 2.0 + (t == 9)).sum(1)
        >>> word_maps = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0, 0.0]])
        >>> word_deletion_curve(scorer, ids, word_maps)
        tensor([[6., 3., 1., 0.]])
    """
    return _word_curve(
        text_scorer, token_ids, word_maps, target, word_mask, replace_with, steps,
        additional_forward_args, batch_size, insertion=False,
    )[0]  # fmt: skip


def word_insertion_curve(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget = None,
    *,
    word_mask: Optional[Tensor] = None,
    replace_with: int = 0,
    steps: Optional[int] = None,
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> Tensor:
    r"""Word insertion curve: start with every word replaced, restore the best first.

    Index 0 is the text with all words (``word_mask``) replaced by
    ``replace_with``; at step ``k`` the ``min(k, W_i)`` best-ranked words are
    restored, so the last point of an example is its original text once
    ``k >= W_i``. Ranking and batching as in :func:`word_deletion_curve`.

    Args:{args}
    Returns:
        Tensor: ``(N, steps + 1)`` selected similarities.

    Raises:
        ValueError: See :func:`word_deletion_curve`.
        TypeError: See :func:`word_deletion_curve`.

    Examples::

        >>> import torch
        >>> ids = torch.tensor([[49406, 5, 7, 9, 49407, 0]])
        >>> scorer = lambda t: ((t == 5) * 3.0 + (t == 7) * 2.0 + (t == 9)).sum(1)
        >>> word_maps = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0, 0.0]])
        >>> word_insertion_curve(scorer, ids, word_maps)
        tensor([[0., 3., 5., 6.]])
    """
    return _word_curve(
        text_scorer, token_ids, word_maps, target, word_mask, replace_with, steps,
        additional_forward_args, batch_size, insertion=True,
    )[0]  # fmt: skip


def word_deletion_auc(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget = None,
    **kwargs: Any,
) -> Tensor:
    r"""Per-example area under the :func:`word_deletion_curve` (lower is better).

    Each example is integrated (trapezoid rule) over its own points
    ``k = 0 .. m_i`` with ``m_i = min(W_i, steps)``, placed at
    ``x = k / m_i`` in ``[0, 1]`` (x = fraction of the example's words
    removed when ``steps >= W_i``). The result therefore does not depend on
    the other sentences in the batch. An example without words gets its
    unperturbed score. See :func:`auc` with ``lengths``.

    Args:
        text_scorer (Callable): See :func:`word_deletion_curve`.
        token_ids (Tensor): ``(N, L)`` token ids.
        word_maps (Tensor): ``(N, L)`` token scores.
        target (optional): See :func:`word_deletion_curve`. Default: None
        **kwargs: Keyword arguments of :func:`word_deletion_curve`.

    Returns:
        Tensor: ``(N,)`` areas.

    Examples::

        >>> import torch
        >>> ids = torch.tensor([[49406, 5, 7, 9, 49407, 0]])
        >>> scorer = lambda t: ((t == 5) * 3.0 + (t == 7) * 2.0 + (t == 9)).sum(1)
        >>> word_deletion_auc(scorer, ids, torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0, 0.0]]))
        tensor([2.3333])
    """
    return _word_auc(text_scorer, token_ids, word_maps, target, kwargs, insertion=False)


def word_insertion_auc(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget = None,
    **kwargs: Any,
) -> Tensor:
    r"""Per-example area under the :func:`word_insertion_curve` (higher is better).

    Integrated per example over ``k = 0 .. min(W_i, steps)`` mapped to
    ``[0, 1]``, as in :func:`word_deletion_auc`.

    Args:
        text_scorer (Callable): See :func:`word_insertion_curve`.
        token_ids (Tensor): ``(N, L)`` token ids.
        word_maps (Tensor): ``(N, L)`` token scores.
        target (optional): See :func:`word_deletion_curve`. Default: None
        **kwargs: Keyword arguments of :func:`word_insertion_curve`.

    Returns:
        Tensor: ``(N,)`` areas.

    Examples::

        >>> import torch
        >>> ids = torch.tensor([[49406, 5, 7, 9, 49407, 0]])
        >>> scorer = lambda t: ((t == 5) * 3.0 + (t == 7) * 2.0 + (t == 9)).sum(1)
        >>> word_insertion_auc(scorer, ids, torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0, 0.0]]))
        tensor([3.6667])
    """
    return _word_auc(text_scorer, token_ids, word_maps, target, kwargs, insertion=True)


def _word_auc(
    text_scorer: Callable[..., Tensor],
    token_ids: Tensor,
    word_maps: Tensor,
    target: MetricTarget,
    kwargs: dict,
    insertion: bool,
) -> Tensor:
    """Shared body of the word AUCs: per-example area under the deletion or insertion curve."""
    curve, lengths = _word_curve(
        text_scorer, token_ids, word_maps, target, insertion=insertion,
        **_word_kwargs(kwargs),
    )  # fmt: skip
    return auc(curve, lengths=lengths.to(curve.device))


_WORD_KWARGS = ("word_mask", "replace_with", "steps", "additional_forward_args", "batch_size")


def _word_kwargs(kwargs: dict) -> dict:
    """Fill defaults and reject unknown keyword arguments of the word AUCs."""
    unknown = set(kwargs) - set(_WORD_KWARGS)
    if unknown:
        raise TypeError(
            f"Unexpected keyword argument(s) {sorted(unknown)}; accepted: {_WORD_KWARGS}."
        )
    out = {
        "word_mask": None,
        "replace_with": 0,
        "steps": None,
        "additional_forward_args": None,
        "batch_size": 64,
    }
    out.update(kwargs)
    return out


word_deletion_curve.__doc__ = (word_deletion_curve.__doc__ or "").format(args=_SHARED_ARGS_DOC)
word_insertion_curve.__doc__ = (word_insertion_curve.__doc__ or "").format(args=_SHARED_ARGS_DOC)
