"""Importance for models that strain one device: gradient checkpointing gives the same scores."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import build_tiny, run_tiny_step

CFG = dict(langs="eng,fra", max_tokens=40, window=16, batch_size=2)


def _importance(run_dir: Path, **extra) -> None:
    from babelscope.regions.importance import ImportanceConfig, run

    run_tiny_step(run, ImportanceConfig(**CFG, **extra), run_dir, "imp")


def test_gradient_checkpointing_gives_the_same_scores_and_is_undone(tmp_path):
    """The recomputed forward runs the same float32 kernels on the same inputs, so the gradients agree to rounding
    (1e-6 relative: a reduction may take another order when a tensor is rebuilt at another address)."""
    from babelscope.regions.importance import checkpointed
    from babelscope.tensorfiles import load_tensors

    _importance(tmp_path / "plain")
    _importance(tmp_path / "ckpt", gradient_checkpointing=True)
    a = load_tensors(tmp_path / "plain" / "imp" / "importance.safetensors")
    b = load_tensors(tmp_path / "ckpt" / "imp" / "importance.safetensors")
    assert a.keys() == b.keys()
    for key, want in a.items():
        torch.testing.assert_close(b[key], want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
    model, _ = build_tiny("gemma3")
    calls = []
    block = model.model.layers[0]
    with checkpointed(model):
        assert model.is_activation_checkpointing and block.training and not block.self_attn.training
        real = block._gradient_checkpointing_func
        block._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or real(*a, **k)
        ids = torch.tensor([[2, 5, 6, 7, 8]])
        model(input_ids=ids, labels=ids).loss.backward()
    assert calls  # the block really ran checkpointed
    assert not model.is_activation_checkpointing and not block.training


# ------------------------------------------------------------------------------------------------ FSDP 2
def _select(run_dir: Path) -> None:
    from babelscope.regions.select import SelectConfig, run

    run_tiny_step(run, SelectConfig(importance_step="imp", k="0.1,0.3"), run_dir, "sel")


def _fsdp_worker():
    import os

    from conftest import assert_two_processes

    assert_two_processes()
    out = Path(os.environ["BABELSCOPE_TEST_OUT"])
    # 3 + 3 windows of 16 tokens over 2 processes in batches of 2: one process runs a zero-weighted batch
    _importance(out, fsdp=True)
    _select(out)


def test_fsdp2_importance_on_two_processes_matches_one_and_selects_the_same_regions(tmp_path):
    """Each process scores its dim-0 rows of every block tensor in float32; put together they are the
    single-process scores to 1e-5 relative (the gradient is summed in another order across the two processes:
    float32 rounding of sums of a few hundred terms, far below 1e-5 of the tensor's norm), and ``regions select``
    reads the pieces (one matrix at a time) into the same masks. Tolerance as tests/test_regions_distributed.py."""
    from babelscope.regions.shards import open_scores, shard_files
    from babelscope.tensorfiles import load_tensors, read_metadata
    from conftest import launch_two_processes

    launch_two_processes("test_regions_scale", "_fsdp_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "dist")})
    _importance(tmp_path / "single")
    _select(tmp_path / "single")
    dist_imp, single_imp = tmp_path / "dist" / "imp", tmp_path / "single" / "imp"
    assert not (dist_imp / "importance.safetensors").exists()
    pieces = shard_files(dist_imp / "importance.safetensors")
    assert [p.name for p in pieces] == ["importance.rank0-of-2.safetensors", "importance.rank1-of-2.safetensors"]
    for name in ("scores/eng.safetensors", "scores/fra.safetensors", "importance.safetensors"):
        dist, single = open_scores(dist_imp / name), load_tensors(single_imp / name)
        assert set(dist) == set(single) and len(single) == 3 * 13
        for key, want in single.items():
            got = dist[key]
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    half = load_tensors(pieces[0])
    assert all(t.shape[0] == (s.shape[0] + 1) // 2 for t, s in zip(half.values(), single.values(), strict=True))
    meta = read_metadata(dist_imp / "scores" / "eng.rank1-of-2.safetensors")
    assert meta["tokens"] == 40 and meta["shard"]["world"] == 2
    masks = sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single" / "sel").rglob("*.safetensors"))
    assert masks
    differ = []
    for rel in masks:
        a, b = load_tensors(tmp_path / "dist" / rel), load_tensors(tmp_path / "single" / rel)
        differ += [f"{rel}:{k}" for k in b if not torch.equal(a[k], b[k])]
    assert not differ, sorted({d.split(":")[0] for d in differ})


def test_fsdp2_on_one_process_is_refused_before_anything_is_written(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "babelscope.cli", "regions", "importance", "--fsdp",
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--fsdp" in proc.stderr and "torchrun" in proc.stderr
    assert not (tmp_path / "run").exists()
