"""Size and plumbing counts of ``src/babelscope`` (the numbers a refactor of the corridors reports).

``python tools/code_stats.py`` prints the longest functions, the longest step functions (the ``run`` functions
the experiment commands name), the sites that build a sha256 by hand (``hashlib.sha256`` outside the key
builder) and the modules that talk to ``torch.distributed`` themselves (outside the processes module).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "babelscope"
#: the ground-floor modules that own hashing and the process group (absent before they existed)
KEY_BUILDER = SRC / "caches.py"
PROCESSES = SRC / "processes.py"
DIST_CALL = re.compile(r"\b(?:dist|torch\.distributed)\.(?:is_initialized|get_rank|get_world_size|all_reduce|barrier"
                       r"|all_gather_object|all_gather|broadcast)\b")


def functions() -> list[tuple[int, str]]:
    """``(lines, module:qualified name)`` of every function and method."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)

        def walk(node: ast.AST, prefix: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    out.append((child.end_lineno - child.lineno + 1, f"{rel}:{name}"))
                    walk(child, name + ".", rel)
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.", rel)

        walk(tree, "")
    return sorted(out, reverse=True)


def step_functions() -> set[str]:
    """``module:function`` of every step named by a command string (``"module:Config:fn"`` or ``"module:fn"``)
    or by a command table entry."""
    names = set()
    strings = re.compile(r"\"(babelscope(?:\.\w+)+):(?:\w+:)?(\w+)\"")  # the older "module:Class:fn" form
    objects = re.compile(r"StepFunction\(\"(babelscope(?:\.\w+)+)\"(?:, \"(\w+)\")?\)")  # the command table
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        names.update(f"{module}:{fn}" for module, fn in strings.findall(text))
        names.update(f"{module}:{fn or 'run'}" for module, fn in objects.findall(text))
    return names


def sha256_sites() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        if path == KEY_BUILDER:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "hashlib.sha256" in line:
                out.append(f"{path.relative_to(SRC)}:{i}")
    return out


def process_group_modules() -> list[str]:
    return [str(p.relative_to(SRC)) for p in sorted(SRC.rglob("*.py"))
            if p != PROCESSES and DIST_CALL.search(p.read_text(encoding="utf-8"))]


def main() -> None:
    funcs = functions()
    steps = step_functions()
    print("longest functions:")
    for n, name in funcs[:5]:
        print(f"  {n:4d}  {name}")
    print(f"functions over 70 lines: {sum(n > 70 for n, _ in funcs)}")
    step_rows = [(n, name) for n, name in funcs if name in steps]
    print("longest steps:")
    for n, name in step_rows[:5]:
        print(f"  {n:4d}  {name}")
    sites = sha256_sites()
    print(f"sha256 built by hand: {len(sites)} sites")
    for s in sites:
        print(f"  {s}")
    mods = process_group_modules()
    print(f"modules calling torch.distributed outside the processes module: {len(mods)}")
    for m in mods:
        print(f"  {m}")


if __name__ == "__main__":
    main()
