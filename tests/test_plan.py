"""The memory plan: parameter counts from config.json alone, the accounting rules, and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import build_tiny


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_shape_from_the_config_alone_counts_the_real_parameters(kind, tmp_path):
    from babelscope.models.loader import _load_config
    from babelscope.models.plan import Shape

    model, _ = build_tiny(kind, tmp_path)
    (tmp_path / "model.safetensors").unlink()  # the plan reads config.json only
    shape = Shape.of_config(_load_config(tmp_path, False))
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.block_params == sum(p.numel() for p in model.model.layers.parameters())
    assert shape.norms == (4 if kind == "gemma3" else 2) and shape.qk_norm == (kind == "gemma3")


def test_the_accounting_rules():
    from babelscope.models.plan import GiB, Shape, options_that_fit, plan_memory

    shape = Shape(params=1000, block_params=800, layers=4, hidden=8, ffn=16, q_width=8, heads=2, kv_width=4, vocab=50,
                  norms=2, qk_norm=False, softcap=False,
                  linear_shapes=[(8, 8), (8, 4), (8, 4), (8, 8), (8, 16), (8, 16), (16, 8)])
    imp = plan_memory(shape, "importance", seq_len=10, batch_size=2)
    assert imp.parts["weights"] == 4000 and imp.parts["gradients"] == 3200 and imp.parts["scores"] == 6400
    per_token = 6 * 8 + 5 * 8 + 4 * 16  # (2 N + 2) H + 5 h_q + 4 F
    assert imp.parts["activations"] == 20 * per_token * 4 * 4
    assert imp.parts["logits"] == 256 * 50 * 4  # one float32 chunk of logits
    cpu = plan_memory(shape, "importance", seq_len=10, batch_size=2, device="cpu")  # SDPA's math kernel: 2 a T more
    assert cpu.parts["activations"] == 20 * (per_token + 2 * 2 * 10) * 4 * 4
    half = plan_memory(shape, "importance", seq_len=10, batch_size=1)
    assert half.parts["activations"] * 2 == imp.parts["activations"]
    sharded = plan_memory(shape, "importance", devices=4, seq_len=10, batch_size=2, fsdp=True)
    assert sharded.parts["weights"] == 1000 and sharded.parts["scores"] == 1600
    ckpt = plan_memory(shape, "importance", seq_len=10, batch_size=2, checkpointing=True)
    assert ckpt.parts["activations"] == 20 * (per_token + 4 * 8) * 4
    train = plan_memory(shape, "pretrain", dtype="bfloat16")
    assert train.parts["weights"] == 2000 and train.parts["optimizer"] == 8000
    lora = plan_memory(shape, "sft", lora_rank=2)
    assert lora.parts["optimizer"] == 8 * 4 * sum(2 * (i + o) for i, o in shape.linear_shapes)
    ppl = plan_memory(shape, "ppl")
    assert set(ppl.parts) == {"weights", "activations", "logits"} and ppl.parts["logits"] == 2 * 256 * 50 * 4
    assert plan_memory(shape, "ppl", capacity=GiB).fits
    tight = ppl.total * 1.05  # fits only once the weights are spread or offloaded
    assert not plan_memory(shape, "ppl", capacity=int(tight)).fits or ppl.fits
    assert all(p.fits for p in options_that_fit(shape, "importance", 2, 10**9))


def test_cli_plan_prints_the_table_and_refuses_bad_devices(tiny_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "babelscope.cli", "model", "plan", str(tiny_dir), *args],
                              capture_output=True, text=True, timeout=120)

    out = cli("--command", "pretrain", "--devices", "2x1MiB", "--seq-len", "64", "--batch-size", "2")
    assert out.returncode == 0, out.stderr
    for word in ("weights", "gradients", "optimizer", "activations", "logits", "total", "fits"):
        assert word in out.stdout
    bad = cli("--devices", "8xlots")
    assert bad.returncode == 2 and "8xlots" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = cli("--command", "train")
    assert bad.returncode == 2 and "importance, pretrain, sft, ppl" in bad.stderr
