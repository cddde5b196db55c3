"""Language-specific neurons on tiny random Gemma 3 / Llama models: counts against a plain hook-and-count
reference, the official selection rule, deactivation, resume, the regions overlap and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from conftest import run_cli as _cli

LANGS = "eng,fra,rus,cmn-Hans"


def _loaded(kind="gemma3"):
    from babelscope.models.loader import describe

    model, tok = build_tiny(kind)
    info = describe(model, tok, "tiny", "memory")
    return model, tok, info


def _windows(tok, n=5):
    from babelscope.data import open_corpus

    corpus = open_corpus("udhr-sample")
    texts = [corpus.units(c)[0].text for c in LANGS.split(",")][:n]
    bos = tok.bos_token_id
    return [[bos, *tok(t, add_special_tokens=False)["input_ids"][:30 - 3 * i]] for i, t in enumerate(texts)]


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
@pytest.mark.parametrize("site", ["act", "down-input"])
def test_counts_equal_plain_hook_and_count(kind, site):
    """The counting hooks give exactly what storing every activation and counting afterwards gives, on the same
    batches (integer counts of the same float values)."""
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.neurons.lape import count_activations

    model, tok, _ = _loaded(kind)
    ffns = ffn_modules(model)
    assert [type(f.act).__name__ for f in ffns][0] == ("GELUTanh" if kind == "gemma3" else "SiLUActivation")
    seqs = _windows(tok)
    got, tokens = count_activations(model, ffns, seqs, batch_size=2, site=site, pad_id=0)
    # reference: the same batches (longest first, right-padded) through the full model, activations stored
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    want = torch.zeros_like(got)
    stored: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(ffns))}
    handles = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if site == "act":
            handles.append(mlp.act_fn.register_forward_hook(lambda m, a, o, i=i: stored[i].append(o.clone())))
        else:
            handles.append(mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: stored[i].append(a[0].clone())))
    n_tokens = 0
    try:
        for start in range(0, len(order), 2):
            batch = [seqs[j] for j in order[start : start + 2]]
            width = max(map(len, batch))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            for i in stored:
                acts = stored[i].pop()
                for row, s in enumerate(batch):
                    want[i] += (acts[row, 1 : len(s)] > 0).sum(dim=0)
            n_tokens += sum(len(s) - 1 for s in batch)
    finally:
        for h in handles:
            h.remove()
    assert tokens == n_tokens
    assert torch.equal(got, want)
    assert 0 < int(got.sum()) < tokens * got.numel()  # neither all nor none active


def test_selection_follows_the_official_rule():
    """Thresholds are kthvalue quantiles of all probabilities; the lowest-entropy candidates (top_rate of all
    neurons) are kept and assigned to every language above the bar."""
    from babelscope.neurons.lape import lape, select_neurons

    gen = torch.Generator().manual_seed(0)
    probs = 0.29 + 0.02 * torch.rand(4, 50, 3, generator=gen, dtype=torch.float64)  # near-uniform: high LAPE
    probs[1, 7] = torch.tensor([0.99, 0.01, 0.01])  # specific to language 0
    probs[2, 3] = torch.tensor([0.01, 0.98, 0.97])  # shared by languages 1 and 2
    probs[0, 0] = torch.tensor([0.99, 0.99, 0.99])  # high everywhere: maximal entropy, never kept
    masks, entropy, th = select_neurons(probs, filter_rate=0.95, top_rate=0.01, bar_rate=0.95)
    assert th["kept"] == round(0.01 * 200) == 2
    flat = probs.flatten()
    assert th["filter"] == float(flat.kthvalue(round(0.95 * flat.numel())).values)
    assert masks.shape == (3, 4, 50)
    assert masks[0, 1, 7] and not masks[1, 1, 7] and not masks[2, 1, 7]
    assert masks[1, 2, 3] and masks[2, 2, 3] and not masks[0, 2, 3]
    assert int(masks.any(dim=0).sum()) == 2 and not masks[:, 0, 0].any()
    normed, h = lape(probs)
    assert torch.allclose(normed.sum(-1), torch.ones(4, 50, dtype=torch.float64))
    assert torch.allclose(h, entropy) and float(h[0, 0]) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    with pytest.raises(Exception, match="top-rate"):
        select_neurons(probs, top_rate=1.5)


def test_deactivation_really_zeroes_and_is_removed():
    from babelscope.neurons.ffn import deactivated, ffn_modules

    model, tok, _ = _loaded("gemma3")
    ffns = ffn_modules(model)
    ids = torch.tensor([_windows(tok, 1)[0]])
    seen = []
    # a forward hook sees the input as the pre-hooks left it
    probe = ffns[1].down.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            base = model(input_ids=ids).logits
            with deactivated(ffns, {1: torch.tensor([2, 9, 40])}) as n:
                off = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
    finally:
        probe.remove()
    assert n == 3
    assert bool((seen[1][..., [2, 9, 40]] == 0).all()) and bool((seen[0][..., [2, 9, 40]] != 0).all())
    assert torch.equal(seen[1][..., 10:40], seen[0][..., 10:40])  # other neurons of that layer untouched
    assert not torch.equal(base, off) and torch.equal(base, after)  # hooks gone after the block
    assert all(not f.down._forward_pre_hooks for f in ffns)


def _find(run_dir: Path, loaded, **kw):
    from babelscope.neurons.lape import NeuronsConfig, run

    cfg = dict(langs=LANGS, max_tokens=120, window=48, batch_size=2, top_rate=0.05)
    cfg.update(kw)
    return run(NeuronsConfig(**cfg), run_dir, "neurons", loaded=lambda: loaded)


def test_find_deactivate_resume(tmp_path, monkeypatch):
    from babelscope.neurons import lape
    from babelscope.neurons.deactivate import DeactivateConfig
    from babelscope.neurons.deactivate import run as deactivate

    loaded = _loaded("gemma3")
    doc = _find(tmp_path, loaded)
    rows = doc["tables"]["per_language"]["rows"]
    assert [r["lang"] for r in rows] == LANGS.split(",") and all(r["tokens"] == 120 for r in rows)
    assert doc["results"]["selected"] == round(0.05 * 3 * 64)
    per_layer = doc["tables"]["per_layer"]["rows"]
    for r in rows:
        assert r["neurons"] == sum(p["neurons"] for p in per_layer if p["lang"] == r["lang"])
    # resume: counts of finished languages are read back, not recomputed
    counts = {p.name: p.read_bytes() for p in (tmp_path / "neurons" / "counts").iterdir()}
    (tmp_path / "neurons" / "results.json").unlink()
    monkeypatch.setattr(lape, "count_activations", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recount")))
    again = _find(tmp_path, loaded)
    assert again["tables"]["neurons"]["rows"] == doc["tables"]["neurons"]["rows"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "neurons" / "counts").iterdir()} == counts
    with pytest.raises(AssertionError, match="recount"):  # another token budget is another key
        _find(tmp_path, loaded, max_tokens=100)
    monkeypatch.undo()
    doc = _find(tmp_path, loaded)
    dd = deactivate(DeactivateConfig(max_tokens=60, window=48, max_new_tokens=3), tmp_path, "deact",
                    loaded=lambda: loaded)
    with pytest.raises(Exception, match="--off kor: no neurons for kor"):
        deactivate(DeactivateConfig(off="kor"), tmp_path, "deact2", loaded=lambda: loaded)
    matrix = dd["tables"]["matrix"]["rows"]
    assert [r["off"] for r in matrix] == LANGS.split(",")
    for r in dd["tables"]["per_language"]["rows"]:
        assert r["ratio"] == pytest.approx(r["ppl"] / r["base_ppl"])
        if r["count"] == 0:  # nothing switched off: exactly the base
            assert r["ratio"] == pytest.approx(1.0, rel=1e-6)
    assert any(abs(r["ratio"] - 1) > 1e-6 for r in dd["tables"]["per_language"]["rows"] if r["count"])
    assert {g["off"] for g in dd["tables"]["generations"]["rows"]} >= {"base", "eng"}
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Language-specific neurons of tiny" in html and "Deactivating language-specific neurons" in html


def test_overlap_with_regions(tmp_path):
    """Counts of region weights per neuron follow the rows of gate/up and the columns of down."""
    from babelscope.neurons.overlap import OverlapConfig, neuron_region_counts, overlap_stats
    from babelscope.neurons.overlap import run as overlap
    from babelscope.regions.importance import ImportanceConfig
    from babelscope.regions.importance import run as importance
    from babelscope.regions.select import SelectConfig
    from babelscope.regions.select import run as select

    weights = [{"in": ["g0", "u0"], "down": ["d0"]}]
    mask = {"g0": torch.zeros(4, 3, dtype=torch.bool), "u0": torch.zeros(4, 3, dtype=torch.bool),
            "d0": torch.zeros(3, 4, dtype=torch.bool)}
    mask["g0"][1, :2] = True
    mask["d0"][0, 1] = mask["d0"][2, 3] = True
    assert neuron_region_counts(mask, weights, 4).tolist() == [[0, 3, 0, 1]]
    s = overlap_stats(torch.tensor([[False, True, False, False]]), torch.tensor([[0, 3, 0, 1]]), draws=50)
    assert s["touched_share"] == 1.0 and s["weight_share"] == 0.75 and s["weight_random"] == 0.25
    assert s["touched_random"] == 0.5

    loaded = _loaded("gemma3")
    _find(tmp_path, loaded)
    importance(ImportanceConfig(langs="eng,cmn-Hans", max_tokens=40, window=32, batch_size=2), tmp_path,
               "regions-importance", loaded=lambda: loaded)
    select(SelectConfig(k="0.01", scope="tensor", table_k="0.01"), tmp_path, "regions-select")
    doc = overlap(OverlapConfig(draws=100), tmp_path, "ov")
    rows = doc["tables"]["overlap"]["rows"]
    assert {(r["lang"], r["region"]) for r in rows} == {(c, k) for c in ("eng", "cmn-Hans")
                                                      for k in ("lang", "mono", "core")}
    for r in rows:
        if r["neurons"]:
            assert 0 <= r["weight_share"] <= 1 and 0 < r["weight_p_layer_matched"] <= 1
            assert r["weight_random"] == pytest.approx(r["neurons"] / (3 * 64))
            assert 0 <= r["weight_random_active"] <= 1 and 0 < r["weight_p_active"] <= 1




def test_bad_input(tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    from babelscope.errors import BabelscopeError
    from babelscope.neurons.ffn import check_site, ffn_modules

    # OPT has no entry in the architecture table: refused in one line naming the missing part
    out = tmp_path / "opt"
    _, tok = build_tiny("llama")
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                             num_attention_heads=2, word_embed_proj_dim=32, bos_token_id=2, eos_token_id=1)
                   ).save_pretrained(out)
    tok.save_pretrained(out)
    code, err = _cli(capsys, "neurons", "find", "--model", str(out), "--langs", "eng,fra", "-o", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "architecture table" in err and "FFN activation module" in err
    assert not (tmp_path / "run" / "neurons").exists()
    # an FFN whose activation is not a module: --site act refuses, down-input is offered
    model, _, _ = _loaded("llama")
    for layer in model.model.layers:
        layer.mlp.act_fn = None
    with pytest.raises(BabelscopeError, match="no recognisable FFN activation.*down-input"):
        check_site(ffn_modules(model), "act", model)
    code, err = _cli(capsys, "neurons", "find", "--langs", "eng", "--top-rate", "2", "-o", str(tmp_path / "run"))
    assert code == 2 and "--top-rate 2.0" in err


def test_counting_stops_after_the_last_activation_and_skips_bos_only_windows():
    """The counting forward ends at the last FFN activation: the last block's down projection and the final norm
    never run; a window holding only BOS adds no token; the counts (per row span, int32 per batch) equal storing
    each activation of the same batches and counting its real tokens after BOS."""
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.neurons.lape import count_activations

    model, tok, _ = _loaded("gemma3")
    ffns = ffn_modules(model)
    seqs = [*_windows(tok, 4), [tok.bos_token_id]]
    calls = {"down": 0, "norm": 0}
    handles = [ffns[-1].down.register_forward_hook(lambda *a: calls.__setitem__("down", calls["down"] + 1)),
               model.model.norm.register_forward_hook(lambda *a: calls.__setitem__("norm", calls["norm"] + 1))]
    try:
        got, tokens = count_activations(model, ffns, seqs, batch_size=3, site="act", pad_id=0)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"down": 0, "norm": 0}
    assert tokens == sum(len(s) - 1 for s in seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # the same batches, through the whole model
    want = torch.zeros_like(got)
    for start in range(0, len(order), 3):
        batch = [seqs[j] for j in order[start : start + 3]]
        width = max(map(len, batch))
        stored: list[torch.Tensor] = []
        hs = [f.act.register_forward_hook(lambda m, a, o, out=stored: out.append(o.clone())) for f in ffns]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([s + [0] * (width - len(s)) for s in batch]),
                      attention_mask=torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch]))
        finally:
            for h in hs:
                h.remove()
        for layer, acts in enumerate(stored):
            for row, s in enumerate(batch):
                want[layer] += (acts[row, 1 : len(s)] > 0).sum(dim=0)
    assert torch.equal(got, want)  # integer counts of the same float values


def test_deactivate_without_find_names_the_command(tmp_path, tiny_dir):
    from babelscope.errors import BabelscopeError
    from babelscope.neurons.configs import DeactivateConfig
    from babelscope.neurons.deactivate import run as deactivate

    with pytest.raises(BabelscopeError, match=r"run `babelscope neurons find --model .* --run-dir .*` first"):
        deactivate(DeactivateConfig(model=str(tiny_dir)), tmp_path)
    with pytest.raises(BabelscopeError, match="--step lape-2` first"):
        deactivate(DeactivateConfig(model=str(tiny_dir), neurons_step="lape-2"), tmp_path)
