"""``babelscope compare``: runs joined by measurement, language and step from results files only."""

from __future__ import annotations

import pytest

from babelscope.compare import compare
from babelscope.runs import Step
from conftest import run_cli as _cli


def _step(run, name, kind, model, results=None, tables=None, data=None):
    prov = {"data": data} if data else {}
    Step(run, name).write_results(kind, {"model": model}, {"model": model, **(results or {})}, tables or {}, prov)


def _ppl(run, model, bits, sha=None, step="ppl"):
    rows = [{"lang": lang, "bits_per_unit": b} for lang, b in bits.items()]
    _step(run, step, "perplexity", model, {"corpus": "udhr-sample"}, {"per_language": rows},
          {"corpus": "udhr-sample", "sha256": sha or {lang: f"sha-{lang}" for lang in bits}})


def _neurons(run, model, per_layer, width):
    rows = [{"layer": layer, "lang": lang, "neurons": n} for layer, d in enumerate(per_layer) for lang, n in d.items()]
    _step(run, "neurons", "neurons", model, {"neurons_per_layer": width}, {"per_layer": rows})


def test_compare_puts_models_in_columns(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _ppl(a, "model-a", {"eng": 100.0, "fra": 150.0})
    _ppl(b, "model-b", {"eng": 120.0, "fra": 130.0, "deu": 90.0})
    _neurons(a, "model-a", [{"eng": 2, "fra": 4}, {"eng": 6, "fra": 0}], width=100)
    _neurons(b, "model-b", [{"eng": 1}, {"eng": 3}, {"eng": 5}], width=10)
    _step(b, "only-b", "transfer-pretrain", "model-b", {}, {"curve": [{"lang": "eng", "samples": 0, "ppl": 3.0}]})
    result = compare([a, b])
    sections = {s["measure"]: s for s in result["sections"]}
    assert set(sections) == {"bits_per_unit", "lape_share"}  # forgetting: one model only, not a comparison
    bits = {r["lang"]: r for r in sections["bits_per_unit"]["rows"]}
    assert sections["bits_per_unit"]["columns"] == ["model-a", "model-b"]
    assert bits["fra"]["model-a"] == 150.0 and bits["fra"]["model-b"] == 130.0
    assert "model-a" not in bits["deu"] and bits["deu"]["model-b"] == 90.0  # a language of one run only
    shares = sections["lape_share"]["rows"]
    # model a: layer 0 has 2 + 4 language-specific neurons of 100, at relative depth 0.25 of 2 layers
    first_a = next(r for r in shares if "model-a" in r and r["depth"] == 0.25)
    assert first_a["model-a"] == pytest.approx(0.06)
    assert sorted(r["depth"] for r in shares if "model-b" in r) == pytest.approx([1 / 6, 0.5, 5 / 6])


def test_compare_step_writes_tables_figures_and_report(tmp_path):
    from babelscope.compare import CompareConfig, run

    a, b = tmp_path / "a", tmp_path / "b"
    _ppl(a, "model-a", {"eng": 100.0, "fra": 150.0})
    _ppl(b, "model-b", {"eng": 120.0, "fra": 130.0})
    _ppl(b, "model-b", {"eng": 110.0, "fra": 140.0}, step="ppl-again")  # a second step of one kind: own column
    doc = run(CompareConfig(runs=f"{a},{b}"), tmp_path / "out", "compare")
    assert doc["results"]["sections"][0]["columns"] == ["model-a", "model-b [ppl]", "model-b [ppl-again]"]
    folder = tmp_path / "out" / "compare"
    assert (folder / "bits_per_unit.png").stat().st_size > 1000 and (folder / "bits_per_unit.csv").is_file()
    report = (folder / "report.md").read_text()
    assert "## Bits per parallel unit per language" in report and "| lang | model-a |" in report




def test_bad_input(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _ppl(a, "model-a", {"eng": 100.0})
    _neurons(b, "model-b", [{"eng": 1}], width=10)
    code, err = _cli(capsys, "compare", a, b, "-o", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "no measurement in common" in err
    assert "model-a: perplexity" in err and "model-b: neurons" in err
    _ppl(c, "model-c", {"eng": 90.0}, sha={"eng": "other-text"})
    code, err = _cli(capsys, "compare", a, c, "-o", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "different corpora under one name: 'udhr-sample'" in err
    assert str(a / "ppl") in err and str(c / "ppl") in err
    code, err = _cli(capsys, "compare", tmp_path / "missing", a, "-o", tmp_path / "out")
    assert code == 2 and "no such run directory" in err
    assert not (tmp_path / "out" / "compare" / "results.json").exists()


def test_depth_grid_puts_models_of_different_depths_in_one_row():
    from babelscope.compare import depth_grid

    rows = [{"lang": "x", "depth": round(i / 17, 4), "a": float(i)} for i in range(18)]
    rows += [{"lang": "x", "depth": round(i / 23, 4), "b": float(i)} for i in range(24)]
    grid = depth_grid(rows, ["lang", "depth"], ["a", "b"])
    assert [r["depth"] for r in grid] == [round(i / 10, 2) for i in range(11)]
    assert grid[0]["a"] == 0 and grid[0]["b"] == 0 and grid[-1]["a"] == 17 and grid[-1]["b"] == 23
    assert grid[5]["a"] in (8.0, 9.0) and grid[5]["b"] in (11.0, 12.0)  # the layers nearest half the depth
