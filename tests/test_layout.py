"""How the package and the tests are laid out: what importing the package loads, and test modules that stand
alone (shared code lives in tests/fixtures.py and tests/reference.py, never in another test module)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGE = ROOT / "captum_gradeclip"


def _imported_modules(path: Path) -> list:
    """The top-level names of every module ``path`` imports, at any depth of its code (absolute imports only)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("importorskip", "import_module") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value.split(".")[0])
    return names


def test_no_test_module_imports_another_test_module_or_conftest():
    offenders = {path.name: sorted({name for name in _imported_modules(path)
                                    if name.startswith("test_") or name == "conftest"})
                 for path in sorted(TESTS.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_sees_every_way_of_importing(tmp_path):
    path = tmp_path / "test_probe.py"
    path.write_text("import test_a\nfrom conftest import x\n\ndef f():\n    import test_b.sub\n"
                    "    pytest.importorskip('test_c')\n    from . import test_relative\n", encoding="utf-8")
    assert sorted(_imported_modules(path)) == ["conftest", "test_a", "test_b", "test_c"]


_PROBE = """
import json, sys
loaded = set(sys.modules)
import captum.attr  # captum.attr imports matplotlib (and pyplot) itself: not the package's doing
for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
    del sys.modules[name]  # forgotten, so that any later import of matplotlib is seen
before = set(sys.modules)
importers = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            importers.append((name, frame.f_globals.get("__name__", "?") if frame else "?"))
        return None


sys.meta_path.insert(0, Watch())
import captum_gradeclip
after_package = set(sys.modules)
import captum_gradeclip.viz
print(json.dumps({
    "viz_loaded_by_package": "captum_gradeclip.viz" in after_package,
    "matplotlib_before_captum": sorted(m for m in loaded if m.startswith("matplotlib")),
    "new_matplotlib_modules": sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "matplotlib"),
    "package_importers": sorted({who for _, who in importers if who.startswith("captum_gradeclip")}),
    "lazy_names": [captum_gradeclip.normalize_map is captum_gradeclip.viz.normalize_map,
                   captum_gradeclip.viz is sys.modules["captum_gradeclip.viz"]],
}))
"""


@pytest.mark.subprocess
def test_importing_the_package_and_viz_imports_no_matplotlib():
    """``import captum_gradeclip`` does not load the display code, and neither it nor ``import
    captum_gradeclip.viz`` imports matplotlib: the drawing functions do, when they run. (captum.attr itself
    imports matplotlib, so the probe loads captum first, then forgets matplotlib and watches for it.)"""
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["matplotlib_before_captum"] == []
    assert found["viz_loaded_by_package"] is False
    assert found["package_importers"] == [] and found["new_matplotlib_modules"] == []
    assert found["lazy_names"] == [True, True]


@pytest.mark.subprocess
def test_import_captum_gradeclip_alone_imports_no_matplotlib_captum_or_torch():
    """``import captum_gradeclip`` in a fresh interpreter loads none of matplotlib, Captum (whose ``captum.attr``
    imports matplotlib) or torch: every public name is imported on first use; the names still resolve."""
    probe = ("import sys, json, captum_gradeclip as p\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'captum', 'torch'})\n"
             "names = [n for n in p.__all__ if getattr(p, n, None) is None]\n"
             "print(json.dumps([heavy, names, p.GradECLIP.__module__]))\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    heavy, unresolved, module = json.loads(run.stdout)
    assert heavy == [] and unresolved == [] and module == "captum_gradeclip.grad_eclip"


def test_no_package_module_imports_matplotlib_at_import_time():
    """matplotlib appears only inside functions (module-level imports would load it with the package)."""
    top_level = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "matplotlib" for n in names):
                top_level.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    assert top_level == {}


def test_viz_modules_fit_in_600_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in [*sorted((PACKAGE / "viz").glob("*.py")), PACKAGE / "cli.py", PACKAGE / "loading.py",
                       PACKAGE / "explanations.py"]}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
