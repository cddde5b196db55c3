"""The training loop with 2 CPU processes (gloo, DDP) ends with the single-process weights."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from conftest import build_tiny, launch_two_processes


def _examples(tok, n=22):
    rng = random.Random(0)
    out = []
    for _ in range(n):  # uneven lengths, so the processes' micro-batches hold different token counts
        ids = [2] + [rng.randrange(3, len(tok)) for _ in range(rng.randrange(4, 20))]
        out.append({"input_ids": ids, "labels": ids})
    return out


def _train(out: Path, micro: int):
    """4 samples per optimizer step either way (2 processes x 2, or 1 x 4); 22 samples = 6 steps (a short last
    one, padded with an empty row on one process); a 10% region frozen."""
    from babelscope.models.params import scored_parameters
    from babelscope.regions.select import region_mask
    from babelscope.transfer.loop import LoopConfig, train

    model, tok = build_tiny("gemma3")
    params = scored_parameters(model)
    masks = region_mask({n: p.detach().abs() for n, p in params.items()}, 0.1, "top", "tensor")
    cfg = LoopConfig(lr=1e-3, weight_decay=0.1, micro_batch_size=micro, grad_accum=1, warmup=1, progress=False)
    result = train(model, tok, _examples(tok), cfg, out, freeze=masks)
    return model, result


def _worker():
    from babelscope.models.engine import _dist_state

    assert _dist_state() is not None
    _train(Path(os.environ["BABELSCOPE_TEST_OUT"]), micro=2)


def test_two_processes_match_one(tmp_path):
    """Same samples per step and one global token count: the only difference is the order of float32 sums
    (DDP's all-reduce of two partial gradients). Six Adam steps move weights by ~6 lr; the two runs agree to
    1e-4 of that update (measured ~1e-6), and loss/token counts agree exactly or to float32 rounding."""
    from babelscope.models import load_model
    from babelscope.transfer.loop import read_metrics

    launch_two_processes("test_transfer_distributed", "_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "dist")})
    single, result = _train(tmp_path / "single", micro=4)
    assert result.steps == 6
    dist, _, _ = load_model(str(tmp_path / "dist" / "model"))
    start, _ = build_tiny("gemma3")
    s0 = start.state_dict()
    ds, ss = dist.state_dict(), single.state_dict()
    diff = sum(float((ds[k] - ss[k]).norm() ** 2) for k in ss) ** 0.5
    moved = sum(float((ss[k] - s0[k]).norm() ** 2) for k in ss) ** 0.5
    assert moved > 0 and diff <= 1e-4 * moved
    m_dist, m_single = read_metrics(tmp_path / "dist" / "metrics.jsonl"), read_metrics(result.metrics_path)
    assert [r["tokens"] for r in m_dist] == [r["tokens"] for r in m_single]
    for a, b in zip(m_dist, m_single, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
    assert torch.equal(ds["model.embed_tokens.weight"].isfinite(), torch.ones_like(ds["model.embed_tokens.weight"],
                                                                                    dtype=torch.bool))


def _fsdp2_worker():
    """FSDP 2 (``fully_shard`` on gloo): every block and the root sharded on dim 0; AdamW with decay and a
    frozen region applied shard by shard. Accelerate runs FSDP on GPUs only, so this drives the same
    :class:`RegionFreeze` directly, as the loop does after ``prepare``."""
    from accelerate import PartialState
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from babelscope.models.params import norm_modules, scored_parameters
    from babelscope.regions.select import region_mask
    from babelscope.transfer.loop import LoopConfig, RegionFreeze, param_groups

    PartialState()
    mesh = init_device_mesh("cpu", (2,))
    model, tok = build_tiny("gemma3")
    start = {n: p.detach().clone() for n, p in scored_parameters(model).items()}
    masks = region_mask({n: p.detach().abs() for n, p in start.items()}, 0.2, "random", "tensor", seed=5)
    norms = set(norm_modules(model))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.train()
    freeze = RegionFreeze(dict(model.named_parameters()), masks, norms)
    assert freeze.count < sum(int(m.sum()) for m in masks.values())  # each rank holds part of the region
    opt = torch.optim.AdamW(param_groups(model, LoopConfig(weight_decay=0.1), freeze.ids), lr=1e-2)
    ids = torch.tensor([tok(" ".join(["The quick brown fox jumps over the lazy dog."] * 2))["input_ids"]])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        freeze.snapshot()
        freeze.zero_grads()
        freeze.decay(1e-2, 0.1)
        opt.step()
        freeze.restore()
        opt.zero_grad()
    after = {n: p.full_tensor() for n, p in model.named_parameters() if n in start}
    for name, m in masks.items():
        if name in norms:
            continue
        assert torch.equal(after[name][m], start[name][m]), name
        assert bool((after[name][~m] != start[name][~m]).all()), name
    # the forgetting-curve evaluation on the sharded model (decoder and head called outside the root forward)
    from babelscope.models.engine import Engine
    from babelscope.transfer.loop import unsharded

    text = ["Le renard brun rapide saute par-dessus le chien paresseux. Der schnelle braune Fuchs."]
    model.eval()
    engine = Engine(model, tok, progress=False, batch_size=2)
    engine.state = None  # as the pretraining step does under FSDP 2: every rank runs every forward
    with torch.no_grad(), unsharded(model):
        sharded = engine.rolling_loglikelihood(text, window=16)[0]
    assert sharded.windows == 3
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    plain, _ = build_tiny("gemma3")
    plain.load_state_dict(full, strict=False)
    reference = Engine(plain, tok, progress=False).rolling_loglikelihood(text, window=16)[0]
    assert sharded.tokens == reference.tokens and abs(sharded.nll - reference.nll) <= 1e-5 * reference.nll
    Path(os.environ["BABELSCOPE_TEST_OUT"]).touch()


def test_freezing_under_fsdp2(tmp_path):
    """Masked entries bit-identical after 3 AdamW steps with decay on a sharded model; the rest moved."""
    launch_two_processes("test_transfer_distributed", "_fsdp2_worker", {"BABELSCOPE_TEST_OUT": str(tmp_path / "ok")})
    assert (tmp_path / "ok").exists()
