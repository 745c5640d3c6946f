"""Figures of the analyses (matplotlib is imported only when a figure is drawn)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from .concreteness import WordImportance
from .identification import Binding, PointingByCount, RelationSwap
from .mechanism import Correspondence, LayerProfile


def _plt() -> Any:
    import matplotlib.pyplot as plt
    return plt


def plot_layer_profiles(profiles: Mapping[str, LayerProfile], ax: Optional[Any] = None) -> Any:
    """Share of the map per layer (bars) and localisation per layer (line), one panel per profile.

    Args:
        profiles: title -> :class:`LayerProfile`.
        ax: unused when several profiles are given (a new figure is made).

    Returns:
        The matplotlib figure.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles), 3.6), squeeze=False)
    for a, (title, p) in zip(axes[0], profiles.items()):
        xs = list(range(len(p.layers)))
        a.bar(xs, p.share.tolist(), color="#7aa6c2", label="share of the map")
        a.plot(xs, p.localisation.tolist(), "o-", color="#c0392b",
               label="pointing hit rate" if p.side == "image" else "share on colour/shape words")
        a.set_xticks(xs)
        a.set_xticklabels([f"block {i}" for i in xs], fontsize=8)
        a.set_ylim(0, 1)
        a.set_title(title, fontsize=10)
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_pointing_by_count(results: Mapping[str, PointingByCount]) -> Any:
    """Pointing hit rate per number of objects, one line per result, with the chance level dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for name, r in results.items():
        ax.plot(r.counts, r.hit_rate.tolist(), "o-", label=name)
    first = next(iter(results.values()))
    ax.plot(first.counts, first.chance.tolist(), "k--", label="chance (uniform point)")
    ax.set_xlabel("objects in the scene")
    ax.set_ylabel("pointing hit rate")
    ax.set_xticks(first.counts)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_binding(results: Mapping[str, Binding]) -> Any:
    """Energy split of true and swapped prompts' maps, one group of bars per result."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    labels = {"true": ["its object", "the other object", "background"],
              "swapped": ["colour-sharer", "shape-sharer", "background"]}
    width = 0.8 / max(len(results), 1)
    for k, (name, b) in enumerate(results.items()):
        for a, key, vals in ((axes[0], "true", b.true_energy), (axes[1], "swapped", b.swapped_energy)):
            a.bar([i + k * width for i in range(3)], vals.tolist(), width=width,
                  label=f"{name} (binding acc. {b.binding_accuracy:.2f})")
    for a, key, title in ((axes[0], "true", "true prompt ('a red square')"),
                          (axes[1], "swapped", "swapped prompt ('a red circle', absent)")):
        a.set_xticks([i + width * (len(results) - 1) / 2 for i in range(3)])
        a.set_xticklabels(labels[key], fontsize=8)
        a.set_ylabel("share of map energy")
        a.set_ylim(0, 1)
        a.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_word_importance(results: Mapping[str, WordImportance], classes: Mapping[str, str],
                         order: Sequence[str]) -> Any:
    """Mean normalised importance per word class (ordered least to most concrete), one bar group per result."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.2, 1.2 * len(order)), 3.2))
    width = 0.8 / max(len(results), 1)
    for k, (name, wi) in enumerate(results.items()):
        by: Dict[str, float] = wi.by_class(classes)
        ax.bar([i + k * width for i in range(len(order))], [by.get(c, 0.0) for c in order], width=width,
               label=name)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(order))])
    ax.set_xticklabels([c.replace(" ", "\n", 1) if len(c) > 10 else c for c in order], fontsize=8)
    ax.set_ylabel("mean share of the caption's importance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_relations(results: Mapping[str, RelationSwap]) -> Any:
    """Left: accuracy of the true over the swapped relation caption, overall and per relation, against chance
    (0.5); it is the model's, the same for every explainer, so it is drawn once per model (the part of a result's
    name before ``": "``, e.g. ``"open_clip: last layer"``). Right: energy split of the true and the swapped
    captions' maps over A (named first by the true caption), B and the background, per result."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
    models: Dict[str, RelationSwap] = {}
    for name, r in results.items():
        models.setdefault(name.split(": ", 1)[0] if ": " in name else "", r)
    if models:
        rels = list(next(iter(models.values())).accuracy_by_relation)
        w = 0.8 / len(models)
        for k, (model, r) in enumerate(models.items()):
            axes[0].bar([i + k * w for i in range(len(rels) + 1)],
                        [r.accuracy, *(r.accuracy_by_relation.get(x, float("nan")) for x in rels)], width=w,
                        label=model or None)
        axes[0].set_xticks([i + w * (len(models) - 1) / 2 for i in range(len(rels) + 1)])
        axes[0].set_xticklabels(["all", *rels], fontsize=8)
    axes[0].axhline(0.5, color="k", ls=":", lw=1, label="chance")
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("true caption scores higher")
    axes[0].set_title("'A left of B' vs 'B left of A'", fontsize=10)
    axes[0].legend(fontsize=7)
    width = 0.8 / max(2 * len(results), 1)
    for k, (name, r) in enumerate(results.items()):
        for j, (key, vals) in enumerate((("true", r.true_energy), ("swapped", r.swapped_energy))):
            axes[1].bar([i + (2 * k + j) * width for i in range(3)], vals.tolist(), width=width,
                        label=f"{name}: {key}")
    axes[1].set_xticks([i + width * (2 * len(results) - 1) / 2 for i in range(3)])
    axes[1].set_xticklabels(["A (named first by the true caption)", "B", "background"], fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("share of map energy")
    axes[1].set_title("where the maps of the true and swapped captions fall", fontsize=10)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_correspondence(results: Mapping[str, Correspondence]) -> Any:
    """Energy split of captions naming several objects: named objects, objects present but not named, background;
    the titles give the word-share / energy-share rank correlation."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    width = 0.8 / max(len(results), 1)
    for k, (name, c) in enumerate(results.items()):
        ax.bar([i + k * width for i in range(3)], [c.named_energy, c.unnamed_energy, c.background_energy],
               width=width, label=f"{name} (Spearman words vs energy {c.rank_correlation:.2f})")
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(3)])
    ax.set_xticklabels(["named objects", "unnamed objects", "background"], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of map energy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
