"""The package's shape: no import cycle (function-level imports included)."""

import ast
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO


def _import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{p}:{node.lineno}: relative import (the package imports absolutely)"
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != m and not m.startswith(n + "."):
                    graph[m].add(n)
    return graph


def _cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = _import_graph(REPO / "rtpca_jax")
    assert len(graph) > 30 and "rtpca_jax.evaluation" in graph["rtpca_jax.train_loop"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycle_by_the_shared_tool():
    tool = REPO.parent / "shared" / "tools" / "import_cycles.py"
    if not tool.exists():
        pytest.skip("../shared/tools is not beside this checkout")
    r = subprocess.run([sys.executable, str(tool), "rtpca_jax"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
