"""Cache keys, fingerprints and checksums: one key builder (sha256 over JSON, bytes, texts or files) and the
per-request cache.

Every cache key, results fingerprint and data checksum of babelscope is built here, so a key holds what changes
the result in one visible way (model checksum, dtype, device, tokenizer, prompt, settings). The functions differ
only in what they serialize; persisted keys (request caches, results' ``inputs``, tensor files' ``key``) are
byte-identical to those the earlier per-feature code built, so existing caches stay valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


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


# ----------------------------------------------------------------------------------------------- key builder
def digest(chunks: Iterable[bytes | str], length: int | None = None) -> str:
    """sha256 (hex, cut to ``length``) of the concatenated chunks; text is UTF-8 encoded."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    return h.hexdigest()[:length]


def json_sha256(obj: Any, length: int | None = None, *, sort_keys: bool = True, default: Any = None,
                ensure_ascii: bool = True) -> str:
    """sha256 of ``json.dumps(obj)`` (keys sorted unless asked): a fingerprint of settings or records."""
    return digest([json.dumps(obj, sort_keys=sort_keys, default=default, ensure_ascii=ensure_ascii)], length)


def key(*parts: Any) -> str:
    """A request's cache key: 32 hex digits of the sha256 of its parts as JSON (the request and everything that
    determines its answer: model checksum, tokenizer, dtype, options)."""
    return json_sha256(to_jsonable(parts), 32, sort_keys=False, ensure_ascii=False)


def unit_fraction(text: str) -> float:
    """A number in [0, 1) from the first 8 bytes of the sha256 of ``text``: a split side decided by content."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return digest(iter(lambda: fh.read(chunk), b""))


def text_sha256(texts: Iterable[str]) -> str:
    """Checksum of a sequence of texts (the data a step actually used): each text's UTF-8 bytes and a NUL."""
    return digest(part for text in texts for part in (text, b"\0"))


def inputs_sha256(inputs: Any) -> str | None:
    """One checksum of what a step read besides its config (texts' checksums, upstream results files)."""
    if inputs is None:
        return None
    return json_sha256(to_jsonable(inputs), ensure_ascii=False)


def fingerprint(parts: dict[str, Any]) -> dict[str, Any]:
    """The key of a resumable run: ``{"sha256": inputs_sha256(parts), "parts": parts}``. ``parts`` names
    everything that changes the trained weights (options by their name, data and models by their checksum) and
    nothing that does not (logging, progress, checkpoint frequency); the parts are kept beside the checksum so a
    mismatch can name what differs (:func:`fingerprint_changes`)."""
    parts = to_jsonable(dict(parts))
    return {"sha256": inputs_sha256(parts), "parts": parts}


def fingerprint_changes(old: Any, new: dict[str, Any]) -> list[str]:
    """``name old -> new`` for each part of fingerprint ``new`` that differs from ``old`` (a stored fingerprint;
    one without parts, written by an older version, gives one entry saying so)."""

    def short(value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        return text if len(text) <= 16 else text[:12] + "…"

    old_parts = old.get("parts") if isinstance(old, dict) else None
    if not isinstance(old_parts, dict):
        return [] if isinstance(old, dict) and old.get("sha256") == new["sha256"] else [
            "its options are not recorded (an older version wrote it)"]
    parts = new["parts"]
    names = [k for k in parts if old_parts.get(k, None) != parts[k]] + [k for k in old_parts if k not in parts]
    return [f"{k} {short(old_parts.get(k))} -> {short(parts.get(k))}" for k in names]


# ----------------------------------------------------------------------------------------------- cache
class RequestCache:
    """Append-only per-request cache (JSON lines): a re-run skips requests already answered.

    Keys are hashes of the request and everything that determines its answer (model checksum, options).
    Lines are flushed as results arrive. A last line cut by a crash is cut off the file on load (``repair``),
    so the next record starts on a line of its own. Non-finite numbers are refused, never cached.
    """

    def __init__(self, path: str | Path | None, repair: bool = True):
        self.path = Path(path) if path else None
        self._data: dict[str, Any] = {}
        if self.path and self.path.exists():
            with open(self.path, "rb") as fh:
                raw = fh.read()
            for line in raw.splitlines(keepends=True):
                item = _record(line)
                if item is not None:
                    self._data[item[0]] = item[1]
            if repair and raw and not raw.endswith(b"\n"):  # the last line was cut (a crash mid-write)
                with open(self.path, "r+b") as fh:
                    last = raw.rfind(b"\n") + 1
                    if _record(raw[last:]) is None:
                        fh.truncate(last)  # drop the partial record; the next one starts on its own line
                    else:
                        fh.seek(0, os.SEEK_END)
                        fh.write(b"\n")  # a whole record that only lost its newline

    @staticmethod
    def key(*parts: Any) -> str:
        return key(*parts)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def put_many(self, items: dict[str, Any]) -> None:
        """Add answers (and append them to the file); a non-finite number refuses the whole batch."""
        for value in items.values():
            if not _all_finite(value):
                from babelscope.errors import BabelscopeError

                raise BabelscopeError(
                    f"a score came out {_first_bad(value)} (the model overflows in this dtype, e.g. float16); "
                    "nothing was cached: re-run with --dtype float32 (or bfloat16)"
                )
        self._data.update(items)
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for k, v in items.items():
                fh.write(json.dumps({"k": k, "v": to_jsonable(v)}, ensure_ascii=False) + "\n")
            fh.flush()


def _record(line: bytes) -> tuple[str, Any] | None:
    """``(key, value)`` of one cache line, ``None`` when the line is damaged."""
    try:
        item = json.loads(line)
        return item["k"], item["v"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None


def _all_finite(value: Any) -> bool:
    return _first_bad(value) is None


def _first_bad(value: Any) -> float | None:
    """The first non-finite float inside ``value`` (lists, dicts, numbers), else ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for v in value:
            bad = _first_bad(v)
            if bad is not None:
                return bad
    return None
