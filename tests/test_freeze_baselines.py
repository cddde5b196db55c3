"""Freezing baselines beside the core region (SSU, half, magnitude, random) on a tiny model: the masks' rules and
sizes, SSU's column scores against a hand computation, frozen entries bit-identical after training, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babelscope.errors import BabelscopeError
from conftest import build_tiny
from conftest import run_cli as _cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-baselines")
    build_tiny("gemma3", out)
    return out


def _cfg(tiny: Path, **kw):
    from babelscope.transfer.pretrain import PretrainConfig

    base = dict(model=str(tiny), corpus="pud-sample", langs="deu", seq_len=16, samples=16, eval_corpus="udhr-sample",
                eval_langs="eng,fra", eval_at="0,16", eval_window=32, eval_max_tokens=48, micro_batch_size=4,
                lr=2e-3, save_model=True, ssu_corpus="pud-sample", ssu_langs="eng", ssu_max_tokens=64)
    return PretrainConfig(**{**base, **kw})


def test_masks_and_ssu_scores():
    from babelscope.transfer.baselines import baseline_masks, linear_modules, matrices, ssu_scores

    model, tok = build_tiny("llama")
    mats = matrices(model)
    seqs = [tok("Le renard brun rapide saute.")["input_ids"], tok("The quick brown fox.")["input_ids"]]
    scores = ssu_scores(model, seqs, batch_size=2, pad_id=0)
    # hand: each linear map's inputs over the real tokens after BOS, one window at a time
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in linear_modules(model)}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs[n].append(a[0][0, 1:].double()))
             for n, m in linear_modules(model).items()]
    try:
        with torch.inference_mode():
            for s in seqs:
                model.model(input_ids=torch.tensor([s]))
    finally:
        for h in hooks:
            h.remove()
    for name, xs in inputs.items():
        x = torch.cat(xs)
        want = mats[name].detach().double().norm(dim=0) * x.pow(2).mean(dim=0)
        # float32 activations summed in float64 over ~12 tokens: batched and single forwards differ by ulps
        torch.testing.assert_close(scores[name], want, rtol=1e-5, atol=1e-9)
    for kind in ("ssu", "magnitude", "random"):
        masks = baseline_masks(model, kind, 0.5, seed=0, scores=scores)
        assert set(masks) == set(mats)
        for name, m in masks.items():
            assert abs(int(m.sum()) - 0.5 * m.numel()) <= m.shape[0], (kind, name)
        if kind == "ssu":  # whole columns, the top half by score
            for name, m in masks.items():
                cols = m.all(dim=0)
                assert torch.equal(m, cols[None].expand_as(m))
                assert scores[name][cols].min() >= scores[name][~cols].max()
        if kind == "magnitude":
            for name, m in masks.items():
                w = mats[name].detach().abs()
                assert w[m].min() >= w[~m].max()
    half = baseline_masks(model, "half", 0.5, seed=0)
    whole = [bool(m.all()) for m in half.values()]
    assert all(bool(m.all()) or not bool(m.any()) for m in half.values()) and sum(whole) == round(len(whole) / 2)
    with pytest.raises(BabelscopeError, match="--freeze-fraction"):
        baseline_masks(model, "random", 1.5)


@pytest.mark.parametrize("baseline", ["ssu", "half", "magnitude", "random"])
def test_frozen_entries_stay_bit_identical(tiny, tmp_path, baseline):
    from babelscope.models import load_model
    from babelscope.transfer.baselines import matrices
    from babelscope.transfer.pretrain import baseline_for, check_baseline, run

    model, tok, _ = load_model(str(tiny))
    before = {n: p.detach().clone() for n, p in matrices(model).items()}
    cfg = _cfg(tiny, freeze_baseline=baseline, freeze_fraction=0.5)
    masks = baseline_for(cfg, model, tok, check_baseline(cfg))  # the masks the step computes
    doc = run(cfg, tmp_path, step=f"pretrain-{baseline}")
    assert doc["results"]["freeze"]["baseline"] == baseline
    assert 0 < doc["results"]["freeze"]["parameters"] <= sum(m.numel() for m in masks.values())
    trained, _, _ = load_model(str(tmp_path / f"pretrain-{baseline}" / "model"))
    after = matrices(trained)
    moved = 0
    for name, m in masks.items():
        assert torch.equal(after[name].detach()[m], before[name][m]), name
        moved += int((after[name].detach()[~m] != before[name][~m]).sum())
    assert moved > 0  # the rest trained




def test_bad_input(tiny, tmp_path, capsys):
    base = ["transfer", "pretrain", "--model", str(tiny), "--corpus", "pud-sample", "--langs", "deu", "--seq-len", "16",
            "--samples", "8", "--eval-corpus", "udhr-sample", "--eval-langs", "eng", "-o", str(tmp_path / "run")]
    for extra, words in ((["--freeze-baseline", "ssu", "--ssu-corpus", "pud-sample", "--ssu-langs", "vie"], "no text"),
                         (["--freeze-baseline", "lora"], "use one of"),
                         (["--freeze-baseline", "random", "--freeze-fraction", "1"], "--freeze-fraction"),
                         (["--freeze-baseline", "half", "--freeze-region", "x.safetensors"], "--freeze-region")):
        code, err = _cli(capsys, *base, *extra)
        assert code == 2 and err.count("\n") == 1 and words in err, (extra, err)
        assert not (tmp_path / "run" / "transfer-pretrain").exists()
