"""The package's import structure: no circles among modules, and no import from a lower
layer to a higher one (the order is the one written in docs/architecture.md).

Every import counts, at the top of a module or inside a function."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "ngconvert"


def _layers() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    m = re.search(r"^Layer order \(lowest first\): *`?([a-z_ <]+)`?\s*$", text, re.M)
    assert m, "docs/architecture.md has no 'Layer order (lowest first): a < b < ...' line"
    return [p.strip() for p in m.group(1).split("<")]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["ngconvert", *parts])] = path
    return out


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _targets(name: str, path: Path, node: ast.AST, modules: dict) -> set[str]:
    """The package modules an import statement loads."""
    found = set()
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name == "ngconvert" or a.name.startswith("ngconvert."):
                found.add(a.name)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _package_of(name, path).split(".")
            base = base[:len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
            if not (mod == "ngconvert" or mod.startswith("ngconvert.")):
                return found
        found.add(mod)
        for a in node.names:
            if f"{mod}.{a.name}" in modules:
                found.add(f"{mod}.{a.name}")
    # importing a.b.c runs a/__init__ and a/b/__init__ too (unless they hold the importer itself)
    mine = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out = set()
    for t in found:
        parts = t.split(".")
        for i in range(1, len(parts) + 1):
            if ".".join(parts[:i]) not in mine or i == len(parts):
                out.add(".".join(parts[:i]))
    return {t for t in out if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(name, path, node, modules)
        graph[name] = edges
    return graph


def _layer(name: str, layers: list[str]) -> int:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return len(layers)            # ngconvert/__init__ and __main__ sit on top of everything
    assert parts[1] in layers, f"{name}: its package {parts[1]!r} is not in the layer order"
    return layers.index(parts[1])


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    layers = _layers()
    for name in _modules():
        _layer(name, layers)


def test_no_circles():
    graph = _graph()
    assert _circles(graph) == []


def test_no_upward_imports():
    layers = _layers()
    upward = [f"{a} -> {b}" for a, targets in sorted(_graph().items()) for b in sorted(targets)
              if _layer(b, layers) > _layer(a, layers)]
    assert upward == []


def test_no_package_imports_inside_functions():
    """Package-internal imports sit at the top of modules; only optional third-party
    libraries are imported inside functions."""
    inner = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ngconvert")):
                        inner.append(f"{path.relative_to(PKG)}:{node.lineno}")
                    elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ngconvert" for a in node.names):
                        inner.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert inner == []
