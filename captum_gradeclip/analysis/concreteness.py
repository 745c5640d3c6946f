"""Concreteness and word usage: which words CLIP leans on, against how concrete people rate them."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .statistics import bootstrap_spearman


@dataclass
class WordImportance:
    """Mean normalised importance of each word over a corpus of explained captions.

    Attributes:
        mean: word -> mean share of its caption's importance (each non-empty word map divided by its sum).
        count: word -> occurrences counted.
        empty_maps: captions whose word map is all zero (left out of the means).
        total_maps: captions seen.
    """

    mean: Dict[str, float]
    count: Dict[str, int]
    empty_maps: int
    total_maps: int

    def by_class(self, classes: Mapping[str, str]) -> Dict[str, float]:
        """Occurrence-weighted mean importance per word class (words without a class are left out)."""
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        for word, value in self.mean.items():
            cls = classes.get(word)
            if cls is not None:
                sums[cls] = sums.get(cls, 0.0) + value * self.count[word]
                counts[cls] = counts.get(cls, 0) + self.count[word]
        return {c: sums[c] / counts[c] for c in sums}


def word_importance(word_maps: Tensor, tokens: Sequence[Sequence[Optional[str]]], *,
                    min_count: int = 1) -> WordImportance:
    """Aggregate word maps into a mean normalised importance per word.

    Args:
        word_maps: ``(N, L)`` non-negative word maps (e.g. ``GradECLIP(TextImageSimilarity(...)).attribute``).
        tokens: per caption, the string of each of the ``L`` positions (None or "" for start, end and padding
            tokens, which are skipped). Words are lower-cased; sub-word pieces are taken as they are.
        min_count: words seen fewer times are dropped.

    Returns:
        A :class:`WordImportance`.

    Examples:
        >>> wi = word_importance(torch.tensor([[0.0, 3.0, 1.0]]), [[None, "red", "a"]])
        >>> wi.mean
        {'red': 0.75, 'a': 0.25}
    """
    if word_maps.dim() != 2 or len(tokens) != word_maps.shape[0]:
        raise ValueError(f"word_maps must be (N, L) with one token list per row; got {tuple(word_maps.shape)} "
                         f"and {len(tokens)} token lists")
    maps = word_maps.detach().double().cpu()
    sums: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    empty = 0
    for row, toks in zip(maps, tokens):
        if len(toks) > row.numel():
            raise ValueError(f"a token list has {len(toks)} entries but the maps have {row.numel()} positions")
        keep = [(j, t.lower()) for j, t in enumerate(toks) if t]
        total = float(sum(max(float(row[j]), 0.0) for j, _ in keep))
        if total <= 0:
            empty += 1
            continue
        for j, word in keep:
            sums[word] = sums.get(word, 0.0) + max(float(row[j]), 0.0) / total
            counts[word] = counts.get(word, 0) + 1
    mean = {w: sums[w] / counts[w] for w in sums if counts[w] >= min_count}
    return WordImportance(mean=mean, count={w: counts[w] for w in mean}, empty_maps=empty,
                          total_maps=int(maps.shape[0]))


def load_word_ratings(path: Union[str, os.PathLike], *, word_column: str = "word",
                      rating_column: str = "rating", delimiter: Optional[str] = None) -> Dict[str, float]:
    """Read a table of word ratings (e.g. published concreteness norms) from a CSV or TSV file.

    Args:
        path: the file; its first line names the columns.
        word_column: the column holding the words (matched case-insensitively).
        rating_column: the column holding the ratings (e.g. ``"Conc.M"`` in Brysbaert et al.'s norms).
        delimiter: the field separator (default: a tab for ``.tsv``/``.txt``, else a comma).

    Returns:
        word (lower-cased) -> rating; rows with an empty or non-numeric rating are skipped.

    Raises:
        ValueError: a named column is missing, or no row has a usable rating.
    """
    path = os.fspath(path)
    if delimiter is None:
        delimiter = "\t" if path.endswith((".tsv", ".txt")) else ","
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        fields = {f.lower(): f for f in (reader.fieldnames or [])}
        missing = [c for c in (word_column, rating_column) if c.lower() not in fields]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}; the columns are {reader.fieldnames}")
        wcol, rcol = fields[word_column.lower()], fields[rating_column.lower()]
        ratings: Dict[str, float] = {}
        for row in reader:
            try:
                ratings[row[wcol].strip().lower()] = float(row[rcol])
            except (TypeError, ValueError):
                continue
    if not ratings:
        raise ValueError(f"{path}: no row has a numeric {rating_column!r}")
    return ratings


@dataclass
class RatingCorrelation:
    """Spearman correlation between mean word importance and word ratings, over the words both know.

    Attributes:
        rho: Spearman's correlation.
        low, high: percentile bootstrap interval (resampling words).
        words: the words used, in the order of ``importance`` and ``rating``.
        importance, rating: the paired values.
    """

    rho: float
    low: float
    high: float
    words: List[str]
    importance: Tensor
    rating: Tensor


def rating_correlation(importance: Union[WordImportance, Mapping[str, float]], ratings: Mapping[str, float], *,
                       n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                       min_words: int = 3) -> RatingCorrelation:
    """Rank-correlate mean word importance with a table of word ratings (such as concreteness norms).

    Args:
        importance: a :class:`WordImportance` or a mapping word -> importance.
        ratings: word -> rating (see :func:`load_word_ratings`).
        n_boot: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling.
        min_words: fewest shared words accepted.

    Returns:
        A :class:`RatingCorrelation`.

    Raises:
        ValueError: fewer than ``min_words`` words have both an importance and a rating.
    """
    values = importance.mean if isinstance(importance, WordImportance) else dict(importance)
    words = sorted(w for w in values if w in ratings)
    if len(words) < min_words:
        raise ValueError(f"only {len(words)} words have both an importance and a rating (need {min_words}); "
                         "are the ratings lower-cased words of the same language?")
    imp = torch.tensor([values[w] for w in words], dtype=torch.float64)
    rat = torch.tensor([float(ratings[w]) for w in words], dtype=torch.float64)
    rho, lo, hi = bootstrap_spearman(imp, rat, n_boot=n_boot, level=level, seed=seed)
    return RatingCorrelation(rho=rho, low=lo, high=hi, words=words, importance=imp, rating=rat)


def class_ratings(classes: Mapping[str, str], order: Sequence[str]) -> Dict[str, float]:
    """Turn word classes into ordinal ratings: the ``i``-th class of ``order`` (least to most concrete) gets
    rating ``i``. Used on the shapes world, where no published norms apply.

    Examples:
        >>> class_ratings({"a": "function", "red": "colour"}, ["function", "colour"])
        {'a': 0.0, 'red': 1.0}
    """
    rank: Dict[str, float] = {c: float(i) for i, c in enumerate(order)}
    unknown = sorted({c for c in classes.values() if c not in rank})
    if unknown:
        raise ValueError(f"classes {unknown} are not in order {list(order)}")
    return {w: rank[c] for w, c in classes.items()}


