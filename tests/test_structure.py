"""The package's structure: layers import only downward, and no module imports itself in a circle.

Every import of every module of ``ndfs/`` counts, at module level or inside a function (a lazy import
still ties two modules together). Layers, bottom to top, are the folders DESIGN.md draws; a module may
import from its own layer and from any layer below. ``ndfs/__init__.py`` (the package's facade) and
``ndfs/__main__.py`` sit above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ndfs"

#: bottom to top; a module's layer is the first entry its dotted name starts with
LAYERS = [
    ("core", ["ndfs.core"]),
    ("formats", ["ndfs.formats"]),
    ("ramon", ["ndfs.ramon"]),
    ("stores", ["ndfs.stores"]),
    ("cache", ["ndfs.cache"]),
    ("journal", ["ndfs.journal"]),
    ("stack", ["ndfs.stack"]),
    ("volume", ["ndfs.volume"]),
    ("api", ["ndfs.api"]),
    ("tools", ["ndfs.tools"]),
    ("serve", ["ndfs.serve"]),
    ("fs", ["ndfs.fs"]),
    ("cli", ["ndfs.cli"]),
    ("testing", ["ndfs.testing"]),
    ("package", ["ndfs.__init__", "ndfs.__main__"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def layer_of(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer: give it a folder of DESIGN.md's picture")


def imports_of(path: Path, name: str) -> set[str]:
    """The ndfs modules ``path`` imports (``from ndfs.x import y`` counts ndfs.x.y when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ndfs")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "ndfs":
                continue
            submodules = [a.name for a in node.names if _exists(f"{base}.{a.name}")]
            found.update(f"{base}.{name}" for name in submodules)
            if len(submodules) < len(node.names):  # names defined in the module itself (not only submodules)
                found.add(base)
    return {m for m in found if _exists(m)}


def _exists(module: str) -> bool:
    p = PACKAGE.parent / module.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _canonical(module: str) -> str:
    p = PACKAGE.parent / module.replace(".", "/")
    return module + ".__init__" if (p / "__init__.py").exists() else module


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        edges[name] = {_canonical(m) for m in imports_of(path, name)} - {name}
    return edges


def test_imports_only_go_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            package = target[: -len(".__init__")] if target.endswith(".__init__") else None
            if package and package != "ndfs" and module.startswith(package + "."):
                continue  # a module may use its own (sub)package's facade; nothing inside uses the root's
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others():
    edges = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("bad, expected", [("upward", "upward imports"), ("circle", "import circles")])
def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch, bad, expected):
    """The two checks fail on a package that breaks them (so they cannot pass by finding nothing)."""
    pkg = tmp_path / "ndfs"
    (pkg / "core").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for d in (pkg, pkg / "core", pkg / "cli"):
        (d / "__init__.py").write_text("")
    (pkg / "cli" / "main.py").write_text("from ndfs.core import a\n")
    if bad == "upward":
        (pkg / "core" / "a.py").write_text("def f():\n    from ndfs.cli import main\n")
    else:
        (pkg / "core" / "a.py").write_text("from ndfs.core import b\n")
        (pkg / "core" / "b.py").write_text("import ndfs.core.a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    check = test_imports_only_go_down if bad == "upward" else test_no_module_imports_itself_through_others
    with pytest.raises(AssertionError, match=expected):
        check()
