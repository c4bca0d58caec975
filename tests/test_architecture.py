"""The package's structure: imports run one way (no circle, no upward import, lazy imports
inside functions included), and no module reaches into another's private names."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lit"

#: The layers, lowest first (README "Architecture"). A module may import its own layer and
#: the ones below; ``__main__`` modules are entry points and may import anything.
LAYERS = (
    ("lit.errors", "lit._checks", "lit._device", "lit._fileio", "lit._hdf5", "lit._image", "lit._names", "lit._download",
     "lit._pickle", "lit._resources", "lit.types", "lit.distributed"),
    ("lit.models", "lit.matching", "lit.features", "lit.asmk", "lit.index_file", "lit.hub",
     "lit.losses", "lit.evaluate", "lit.data", "lit.metric", "lit.train", "lit.weights"),
    ("lit.pipeline",),
    ("lit.text", "lit.bench", "lit.viz", "lit.demo", "lit.serve"),
    ("lit.cli",),
)


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module a dotted name refers to (the longest existing prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """Every import of ``module`` (module level and inside functions): ``(target module,
    imported names, line)``; ``from pkg import name`` points at ``pkg/name.py`` when that is a
    module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lit" or alias.name.startswith("lit."):
                    out.append((_resolve(alias.name), [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "lit" and not target.startswith("lit."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, [], node.lineno))
                else:
                    out.append((_resolve(target), [alias.name], node.lineno))
    return [(t, names, line) for t, names, line in out if t is not None]


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in imports(m):
            # a package importing its own submodules is what packages do
            if target != m and not (MODULES[m].name == "__init__.py" and target.startswith(m + ".")):
                graph[m].add(target)
    return graph


def _layer(module: str) -> int | None:
    for i, group in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in group):
            return i
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None and m != "lit" and not m.endswith("__main__")] == []


def test_no_import_circle_counting_every_import_statement():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_imports_run_downward_only():
    upward = []
    for m in MODULES:
        if m == "lit" or m.endswith("__main__"):
            continue
        for target, _, line in imports(m):
            if target == "lit":
                continue
            if _layer(target) is not None and _layer(target) > _layer(m):
                upward.append(f"{m}:{line} -> {target}")
    assert upward == []


def test_no_module_imports_a_private_name_of_another_subpackage():
    found = []
    for m in MODULES:
        own = m.rpartition(".")[0] if MODULES[m].name != "__init__.py" else m
        for target, names, line in imports(m):
            other = target.rpartition(".")[0] if MODULES[target].name != "__init__.py" else target
            for name in names:
                if name.startswith("_") and not name.startswith("__") and other != own:
                    found.append(f"{m}:{line} imports {target}.{name}")
    assert found == []


@pytest.mark.parametrize("script", sorted(str(p.relative_to(ROOT.parent)) for folder in ("benchmarks", "weights")
                                          for p in (ROOT.parent / folder).rglob("*.py")))
def test_scripts_do_not_edit_sys_path(script):
    text = (ROOT.parent / script).read_text()
    assert "sys.path.insert" not in text and "sys.path.append" not in text


def test_the_checker_sees_lazy_imports(tmp_path):
    """A lazy import inside a function counts: the walker finds it."""
    found = {t for t, _, _ in imports("lit.cli.search")}
    assert "lit.pipeline" in found  # imported inside run()
    assert os.path.basename(MODULES["lit.cli"]) == "__init__.py"
