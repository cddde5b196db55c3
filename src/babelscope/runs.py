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
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from babelscope.caches import (  # noqa: F401  (re-exported: runs was their home)
    RequestCache,
    file_sha256,
    fingerprint,
    fingerprint_changes,
    inputs_sha256,
    text_sha256,
    to_jsonable,
)
from babelscope.processes import barrier  # noqa: F401  (re-exported: the run's barrier)
from babelscope.processes import is_main as is_main_process  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------- atomic I/O
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode a plain ``open()`` would give a new file (``mkstemp`` makes its files 0600 whatever the umask)
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.
    The file gets the permissions of a normally created one (``0666`` less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
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


# ----------------------------------------------------------------------------------------------- provenance
def package_versions() -> dict[str, str]:
    names = ["babelscope", "torch", "transformers", "accelerate", "numpy", "scipy", "safetensors", "gguf", "POT"]
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def machine() -> dict[str, Any]:
    """The CPU model, its logical CPUs and torch's threads (when torch is loaded): what a step's time depends on
    besides its config."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out: dict[str, Any] = {"cpu": cpu, "logical_cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """Who/what/when of a result: package versions, platform and machine, time, command line, plus ``extra``."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "platform": platform.platform(),
        "machine": machine(),
        "argv": sys.argv,
        **extra,
    }


def check_step_name(name: str) -> str:
    """A step folder name: not empty, no path separators, not ``.``/``..`` (results must land in their folder)."""
    from babelscope.errors import BabelscopeError

    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise BabelscopeError(f"--step {name!r}: give a folder name such as 'ppl' (no '/', not empty)")
    return name


def check_run_dir(run_dir: str | Path, create: bool = True) -> Path:
    """The run directory, created if needed; a one-line error when it is a file or not writable."""
    from babelscope.errors import BabelscopeError

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise BabelscopeError(f"run directory {run_dir} is a file; give a directory (--run-dir)")
    if create:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BabelscopeError(f"run directory {run_dir}: cannot create it ({exc.strerror}); choose another "
                                  "--run-dir") from None
    if run_dir.exists() and not os.access(run_dir, os.W_OK | os.X_OK):
        raise BabelscopeError(f"run directory {run_dir} is not writable; fix its permissions or choose another "
                              "--run-dir")
    return run_dir


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

    def is_done(self, config: dict[str, Any] | None = None, inputs: Any = None) -> bool:
        """True when results exist (and, if ``config`` is given, were made with the same config; if ``inputs``
        is given, from the same inputs: see :func:`inputs_sha256`)."""
        return self.finished(config, inputs) is not None

    def finished(self, config: dict[str, Any] | None = None, inputs: Any = None) -> dict[str, Any] | None:
        """The results document when :meth:`is_done`, else ``None`` (an unreadable file counts as not done)."""
        if not self.results_path.exists():
            return None
        try:
            done = load_results(self.results_path)
        except Exception:  # a results file of another schema or a damaged one: recompute
            return None
        if config is not None and done.get("config") != to_jsonable(config):
            return None
        if inputs is not None and done.get("inputs") != inputs_sha256(inputs):
            return None
        return done

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
        inputs: Any = None,
    ) -> Path:
        """Write each table as CSV, then ``results.json`` last (its presence marks the step as done).
        ``inputs`` (what the step read besides its config) is stored as one checksum that :meth:`is_done`
        compares."""
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
            "inputs": inputs_sha256(inputs),
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
