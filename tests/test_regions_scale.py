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
