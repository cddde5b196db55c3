"""Linguistic regions on the real default model (Gemma 3 270M): small budgets, real behaviour."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_real_model_regions(default_model, tmp_path):
    from babelscope.models.loader import state_dict_checksum
    from babelscope.models.params import gamma_offset, norm_modules, scored_parameters
    from babelscope.regions import ablate, importance, scan, select
    from babelscope.runs import load_results

    model, tok, info = default_model
    loaded = lambda: default_model  # noqa: E731
    params = scored_parameters(model)
    assert len(params) == 18 * 13 and sum(p.numel() for p in params.values()) == 100_325_376
    norms = norm_modules(model)
    assert len(norms) == 18 * 6 and all(gamma_offset(m) == 1.0 for m in norms.values())  # Gemma: (1 + w)
    before = state_dict_checksum(model)

    importance.run(importance.ImportanceConfig(langs="eng,fra", max_tokens=64, window=128), tmp_path, "imp", loaded)
    select.run(select.SelectConfig(importance_step="imp", k="0.01", scope="tensor", monolingual=False),
               tmp_path, "sel")
    doc = ablate.run(ablate.AblateConfig(select_step="sel", langs="eng,fra,deu,spa", k="0.01", scope="tensor",
                                         max_tokens=48, window=128, generate=False), tmp_path, "abl", loaded)
    ratio = {r["region"]: r["median_ratio"] for r in doc["tables"]["summary"]["rows"]}
    held = {r["region"]: r["median_ratio_heldout_langs"] for r in doc["tables"]["summary"]["rows"]}
    # The paper's finding: removing the 1% most important weights hurts far more than 1% random or least.
    assert ratio["top"] > 2 * ratio["random"] and ratio["top"] > 2 * ratio["bottom"]
    assert held["top"] > 2 * held["random"]  # also on languages not used for importance
    assert ratio["bottom"] < 1.05
    assert state_dict_checksum(model) == before  # every change was undone exactly

    out = scan.run(scan.ScanConfig(langs="eng,fra", layer=1, norm="post_attention_layernorm", dims="97,5",
                                   max_tokens=48, window=128), tmp_path, "scan", loaded)
    rows = {r["dim"]: r for r in out["tables"]["dims"]["rows"]}
    assert rows[97]["broken"] and not rows[5]["broken"]  # a massive-activation dimension breaks the model
    assert rows[97]["act_rank"] < 5
    assert state_dict_checksum(model) == before
    assert load_results(tmp_path / "imp")["results"]["scored_parameters"] == 100_325_376
    assert torch.is_grad_enabled()
