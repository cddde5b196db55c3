"""Tensor files: written atomically in the safetensors format, through O_DIRECT where the filesystem allows it
and buffered otherwise, with the same bytes either way."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from babelscope import tensorfiles
from babelscope.errors import BabelscopeError
from babelscope.runs import FILE_MODE
from babelscope.tensorfiles import load_tensors, read_metadata, save_tensors


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "w": torch.randn(300, 37),
        "b": torch.randn(11).to(torch.bfloat16),
        "m": torch.rand(5, 5) > 0.5,
        "i": torch.arange(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def test_files_are_written_atomically_and_read_by_safetensors(tmp_path):
    from safetensors.torch import load_file

    tensors = _tensors()
    save_tensors(tmp_path / "x.safetensors", tensors, {"lang": "eng", "tokens": 12})
    back = load_file(tmp_path / "x.safetensors")  # the library's own reader
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    assert read_metadata(tmp_path / "x.safetensors") == {"lang": "eng", "tokens": 12}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left
    assert stat.S_IMODE((tmp_path / "x.safetensors").stat().st_mode) == FILE_MODE  # not mkstemp's 0600


def test_direct_and_buffered_writes_are_identical(tmp_path, monkeypatch):
    """Many flushes of a small bounce buffer and a padded, truncated last block give the bytes of a buffered
    write; so does a filesystem that refuses O_DIRECT writes after the open (the writer starts over buffered)."""
    tensors = _tensors()
    monkeypatch.setattr(tensorfiles, "_BOUNCE", 8192)  # 44 kB of data: five flushes and a partial block
    calls = []
    direct = tensorfiles._write_direct
    monkeypatch.setattr(tensorfiles, "_write_direct", lambda path, pieces: calls.append(direct(path, pieces))
                        or calls[-1])
    save_tensors(tmp_path / "direct.safetensors", tensors, {"k": 1})
    try:  # whether this filesystem takes O_DIRECT at all (tmpfs does not)
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0)))
        supported = hasattr(os, "O_DIRECT")
    except OSError:
        supported = False
    assert calls == [supported]

    monkeypatch.setattr(tensorfiles, "_write_direct", lambda path, pieces: False)
    save_tensors(tmp_path / "buffered.safetensors", tensors, {"k": 1})
    assert (tmp_path / "direct.safetensors").read_bytes() == (tmp_path / "buffered.safetensors").read_bytes()

    monkeypatch.setattr(tensorfiles, "_write_direct", direct)
    real_write = os.write

    def refused(fd, data):  # EINVAL on the third write, after two blocks went out
        refused.n += 1
        if refused.n == 3:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    refused.n = 0
    monkeypatch.setattr(tensorfiles.os, "write", refused)
    save_tensors(tmp_path / "fallback.safetensors", tensors, {"k": 1})
    assert (tmp_path / "fallback.safetensors").read_bytes() == (tmp_path / "buffered.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_leaves_nothing_and_bad_files_get_one_line(tmp_path, monkeypatch):
    def full(path, pieces):  # the disk fills after part of the file went out
        with open(path, "wb") as fh:
            fh.write(pieces[0])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensorfiles, "_write_direct", full)
    with pytest.raises(OSError, match="No space"):
        save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(3)}, {})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    with pytest.raises(BabelscopeError, match="dtype"):
        save_tensors(tmp_path / "c.safetensors", {"z": torch.ones(2, dtype=torch.complex64)}, {})
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for read in (read_metadata, load_tensors):
        with pytest.raises(BabelscopeError, match="bad.safetensors: not a readable safetensors file"):
            read(tmp_path / "bad.safetensors")
        with pytest.raises(BabelscopeError, match="no such file"):
            read(tmp_path / "missing.safetensors")
