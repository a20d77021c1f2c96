"""The package's shape: one folder per capability, short modules, no import cycle, no argparse, cheap callbacks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "svdlora_pl"
BUNDLED_DATA = PACKAGE / "embedded" / "datasets"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }  # imports for annotations only run no code: they make no cycle
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def test_at_most_eight_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert {"spectral", "embedded", "lora", "training", "callbacks", "teacher", "aggregation", "experiment"} <= set(
        folders
    ) and {"memory", "cli"} <= set(folders)


@pytest.mark.parametrize("name, path", modules().items(), ids=list(modules()))
def test_module_is_short(name, path):
    if BUNDLED_DATA in path.parents:
        pytest.skip("bundled data generators")
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_no_import_cycle():
    table = modules()
    graph = {name: imports_of(name, path, set(table)) for name, path in table.items()}
    # importing a package imports its __init__: an edge to "a.b.c" also reaches "a" and "a.b"
    for name in graph:
        graph[name] |= {".".join(t.split(".")[:i]) for t in graph[name] for i in range(2, t.count(".") + 1)} & set(
            table
        )
        graph[name].discard(name)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1 and not node.startswith(target + "."):  # a submodule needs its package
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_cycle_detector_sees_a_cycle(tmp_path, monkeypatch):
    """The detector itself: two modules importing each other are reported."""
    package = tmp_path / "svdlora_pl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from svdlora_pl import b\n")
    (package / "b.py").write_text("def f():\n    from svdlora_pl.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()


def test_no_argparse():
    users = [name for name, path in modules().items() if "argparse" in imports_of_stdlib(path)]
    assert not users


def imports_of_stdlib(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_callbacks_add_no_heavy_import_to_lightnings_own():
    """``import svdlora_pl.callbacks`` loads nothing heavy beyond what ``import lightning.pytorch`` already loads.

    Lightning itself imports ``matplotlib.pyplot`` and ``transformers`` (through torchmetrics) when they are
    installed, so their absence cannot be asked of the callbacks; what the callbacks control is that they add none of
    matplotlib, transformers, peft, tensorboard or the package's plotting and model code, and select no backend.
    """
    code = (
        "import sys\n"
        "import lightning.pytorch\n"
        "before = set(sys.modules)\n"
        "import svdlora_pl.callbacks\n"
        "added = sorted(m for m in set(sys.modules) - before if not m.startswith('svdlora_pl.callbacks'))\n"
        "heavy = [m for m in added if m.split('.')[0] in ('matplotlib', 'transformers', 'peft', 'tensorboard')]\n"
        "ours = [m for m in added if m.startswith(('svdlora_pl.plots', 'svdlora_pl.training', 'svdlora_pl.teacher'))]\n"
        "assert not heavy and not ours, (heavy, ours)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_backend_is_selected_anywhere():
    users = [name for name, path in modules().items() if "matplotlib.use(" in path.read_text(encoding="utf-8")]
    assert not users
