"""The report says when a view failed (in the report and on stderr), folds long tables, draws the regions'
per-matrix table as heatmaps, lists each model once, and prints ratios with significant digits."""

from __future__ import annotations

import re
from pathlib import Path

from babelscope.report import render_report
from babelscope.report.base import _SECTIONS, register_section
from babelscope.report.markup import column_formatter, html_table
from babelscope.runs import Step, provenance


def test_failed_view_shows_in_report_and_on_stderr(tmp_path: Path, capsys, monkeypatch) -> None:
    from babelscope.report import base

    @register_section("test-raises")
    def broken(doc):
        raise ZeroDivisionError("boom in the view")

    try:
        Step(tmp_path, "a").write_results(kind="test-raises", config={}, results={"x": 1})
        html = render_report(tmp_path).read_text(encoding="utf-8")
    finally:
        _SECTIONS.pop("test-raises", None)
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in html and "boom in the view" in html
    assert "step 'a'" in err and "ZeroDivisionError: boom in the view" in err
    # A section module that fails to import: its kinds fall back to the generic view, and both places say so.
    monkeypatch.setattr(base, "_LOADED", False)
    monkeypatch.setattr(base, "IMPORT_ERRORS", {})
    real = base.importlib.import_module

    def failing(name, *a, **k):
        if name.endswith(".regions"):
            raise ImportError("a broken dependency")
        return real(name, *a, **k)

    monkeypatch.setattr(base.importlib, "import_module", failing)
    Step(tmp_path, "b").write_results(kind="test-unknown-kind", config={}, results={"y": 2})
    html = render_report(tmp_path).read_text(encoding="utf-8")
    err = capsys.readouterr().err
    assert "failed to import" in err and "a broken dependency" in err
    assert "regions: ImportError: a broken dependency" in html


def test_long_tables_fold_and_ratios_keep_significant_digits() -> None:
    rows = [{"lang": f"l{i}", "ratio": 2.184 if i else 1.4e8} for i in range(100)]
    html = html_table(rows)
    first, _, rest = html.partition("<details")
    assert first.count("<tr>") == 1 + 25 and "75 more rows" in rest and rest.count("<tr>") == 1 + 75
    assert "2.184<" in html and "1.400e+08" in html  # a ratio column spanning 8 decades: not "2"
    fmt = column_formatter([1.0, 2.184, 3.43])
    assert [fmt(v) for v in (1.0, 2.184)] == ["1.000", "2.184"]


def _doc_with_model(tmp_path: Path, step: str, model) -> None:
    Step(tmp_path, step).write_results(kind=f"test-{step}", config={}, results={"v": 1},
                                       prov=provenance(model=model))


def test_one_model_column_per_model(tmp_path: Path) -> None:
    full = {"spec": "gemma-3-270m", "name": "gemma-3-270m", "kind": "causal", "checksum": "ab" * 32,
            "parameters": 268_098_176}
    _doc_with_model(tmp_path, "imp", full)
    _doc_with_model(tmp_path, "sel", {"checksum": "ab" * 32, "name": None})  # fewer fields, same weights
    _doc_with_model(tmp_path, "ppl", "gemma-3-270m")  # only the name
    _doc_with_model(tmp_path, "other", {"name": "tiny", "checksum": "cd" * 32})
    html = render_report(tmp_path).read_text(encoding="utf-8")
    models = html[html.index('class="card models"') : html.index('class="card data"')]
    heads = re.findall(r'<th scope="col">([^<]*)</th>', models)
    assert heads == ["gemma-3-270m", "tiny"]
    assert "imp, sel, ppl" in models


def test_regions_per_matrix_heatmap() -> None:
    from babelscope.report.sections.regions import select_section

    per = [{"region": "core", "k": 0.01, "layer": layer, "kind": kind, "kept": 0.99 - 0.01 * layer,
            "scope": "global"} for layer in range(4) for kind in ("self_attn.q_proj.weight", "mlp.up_proj.weight")]
    doc = {"results": {"languages": ["eng", "fra"]},
           "tables": {"regions": {"rows": []}, "per_matrix": {"rows": per}}}
    sec = select_section(doc)
    assert sec.figures == 1 and any("per layer (rows) and matrix type (columns)" in h for h in sec.html)


def test_first_screen_is_the_findings_and_the_models_table_fits_in_chromium(tmp_path: Path) -> None:
    """Headless chromium at 1280 x 900: the findings table starts on the first screen, run information is folded
    below it, and with two models (long checksums and paths) the models table stays inside its card."""
    from test_report import chromium

    long = {"spec": "/a/very/long/path/to/a/further/trained/model/directory/with/many/parts/sft/model",
            "kind": "causal", "checksum": "ef" * 32, "parameters": 268_098_176, "source": "/x/" + "y" * 120}
    _doc_with_model(tmp_path, "ppl", {"name": "gemma-3-270m", "checksum": "ab" * 32, "source": "/c/" + "z" * 90})
    _doc_with_model(tmp_path, "sft", {**long, "name": long["spec"]})
    Step(tmp_path, "ablate").write_results(
        kind="regions-ablation", config={},
        results={"summary": [{"region": "top", "k": 0.01, "median_ratio": 1.0e8},
                             {"region": "random", "k": 0.01, "median_ratio": 1.65}]},
        prov=provenance(model="gemma-3-270m"))
    Step(tmp_path, "pt").write_results(
        kind="transfer-pretrain", config={},
        results={"samples": 16, "targets": ["deu"], "eval_corpus": "udhr",
                 "summary": {"target_ppl_ratio": 1.2, "others_median_ppl_ratio": 1.1}},
        prov=provenance(model="gemma-3-270m"))
    html = render_report(tmp_path).read_text(encoding="utf-8")
    first = html.index('id="findings"')
    assert first < html.index('id="run"') < html.index("<nav")  # findings, then run information, then contents
    assert '<details class="run-info" id="run">' in html  # folded
    rows = re.findall(r'<tr class="finding (\w+)"><th scope="row"><a href="#(step-[^"]+)">', html)
    assert ("yes", "step-ablate") in rows and ("no", "step-pt") in rows
    assert "×1.0e+08" in html and "×1.65" in html and "not reproduced on this model" in html
    probe = """<script>window.addEventListener("load", function () {
      var f = document.getElementById("findings").getBoundingClientRect();
      document.getElementById("run").open = true;
      var t = document.querySelector("table.models"), c = t.closest(".card");
      document.body.dataset.probe = [f.top < window.innerHeight, f.height > 0,
        t.getBoundingClientRect().right <= c.getBoundingClientRect().right + 0.5,
        t.scrollWidth <= c.clientWidth].join(",");
    });</script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    done = chromium(["--window-size=1280,900", "--dump-dom", page.resolve().as_uri()], tmp_path / "profile")
    match = re.search(r'data-probe="([^"]+)"', done.stdout)
    assert match, f"no probe in the dumped page (rc {done.returncode}): {done.stderr[-2000:]}"
    assert match[1] == "true,true,true,true"


def test_frozen_pretraining_finding_compares_with_the_unfrozen_run() -> None:
    """Zhang et al. §5 line: the frozen run's other languages against the unfrozen run's, from the compare table."""
    from babelscope.report.findings import finding_for

    def rows(run, freeze, eng_end):
        return [{"run": run, "freeze": freeze, "samples": s, "lang": lang, "text": "udhr", "target": False,
                 "ppl": ppl} for s, lang, ppl in [(0, "eng", 10.0), (8, "eng", eng_end)]]

    compare = rows("pt", "none", 12.0) + rows("pt-core", "top@0.01", 11.0)
    doc = {"kind": "transfer-pretrain", "step": "pt-core", "tables": {"compare": {"rows": compare}},
           "results": {"samples": 8, "targets": ["deu"], "eval_corpus": "udhr", "target_eval": "pud (held-out)",
                       "freeze": {"file": "m.safetensors", "region": "top", "parameters": 1000},
                       "summary": {"target_ppl_ratio": 0.9, "target_eval_corpus_ppl_ratio": 1.05,
                                   "others_median_ppl_ratio": 1.1}}}
    f = finding_for(doc)
    assert f.reproduced is True and "×1.10 vs ×1.20" in f.ours and "own held-out text" in f.ours
    doc["tables"]["compare"]["rows"] = rows("pt", "none", 10.5) + rows("pt-core", "top@0.01", 11.0)
    assert finding_for(doc).reproduced is False
