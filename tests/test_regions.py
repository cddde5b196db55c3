"""Linguistic regions on tiny real architectures: importance against autograd on the model's own forward,
region selection, exact restoration, norm-dimension semantics, resume and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from babelscope.errors import BabelscopeError
from babelscope.models.engine import Engine
from babelscope.models.params import gamma_offset, layer_and_kind, norm_modules, scored_parameters
from babelscope.regions.apply import applied_region, perturbed_dimension
from babelscope.regions.importance import aggregate_importance, grads_only_for, language_scores
from babelscope.regions.select import (
    jaccard,
    kept_fraction,
    load_mask,
    monolingual_masks,
    parse_fractions,
    region_mask,
    save_mask,
)
from conftest import SENTENCES, build_tiny
from numerics import TINY_BACKWARD, assert_close_scaled, gamma

TEXTS = [SENTENCES[0] + " " + SENTENCES[1], SENTENCES[4] + " " + SENTENCES[5], SENTENCES[2]]


def _seqs(engine, window=16):
    return [w for t in TEXTS for w in engine.windows(engine.encode([t])[0], window)]


def _loaded(model, tok):
    from babelscope.models.loader import describe

    info = describe(model, tok, "tiny", "memory")
    return lambda: (model, tok, info)


# ------------------------------------------------------------------------------------------------ params
def test_scored_parameters_read_from_blocks():
    model, _ = build_tiny("gemma3")
    params = scored_parameters(model)
    kinds = {layer_and_kind(n)[1] for n in params}
    norms = {layer_and_kind(n)[1] for n in norm_modules(model)}
    assert norms == {f"{n}.weight" for n in ("input_layernorm", "post_attention_layernorm",
                                             "pre_feedforward_layernorm", "post_feedforward_layernorm",
                                             "self_attn.q_norm", "self_attn.k_norm")}
    assert norms < kinds and {"self_attn.q_proj.weight", "mlp.down_proj.weight"} < kinds
    assert not any("embed" in n or "lm_head" in n or n == "model.norm.weight" for n in params)
    assert sum(p.numel() for p in params.values()) == sum(p.numel() for p in model.model.layers.parameters())
    assert {layer_and_kind(n)[0] for n in params} == {0, 1, 2}
    only_mlp = scored_parameters(model, include=r"\.mlp\.", exclude="down")
    assert {layer_and_kind(n)[1] for n in only_mlp} == {"mlp.gate_proj.weight", "mlp.up_proj.weight"}
    llama, _ = build_tiny("llama")
    assert len({layer_and_kind(n)[1] for n in norm_modules(llama)}) == 2
    with pytest.raises(BabelscopeError, match="no parameter"):
        scored_parameters(model, include="nothing-matches")


def test_gamma_offset_is_probed():
    gemma, _ = build_tiny("gemma3")
    llama, _ = build_tiny("llama")
    assert all(gamma_offset(m) == 1.0 for m in norm_modules(gemma).values())  # (1 + w)
    assert all(gamma_offset(m) == 0.0 for m in norm_modules(llama).values())  # w


# ------------------------------------------------------------------------------------------------ importance
def reference_scores(model, params, seqs):
    """θ ⊙ ∂L/∂θ with L = Σ token NLL / N from the model's own forward, one window at a time."""
    n = sum(k for _, k in seqs)
    model.zero_grad()
    for seq, k in seqs:
        x = torch.tensor([seq])
        logits = model(input_ids=x).logits[0, :-1]
        (F.cross_entropy(logits[-k:], x[0, -k:], reduction="sum") / n).backward()
    out = {name: (p.grad * p.detach()).clone() for name, p in params.items()}
    model.zero_grad()
    return out


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_taylor_importance_matches_autograd_and_ignores_batching(kind):
    model, tok = build_tiny(kind)
    params = scored_parameters(model)
    seqs = _seqs(Engine(model, tok, progress=False))
    ref = reference_scores(model, params, seqs)
    for batch_size in (1, 3):
        engine = Engine(model, tok, batch_size=batch_size, logit_chunk=7, progress=False)
        with grads_only_for(model, params):
            scores, nll, tokens = language_scores(engine, params, seqs)
        assert tokens == sum(k for _, k in seqs) and nll > 0
        for name in params:  # same float32 gradient summed in another order: bound from the reductions
            assert_close_scaled(scores[name], ref[name], TINY_BACKWARD)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # flags restored


def test_per_step_variant_bounds_taylor():
    model, tok = build_tiny("gemma3")
    params = scored_parameters(model)
    seqs = _seqs(Engine(model, tok, progress=False))
    with grads_only_for(model, params):
        taylor, _, _ = language_scores(Engine(model, tok, batch_size=2, progress=False), params, seqs)
        per_step, _, _ = language_scores(Engine(model, tok, batch_size=2, progress=False), params, seqs, "per-step")
        one_batch, _, _ = language_scores(Engine(model, tok, batch_size=100, progress=False), params, seqs,
                                          "per-step")
    for name in params:
        slack = TINY_BACKWARD * (taylor[name].abs() + taylor[name].abs().max())  # rounding of both sides
        assert torch.all(per_step[name] >= taylor[name].abs() - slack)  # |Σ g| ≤ Σ |g|
        assert_close_scaled(one_batch[name], taylor[name].abs(), TINY_BACKWARD)
    assert sum(float(per_step[n].sum()) for n in params) > sum(float(taylor[n].abs().sum()) for n in params)
    imp = aggregate_importance([taylor, {n: -t for n, t in taylor.items()}])
    assert torch.equal(imp[next(iter(params))], 2 * taylor[next(iter(params))].abs())  # |t| + |−t|: exact


# ------------------------------------------------------------------------------------------------ regions
def test_region_masks_counts_and_ranking():
    gen = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(10, 30, generator=gen), "b": torch.rand(50, generator=gen) * 5}
    top = region_mask(scores, 0.1, "top", "tensor")
    bottom = region_mask(scores, 0.1, "bottom", "tensor")
    rand = region_mask(scores, 0.1, "random", "tensor", seed=3)
    for name, s in scores.items():
        count = round(0.1 * s.numel())
        assert int(top[name].sum()) == int(bottom[name].sum()) == int(rand[name].sum()) == count
        assert s[top[name]].min() >= s[~top[name]].max()
        assert s[bottom[name]].max() <= s[~bottom[name]].min()
    assert all(torch.equal(rand[n], region_mask(scores, 0.1, "random", "tensor", seed=3)[n]) for n in scores)
    assert not all(torch.equal(rand[n], region_mask(scores, 0.1, "random", "tensor", seed=4)[n]) for n in scores)
    glob = region_mask(scores, 0.1, "top", "global")
    assert sum(int(m.sum()) for m in glob.values()) == 35
    assert kept_fraction(glob)["b"] < kept_fraction(glob)["a"]  # b's scores are 5x larger: it loses more
    assert kept_fraction(top)["a"] == pytest.approx(0.9)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(BabelscopeError, match="between 0 and 1"):
            region_mask(scores, bad)
    with pytest.raises(BabelscopeError, match="between 0 and 1"):
        parse_fractions("0.01,2")


def test_monolingual_and_overlap():
    t = lambda *bits: {"w": torch.tensor(bits, dtype=torch.bool)}  # noqa: E731
    tops = {"eng": t(1, 1, 0, 0, 1), "fra": t(1, 0, 1, 0, 0), "deu": t(1, 0, 0, 1, 0)}
    mono = monolingual_masks(tops)
    assert mono["eng"]["w"].tolist() == [False, True, False, False, True]
    assert mono["fra"]["w"].tolist() == [False, False, True, False, False]
    assert jaccard(tops["eng"], tops["fra"]) == pytest.approx(1 / 4)


def test_mask_for_another_model_is_refused(tmp_path):
    gemma, _ = build_tiny("gemma3")
    llama, _ = build_tiny("llama")
    g, lp = scored_parameters(gemma), scored_parameters(llama)
    save_mask(tmp_path / "llama.safetensors", region_mask(lp, 0.1), {"model": "x"})
    with pytest.raises(BabelscopeError, match="another model"):
        load_mask(tmp_path / "llama.safetensors", g)
    bad = {n: torch.zeros(3, dtype=torch.bool) for n in g}
    save_mask(tmp_path / "shape.safetensors", bad, {"model": "x"})
    with pytest.raises(BabelscopeError, match="another model"):
        load_mask(tmp_path / "shape.safetensors", g)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(BabelscopeError, match="not a readable"):
        load_mask(tmp_path / "junk.safetensors", g)
    mask, meta = load_mask(tmp_path / "llama.safetensors", lp)
    assert meta["size"] == sum(int(m.sum()) for m in mask.values())


# ------------------------------------------------------------------------------------------------ apply
def test_applied_region_restores_exact_weights():
    model, tok = build_tiny("gemma3")
    params = scored_parameters(model)
    norms = set(norm_modules(model))
    before = {n: p.detach().clone() for n, p in params.items()}
    mask = region_mask({n: p.detach().abs() for n, p in params.items()}, 0.2)
    with applied_region(params, mask, "zero", norm_names=norms) as changed:
        for n, p in params.items():
            if n in norms:
                assert torch.equal(p, before[n])  # norms left out of zeroing by default
            else:
                assert torch.all(p[mask[n]] == 0) and torch.equal(p[~mask[n]], before[n][~mask[n]])
        assert changed.changed == sum(int(mask[n].sum()) for n in params if n not in norms)  # all nonzero
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    with pytest.raises(RuntimeError, match="boom"), applied_region(params, mask, "noise", factor=1.0):
        assert not all(torch.equal(p, before[n]) for n, p in params.items())
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in params.items())  # restored in finally
    with applied_region(params, mask, "scale", factor=3.0, include_norms=True, norm_names=norms):
        assert all(torch.allclose(p[mask[n]], 3 * before[n][mask[n]]) for n, p in params.items())
    initial = {n: torch.full_like(p, 0.5) for n, p in params.items()}
    with applied_region(params, mask, "reset", initial=initial):
        assert all(torch.all(p[mask[n]] == 0.5) for n, p in params.items())
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    with pytest.raises(BabelscopeError, match="--initial"), applied_region(params, mask, "reset"):
        pass


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_perturbed_dimension_sets_effective_scale(kind):
    model, _ = build_tiny(kind)
    name, norm = next(iter(norm_modules(model).items()))
    with torch.no_grad():
        norm.weight.normal_()
    saved = norm.weight.detach().clone()
    x = torch.randn(4, norm.weight.shape[0])
    base = norm(x).detach()
    normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(norm))
    for mode, factor, expect in (("zero", 0, 0 * base[:, 3]), ("one", 0, normalized[:, 3]),
                                 ("scale", 2.5, 2.5 * base[:, 3])):
        with perturbed_dimension(norm, 3, mode, factor):
            out = norm(x).detach()
            # an RMSNorm of 32 values against the formula: one reduction of 32 terms, a few roundings
            assert_close_scaled(out[:, 3], expect, 8 * gamma(32))
            assert torch.equal(out[:, 4], base[:, 4])  # the other dimensions are computed identically
        assert torch.equal(norm.weight, saved)
    with pytest.raises(BabelscopeError, match="--dim"), perturbed_dimension(norm, 10_000):
        pass


def norm_eps(norm) -> float:
    return getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)


# ------------------------------------------------------------------------------------------------ steps
def test_steps_end_to_end_resume_and_report(tmp_path, monkeypatch):
    from babelscope.regions import ablate, importance, pipeline
    from babelscope.report import render_report
    from babelscope.runs import load_results
    from babelscope.tensorfiles import load_tensors, read_metadata

    model, tok = build_tiny("gemma3")
    loaded = _loaded(model, tok)
    cfg = pipeline.RegionsConfig(langs="eng,fra,deu", max_tokens=48, eval_langs="eng,fra,spa,rus",
                                 eval_max_tokens=40, k="0.05", scope="tensor,global", gen_langs="eng,fra",
                                 max_new_tokens=3, scan_langs="eng", scan_layer=1, scan_top_n=2,
                                 scan_max_tokens=24, window=32)
    pipeline.run(cfg, tmp_path, "regions", loaded)
    imp = load_results(tmp_path / "regions-importance")
    assert imp["kind"] == "regions-importance" and imp["results"]["languages"] == ["eng", "fra", "deu"]
    files = {c: tmp_path / "regions-importance" / f for c, f in imp["results"]["score_files"].items()}
    per_lang = {c: load_tensors(f) for c, f in files.items()}
    total = load_tensors(tmp_path / "regions-importance" / "importance.safetensors")
    name = next(iter(total))
    # Imp folded language by language in the same order as this sum: 3 float32 additions per element
    assert_close_scaled(total[name], sum(s[name].abs() for s in per_lang.values()), gamma(3))
    assert read_metadata(files["fra"])["tokens"] == 48
    # the importance text (train ids) and the evaluation text (test ids) are disjoint
    abl = load_results(tmp_path / "regions-ablate")
    eval_units = set(abl["provenance"]["data"]["units"]["eng"])
    assert eval_units and not eval_units & set(imp["provenance"]["data"]["units"]["eng"].split(","))
    summary = {(r["region"], r["scope"]): r for r in abl["tables"]["summary"]["rows"]}
    assert set(summary) == {(w, s) for w in ("top", "bottom", "random") for s in ("tensor", "global")}
    assert abl["results"]["heldout_languages"] == ["spa", "rus"]
    assert {r["region"] for r in abl["tables"]["generations"]["rows"]} == {"base", "top", "bottom", "random"}
    base = {r["lang"]: r["ppl"] for r in abl["tables"]["per_language"]["rows"] if r["region"] == "base"}
    assert all(r["ratio"] == pytest.approx(r["ppl"] / base[r["lang"]])
               for r in abl["tables"]["per_language"]["rows"])
    def no_model():
        raise AssertionError("the model loaded before the masks were checked")

    with pytest.raises(BabelscopeError, match=r"top-k0\.1-tensor\.safetensors: no such region; run .* --k 0\.1"):
        ablate.run(ablate.AblateConfig(k="0.1", scope="tensor"), tmp_path, "ablate-unsaved", no_model)
    assert not (tmp_path / "ablate-unsaved").exists()  # refused before anything was written
    sel = load_results(tmp_path / "regions-select")
    assert {r["region"] for r in sel["tables"]["per_matrix"]["rows"]} >= {"core", "mono-eng"}
    scan = load_results(tmp_path / "regions-scan")
    assert scan["results"]["scanned"] == 4 and scan["results"]["gamma_offset"] == 1.0
    html = render_report(tmp_path).read_text()
    for title in ("Parameter importance", "Linguistic regions", "Removing regions", "Dimension dependence"):
        assert title in html

    # Resume per language: drop one language's file and the results; only that language is recomputed.
    calls = []
    real = importance.language_scores
    monkeypatch.setattr(importance, "language_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    (tmp_path / "regions-importance" / "results.json").unlink()
    files["fra"].unlink()
    importance.run(importance.ImportanceConfig(langs="eng,fra,deu", max_tokens=48, window=32),
                   tmp_path, "regions-importance", loaded)
    assert len(calls) == 1
    again = load_tensors(tmp_path / "regions-importance" / "importance.safetensors")
    assert_close_scaled(again[name], total[name], TINY_BACKWARD)  # fra recomputed, eng and deu loaded


def test_interrupted_language_leaves_nothing_half_written(tmp_path, monkeypatch):
    from babelscope.regions import importance

    model, tok = build_tiny("gemma3")
    real = importance.language_scores
    seen = []

    def crash_on_second(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(importance, "language_scores", crash_on_second)
    cfg = importance.ImportanceConfig(langs="eng,fra", max_tokens=32, window=32)
    with pytest.raises(KeyboardInterrupt):
        importance.run(cfg, tmp_path, "imp", _loaded(model, tok))
    files = sorted(p.name for p in (tmp_path / "imp").rglob("*") if p.is_file())
    assert files == ["config.yaml", "eng.safetensors"]  # no partial score file, no results
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    (tmp_path / "imp" / "scores" / ".fra.safetensors.x.tmp").write_bytes(b"cut off")  # a killed writer's file
    monkeypatch.setattr(importance, "language_scores", real)
    importance.run(cfg, tmp_path, "imp", _loaded(model, tok))  # resumes: eng loaded, fra computed
    files = sorted(p.name for p in (tmp_path / "imp").rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".tmp")]
    assert {"eng.safetensors", "fra.safetensors", "importance.safetensors", "results.json"} <= set(files)


def test_bad_input(tmp_path):
    from babelscope.regions import ablate, importance, scan, select

    model, tok = build_tiny("gemma3")
    loaded = _loaded(model, tok)
    with pytest.raises(BabelscopeError, match="no importance text for language eng"):
        importance.run(importance.ImportanceConfig(langs="eng", test_fraction=1.0), tmp_path, "a", loaded)
    with pytest.raises(BabelscopeError, match="--method"):
        importance.run(importance.ImportanceConfig(method="exact"), tmp_path, "b", loaded)
    with pytest.raises(BabelscopeError, match="no results file"):
        select.run(select.SelectConfig(importance_step="missing"), tmp_path, "c")
    with pytest.raises(BabelscopeError, match="between 0 and 1"):
        select.run(select.SelectConfig(k="0"), tmp_path, "d")
    with pytest.raises(BabelscopeError, match="--layer 7"):
        scan.run(scan.ScanConfig(layer=7), tmp_path, "e", loaded)
    with pytest.raises(BabelscopeError, match="--mode"):
        ablate.run(ablate.AblateConfig(mode="melt"), tmp_path, "f", loaded)
    assert not any((tmp_path / s / "results.json").exists() for s in "abcdef")


def test_cli_one_line_error(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "babelscope.cli", "regions", "select", "--k", "1.5", "-o",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "between 0 and 1" in out.stderr


def test_perplexity_helper_matches_engine():
    from babelscope.data.views import SplitView, open_text_corpus
    from babelscope.evaluate.intervention import perplexities

    model, tok = build_tiny("llama")
    engine = Engine(model, tok, progress=False)
    view = SplitView(open_text_corpus("udhr-sample"), "test", 0.5, 0)
    rows = perplexities(engine, view, ["eng"], 64, None)
    text = [u.text for u in view.units("eng")]
    s = engine.rolling_loglikelihood(text, window=64)
    assert rows["eng"]["ppl"] == pytest.approx(math.exp(sum(x.nll for x in s) / sum(x.tokens for x in s)))


def test_fast_selection_equals_topk_and_random_is_distinct():
    from babelscope.regions.select import extreme_indices, random_indices

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5_000_000, generator=gen)
    for count, largest in ((50_000, True), (150_000, False)):
        fast = torch.sort(extreme_indices(values, count, largest)).values
        ref = torch.sort(torch.topk(values, count, largest=largest).indices).values
        assert torch.equal(fast, ref)
    idx = random_indices(5_000_000, 50_000, gen)
    assert idx.numel() == torch.unique(idx).numel() == 50_000 and int(idx.min()) >= 0 and int(idx.max()) < 5_000_000
