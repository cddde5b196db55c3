"""Importance under Accelerate with 2 CPU processes (gloo) gives the single-process scores to 1e-5 relative."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from conftest import assert_two_processes, launch_two_processes, run_tiny_step

CFG = dict(langs="eng,fra", max_tokens=40, window=16, batch_size=2)


def _run(run_dir: Path) -> None:
    from babelscope.regions.importance import ImportanceConfig, run

    run_tiny_step(run, ImportanceConfig(**CFG), run_dir, "imp")


def _worker():
    assert_two_processes()
    _run(Path(os.environ["BABELSCOPE_TEST_OUT"]))


def test_importance_two_processes_match_one(tmp_path):
    from babelscope.tensorfiles import load_tensors, read_metadata

    launch_two_processes("test_regions_distributed", "_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "dist")})
    _run(tmp_path / "single")
    for name in ("scores/eng.safetensors", "scores/fra.safetensors", "importance.safetensors"):
        dist = load_tensors(tmp_path / "dist" / "imp" / name)
        single = load_tensors(tmp_path / "single" / "imp" / name)
        assert dist.keys() == single.keys() and len(single) == 3 * 13
        for key, want in single.items():
            got = dist[key]
            scale = float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)
            assert float((got - want).norm()) <= 1e-5 * float(want.norm())
    meta_d = read_metadata(tmp_path / "dist" / "imp" / "scores" / "eng.safetensors")
    meta_s = read_metadata(tmp_path / "single" / "imp" / "scores" / "eng.safetensors")
    assert meta_d["tokens"] == meta_s["tokens"] == 40
    assert abs(meta_d["nll"] - meta_s["nll"]) <= 1e-5 * meta_s["nll"]
    assert (tmp_path / "dist" / "imp" / "results.json").exists()
