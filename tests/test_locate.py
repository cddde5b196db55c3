"""``babelscope locate`` on a tiny run directory holding every localizer step: overlaps, causal rows naming their
papers, the report, and bad input."""

from __future__ import annotations

import pytest

from conftest import build_tiny

LANGS = "eng,fra,rus,jpn"


def test_locate_puts_the_localizers_side_by_side(tmp_path):
    from babelscope.errors import BabelscopeError
    from babelscope.locate import LocateConfig
    from babelscope.locate import run as locate
    from babelscope.models.loader import describe
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
    from babelscope.steer.steps import SteerConfig
    from babelscope.steer.steps import run as steer

    with pytest.raises(BabelscopeError, match="none of the localizer steps"):
        locate(LocateConfig(), tmp_path / "empty")
    model, tok = build_tiny("gemma3")
    loaded = (model, tok, describe(model, tok, "tiny", "memory"))
    common = dict(corpus="pud-sample", langs=LANGS, max_tokens=64, window=24, batch_size=4)
    find(NeuronsConfig(**common, top_rate=0.05), tmp_path, "neurons", loaded=lambda: loaded)
    plnd(PlndConfig(**common, top_rate=0.05, consistency=0.5, draws=20), tmp_path, "neurons-plnd",
         loaded=lambda: loaded)
    importance(ImportanceConfig(corpus="pud-sample", langs="eng,jpn", max_tokens=40, window=24, batch_size=2),
               tmp_path, "regions-importance", loaded=lambda: loaded)
    select(SelectConfig(k="0.01", scope="tensor", table_k="0.01"), tmp_path, "regions-select")
    for name, src in (("neurons-deactivate", "neurons"), ("plnd-deactivate", "neurons-plnd")):
        deactivate(DeactivateConfig(neurons_step=src, max_tokens=24, window=24, generate=False), tmp_path, name,
                   loaded=lambda: loaded)
    steer(SteerConfig(corpus="pud-sample", langs=LANGS, targets="fra", layers="2", alphas="2", lape_alphas="1",
                      max_tokens=64, window=24, prompts=3, max_new_tokens=3, ppl_max_tokens=24),
          tmp_path, "steer", loaded=lambda: loaded)
    from babelscope.transfer.pretrain import PretrainConfig
    from babelscope.transfer.pretrain import run as pretrain

    build_tiny("gemma3", tmp_path / "model")
    for name, kw in (("pretrain-none", {}), ("pretrain-random", {"freeze_baseline": "random"})):
        pretrain(PretrainConfig(model=str(tmp_path / "model"), corpus="pud-sample", langs="deu", seq_len=16, samples=8,
                                eval_corpus="udhr-sample", eval_langs="eng", eval_at="0,8", eval_window=32,
                                eval_max_tokens=32, save_model=False, **kw), tmp_path, name)
    doc = locate(LocateConfig(draws=20), tmp_path)
    causal = doc["tables"]["causal"]["rows"]
    tests = {(r["localizer"], r["test"].split(" ")[0]) for r in causal}
    assert {("LAPE neurons", "deactivate"), ("PLND neurons", "deactivate"), ("DiffMean directions", "steer")} <= tests
    assert all(r["paper"] for r in causal)
    frozen = {r["localizer"]: r for r in causal if r["test"].startswith("freeze")}
    assert set(frozen) == {"nothing frozen", "random (0.5)"} and frozen["random (0.5)"]["frozen_share"] > 0.4
    pairs = doc["tables"]["pairs"]["rows"]
    assert {(r["lang"], r["pair"]) for r in pairs} >= {("eng", "plnd ∩ lape"), ("eng", "lape ∩ region"),
                                                       ("jpn", "plnd ∩ region")}
    layers = doc["tables"]["by_layer"]["rows"]
    for localizer in ("lape", "plnd", "region"):  # shares of each set over the layers add up to 1
        for lang in {r["lang"] for r in layers if r["localizer"] == localizer}:
            total = sum(r["value"] for r in layers if r["localizer"] == localizer and r["lang"] == lang)
            assert total == pytest.approx(1.0)
    assert any(r["localizer"] == "diffmean" and r["value"] > 0 for r in layers)
    assert {r["matrix"] for r in doc["tables"]["by_matrix"]["rows"]} >= {"mlp.down_proj", "self_attn.q_proj"}
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "four localizers side by side" in html and "Zhao et al., NeurIPS 2024" in html
