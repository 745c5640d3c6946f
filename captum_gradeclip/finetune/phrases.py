"""Phrases of a caption: what the region-phrase loss aligns image regions with.

A phrase extractor is any callable ``caption -> list of phrases``. The default, :class:`WordListPhrases`, needs
no download: it finds nouns from a word list and joins each with the adjectives right before it (``"a small red
car"`` gives ``"small red car"``), as the Grad-ECLIP authors' "adjective + noun" phrases (paper notes, section 6).
Plug in a real parser (spaCy, NLTK) by passing any function with the same signature.

Examples:
    >>> extract = WordListPhrases()
    >>> extract("a red circle, a blue square and a green cross")
    ['red circle', 'blue square', 'green cross']
    >>> extract("A small brown dog runs on the green grass.")
    ['small brown dog', 'green grass']
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, List, Optional, Sequence

from ..data.shapes import COLORS, SHAPES

__all__ = ["PhraseExtractor", "WordListPhrases", "DEFAULT_NOUNS", "DEFAULT_ADJECTIVES", "extract_all"]

#: A phrase extractor: one caption in, its phrases out (in caption order, without duplicates).
PhraseExtractor = Callable[[str], List[str]]

_SHAPE_PLURALS = ("circles", "squares", "triangles", "crosses")

#: Nouns of the default word list: the shapes world, plus common concrete nouns of photo captions.
DEFAULT_NOUNS: frozenset = frozenset(SHAPES + _SHAPE_PLURALS + tuple("""
man men woman women person people child children boy girl baby player players dog dogs cat cats horse horses
cow cows sheep bird birds elephant elephants bear bears zebra zebras giraffe giraffes animal animals car cars
bus buses truck trucks train trains bicycle bike motorcycle boat boats airplane plane kite kites ball frisbee
skateboard surfboard skis snowboard racket bat glove umbrella bag backpack suitcase tie hat shirt jacket
dress table tables chair chairs couch sofa bed bench desk toilet sink tv television laptop computer keyboard
phone book books clock vase bottle cup glass bowl plate fork knife spoon pizza sandwich cake banana apple
orange broccoli carrot donut food tree trees grass flower flowers plant plants field road street sidewalk
building buildings house window door wall floor room kitchen bathroom sky cloud clouds water ocean sea beach
lake river snow mountain mountains hill sand rock rocks sign light lights fence pole track tracks shirt hair
face hand hands head
""".split()))

#: Adjectives of the default word list: the shapes world's colours, plus common colours, sizes and materials.
DEFAULT_ADJECTIVES: frozenset = frozenset(COLORS + tuple("""
white black brown grey gray orange pink purple gold silver dark light bright small large big little tall short
long young old new wooden metal plastic striped open empty full wet dry
""".split()))

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


class WordListPhrases:
    """Adjective + noun phrases from word lists (no model, no download).

    Every noun of ``nouns`` becomes a phrase together with the run of ``adjectives`` right before it (at most
    ``max_adjectives``, the nearest ones); nouns directly followed by another noun are joined with it
    (``"tennis ball"`` when both are nouns). Duplicates are dropped, the caption order is kept, and at most
    ``max_phrases`` phrases are returned.

    Args:
        nouns: Nouns to look for (lower case). Default: :data:`DEFAULT_NOUNS`.
        adjectives: Adjectives to keep before a noun. Default: :data:`DEFAULT_ADJECTIVES`.
        max_phrases: At most this many phrases per caption (the authors use 5). Default: 5
        max_adjectives: At most this many adjectives per phrase. Default: 2

    Examples:
        >>> WordListPhrases(max_phrases=1)("a red circle and a blue square")
        ['red circle']
        >>> WordListPhrases(nouns={"tram"}, adjectives={"yellow"})("A yellow tram.")
        ['yellow tram']
    """

    def __init__(self, nouns: Optional[Iterable[str]] = None, adjectives: Optional[Iterable[str]] = None,
                 max_phrases: int = 5, max_adjectives: int = 2) -> None:
        if not isinstance(max_phrases, int) or max_phrases < 1:
            raise ValueError(f"max_phrases must be a positive int, got {max_phrases!r}")
        if not isinstance(max_adjectives, int) or max_adjectives < 0:
            raise ValueError(f"max_adjectives must be a non-negative int, got {max_adjectives!r}")
        self.nouns = frozenset(w.lower() for w in (DEFAULT_NOUNS if nouns is None else nouns))
        self.adjectives = frozenset(w.lower() for w in (DEFAULT_ADJECTIVES if adjectives is None else adjectives))
        if not self.nouns:
            raise ValueError("nouns must not be empty")
        self.max_phrases = max_phrases
        self.max_adjectives = max_adjectives

    def __call__(self, caption: str) -> List[str]:
        """The phrases of one caption.

        Args:
            caption: The caption (any case and punctuation).

        Returns:
            Phrases in caption order, without duplicates, at most ``max_phrases``.
        """
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a str, got {type(caption).__name__}")
        words = _WORD.findall(caption.lower())
        out: List[str] = []
        i = 0
        while i < len(words) and len(out) < self.max_phrases:
            if words[i] not in self.nouns:
                i += 1
                continue
            end = i + 1
            while end < len(words) and words[end] in self.nouns:  # compound nouns
                end += 1
            start = i
            while start > 0 and words[start - 1] in self.adjectives and i - start < self.max_adjectives:
                start -= 1
            phrase = " ".join(words[start:end])
            if phrase not in out:
                out.append(phrase)
            i = end
        return out


def extract_all(extract: PhraseExtractor, captions: Sequence[str]) -> List[List[str]]:
    """Run a phrase extractor over captions and check what it returns.

    Args:
        extract: The phrase extractor.
        captions: The captions.

    Returns:
        One list of phrases (non-empty strings) per caption.

    Raises:
        TypeError: If the extractor returns something other than a list of non-empty strings.

    Examples:
        >>> extract_all(WordListPhrases(), ["a red circle", "the sky"])
        [['red circle'], ['sky']]
    """
    out = []
    for c in captions:
        phrases = extract(c)
        if not isinstance(phrases, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise TypeError(f"the phrase extractor must return a list of non-empty strings; for {c!r} it "
                            f"returned {phrases!r}")
        out.append([p.strip() for p in phrases])
    return out
