"""The sections of ``docs/models.md`` and ``docs/models_hf.md`` that list what Grad-ECLIP explains, generated from
the model registry (:mod:`captum_gradeclip.adapters.registry`).

Usage::

    python -m captum_gradeclip.adapters.registry_docs --write     # rewrite the generated sections
    python -m captum_gradeclip.adapters.registry_docs --check     # exit 1 when the docs differ from the registry
    python -m captum_gradeclip.adapters.registry_docs --markdown  # print them

A generated section stands between ``<!-- generated: NAME (...) -->`` and ``<!-- end generated: NAME -->``;
everything else on the pages is written by hand (``benchmarks/models_table.py`` writes the measured table of
``docs/models.md`` and keeps these sections).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .registry import FAMILIES, SUPPORTED_MODELS

COMMAND = "python -m captum_gradeclip.adapters.registry_docs --write"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def _name(ref: str) -> str:
    return f"`{ref.partition(':')[2]}`"


def open_clip_markdown() -> str:
    """The tower and attention tables of the open_clip families (``docs/models.md``)."""
    lines: List[str] = []
    for family in (f for f in FAMILIES if f.library == "open_clip"):
        lines += ["| side | tower | adapter | what it covers |", "|---|---|---|---|"]
        for side in ("image", "text"):
            lines += [f"| {side} | {_cell(kind.label)} | {_name(kind.build)} | {_cell(kind.notes)} |"
                      for kind in family.towers(side)]
        lines += ["", "Attention modules read: " + "; ".join(
            f"{kind.description} ({_name(kind.adapter)})" for kind in family.attention) + ".", "",
                  "Example configs: " + ", ".join(f"`{c}`" for c in family.checkpoints) + "."]
    return "\n".join(lines)


def hf_markdown() -> str:
    """The class table of the transformers families (``docs/models_hf.md``)."""
    lines = ["| Class | Image tower: explained layer, query, map | Text tower: pooling, words reported | Notes | "
             "Attention modules read | Example checkpoints |", "|---|---|---|---|---|---|"]
    for family in (f for f in FAMILIES if f.library == "transformers"):
        attention = "; ".join(_cell(kind.description) for kind in family.attention)
        checkpoints = ", ".join(f"`{c}`" for c in family.checkpoints)
        lines += [f"| {row.classes} | {_cell(row.image)} | {_cell(row.text)} | {_cell(row.notes)} | {attention} | "
                  f"{checkpoints} |" for row in family.rows]
    return "\n".join(lines)


def supported_markdown() -> str:
    """``SUPPORTED_MODELS``, one bullet a family."""
    return "\n".join(f"- {line}" for line in SUPPORTED_MODELS)


#: the generated sections of each docs page: (section name, renderer)
SECTIONS: Dict[str, Tuple[Tuple[str, Callable[[], str]], ...]] = {
    "models.md": (("open_clip towers", open_clip_markdown), ("supported models", supported_markdown)),
    "models_hf.md": (("transformers classes", hf_markdown),),
}


def models_md_sections() -> List[str]:
    """The registry's part of ``docs/models.md`` (lines), as ``benchmarks/models_table.py`` writes it before the
    measured table."""
    return [
        "## Tower families", "",
        "What the model registry (`captum_gradeclip/adapters/registry.py`) gives an open_clip model, by the class of "
        "its `visual` and text towers; the table below it is measured on every config.", "",
        fenced("open_clip towers", open_clip_markdown()), "",
        "All supported models (`captum_gradeclip.SUPPORTED_MODELS`, as `UnsupportedModelError` lists them):", "",
        fenced("supported models", supported_markdown()), "",
        "## Every open_clip config", "",
    ]


def _markers(name: str) -> Tuple[str, str]:
    return f"<!-- generated: {name} ({COMMAND}) -->", f"<!-- end generated: {name} -->"


def fenced(name: str, body: str) -> str:
    """``body`` between the markers of the generated section ``name``."""
    begin, end = _markers(name)
    return f"{begin}\n{body}\n{end}"


def regenerate(text: str, page: str) -> str:
    """``text`` of a docs page with its generated sections rewritten from the registry.

    Raises:
        ValueError: when a section's markers are missing.
    """
    for name, render in SECTIONS[page]:
        begin, end = _markers(name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"docs/{page} has no generated section {name!r} (markers {begin!r} ... {end!r})")
        text = text[:start] + fenced(name, render()) + text[stop + len(end):]
    return text


def stale_pages(docs: Path = DOCS) -> List[str]:
    """The docs pages whose generated sections differ from the registry."""
    return [page for page in SECTIONS if regenerate((docs / page).read_text(), page) != (docs / page).read_text()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="The model registry's sections of the docs.")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: the repository's)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the generated sections")
    action.add_argument("--write", action="store_true", help="rewrite the generated sections of the docs")
    action.add_argument("--check", action="store_true", help="exit 1 when the docs differ from the registry")
    args = parser.parse_args(argv)
    if args.markdown:
        for page, sections in SECTIONS.items():
            for name, render in sections:
                print(f"## {page}: {name}\n\n{render()}\n")
        return 0
    stale = stale_pages(args.docs)
    if args.check:
        for page in stale:
            print(f"docs/{page} differs from the model registry; run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        path = args.docs / page
        path.write_text(regenerate(path.read_text(), page))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
