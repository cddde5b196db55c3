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
