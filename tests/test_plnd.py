"""PLND (Zhao et al., NeurIPS 2024) on tiny random models: the one-pass importance equals deactivating each neuron
in the model and measuring the FFN output's change, the selection rule, and the step with its overlaps."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny

LANGS = "eng,fra,rus,jpn"


def _loaded(kind="gemma3"):
    from babelscope.models.loader import describe

    model, tok = build_tiny(kind)
    return model, tok, describe(model, tok, "tiny", "memory")


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_one_pass_equals_deactivating_each_neuron(kind):
    from babelscope.data import open_corpus
    from babelscope.neurons.ffn import deactivated, ffn_modules
    from babelscope.neurons.plnd import document_importance, naive_importance

    model, tok, _ = _loaded(kind)
    ffns = ffn_modules(model)
    units = open_corpus("pud-sample").units("fra")[:3]
    seqs = [[tok.bos_token_id, *tok(u.text, add_special_tokens=False)["input_ids"][: 24 - 5 * i]]
            for i, u in enumerate(units)]
    imp = document_importance(model, ffns, seqs, batch_size=2, pad_id=0)
    assert imp.shape == (3, len(ffns), 64)
    for d, seq in enumerate(seqs):
        ids = torch.tensor([seq])
        store: dict = {}
        hooks = [f.down.register_forward_pre_hook(lambda m, a, i=f.layer, s=store: s.__setitem__(("x", i), a[0][0, 1:]))
                 for f in ffns]
        hooks += [f.down.register_forward_hook(lambda m, a, o, i=f.layer, s=store: s.__setitem__(("y", i), o[0, 1:]))
                  for f in ffns]
        try:
            with torch.inference_mode():
                model.model(input_ids=ids)
                base = {i: store[("y", i)].clone() for i in range(len(ffns))}
                inputs = {i: store[("x", i)].clone() for i in range(len(ffns))}
                for f in ffns:
                    # the batched reference: copies of the captured input, one neuron zeroed in each
                    ref = naive_importance(f, inputs[f.layer], chunk=16)
                    # float32 values of order 1 over ~20 tokens: a few ulps of the FFN output
                    torch.testing.assert_close(imp[d, f.layer], ref, rtol=1e-4, atol=1e-5)
                    for j in (0, 5, 63):  # deactivation through the whole model (the paper's definition)
                        with deactivated(ffns, {f.layer: torch.tensor([j])}):
                            model.model(input_ids=ids)
                        change = (store[("y", f.layer)] - base[f.layer]).norm()
                        torch.testing.assert_close(imp[d, f.layer, j], change, rtol=1e-4, atol=1e-5)
        finally:
            for h in hooks:
                h.remove()


def test_selection_rule():
    from babelscope.neurons.plnd import important_counts, select_plnd, set_overlap

    imp = torch.zeros(4, 2, 5)
    imp[:, 0, 1] = 10  # top in every document
    imp[:3, 1, 3] = 9  # top in 3 of 4
    counts = important_counts(imp, top_rate=0.2)  # 2 of 10 neurons per document
    assert counts[0, 1] == 4 and counts[1, 3] == 3
    important = torch.stack([counts, torch.zeros_like(counts)])
    important[1, 0, 1] = 4  # neuron (0, 1) important for both languages: agnostic
    masks, agnostic = select_plnd(important, torch.tensor([4, 4]), consistency=0.75)
    assert agnostic[0, 1] and not masks[:, 0, 1].any()
    assert masks[0, 1, 3] and not masks[1].any()
    masks, _ = select_plnd(important, torch.tensor([4, 4]), consistency=1.0)
    assert not masks[0, 1, 3]
    a = torch.zeros(100, dtype=torch.bool)
    b = torch.zeros(100, dtype=torch.bool)
    a[:10] = b[5:15] = True
    s = set_overlap(a, b)
    assert s["both"] == 5 and s["expected_random"] == pytest.approx(1.0) and s["p_hypergeom"] < 0.01


def test_plnd_step_with_lape_regions_and_deactivate(tmp_path):
    from babelscope.neurons.deactivate import DeactivateConfig
    from babelscope.neurons.deactivate import run as deactivate
    from babelscope.neurons.lape import NeuronsConfig
    from babelscope.neurons.lape import run as find
    from babelscope.neurons.plnd import PlndConfig
    from babelscope.neurons.plnd import run as plnd
    from babelscope.regions.importance import ImportanceConfig
    from babelscope.regions.importance import run as importance
    from babelscope.regions.select import SelectConfig
    from babelscope.regions.select import run as select

    loaded = _loaded()
    common = dict(corpus="pud-sample", langs=LANGS, max_tokens=96, window=24, batch_size=4)
    find(NeuronsConfig(**common, top_rate=0.05), tmp_path, "neurons", loaded=lambda: loaded)
    importance(ImportanceConfig(corpus="pud-sample", langs="eng,jpn", max_tokens=40, window=24, batch_size=2),
               tmp_path, "regions-importance", loaded=lambda: loaded)
    select(SelectConfig(k="0.01", scope="tensor", table_k="0.01"), tmp_path, "regions-select")
    doc = plnd(PlndConfig(**common, top_rate=0.05, consistency=0.5, draws=50), tmp_path, "neurons-plnd",
               loaded=lambda: loaded)
    rows = doc["tables"]["per_language"]["rows"]
    assert [r["lang"] for r in rows] == LANGS.split(",")
    assert all(r["documents"] >= 4 and r["tokens"] == 96 for r in rows)
    assert sum(r["neurons"] for r in rows) > 0
    pairs = {(r["lang"], r["pair"]) for r in doc["tables"]["overlap"]["rows"]}
    assert ("eng", "plnd-lape") in pairs and ("jpn", "plnd-region") in pairs and ("eng", "lape-region") in pairs
    for r in doc["tables"]["overlap"]["rows"]:
        if r["pair"] == "plnd-lape":
            assert r["expected_random"] == pytest.approx(r["a"] * r["b"] / (3 * 64))
    dd = deactivate(DeactivateConfig(neurons_step="neurons-plnd", max_tokens=40, window=24, generate=False),
                    tmp_path, "plnd-deactivate", loaded=lambda: loaded)
    assert [r["off"] for r in dd["tables"]["matrix"]["rows"]] == LANGS.split(",")
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "PLND" in html
