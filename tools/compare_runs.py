"""Compare two run directories file by file, apart from timestamps, wall times and the run directory itself.

    python tools/compare_runs.py BEFORE AFTER            # exit 0 when every results file is equal
    python tools/compare_runs.py --snapshot RUN_DIR OUT  # copy RUN_DIR without its big files (their sha256 kept)

What is compared: every ``results.json``, ``config.yaml``, CSV and JSON-lines file (values exactly, after dropping
the keys and columns in ``IGNORED``: creation times, wall seconds, throughput; and after writing each run directory
as ``{run_dir}``), every request cache (the same keys with the same answers, in any order), every other file byte
for byte (tensor files, stores; a snapshot holds their sha256 instead), and the figures of ``report.html`` (each
embedded PNG byte for byte). A refactor that changes no number passes it.

A step's ``inputs`` (one checksum of what it read) covers upstream results files, which hold their own creation
time and wall seconds, and the modification times of a model directory written by an earlier step; so for the
steps that read those it differs between two runs of the same code. ``--inputs-over-times`` compares those results
files without ``inputs`` and lists them apart (check them by recomputing the checksum from each run's own files).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

#: keys (JSON) and columns (CSV) that hold times, not results
IGNORED = {"created", "seconds", "train_seconds", "tokens_per_s", "wall_seconds", "elapsed"}
#: files bigger than this, and model folders, are kept as a sha256 in a snapshot
BIG = 8 << 20
MANIFEST = "_big_files.sha256"
_IMG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
_SOURCE = re.compile(r"\S*/src/babelscope/")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _is_big(path: Path, root: Path) -> bool:
    return "model" in path.relative_to(root).parts[:-1] or path.stat().st_size > BIG


def snapshot(run_dir: Path, out: Path) -> None:
    """Copy ``run_dir`` to ``out``, big files and model folders replaced by their sha256 in ``MANIFEST``."""
    lines = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if _is_big(path, run_dir):
            lines.append(f"{_sha256(path)}  {rel}")
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
    (out / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "_run_dir.txt").write_text(str(run_dir.resolve()) + "\n", encoding="utf-8")


def _normalize(value: Any, run_dirs: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _normalize(v, run_dirs) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_normalize(v, run_dirs) for v in value]
    if isinstance(value, str):
        for d in run_dirs:
            value = value.replace(d, "{run_dir}")
        return _SOURCE.sub("src/babelscope/", value)
    return value


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        return f"{where or '/'}: {a!r:.80} != {b!r:.80}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k}: only in {'after' if k not in a else 'before'}"
            diff = _first_difference(a[k], b[k], f"{where}/{k}")
            if diff:
                return diff
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = _first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where or '/'}: {a!r:.80} != {b!r:.80}"


def _read(path: Path, run_dirs: list[str]) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return _normalize(json.loads(text), run_dirs)
    if path.suffix in (".yaml", ".yml"):
        return _normalize(yaml.safe_load(text), run_dirs)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        return _normalize(rows, run_dirs)
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.parent.name == "cache" and all(isinstance(r, dict) and "k" in r for r in records):
            return {r["k"]: _normalize(r["v"], run_dirs) for r in records}  # a request cache: order-free
        return _normalize(records, run_dirs)
    raise ValueError(path)


def _figures(path: Path) -> list[bytes]:
    return [base64.b64decode(m) for m in _IMG.findall(path.read_text(encoding="utf-8"))]


def compare(before: Path, after: Path, inputs_over_times: bool = False) -> list[str]:
    """One line per file: ``same`` or the first difference; the lines of the differing files start with ``DIFF``
    (``inputs_over_times``: a results file equal apart from its ``inputs`` checksum is ``same`` with a note)."""
    dirs_before = [str(before.resolve()), str(before)]
    marker = before / "_run_dir.txt"
    if marker.exists():
        dirs_before.insert(0, marker.read_text(encoding="utf-8").strip())
    dirs_after = [str(after.resolve()), str(after)]
    dirs_before += ["runs/demo"]
    dirs_after += ["runs/demo"]
    big = {}
    if (before / MANIFEST).exists():
        for line in (before / MANIFEST).read_text(encoding="utf-8").splitlines():
            if line.strip():
                digest, rel = line.split("  ", 1)
                big[rel] = digest
    names = {str(p.relative_to(before)) for p in before.rglob("*") if p.is_file()} - {MANIFEST, "_run_dir.txt"}
    names |= set(big)
    names |= {str(p.relative_to(after)) for p in after.rglob("*") if p.is_file()}
    out = []
    for rel in sorted(names):
        a, b = before / rel, after / rel
        if not b.exists():
            out.append(f"DIFF {rel}: missing after")
            continue
        if rel in big:
            out.append(f"{'same' if _sha256(b) == big[rel] else 'DIFF'} {rel} (sha256)")
            continue
        if not a.exists():
            out.append(f"DIFF {rel}: only after")
            continue
        if a.name == "report.html":
            fa, fb = _figures(a), _figures(b)
            same = fa == fb
            out.append(f"{'same' if same else 'DIFF'} {rel}: {len(fa)} figures before, {len(fb)} after, "
                       f"{sum(x == y for x, y in zip(fa, fb, strict=False))} byte-identical")
            continue
        if a.suffix in (".json", ".yaml", ".yml", ".csv", ".jsonl"):
            da, db = _read(a, dirs_before), _read(b, dirs_after)
            diff = _first_difference(da, db)
            if diff and inputs_over_times and a.name == "results.json" and diff.startswith("/inputs:") \
                    and _first_difference({**da, "inputs": None}, {**db, "inputs": None}) is None:
                out.append(f"same {rel} (apart from inputs, a checksum over upstream files' times)")
                continue
            out.append(f"DIFF {rel}: {diff}" if diff else f"same {rel}")
        else:
            out.append(f"{'same' if a.read_bytes() == b.read_bytes() else 'DIFF'} {rel} (bytes)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--snapshot", action="store_true", help="copy BEFORE (a run dir) to AFTER, big files hashed")
    parser.add_argument("--quiet", action="store_true", help="print only the differing files and the count")
    parser.add_argument("--inputs-over-times", action="store_true",
                        help="compare results files without 'inputs' when only it differs (listed apart)")
    args = parser.parse_args()
    if args.snapshot:
        snapshot(args.before, args.after)
        return
    lines = compare(args.before, args.after, args.inputs_over_times)
    bad = [line for line in lines if line.startswith("DIFF")]
    for line in bad if args.quiet else lines:
        print(line)
    print(f"{len(lines) - len(bad)} of {len(lines)} files equal; {len(bad)} differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
