"""The import graph of ``src/babelscope`` from the source's AST (imports inside functions included).

``python tools/import_graph.py`` prints the rooms (top-level packages and modules), the import circles between
modules, and the capability -> capability arrows with the modules that make them. ``tests/test_architecture.py``
reads the same graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "babelscope"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
#: the rooms that hold a paper's methods, side by side
CAPABILITIES = ("evaluate", "export", "lens", "neurons", "regions", "steer", "syntax", "transfer")


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, src: Path = SRC) -> set[str]:
    """The ``babelscope`` modules a file imports anywhere in it (``from a import b`` counts as ``a.b`` when
    ``a.b`` is a module, else as ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}")
                out.add(base)
    return out


def graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package's modules (a name that is not a module maps to the
    package or module that holds it)."""
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for target in imports(path, src):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name and target != PACKAGE:
                targets.add(target)
        edges[name] = targets
    # ``from babelscope.x import y`` also adds ``babelscope.x``: keep it only when y is not a submodule
    for name, path in files.items():
        edges[name] = {t for t in edges[name] if not _only_parent(t, name, path, files, src)}
    return edges


def _only_parent(target: str, name: str, path: Path, files: dict[str, Path], src: Path) -> bool:
    """True when ``target`` is a package all of whose mentions in ``name`` were ``from target import sub``."""
    if files[target].name != "__init__.py":
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == target for a in node.names):
            return False
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == target and any(f"{base}.{a.name}" not in files for a in node.names):
                return False
    return True


def room(module: str) -> str:
    """The top-level package or module a module lives in (``babelscope.regions.ablate`` -> ``regions``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def capability_arrows(edges: dict[str, set[str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(from room, to room): [(module, imported module), ...]}`` between two different capabilities."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            ra, rb = room(a), room(b)
            if ra != rb and ra in CAPABILITIES and rb in CAPABILITIES:
                out[(ra, rb)].append((a, b))
    return dict(out)


def room_arrows(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if room(a) != room(b):
                out[room(a)].add(room(b))
    return dict(out)


def main() -> None:
    edges = graph()
    rooms = sorted({room(m) for m in edges})
    print(f"modules {len(edges)}, import edges {sum(map(len, edges.values()))}, rooms {len(rooms)}")
    arrows = room_arrows(edges)
    for r in rooms:
        print(f"  {r:12s} -> {', '.join(sorted(arrows.get(r, ()))) or '-'}")
    found = circles(edges)
    print(f"circles {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(m.removeprefix(PACKAGE + ".") for m in comp))
    caps = capability_arrows(edges)
    print(f"capability arrows {len(caps)}")
    for (ra, rb), pairs in sorted(caps.items()):
        print(f"  {ra} -> {rb}: " + ", ".join(f"{a.removeprefix(PACKAGE + '.')}->{b.removeprefix(PACKAGE + '.')}"
                                                for a, b in pairs))


if __name__ == "__main__":
    main()
