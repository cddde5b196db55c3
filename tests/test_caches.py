"""The key builder (babelscope.caches): keys persisted in request caches, results files and tensor files must not
change when the code that builds them moves, or every existing cache silently recomputes (or, worse, a changed
serialization collides). The expected digests below were computed by the per-feature code these helpers
replaced (babelscope.runs, data.base, regions.ablate, neurons.lape and transfer.pretrain at 5434e3a)."""

from __future__ import annotations

import hashlib

import numpy as np

from babelscope import caches


def test_persisted_keys_are_those_of_the_replaced_code():
    assert caches.text_sha256(["héllo", "世界"]) == "a9c2ccc5f75e167dace129e25b0085940820290e6ab73007a9b2c8d8fc6d5518"
    assert (caches.inputs_sha256({"b": [1.5, float("nan")], "a": "ü"})
            == "4c135acb3043b714317e9a071bc83486cd9b1b068e1804e55833de30aa2a08b3")
    assert caches.key("x", 1, {"z": 1, "a": "é"}) == "976fe04e3938a8d389382f59f97e9a8b"
    assert caches.RequestCache.key("x", 1, {"z": 1, "a": "é"}) == caches.key("x", 1, {"z": 1, "a": "é"})
    assert caches.unit_fraction("7\0udhr-4") == 0.06107324230362488  # data.base's train/test side of a unit
    assert (caches.digest(["\0".join(["abc", "dim", "3", "0.5"])])  # regions.ablate.condition_checksum
            == "8b70e25f9ba011e7cfd5e3b6a3ec3955466f4c9f8946f38da99f5354f68b0dc4")
    assert caches.json_sha256({"b": 1, "a": "é"}, 16) == "d73913efb309b598"  # neurons/regions tensor file keys
    assert (caches.digest(['[{"deu": "ab"}, "m", "", 32]', np.arange(5).tobytes()])  # pretrain's data fingerprint
            == "44addb35203b2260d6aad276334d177b81750a76b47d9976950d85fd427acca8")


def test_builders_agree_with_hashlib(tmp_path):
    """Each builder is sha256 over the bytes it documents, however the input is chunked."""
    blob = np.random.default_rng(0).bytes(3 << 20) + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    want = hashlib.sha256(blob).hexdigest()
    assert caches.file_sha256(path) == caches.file_sha256(path, chunk=7) == want
    assert caches.digest([blob[:5], blob[5:]]) == caches.digest([blob]) == want
    assert caches.digest(["é", b"x"], 12) == hashlib.sha256("éx".encode()).hexdigest()[:12]
    assert caches.text_sha256([]) == hashlib.sha256().hexdigest()
    assert caches.inputs_sha256(None) is None
    assert 0 <= caches.unit_fraction("anything") < 1


def test_fingerprint_names_what_changed():
    from babelscope.caches import fingerprint, fingerprint_changes, inputs_sha256

    old = fingerprint({"lr": 2e-4, "lora_alpha": 8, "model": "a" * 64})
    assert old["sha256"] == inputs_sha256(old["parts"])  # the one key builder
    assert fingerprint_changes(old, fingerprint({"lr": 2e-4, "lora_alpha": 8, "model": "a" * 64})) == []
    new = fingerprint({"lr": 2e-4, "lora_alpha": 64.0, "model": "b" * 64, "lora_dropout": 0.1})
    assert fingerprint_changes(old, new) == ["lora_alpha 8 -> 64.0", f"model {'a' * 12}… -> {'b' * 12}…",
                                             "lora_dropout null -> 0.1"]
    assert fingerprint_changes("a string of an older version", new) == [
        "its options are not recorded (an older version wrote it)"]
