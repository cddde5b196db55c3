"""The steer and PLND steps under Accelerate with 2 CPU processes (gloo) give the single-process results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import assert_two_processes, launch_two_processes, run_tiny_step

LANGS = "eng,fra,rus,jpn"
STEER = dict(corpus="pud-sample", langs=LANGS, targets="fra,jpn", layers="1", alphas="2", neurons_step="none",
             max_tokens=64, window=24, batch_size=2, prompts=4, max_new_tokens=3, ppl_max_tokens=24)
PLND = dict(corpus="pud-sample", langs=LANGS, max_tokens=64, window=24, batch_size=2, top_rate=0.05,
            consistency=0.5, neurons_step="none", select_step="none")


def _run(run_dir: Path) -> None:
    from babelscope.neurons.plnd import PlndConfig
    from babelscope.neurons.plnd import run as plnd
    from babelscope.steer.steps import SteerConfig
    from babelscope.steer.steps import run as steer

    run_tiny_step(steer, SteerConfig(**STEER), run_dir, "steer")
    run_tiny_step(plnd, PlndConfig(**PLND), run_dir, "neurons-plnd")


def _worker():
    assert_two_processes()
    _run(Path(os.environ["BABELSCOPE_TEST_OUT"]))


def test_two_processes_match_one(tmp_path):
    from babelscope.runs import load_results
    from babelscope.tensorfiles import load_tensors

    launch_two_processes("test_steer_distributed", "_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "dist")})
    _run(tmp_path / "single")
    d, s = load_results(tmp_path / "dist" / "steer"), load_results(tmp_path / "single" / "steer")
    # greedy generations of the same batches on the same weights: identical text, identical scores
    assert d["tables"]["conditions"]["rows"] == s["tables"]["conditions"]["rows"]
    for a, b in zip(d["tables"]["ppl_cost"]["rows"], s["tables"]["ppl_cost"]["rows"], strict=True):
        assert a["ratio"] == pytest.approx(b["ratio"], rel=1e-6)  # float32 sums of the same windows
    name = "steer/directions.safetensors"
    da, sa = load_tensors(tmp_path / "dist" / name), load_tensors(tmp_path / "single" / name)
    assert all((da[k] == sa[k]).all() for k in sa)
    d, s = load_results(tmp_path / "dist" / "neurons-plnd"), load_results(tmp_path / "single" / "neurons-plnd")
    assert d["tables"]["per_language"]["rows"] == s["tables"]["per_language"]["rows"]
