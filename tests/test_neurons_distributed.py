"""Activation counts under Accelerate with 2 CPU processes (gloo) equal the single-process counts exactly."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from conftest import assert_two_processes, launch_two_processes, run_tiny_step

CFG = dict(langs="eng,fra,cmn-Hans", max_tokens=90, window=32, batch_size=2, top_rate=0.05)


def _run(run_dir: Path) -> None:
    from babelscope.neurons.lape import NeuronsConfig, run

    run_tiny_step(run, NeuronsConfig(**CFG), run_dir, "neurons")


def _worker():
    assert_two_processes()
    _run(Path(os.environ["BABELSCOPE_TEST_OUT"]))


def test_counts_two_processes_match_one(tmp_path):
    from babelscope.runs import load_results
    from babelscope.tensorfiles import load_tensors, read_metadata

    launch_two_processes("test_neurons_distributed", "_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "dist")})
    _run(tmp_path / "single")
    for lang in ("eng", "fra", "cmn-Hans"):
        name = f"neurons/counts/{lang}.safetensors"
        dist, single = load_tensors(tmp_path / "dist" / name), load_tensors(tmp_path / "single" / name)
        assert torch.equal(dist["over_zero"], single["over_zero"])  # integer counts of the same batches
        assert read_metadata(tmp_path / "dist" / name)["tokens"] == read_metadata(tmp_path / "single" / name)[
            "tokens"] == 90
    d, s = load_results(tmp_path / "dist" / "neurons"), load_results(tmp_path / "single" / "neurons")
    assert d["tables"]["neurons"]["rows"] == s["tables"]["neurons"]["rows"]
