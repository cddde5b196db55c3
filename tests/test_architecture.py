"""The architecture of docs/architecture.md, kept true: the import graph of ``src/babelscope`` (imports inside
functions included, computed from the source by ``tools/import_graph.py``) has no circle, every room imports
only rooms on its floor or below, and a capability imports another capability only where the page allows it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


graph_tool = _tool()

#: Floors, bottom up (docs/architecture.md): a room imports rooms on its own floor or below.
FLOORS = [
    {"errors", "settings", "processes", "caches", "formatting", "numeric", "layers", "fields", "memory",
     "tensorfiles", "runs"},                                             # 0 ground floor
    {"data", "models"},                                                  # 1 model and corpus
    {"steps", "options", "commands"},                                    # 2 the step runner, options, commands
    {"evaluate", "export", "lens", "neurons", "regions", "steer", "syntax", "transfer"},  # 3 capabilities
    {"compare", "locate"},                                               # 4 reads results files only
    {"registry", "experiment", "report", "cli", "babelscope"},           # 5 the command table and its readers
]

#: The only capability -> capability imports: (importing room, imported module prefix, why).
ALLOWED = [
    ("*", "babelscope.evaluate", "any capability measures with evaluate (perplexity, intervention perplexity)"),
    ("transfer", "babelscope.regions.select", "region masks frozen in training"),
    ("neurons", "babelscope.regions.select", "the overlap step compares neurons with region masks"),
    ("neurons", "babelscope.regions.shards", "the overlap step reads region score files, whole or in FSDP pieces"),
    ("steer", "babelscope.neurons", "LAPE-neuron steering: the neurons find step's selection at its FFN sites"),
]


def _floor(room: str) -> int:
    for level, rooms in enumerate(FLOORS):
        if room in rooms:
            return level
    raise AssertionError(f"room {room!r} is on no floor: add it to docs/architecture.md and FLOORS")


def _allowed(src_room: str, target: str) -> bool:
    return any(who in ("*", src_room) and (target == prefix or target.startswith(prefix + "."))
               for who, prefix, _ in ALLOWED)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "babelscope"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from babelscope.b import y\n    return y\n")
    (pkg / "b.py").write_text("from .a import x\n")
    edges = graph_tool.graph(pkg)
    assert edges["babelscope.a.x"] == {"babelscope.b"} and edges["babelscope.b"] == {"babelscope.a.x"}
    assert graph_tool.circles(edges) == [["babelscope.a.x", "babelscope.b"]]


def test_no_import_circle():
    assert graph_tool.circles(graph_tool.graph()) == []


def test_rooms_import_downwards():
    edges = graph_tool.graph()
    upward = sorted((a, b) for a, targets in edges.items() for b in targets
                    if _floor(graph_tool.room(b)) > _floor(graph_tool.room(a)))
    assert upward == [], f"imports from a lower floor to a higher one: {upward}"


def test_capabilities_stand_side_by_side():
    arrows = graph_tool.capability_arrows(graph_tool.graph())
    bad = [(a, b) for pairs in arrows.values() for a, b in pairs if not _allowed(graph_tool.room(a), b)]
    assert bad == [], f"capability -> capability imports outside docs/architecture.md's allowed ones: {bad}"
