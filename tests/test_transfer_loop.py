"""The training loop: resume bit-identical, token-count normalisation, region freezing, 2 processes."""

from __future__ import annotations

import random

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.transfer.loop import LoopConfig, lr_at, train
from conftest import build_tiny


def _examples(tok, n=24, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [2] + [rng.randrange(3, len(tok)) for _ in range(rng.randrange(6, 18))]
        labels = list(ids)
        labels[1] = -100  # a prompt-like position without loss
        out.append({"input_ids": ids, "labels": labels})
    return out


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    model, tok = build_tiny("gemma3")
    ex = _examples(tok)
    cfg = LoopConfig(lr=1e-3, micro_batch_size=2, grad_accum=2, weight_decay=0.1, warmup=2, checkpoint_every=2,
                     progress=False, save_model=False)
    train(model, tok, ex, cfg, tmp_path / "whole")
    whole = _weights(model)

    class Killed(Exception):
        pass

    def kill(_m, samples, step):
        if step == 3:  # after the checkpoint of step 2
            raise Killed

    model2, _ = build_tiny("gemma3")
    with pytest.raises(Killed):
        train(model2, tok, ex, cfg, tmp_path / "cut", evaluate=kill, eval_at=(12,))
    model3, _ = build_tiny("gemma3")
    result = train(model3, tok, ex, cfg, tmp_path / "cut")
    assert result.resumed_from == 2 and result.steps == 6
    for name, w in _weights(model3).items():
        assert torch.equal(w, whole[name]), name
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in lines] == [1, 2, 3, 4, 5, 6]


def test_other_configuration_refused(tmp_path):
    model, tok = build_tiny("gemma3")
    ex = _examples(tok)
    cfg = LoopConfig(lr=1e-3, micro_batch_size=2, checkpoint_every=2, progress=False, save_model=False)

    def kill(_m, samples, step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, tok, ex, cfg, tmp_path, evaluate=kill, eval_at=(6,))
    with pytest.raises(BabelscopeError, match="another training configuration"):
        train(model, tok, ex, LoopConfig(lr=2e-3, micro_batch_size=2, progress=False), tmp_path)


def test_step_does_not_depend_on_how_it_is_cut(tmp_path):
    """One optimizer step over 8 samples as 1x8, 2x4 and 8x1 micro-batches gives the same update.

    Sums of the same fp32 terms in another order differ by ~1e-7 relative per reduction; Adam's first update is
    ~lr * g/|g|, so the weights agree to a small fraction of the update (1e-4 of its norm, with margin)."""
    _, tok = build_tiny("gemma3")
    ex = _examples(tok, n=8)
    start = _weights(build_tiny("gemma3")[0])
    updates = []
    for b, accum in [(8, 1), (4, 2), (1, 8)]:
        model, _ = build_tiny("gemma3")
        cfg = LoopConfig(lr=1e-3, micro_batch_size=b, grad_accum=accum, shuffle=False, progress=False,
                         save_model=False, max_grad_norm=0)
        result = train(model, tok, ex, cfg, tmp_path / f"{b}x{accum}")
        assert result.steps == 1
        updates.append({k: v - start[k] for k, v in _weights(model).items()})
    for other in updates[1:]:
        diff = sum(float((other[k] - updates[0][k]).norm() ** 2) for k in other) ** 0.5
        norm = sum(float(updates[0][k].norm() ** 2) for k in other) ** 0.5
        assert diff <= 1e-4 * norm


def test_bad_loop_options():
    from babelscope.transfer.loop import check_config

    for bad in (dict(schedule="step"), dict(micro_batch_size=0), dict(trackers="nosuch"), dict(lr=0.0)):
        with pytest.raises(BabelscopeError):
            check_config(LoopConfig(**bad))


def test_schedule():
    cfg = LoopConfig(lr=1.0, warmup=2, schedule="cosine", min_lr_ratio=0.1)
    assert [round(lr_at(s, 10, cfg), 4) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, 10, cfg) == pytest.approx(1.0) and lr_at(10, 10, cfg) == pytest.approx(0.1)
    assert lr_at(6, 10, LoopConfig(lr=1.0, warmup=2, schedule="linear")) == pytest.approx(0.5)


def test_saved_model_loads(tmp_path):
    from babelscope.models import load_model

    model, tok = build_tiny("llama")
    train(model, tok, _examples(tok, n=6), LoopConfig(lr=1e-3, micro_batch_size=3, progress=False), tmp_path)
    loaded, _, info = load_model(str(tmp_path / "model"))
    for name, w in loaded.state_dict().items():
        assert torch.equal(w, model.state_dict()[name]), name
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("freeze_norms", [False, True])
def test_frozen_region_stays_bit_identical(tmp_path, freeze_norms):
    """Masked entries (a random 20% of every block tensor) are bit-identical after 5 AdamW steps with weight
    decay, while every other entry of those tensors moved; norm vectors are frozen only when asked."""
    from babelscope.models.params import norm_modules, scored_parameters
    from babelscope.regions.select import region_mask

    model, tok = build_tiny("gemma3")
    params = scored_parameters(model)
    masks = region_mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) for n, p in
                         params.items()}, 0.2, "random", "tensor", seed=3)
    norms = set(norm_modules(model))
    before = {n: p.detach().clone() for n, p in params.items()}
    cfg = LoopConfig(lr=1e-2, weight_decay=0.1, micro_batch_size=4, progress=False, save_model=False,
                     freeze_norms=freeze_norms, schedule="constant")
    train(model, tok, _examples(tok, n=20), cfg, tmp_path, freeze=masks)
    for name, p in params.items():
        m = masks[name]
        if name in norms and not freeze_norms:
            assert not torch.equal(p.detach()[m], before[name][m]), name
            continue
        assert torch.equal(p.detach()[m], before[name][m]), name
        assert bool((p.detach()[~m] != before[name][~m]).all()), name
    assert not any(p.requires_grad is False for p in model.parameters())  # masks, not requires_grad
