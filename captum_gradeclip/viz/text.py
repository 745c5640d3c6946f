"""Word maps shown as words shaded by their score: an HTML snippet or page, or a matplotlib figure.

A word map can be zero everywhere: with Grad-ECLIP's text rule (the sum over layers, then ReLU) the explained
layers' contributions can cancel. The helpers here then say so (:func:`empty_words_message`) instead of shading
nothing silently. matplotlib is imported when :func:`plot_tokens` runs, not when this module is imported.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .figures import root_figure
from .inputs import ScoresLike, check_color, check_tokens, scores_1d
from .normalize import normalize_words

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["empty_words_message", "token_html", "tokens_html_page", "plot_tokens"]


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
    s = scores_1d(scores)
    toks = check_tokens(tokens, s)
    r, g, b = check_color(color)
    alphas = token_alphas(s, normalize)
    shares = normalize_words(s).numpy()
    parts = ['<div class="gradeclip-tokens" style="font-family: sans-serif; line-height: 2.2;">']
    if title is not None:
        parts.append(
            '<div class="gradeclip-title" style="font-weight: bold; margin-bottom: 2px;">'
            f"{html.escape(str(title))}</div>"
        )
    if is_empty(s):
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
    s = scores_1d(scores)
    toks = check_tokens(tokens, s)
    rgb = tuple(c / 255.0 for c in check_color(color))
    alphas = token_alphas(s, normalize)
    if max_chars_per_line < 1:
        raise ValueError(f"max_chars_per_line must be >= 1, got {max_chars_per_line}")
    if is_empty(s):
        note = empty_message if empty_message is not None else empty_words_message()
        note = textwrap.fill(note[:1].upper() + note[1:] + ".", width=max(40, max_chars_per_line + 20))
        title = note if title is None else f"{title}\n{note}"

    lines = _wrap_words(toks, max_chars_per_line)
    pad_pts = fontsize * 0.65
    if ax is None:
        ax = _words_figure(toks, lines, fontsize, pad_pts, title).add_subplot(1, 1, 1)
    fig = root_figure(ax)
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


def is_empty(scores: torch.Tensor) -> bool:
    """True when no token has a positive score (nothing to rank)."""
    return not bool((scores > 0).any())


def token_alphas(scores: torch.Tensor, normalize: bool) -> np.ndarray:
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


def _wrap_words(tokens: list[str], max_chars_per_line: int) -> list[list[int]]:
    """The token indices of each line when words are wrapped after about ``max_chars_per_line`` characters."""
    lines: list[list[int]] = [[]]
    width = 0
    for i, tok in enumerate(tokens):
        n = max(len(tok), 1) + 1
        if lines[-1] and width + n > max_chars_per_line:
            lines.append([])
            width = 0
        lines[-1].append(i)
        width += n
    return lines


def _words_figure(tokens: list[str], lines: list[list[int]], fontsize: float, pad_pts: float,
                  title: str | None) -> Figure:
    """A headless figure sized for the wrapped words (and the title's lines)."""
    from matplotlib.figure import Figure

    # Rough extent: ~0.6 em per character plus the gap and box padding per word.
    widest = max(sum(max(len(tokens[i]), 1) * 0.6 * fontsize + pad_pts for i in line) for line in lines)
    fig_w = min(max(2.0, widest / 72.0 + 0.4), 16.0)
    fig_h = 0.3 + 2.0 * fontsize / 72.0 * len(lines) + (0.4 * (title.count("\n") + 1) if title else 0.0)
    return Figure(figsize=(fig_w, fig_h))
