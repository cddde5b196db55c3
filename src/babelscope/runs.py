"""Run directories: resolved configs, self-describing results files, atomic writes, resumable steps.

Layout of a run directory::

    RUN_DIR/
      STEP/                 one folder per step (``ppl``, ``regions-importance``, ...)
        config.yaml         the resolved configuration of the step
        results.json        {"schema_version", "kind", "step", "config", "provenance", "results", "tables"}
        *.csv               tables named in results.json
        cache/              per-request caches, so an interrupted step resumes
      report.html           rendered from the results files alone (``babelscope report RUN_DIR``)

Everything is written to a temporary file in the same directory and renamed into place, so a crash never
leaves a half-written results file behind.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------- atomic I/O
@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(to_jsonable(obj), sort_keys=False, allow_unicode=True))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts) as CSV; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: to_jsonable(v) for k, v in row.items()})


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and dataclasses into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(obj))
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN -> null (JSON has no NaN)
        return None
    return obj


# ----------------------------------------------------------------------------------------------- provenance
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(texts: Iterable[str]) -> str:
    """Checksum of a sequence of texts (the data a step actually used)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    names = ["babelscope", "torch", "transformers", "accelerate", "numpy", "scipy", "safetensors", "gguf", "POT"]
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def provenance(**extra: Any) -> dict[str, Any]:
    """Who/what/when of a result: package versions, platform, time, command line, plus ``extra``."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "platform": platform.platform(),
        "argv": sys.argv,
        **extra,
    }


def is_main_process() -> bool:
    """True outside ``accelerate launch`` and on its rank 0 (the only one that writes results)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------------------------- run dirs
@dataclass
class Step:
    """One step's folder inside a run directory."""

    run_dir: Path
    name: str

    @property
    def path(self) -> Path:
        return self.run_dir / self.name

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def cache_dir(self) -> Path:
        path = self.path / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, config: dict[str, Any] | None = None) -> bool:
        """True when results exist (and, if ``config`` is given, were made with the same config)."""
        if not self.results_path.exists():
            return False
        if config is None:
            return True
        done = json.loads(self.results_path.read_text(encoding="utf-8"))
        return done.get("config") == to_jsonable(config)

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_yaml(self.path / "config.yaml", config)

    def write_results(
        self,
        kind: str,
        config: dict[str, Any],
        results: dict[str, Any],
        tables: dict[str, list[dict[str, Any]]] | None = None,
        prov: dict[str, Any] | None = None,
    ) -> Path:
        """Write each table as CSV, then ``results.json`` last (its presence marks the step as done)."""
        self.path.mkdir(parents=True, exist_ok=True)
        table_files = {}
        for name, rows in (tables or {}).items():
            write_csv(self.path / f"{name}.csv", rows)
            table_files[name] = f"{name}.csv"
        doc = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "step": self.name,
            "config": config,
            "provenance": prov or provenance(),
            "results": results,
            "tables": {name: {"file": table_files[name], "rows": rows} for name, rows in (tables or {}).items()},
        }
        write_json(self.results_path, doc)
        return self.results_path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the one inside a step folder)."""
    from babelscope.errors import BabelscopeError

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no results file; run the step first") from None
    except json.JSONDecodeError as exc:
        raise BabelscopeError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); re-run the step") from None
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BabelscopeError(
            f"{path}: results schema version {doc.get('schema_version')!r}, this babelscope reads "
            f"{SCHEMA_VERSION}; re-run the step with this version"
        )
    return doc


def iter_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """All step results in a run directory, in the order the steps were written."""
    run_dir = Path(run_dir)
    docs = [load_results(p) for p in run_dir.glob("*/results.json")]
    return sorted(docs, key=lambda d: d.get("provenance", {}).get("created", ""))


# ----------------------------------------------------------------------------------------------- cache
class RequestCache:
    """Append-only per-request cache (JSON lines): a re-run skips requests already answered.

    Keys are hashes of the request and everything that determines its answer (model checksum, options).
    Lines are flushed as results arrive; a truncated last line from a crash is ignored on load.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._data: dict[str, Any] = {}
        if self.path and self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(json.JSONDecodeError, KeyError):
                        item = json.loads(line)
                        self._data[item["k"]] = item["v"]

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(to_jsonable(parts), ensure_ascii=False).encode()).hexdigest()[:32]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def put_many(self, items: dict[str, Any]) -> None:
        self._data.update(items)
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for k, v in items.items():
                fh.write(json.dumps({"k": k, "v": to_jsonable(v)}, ensure_ascii=False) + "\n")
            fh.flush()
