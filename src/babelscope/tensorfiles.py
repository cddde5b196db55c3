"""Tensor files (safetensors) written atomically: importance scores, region masks, neuron statistics.

A file is written to a temporary name beside its target, made durable (``fsync``) and renamed, so it appears
whole or not at all. The data bypasses the page cache (``O_DIRECT``) where the filesystem allows it.

Why a writer of our own and not ``safetensors.torch.save_file``: the importance step saves one 385 MiB score file
per language from a writer thread while the next language is scored on every core. A buffered write of it costs
about 0.6 s of kernel time (page-cache allocation and copy, then writeback), taken from the scoring threads. Measured on
the 2-core CI machine (``regions importance`` on 6 UDHR languages, 512 tokens each, Gemma 3 270M, two runs each,
alternating): with ``save_file`` the writer thread took 3.3-4.0 s of system CPU and the step 43.2-48.1 s; with
``O_DIRECT`` 0.37-0.46 s and 39.6-39.8 s; with no score files at all 37.2-40.1 s. ``benchmarks/bench_importance.py``
at 24 languages: 64.0 tokens/s with ``save_file``, 78.0-81.4 with this writer. ``save_file`` and this writer take
the same wall time for one file on an idle machine (0.5-0.7 s): the difference is the CPU it leaves the scoring.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from babelscope.errors import BabelscopeError
from babelscope.runs import FILE_MODE

# safetensors' dtype names (https://huggingface.co/docs/safetensors, "Format")
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BOUNCE = 8 << 20  # bytes of the aligned buffer O_DIRECT writes go through; a multiple of every block size


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically (temporary file, fsync, then rename); metadata values JSON-encoded."""
    commit_file(write_temporary(path, tensors, metadata), path)


def write_temporary(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` to a temporary file beside ``path`` and return its name (see :func:`commit_file`).

    The safetensors layout (8-byte little-endian header size, JSON header padded to 8 bytes, raw little-endian
    data) is streamed one tensor at a time from the tensors' own memory (CPU tensors: no second copy of the
    set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {"__metadata__": {k: json.dumps(v) for k, v in metadata.items()}}
    pieces: list[memoryview] = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise BabelscopeError(f"tensor {name!r}: dtype {t.dtype} cannot be saved; use one of {list(_DTYPES)}")
        piece = _raw_bytes(t)
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(piece)]}
        pieces.append(piece)
        offset += len(piece)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    pieces[:0] = [memoryview(len(raw).to_bytes(8, "little")), memoryview(raw)]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # a normally created file's mode, not mkstemp's 0600
        finally:
            os.close(fd)
        if not _write_direct(tmp, pieces):
            with open(tmp, "wb") as fh:
                for piece in pieces:
                    fh.write(piece)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _raw_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)  # numpy has no bfloat16; the bytes are what is written
    return memoryview(t.reshape(-1).numpy()).cast("B")  # flat: a 0-element view of shape (0, n) will not cast


def _write_direct(path: str, pieces: list[memoryview]) -> bool:
    """Write ``pieces`` to ``path`` with ``O_DIRECT`` through a page-aligned bounce buffer (``O_DIRECT`` wants
    aligned addresses, offsets and lengths; the last block is padded, then truncated). False where the platform
    or filesystem refuses ``O_DIRECT`` (macOS, tmpfs); the caller then writes the file buffered from the start."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | flag)
    except OSError:
        return False
    bounce = mmap.mmap(-1, _BOUNCE)
    view = memoryview(bounce)
    fill = total = 0

    def flush(n: int) -> None:
        done = 0
        while done < n:
            done += os.write(fd, view[done:n])

    try:
        for piece in pieces:
            at = 0
            while at < len(piece):
                k = min(_BOUNCE - fill, len(piece) - at)
                view[fill : fill + k] = piece[at : at + k]
                fill, at = fill + k, at + k
                if fill == _BOUNCE:
                    flush(fill)
                    total, fill = total + fill, 0
        if fill:
            pad = -fill % 4096
            view[fill : fill + pad] = bytes(pad)
            flush(fill + pad)
            total += fill
        os.ftruncate(fd, total)  # drop the last block's padding
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # refused here (or a block size above 4 KiB)
            return False
        raise
    finally:
        view.release()
        bounce.close()
        os.close(fd)


def commit_file(tmp: Path, path: str | Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``path``: the file appears whole or not at all."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A tensor file's metadata, JSON-decoded; a one-line error for a missing or unreadable file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such file; run the step that writes it first") from None
    except Exception as exc:  # a truncated or foreign file
        raise BabelscopeError(
            f"{path}: not a readable safetensors file ({exc}); delete it and re-run"
        ) from None
    return {k: json.loads(v) for k, v in raw.items()}


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor file's tensors; a one-line error for a missing or unreadable file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such file; run the step that writes it first") from None
    except Exception as exc:
        raise BabelscopeError(
            f"{path}: not a readable safetensors file ({exc}); delete it and re-run"
        ) from None
