"""A word-level tokenizer for the synthetic shapes world.

The vocabulary is tiny (a few template words, the colours and the shapes), so the
shipped models need no 49k-row token embedding. Ids follow the conventions that
both open_clip and HuggingFace CLIP text towers rely on:

* ``pad`` is ``0`` (sequences are right-padded with it),
* ``sot`` (start of text) is ``1``,
* ``eot`` (end of text) has the **largest** id, so open_clip's ``argmax(ids)``
  pooling and HF's "first ``eos_token_id``" pooling pick the same position.

Examples:
    >>> tok = ShapesTokenizer()
    >>> ids = tok(["a red circle"])
    >>> ids.shape
    torch.Size([1, 8])
    >>> tok.tokens(ids[0])
    ['<sot>', 'a', 'red', 'circle', '<eot>']
    >>> tok.decode(ids[0])
    'a red circle'
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.shapes import COLORS, SHAPES

__all__ = ["ShapesTokenizer", "DEFAULT_WORDS", "PAD", "SOT", "EOT"]

PAD = "<pad>"
SOT = "<sot>"
EOT = "<eot>"

#: Plain words of the default vocabulary (template words, colours, shapes).
DEFAULT_WORDS: tuple[str, ...] = ("a", "an", "the", "photo", "image", "of") + COLORS + SHAPES


class ShapesTokenizer:
    """Word-level tokenizer with a fixed context length.

    Text is lower-cased, the punctuation ``. , ; : ! ?`` is dropped, and it is
    split on whitespace. Each word must be in the vocabulary. The encoded
    sequence is ``[sot, w_1, ..., w_k, eot, pad, ...]`` of length
    ``context_length``.

    Args:
        words: Plain words of the vocabulary (no duplicates, no special tokens).
            Defaults to :data:`DEFAULT_WORDS`.
        context_length: Length of every encoded sequence (``>= 3``).

    Attributes:
        vocab: All tokens, index = id: ``["<pad>", "<sot>", *words, "<eot>"]``.
        pad_id: ``0``.
        sot_id: ``1``.
        eot_id: ``len(vocab) - 1`` (the largest id).
        context_length: Sequence length.

    Raises:
        ValueError: For duplicate/empty/special words or ``context_length < 3``.

    Examples:
        >>> tok = ShapesTokenizer(context_length=6)
        >>> tok.eot_id == tok.vocab_size - 1
        True
        >>> tok.hf(["a blue cross"])["attention_mask"].tolist()
        [[1, 1, 1, 1, 1, 0]]
    """

    _PUNCT = str.maketrans("", "", ".,;:!?")

    def __init__(self, words: Sequence[str] | None = None, context_length: int = 8) -> None:
        words = tuple(DEFAULT_WORDS if words is None else words)
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        for w in words:
            if not isinstance(w, str) or not w or w != w.strip().lower() or " " in w:
                raise ValueError(
                    f"vocabulary words must be non-empty lower-case single words, got {w!r}"
                )
            if w in (PAD, SOT, EOT):
                raise ValueError(f"{w!r} is a reserved special token")
        if not isinstance(context_length, int) or context_length < 3:
            raise ValueError(f"context_length must be an int >= 3, got {context_length!r}")
        self.words: tuple[str, ...] = words
        self.vocab: list[str] = [PAD, SOT, *words, EOT]
        self._ids: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id: int = 0
        self.sot_id: int = 1
        self.eot_id: int = len(self.vocab) - 1
        self.context_length: int = context_length

    @property
    def vocab_size(self) -> int:
        """Number of token ids (including the special tokens)."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return (
            f"ShapesTokenizer(vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )

    def split(self, text: str) -> list[str]:
        """Normalise and split ``text`` into words (without checking the vocabulary).

        Args:
            text: Input text.

        Returns:
            The list of lower-case words.

        Examples:
            >>> ShapesTokenizer().split("A Red circle.")
            ['a', 'red', 'circle']
        """
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        return text.lower().translate(self._PUNCT).split()

    def encode(self, text: str) -> list[int]:
        """Encode one text to ids ``[sot, ..., eot]`` without padding.

        Args:
            text: Input text.

        Returns:
            List of ids.

        Raises:
            ValueError: If a word is not in the vocabulary or the text does not fit
                into ``context_length`` (including ``sot`` and ``eot``).

        Examples:
            >>> tok = ShapesTokenizer()
            >>> ids = tok.encode("a red circle")
            >>> [tok.vocab[i] for i in ids]
            ['<sot>', 'a', 'red', 'circle', '<eot>']
        """
        words = self.split(text)
        unknown = [w for w in words if w not in self._ids or w in (PAD, SOT, EOT)]
        if unknown:
            raise ValueError(
                f"unknown word(s) {unknown} in {text!r}; the vocabulary is {list(self.words)}"
            )
        if len(words) + 2 > self.context_length:
            raise ValueError(
                f"{text!r} has {len(words)} words, but at most {self.context_length - 2} fit into "
                f"context_length={self.context_length}"
            )
        return [self.sot_id, *(self._ids[w] for w in words), self.eot_id]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize texts for open_clip-style text towers.

        Args:
            texts: One text or a sequence of texts.

        Returns:
            ``(N, context_length)`` long tensor, right-padded with ``pad_id``.

        Raises:
            ValueError: For unknown words, too long or empty input.

        Examples:
            >>> ShapesTokenizer()("a red circle").shape
            torch.Size([1, 8])
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts must not be empty")
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def hf(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize texts for a HuggingFace ``CLIPModel``.

        Args:
            texts: One text or a sequence of texts.

        Returns:
            ``{"input_ids": (N, L) long, "attention_mask": (N, L) long}`` with
            ``attention_mask`` 1 on ``sot``, words and ``eot`` and 0 on padding.

        Examples:
            >>> enc = ShapesTokenizer().hf("a red circle")
            >>> sorted(enc)
            ['attention_mask', 'input_ids']
        """
        ids = self(texts)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}

    def _as_list(self, ids: torch.Tensor | Sequence[int]) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"expected a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    def tokens(self, ids: torch.Tensor | Sequence[int], skip_pad: bool = True) -> list[str]:
        """Map ids of one sequence to token strings, e.g. to label a text heat map.

        Args:
            ids: 1-D ids of one sequence.
            skip_pad: Drop padding tokens (they only trail the sequence, so the
                result is still aligned with positions ``0 .. k-1``).

        Returns:
            Token strings including ``"<sot>"`` and ``"<eot>"``.

        Raises:
            ValueError: If ``ids`` is not 1-D or contains an out-of-range id.

        Examples:
            >>> tok = ShapesTokenizer()
            >>> tok.tokens(tok("the blue square")[0])
            ['<sot>', 'the', 'blue', 'square', '<eot>']
        """
        return [self.vocab[i] for i in self._as_list(ids) if not (skip_pad and i == self.pad_id)]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Decode ids of one sequence into text (special tokens dropped).

        Args:
            ids: 1-D ids of one sequence.

        Returns:
            The words joined by single spaces.

        Examples:
            >>> tok = ShapesTokenizer()
            >>> tok.decode(tok("A photo of a red circle.")[0])
            'a photo of a red circle'
        """
        special = {self.pad_id, self.sot_id, self.eot_id}
        return " ".join(self.vocab[i] for i in self._as_list(ids) if i not in special)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (inverse of :meth:`from_dict`)."""
        return {
            "vocab": list(self.vocab),
            "context_length": self.context_length,
            "pad_id": self.pad_id,
            "sot_id": self.sot_id,
            "eot_id": self.eot_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShapesTokenizer":
        """Rebuild a tokenizer from :meth:`to_dict` output.

        Args:
            d: Dictionary with ``vocab`` and ``context_length``.

        Returns:
            The tokenizer.

        Raises:
            ValueError: If ``vocab`` does not start with ``<pad>, <sot>`` and end
                with ``<eot>``.
        """
        vocab = list(d["vocab"])
        if len(vocab) < 3 or vocab[:2] != [PAD, SOT] or vocab[-1] != EOT:
            raise ValueError(f"vocab must be ['{PAD}', '{SOT}', ..., '{EOT}'], got {vocab}")
        return cls(words=vocab[2:-1], context_length=int(d["context_length"]))
