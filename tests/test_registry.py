"""The model registry (``captum_gradeclip.adapters.registry``): one explicit table, the same whatever is imported
first, no import cycles in the package, and the docs' family tables generated from it."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
import torch
from torch import nn

import captum_gradeclip
from captum_gradeclip import UnsupportedModelError
from captum_gradeclip.adapters import registry, registry_docs
from captum_gradeclip.adapters.attention import (AttentionAdapter, attention_adapter, is_attention_module,
                                                register_attention_adapter)
from captum_gradeclip.adapters.base import Tower, grid_layout, text_layout, words_from

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "captum_gradeclip"
ADAPTERS = sorted(p.stem for p in (PACKAGE / "adapters").glob("*.py") if p.stem != "__init__")


# -- the docs ------------------------------------------------------------------------------------------------------
def test_the_docs_family_tables_are_generated_from_the_registry() -> None:
    stale = registry_docs.stale_pages()
    assert not stale, f"docs/{', docs/'.join(stale)} differ from the model registry: run {registry_docs.COMMAND}"


def test_every_family_and_class_is_in_the_docs() -> None:
    models_md = (ROOT / "docs" / "models.md").read_text()
    hf_md = (ROOT / "docs" / "models_hf.md").read_text()
    for family in registry.FAMILIES:
        assert f"- {family.supported}" in models_md
        for kind in family.image + family.text:
            assert all(f"`{name}`" in hf_md for name in kind.classes), kind
            assert kind.label in (hf_md if kind.classes else models_md)


def test_regenerate_refuses_a_page_without_markers() -> None:
    with pytest.raises(ValueError, match="no generated section"):
        registry_docs.regenerate("# Models\n", "models_hf.md")


# -- the table -------------------------------------------------------------------------------------------------------
def test_every_reference_names_an_adapter() -> None:
    for kind in registry.ATTENTION_KINDS:
        cls = registry.load(kind.adapter)
        assert issubclass(cls, AttentionAdapter)
        assert "matches" in vars(cls), f"{cls.__name__} must say which modules it reads"
    for family in registry.FAMILIES:
        for kind in family.image + family.text:
            build = registry.load(kind.build)
            assert (inspect.isclass(build) and issubclass(build, Tower)) or inspect.isfunction(build), kind
            assert bool(kind.classes) != (kind.matches is not None), kind  # recognised one way, not two
        assert set(family.attention) <= set(registry.ATTENTION_KINDS)


def test_every_attention_kind_belongs_to_a_family() -> None:
    used = {kind for family in registry.FAMILIES for kind in family.attention}
    assert used == set(registry.ATTENTION_KINDS)
    assert len(set(registry.ATTENTION_KINDS)) == len(registry.ATTENTION_KINDS)
    assert registry.SUPPORTED_ATTENTION == tuple(k.description for k in registry.ATTENTION_KINDS)


def test_the_supported_models_are_the_registry_lines() -> None:
    assert captum_gradeclip.SUPPORTED_MODELS is registry.SUPPORTED_MODELS
    assert registry.SUPPORTED_MODELS == tuple(family.supported for family in registry.FAMILIES)
    for family in registry.FAMILIES:
        for kind in family.image + family.text:
            assert all(name in family.supported for name in kind.classes), (family.name, kind.classes)


def test_a_class_gets_one_tower_a_side() -> None:
    for side in ("image", "text"):
        names: List[str] = [n for f in registry.FAMILIES for k in f.towers(side) for n in k.classes]
        assert len(names) == len(set(names)), side


def test_models_of_no_family_list_the_supported_models() -> None:
    with pytest.raises(UnsupportedModelError, match="supported models: open_clip CLIP"):
        registry.image_tower(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="cannot explain the text tower of torch.nn"):
        registry.text_tower(nn.Linear(2, 2))


# -- attention adapters ---------------------------------------------------------------------------------------------
def _modules_of_every_kind() -> Dict[str, nn.Module]:
    """One module (or a stand-in with the same attributes) per built-in attention kind that needs no library."""
    bert_self = nn.Module()
    bert_self.query, bert_self.key, bert_self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    bert_self.num_attention_heads = 2
    bert = nn.Module()
    bert.self, bert.output = bert_self, nn.Module()
    bert.output.dense = nn.Linear(4, 4)
    qkv = nn.Module()
    qkv.q_proj, qkv.k_proj, qkv.v_proj, qkv.out_proj = (nn.Linear(4, 4) for _ in range(4))
    qkv.num_heads = 2
    fused = nn.Module()
    fused.qkv, fused.projection, fused.num_heads = nn.Linear(4, 12), nn.Linear(4, 4), 2
    t5 = nn.Module()
    t5.q, t5.k, t5.v, t5.o = (nn.Linear(4, 4) for _ in range(4))
    t5.n_heads, t5.relative_attention_num_buckets = 2, 32
    return {"MultiheadAttentionAdapter": nn.MultiheadAttention(4, 2), "BertSelfAttentionAdapter": bert_self,
            "BertAttentionAdapter": bert, "QKVLinearAttentionAdapter": qkv, "FusedQKVAttentionAdapter": fused,
            "T5AttentionAdapter": t5}


@pytest.mark.parametrize("name, module", sorted(_modules_of_every_kind().items()))
def test_each_kind_of_attention_module_gets_its_adapter_and_no_other(name: str, module: nn.Module) -> None:
    assert type(attention_adapter(module)).__name__ == name
    readers = [kind.adapter for kind in registry.ATTENTION_KINDS if registry.load(kind.adapter).matches(module)]
    assert len(readers) == 1 and readers[0].endswith(f":{name}"), readers


def test_bert_adapters_read_the_same_q_k_v() -> None:
    """``*Attention`` and its ``*SelfAttention`` give the same q, k, v; only the first projects with ``dense``."""
    modules = _modules_of_every_kind()
    bert, bert_self = modules["BertAttentionAdapter"], modules["BertSelfAttentionAdapter"]
    x = torch.randn(2, 3, 4)
    outer, inner = attention_adapter(bert), attention_adapter(bert_self)
    for a, b in zip(outer.qkv((x,), {}), inner.qkv((), {"hidden_states": x})):
        torch.testing.assert_close(a, b)
    o = torch.randn(2, 3, 4)
    torch.testing.assert_close(outer.project(o), o @ bert.output.dense.weight.T + bert.output.dense.bias)
    torch.testing.assert_close(inner.project(o), o)
    assert outer.output_module is bert.output.dense and inner.output_module is bert_self
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        outer.qkv((x,), {"encoder_hidden_states": x})


def test_a_registered_adapter_is_tried_after_the_built_in_ones_once() -> None:
    class Probe(nn.Module):
        pass

    class ProbeAdapter(AttentionAdapter):
        def qkv(self, args, kwargs):
            x = args[0][:, None]
            return x, x, x

        def project(self, o):
            return o

    assert not is_attention_module(Probe())
    for _ in range(2):
        register_attention_adapter(lambda m: isinstance(m, Probe), ProbeAdapter, "probe attention")
    assert isinstance(attention_adapter(Probe()), ProbeAdapter)
    assert sum(cls is ProbeAdapter for _, cls in registry._ATTENTION.entries()) == 1
    assert [cls for _, cls in registry._ATTENTION.entries()][:len(registry.ATTENTION_KINDS)] == \
        [registry.load(kind.adapter) for kind in registry.ATTENTION_KINDS]
    with pytest.raises(UnsupportedModelError, match="probe attention"):
        attention_adapter(nn.Linear(2, 2))


# -- shared layouts ----------------------------------------------------------------------------------------------------
def test_grid_layout_marks_the_patches_after_the_prefix() -> None:
    layout = grid_layout(2, (2, 3), torch.device("cpu"), prefix=2, query=1)
    expected = torch.tensor([[False, False] + [True] * 6] * 2)
    assert torch.equal(layout.report_mask, expected) and torch.equal(layout.lam_mask, expected)
    assert layout.query.tolist() == [1, 1] and layout.grid == (2, 3) and layout.allowed is None
    pooled = grid_layout(1, (1, 2), torch.device("cpu"), prefix=1, pooled_queries=torch.tensor([False, True, True]))
    assert pooled.query_mask.tolist() == [[False, True, True]]


@pytest.mark.parametrize("causal", [True, False])
def test_text_layout_padding_rows_see_themselves_always_or_only_when_they_see_nothing(causal: bool) -> None:
    ids = torch.tensor([[1, 5, 6, 2, 0, 0]])
    valid = ids != 0
    query = torch.tensor([3])
    words = words_from(valid, 1)
    n = ids.shape[1]
    # independent: keys a row may see under the padding mask (and the causal mask)
    sees = [[bool(valid[0, j]) and (not causal or j <= i) for j in range(n)] for i in range(n)]
    always = [[sees[i][j] or i == j for j in range(n)] for i in range(n)]
    if_empty = [[sees[i][j] or (i == j and not any(sees[i])) for j in range(n)] for i in range(n)]
    a = text_layout(ids, query, words, valid, causal, False, see_self="always")
    b = text_layout(ids, query, words, valid, causal, False, see_self="if_empty")
    assert a.allowed[0].tolist() == always and b.allowed[0].tolist() == if_empty
    for layout in (a, b):  # everything else is the same
        assert layout.report_mask.tolist() == [[False, True, True, False, False, False]]
        assert layout.lam_mask.tolist() == [[True, True, True, True, False, False]]
        assert layout.positions is None
    with pytest.raises(ValueError, match="see_self"):
        text_layout(ids, query, words, valid, causal, False, see_self="never")


# -- imports -----------------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, modules: Set[str]) -> Set[str]:
    """Package modules that ``path`` imports when it is imported (statements of the module body, also inside
    ``if`` / ``try`` at that level, not inside functions or classes nor under ``if TYPE_CHECKING``)."""
    name = _module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: Set[str] = set()

    def visit(body: List[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base in modules:
                    found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
            elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue  # annotations only: never imported at run time
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    found.discard(name)
    return found


def test_no_import_cycle_in_the_package() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _module_level_imports(path, set(paths)) for name, path in paths.items()}
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: List[List[str]] = []

    def walk(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    # a package's __init__ importing its own submodules is not a cycle (Python loads the package first)
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)
    assert "captum_gradeclip.adapters.registry" in graph["captum_gradeclip.adapters.base"]
    assert not any(m.startswith("captum_gradeclip.adapters.") for m in graph["captum_gradeclip.adapters.registry"])


_DESCRIBE = """
import importlib, json, sys
tables = {}
for first in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "captum_gradeclip" or m.startswith("captum_gradeclip.")]:
        del sys.modules[name]  # as in a fresh interpreter (torch and the libraries stay loaded: they hold no registry)
    importlib.import_module(first)
    registry = importlib.import_module("captum_gradeclip.adapters.registry")
    tables[first] = {
        "families": [[f.name, f.supported, [[k.label, k.build, list(k.classes)] for k in f.image + f.text],
                      [k.description for k in f.attention]] for f in registry.FAMILIES],
        "attention": [f"{c.__module__}.{c.__name__}" for _, c in registry._ATTENTION.entries()],
        "supported": list(registry.SUPPORTED_MODELS),
    }
print(json.dumps(tables))
"""


def test_importing_any_adapter_module_first_gives_the_same_registry() -> None:
    """In a fresh interpreter, each adapter module is imported first (the package's modules are unloaded between
    them): the registry, with its attention adapters in order, is the same every time."""
    modules = [f"captum_gradeclip.adapters.{m}" for m in ADAPTERS] + ["captum_gradeclip.adapters", "captum_gradeclip"]
    run = subprocess.run([sys.executable, "-c", _DESCRIBE, *modules], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    tables = json.loads(run.stdout)
    first = tables[modules[0]]
    assert len(first["attention"]) == len(registry.ATTENTION_KINDS)
    for module in modules:
        assert tables[module] == first, f"importing {module} first gives another registry"


def test_no_adapter_module_is_over_600_lines() -> None:
    long = {p.name: n for p in (PACKAGE / "adapters").glob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
