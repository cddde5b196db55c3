"""Further pretraining on a tiny model: data packing and budget, the forgetting curve, resume, freezing, the
report, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.transfer.pretrain import PretrainConfig, allocate, pack, parse_mix, prepare_data, run
from conftest import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-pretrain")
    build_tiny("gemma3", out)
    return out


def _cfg(tiny: Path, **kw) -> PretrainConfig:
    base = dict(model=str(tiny), corpus="pud-sample", langs="deu:0.75,eng:0.25", seq_len=16, samples=24,
                eval_corpus="udhr-sample", eval_langs="eng,fra", eval_at="0,8,24", eval_window=32,
                eval_max_tokens=64, micro_batch_size=4, lr=2e-3, save_model=False)
    return PretrainConfig(**{**base, **kw})


def test_pack_and_mix():
    blocks = pack([[5, 6, 7], [8], [9, 10], [11]], seq_len=4, bos=2, eos=1)
    # BOS/EOS at document boundaries, every block opened by BOS (an EOS that would open one is dropped); the
    # tail [2, 11, 1] is dropped
    assert blocks.tolist() == [[2, 5, 6, 7], [2, 8, 1, 2], [2, 9, 10, 1]]
    # a document longer than a block: the blocks cut inside it get a BOS in front
    assert pack([list(range(10, 17))], seq_len=4, bos=2, eos=1).tolist() == [[2, 10, 11, 12], [2, 13, 14, 15]]
    # without BOS (Qwen, SmolLM2) plain cuts
    assert pack([[5, 6, 7], [8]], seq_len=3, bos=None, eos=1).tolist() == [[5, 6, 7], [1, 8, 1]]
    assert parse_mix("vie:3,eng:1") == [("vie", 0.75), ("eng", 0.25)]
    assert allocate(10, parse_mix("a:1,b:1,c:1")) == {"a": 4, "b": 3, "c": 3}


def test_curve_data_and_report(tiny, tmp_path):
    from babelscope.models import load_model
    from babelscope.report import render_html

    doc = run(_cfg(tiny, save_model=True), tmp_path)
    res, curve = doc["results"], doc["tables"]["curve"]["rows"]
    assert res["complete"] and res["steps"] == 6 and res["tokens"] == 24 * 16
    assert sorted({r["samples"] for r in curve}) == [0, 8, 24]
    # every language on the UDHR sample, and the training languages also on held-out PUD sentences
    assert {r["lang"] for r in curve} == {"deu", "eng", "fra"} and len(curve) == 15
    assert {r["lang"] for r in curve if r["text"] == "held-out"} == {"deu", "eng"}
    held = {(r["samples"], r["lang"]): r for r in curve if r["text"] == "held-out"}
    assert held[24, "deu"]["ppl"] < held[0, "deu"]["ppl"] and held[24, "deu"]["target"]
    ratios = sorted(held[24, c]["ppl"] / held[0, c]["ppl"] for c in ("deu", "eng"))
    assert res["summary"]["target_ppl_ratio"] == pytest.approx(sum(ratios) / 2, rel=1e-12)  # median of two
    assert "PUD" in res["target_eval"] or "pud" in res["target_eval"]
    ppl = {(r["samples"], r["lang"]): r for r in curve if r["text"] != "held-out"}
    assert ppl[24, "deu"]["target"] and not ppl[24, "fra"]["target"]
    assert ppl[0, "eng"]["lr"] == 0.0 and ppl[24, "eng"]["lr"] > 0 and ppl[8, "eng"]["step"] == 2
    assert all(r["bits_per_unit"] is not None for r in curve)  # UDHR is parallel
    data = {r["lang"]: r for r in doc["tables"]["data"]["rows"]}
    assert data["deu"]["samples"] == 18 and data["eng"]["samples"] == 6
    order = np.load(tmp_path / "transfer-pretrain" / "order.npy")
    assert order.shape == (24, 2) and sorted(np.bincount(order[:, 0]).tolist()) == [6, 18]
    model, _, _ = load_model(str(tmp_path / "transfer-pretrain" / "model"))
    assert model.config.model_type == "gemma3_text"
    assert len(doc["tables"]["metrics"]["rows"]) == 6
    html = render_html(tmp_path)
    assert "Further pretraining of" in html and "Perplexity at each measured point" in html
    assert "deu held-out" in html and "held-out text of their own kind" in html


def test_target_scored_on_held_out_text_never_trained_on(tiny, tmp_path):
    """--target-eval split: the training languages' held-out units (a --held-out share of their ids) are scored and
    never packed into training blocks; a corpus spec (a UD test split) is read as given."""
    from transformers import AutoTokenizer

    from babelscope.data import open_corpus
    from babelscope.data.base import split_units

    tok = AutoTokenizer.from_pretrained(str(tiny))
    data = prepare_data(_cfg(tiny, langs="deu", samples=8, eval_at=""), tok)
    train, test = split_units(open_corpus("pud-sample").units("deu"), 0.3, 0)
    assert {u.id for u in data["target_view"].units("deu")} == {u.id for u in test}
    assert data["data_rows"][0]["documents"] == len(train) and not data["held_out_split"]
    none = prepare_data(_cfg(tiny, langs="deu", samples=8, eval_at="", target_eval="none"), tok)
    assert none["target_view"] is None and none["data_rows"][0]["documents"] == len(train) + len(test)
    french = tmp_path / "fr.txt"
    french.write_text("Une phrase.\nUne autre.\n", encoding="utf-8")
    with pytest.raises(BabelscopeError, match="--target-eval|deu"):  # no German there
        prepare_data(_cfg(tiny, langs="deu", samples=8, eval_at="", target_eval=f"{french}#lang=fra"), tok)


def test_held_out_ids_are_disjoint(tiny):
    from transformers import AutoTokenizer

    cfg = _cfg(tiny, corpus="udhr-sample", langs="eng", eval_corpus="", eval_langs="fra", samples=1, eval_at="",
               held_out=0.5)
    data = prepare_data(cfg, AutoTokenizer.from_pretrained(str(tiny)))
    from babelscope.data import open_corpus
    from babelscope.data.base import split_units

    train, test = split_units(open_corpus("udhr-sample").units("eng"), 0.5, 0)
    assert {u.id for u in data["eval_view"].units("eng")} == {u.id for u in test}
    assert data["held_out_split"] and data["data_rows"][0]["documents"] == len(train)


def test_killed_run_keeps_its_curve_and_resumes(tiny, tmp_path, monkeypatch):
    from babelscope.models.engine import Engine
    from babelscope.runs import load_results

    cfg = _cfg(tiny, checkpoint_every=1)
    whole = run(cfg, tmp_path / "whole")["tables"]["curve"]["rows"]
    calls = {"n": 0}
    real = Engine.rolling_loglikelihood

    def dies_at_second_point(self, *a, **k):
        calls["n"] += k.get("desc") == "perplexity"  # a curve point, not load_model's logit check
        if calls["n"] == 3:  # each point scores twice (the eval corpus, the targets' held-out text): the second
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "rolling_loglikelihood", dies_at_second_point)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut")
    partial = load_results(tmp_path / "cut" / "transfer-pretrain")
    assert not partial["results"]["complete"]
    assert {r["samples"] for r in partial["tables"]["curve"]["rows"]} == {0}
    monkeypatch.setattr(Engine, "rolling_loglikelihood", real)
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["results"]["complete"]
    got = {(r["samples"], r["lang"], r["text"]): r["ppl"] for r in resumed["tables"]["curve"]["rows"]}
    for r in whole:  # the same weights at every point, so the same perplexities (same code, same order)
        assert got[r["samples"], r["lang"], r["text"]] == pytest.approx(r["ppl"], rel=1e-6)


def test_freeze_region(tiny, tmp_path):
    from babelscope.models import load_model
    from babelscope.models.params import scored_parameters
    from babelscope.regions.select import region_mask
    from babelscope.tensorfiles import save_tensors

    model, _, info = load_model(str(tiny))
    params = scored_parameters(model)
    mask = region_mask({n: p.detach().abs() for n, p in params.items()}, 0.05, "top", "tensor")
    save_tensors(tmp_path / "top.safetensors", mask, {"model": info.checksum, "region": "top", "k": 0.05,
                                                       "scope": "tensor", "size": sum(int(m.sum()) for m in
                                                                                      mask.values())})
    run(_cfg(tiny), tmp_path, step="none")  # the same training without freezing, for the overlay
    doc = run(_cfg(tiny, save_model=True, freeze_region="top.safetensors"), tmp_path)
    compare = doc["tables"]["compare"]["rows"]
    assert {(r["run"], r["freeze"]) for r in compare} == {("none", "none"), ("transfer-pretrain", "top@0.05")}
    from babelscope.report import render_html

    assert "Trainings compared" in render_html(tmp_path)
    trained, _, _ = load_model(str(tmp_path / "transfer-pretrain" / "model"))
    after = scored_parameters(trained)
    frozen = doc["results"]["freeze"]
    assert frozen["region"] == "top" and 0 < frozen["parameters"] < sum(int(m.sum()) for m in mask.values()) + 1
    from babelscope.models.params import norm_modules

    norms = set(norm_modules(trained))
    for name, m in mask.items():
        if name not in norms:
            assert torch.equal(after[name].detach()[m], params[name].detach()[m]), name

    # another model's mask (same architecture, other weights): refused before training, nothing written
    other = tmp_path / "other"
    build_tiny("gemma3", other, seed=1)
    with pytest.raises(BabelscopeError, match="mask for another model"):
        run(_cfg(other, freeze_region=str(tmp_path / "top.safetensors")), tmp_path / "o")
    assert not (tmp_path / "o" / "transfer-pretrain").exists()  # (the step runner checked and made the run dir)


def test_bad_input(tiny, tmp_path):
    with pytest.raises(BabelscopeError, match="raise --epochs"):
        run(_cfg(tiny, samples=5000), tmp_path)
    with pytest.raises(BabelscopeError, match="over the model's maximum of 512"):
        run(_cfg(tiny, seq_len=600), tmp_path)
    with pytest.raises(BabelscopeError, match="exactly one budget"):
        run(_cfg(tiny, samples=None), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
    # with repeats allowed the same budget trains
    cfg = _cfg(tiny, corpus="udhr-sample", langs="eng", eval_corpus="", samples=40, seq_len=32, epochs=40, held_out=0.5,
               eval_at="0,40")
    assert run(cfg, tmp_path / "ok")["results"]["complete"]


def test_checkpoint_of_another_configuration(tiny, tmp_path, monkeypatch):
    from babelscope.models.engine import Engine

    cfg = _cfg(tiny, checkpoint_every=1)
    real = Engine.rolling_loglikelihood
    calls = {"n": 0}

    def dies(self, *a, **k):
        calls["n"] += k.get("desc") == "perplexity"  # a curve point, not load_model's logit check
        if calls["n"] == 3:  # each point scores twice (the eval corpus, the targets' held-out text): the second
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "rolling_loglikelihood", dies)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path)
    monkeypatch.setattr(Engine, "rolling_loglikelihood", real)
    step = tmp_path / "transfer-pretrain"
    before = sorted(p.name for p in (step / "checkpoints").iterdir())
    config = (step / "config.yaml").read_text()
    cli = [sys.executable, "-m", "babelscope.cli", "transfer", "pretrain", "-m", str(tiny), "--corpus", "pud-sample",
           "--langs", "deu:0.75,eng:0.25", "--seq-len", "16", "--samples", "24", "--eval-corpus", "udhr-sample",
           "--eval-langs", "eng,fra", "--eval-at", "0,8,24", "--eval-window", "32", "--eval-max-tokens", "64",
           "--micro-batch-size", "4", "--no-save-model", "--checkpoint-every", "1", "-o", str(tmp_path)]
    out = subprocess.run([*cli, "--lr", "0.1"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    # one line naming the option that changed (with its old and new value), nothing overwritten
    assert out.stderr.strip().count("\n") == 0 and "another training configuration (lr 0.002 -> 0.1)" in out.stderr
    assert "--restart" in out.stderr
    assert sorted(p.name for p in (step / "checkpoints").iterdir()) == before
    assert (step / "config.yaml").read_text() == config
    assert json.loads((step / "results.json").read_text())["results"]["complete"] is False
    # logging and checkpoint frequency do not change the weights: the same checkpoint resumes
    out = subprocess.run([*cli, "--lr", "0.002", "--log-every", "2", "--checkpoint-every", "3"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    done = json.loads((step / "results.json").read_text())
    assert done["results"]["complete"] and sorted({r["samples"] for r in done["tables"]["curve"]["rows"]}) == [0, 8, 24]
    assert not (step / "checkpoints").exists()  # a finished run leaves no checkpoint, even without a saved model


def test_restart_and_finished_rerun(tiny, tmp_path, monkeypatch):
    """--restart discards a checkpoint of another configuration and trains from the start (the same weights as a
    run that was never interrupted); a finished step re-run with a changed option recomputes."""
    import babelscope.transfer.loop as loop

    cfg = _cfg(tiny, checkpoint_every=2, save_model=True)
    real = loop._save_checkpoint

    def dies(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", dies)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut")
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    changed = _cfg(tiny, checkpoint_every=2, save_model=True, lr=1e-3)
    with pytest.raises(BabelscopeError, match=r"lr 0.002 -> 0.001"):
        run(changed, tmp_path / "cut")
    restarted = run(_cfg(tiny, checkpoint_every=2, save_model=True, lr=1e-3, restart=True), tmp_path / "cut")
    fresh = run(changed, tmp_path / "fresh")
    assert restarted["tables"]["curve"]["rows"] == fresh["tables"]["curve"]["rows"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "cut/transfer-pretrain/model/model.safetensors"))
    b = load_file(str(tmp_path / "fresh/transfer-pretrain/model/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: nothing of the killed run was kept
    # a finished step with another --log-every recomputes (its metrics table changes) instead of being refused
    again = run(_cfg(tiny, checkpoint_every=2, save_model=True, lr=1e-3, log_every=3), tmp_path / "fresh")
    assert len(again["tables"]["metrics"]["rows"]) == 2 and again["results"]["complete"]


def test_checked_before_anything_runs(tiny, tmp_path):
    """`babelscope run` plans every step's model-free checks (budgets, eval points, seq-len against config.json,
    masks) before step 1 runs."""
    import yaml

    from babelscope.experiment import plan, run_file

    ppl = {"command": "ppl", "step": "ppl", "corpus": "udhr-sample", "langs": "eng", "max_units": 1, "window": 32}
    pre = {"command": "transfer-pretrain", "corpus": "pud-sample", "langs": "deu", "seq_len": 16, "samples": 8,
           "eval_corpus": "udhr-sample", "eval_langs": "eng"}

    def exp(name, **change):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / name), "defaults": {"model": str(tiny)},
                                        "steps": [ppl, dict(ppl, step="ppl-2"), {**pre, **change}]}))
        return path

    for name, change, message in [
        ("neg", {"seq_len": -5}, "step 3 (transfer-pretrain): --seq-len -5: a block needs at least 2 tokens"),
        ("long", {"seq_len": 600}, "--seq-len 600 is over the model's maximum of 512"),
        ("evalat", {"eval_at": "0,100"}, "--eval-at '0,100': sample counts must lie between 0 and the budget 8"),
        ("budget", {"samples": 50000}, "raise --epochs"),
        ("epochs", {"epochs": 0}, "--epochs 0: must be at least 1"),
        ("mask", {"freeze_region": "masks/top.safetensors"}, "no such mask file"),
        ("lr", {"lr": 0.0}, "--lr 0.0: must be positive"),
    ]:
        with pytest.raises(BabelscopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_file(exp(name, **change))
        assert not (tmp_path / name).exists(), name  # step 1 never ran
    # a mask that an earlier `regions select` step writes is checked when its step runs
    select = {"command": "regions-select", "importance_step": "regions-importance"}
    path = tmp_path / "later.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "later"), "defaults": {"model": str(tiny)},
                                    "steps": [select, {**pre, "freeze_region": "masks/top.safetensors"}]}))
    assert [s.command for s in plan(path)] == ["regions-select", "transfer-pretrain"]


def test_mask_checked_before_the_model_loads(tiny, tmp_path, monkeypatch):
    """A wrong-shape mask without a checksum, an unreadable file and a non-boolean tensor are refused from the
    safetensors headers, before the model loads; --epochs 0 gets its own sentence."""
    from safetensors.torch import save_file

    import babelscope.models

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(babelscope.models, "load_model", no_loading)
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(3, 3, dtype=torch.bool)},
              str(tmp_path / "wrong.safetensors"), metadata={"region": json.dumps("top")})
    with pytest.raises(BabelscopeError, match=r"down_proj.weight has shape \(3, 3\), the model's is \(32, 64\)"):
        run(_cfg(tiny, freeze_region=str(tmp_path / "wrong.safetensors")), tmp_path / "r")
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(32, 64)}, str(tmp_path / "float.safetensors"))
    with pytest.raises(BabelscopeError, match="is F32, a mask is boolean"):
        run(_cfg(tiny, freeze_region=str(tmp_path / "float.safetensors")), tmp_path / "r")
    (tmp_path / "junk.safetensors").write_text("not a mask")
    with pytest.raises(BabelscopeError, match="not a mask file of `babelscope regions select`") as exc:
        run(_cfg(tiny, freeze_region=str(tmp_path / "junk.safetensors")), tmp_path / "r")
    assert "delete it" not in str(exc.value)  # a user's input, not a cache file
    with pytest.raises(BabelscopeError, match="^--epochs 0: must be at least 1$"):
        run(_cfg(tiny, epochs=0), tmp_path / "r")
    assert not (tmp_path / "r" / "transfer-pretrain").exists()


def test_model_spec_resolved_and_tokenizer_loaded_once(tiny, tmp_path, monkeypatch):
    """One step resolves its model spec once, loads the tokenizer once and names the model once (the options'
    checks, the training data and the model share them); a finished rerun resolves it once and loads nothing."""
    from collections import Counter

    from transformers import AutoTokenizer

    import babelscope.models.loader as loader
    import babelscope.models.specs as specs

    counts: Counter = Counter()

    def counting(name, fn):
        def wrapped(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapped

    resolve = counting("resolve_spec", specs.resolve_spec)
    monkeypatch.setattr(specs, "resolve_spec", resolve)
    monkeypatch.setattr(loader, "resolve_spec", resolve)
    monkeypatch.setattr(loader, "model_name", counting("model_name", loader.model_name))
    real = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        classmethod(lambda cls, *a, **k: counting("tokenizer", real)(cls, *a, **k)))
    run(_cfg(tiny), tmp_path)
    assert dict(counts) == {"resolve_spec": 1, "tokenizer": 1, "model_name": 1}
    counts.clear()
    assert run(_cfg(tiny), tmp_path)["results"]["complete"]  # done: read back, no model
    assert dict(counts) == {"resolve_spec": 1, "tokenizer": 1}
