"""The layout of the lcnet package: imports go one way, and each concept has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lcnet"


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth (function-level too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "lcnet":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lcnet" and len(parts) > 1:
                    found.add(parts[1])
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return (found & modules) - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in sorted(PACKAGE.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_parsed_at_any_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n    import lcnet.c\n")
    for name in "bc":
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert import_graph()["a"] == {"b", "c"}


def test_package_imports_have_no_cycle() -> None:
    graph = import_graph()
    assert {"train", "evaluate", "data", "synth", "io", "checkpoint"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_evaluation_does_not_depend_on_training() -> None:
    graph = import_graph()
    for module in ("evaluate", "inference", "metrics", "io", "checkpoint"):
        assert "train" not in graph[module], module


def _defining(pattern: str) -> list[str]:
    return sorted(p.name for p in PACKAGE.glob("*.py") if pattern in p.read_text())


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        ("log10(", "metrics.py"),  # PSNR
        ("mkstemp(", "io.py"),  # atomic writes
        ("could not be loaded", "runtime.py"),  # the "extension missing" message
        ("PNG_COMPRESS_LEVEL =", "io.py"),
        ('SHARP_DIR = "sharp"', "io.py"),  # the GOPRO layout
        ("splitlines() if line.strip()", "errors.py"),  # an exception as one line
        ("class LCNetError", "errors.py"),
    ],
)
def test_one_home(pattern: str, home: str) -> None:
    assert _defining(pattern) == [home]
