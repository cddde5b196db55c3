"""Tests of the HTML report: sections, tables, figures, errors, and rendering in headless Chromium."""

from __future__ import annotations

import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from babelscope.errors import BabelscopeError
from babelscope.report import Section, register_section, render_report
from babelscope.report.base import _SECTIONS
from babelscope.report.markup import column_formatter, html_table
from babelscope.runs import Step

# (code, name, script, family, bits per UDHR article, characters per token)
LANGUAGES = [
    ("eng-Latn", "English", "Latn", "Indo-European", 162, 4.4),
    ("fra-Latn", "French", "Latn", "Indo-European", 171, 3.9),
    ("deu-Latn", "German", "Latn", "Indo-European", 175, 3.8),
    ("spa-Latn", "Spanish", "Latn", "Indo-European", 168, 4.0),
    ("por-Latn", "Portuguese", "Latn", "Indo-European", 173, 3.8),
    ("ita-Latn", "Italian", "Latn", "Indo-European", 174, 3.8),
    ("nld-Latn", "Dutch", "Latn", "Indo-European", 185, 3.5),
    ("pol-Latn", "Polish", "Latn", "Indo-European", 198, 3.1),
    ("ces-Latn", "Czech", "Latn", "Indo-European", 205, 2.9),
    ("tur-Latn", "Turkish", "Latn", "Turkic", 214, 3.0),
    ("vie-Latn", "Vietnamese", "Latn", "Austroasiatic", 196, 3.2),
    ("ind-Latn", "Indonesian", "Latn", "Austronesian", 183, 3.7),
    ("swh-Latn", "Swahili", "Latn", "Niger-Congo", 251, 2.8),
    ("yor-Latn", "Yoruba", "Latn", "Niger-Congo", 342, 2.0),
    ("fin-Latn", "Finnish", "Latn", "Uralic", 222, 3.0),
    ("hun-Latn", "Hungarian", "Latn", "Uralic", 229, 2.9),
    ("rus-Cyrl", "Russian", "Cyrl", "Indo-European", 181, 3.4),
    ("ukr-Cyrl", "Ukrainian", "Cyrl", "Indo-European", 199, 3.0),
    ("bul-Cyrl", "Bulgarian", "Cyrl", "Indo-European", 207, 2.9),
    ("kaz-Cyrl", "Kazakh", "Cyrl", "Turkic", 268, 2.2),
    ("ell-Grek", "Greek", "Grek", "Indo-European", 204, 2.7),
    ("arb-Arab", "Arabic, Standard", "Arab", "Afro-Asiatic", 215, 2.8),
    ("pes-Arab", "Persian, Iranian", "Arab", "Indo-European", 226, 2.9),
    ("urd-Arab", "Urdu", "Arab", "Indo-European", 244, 2.6),
    ("heb-Hebr", "Hebrew", "Hebr", "Afro-Asiatic", 221, 2.5),
    ("hin-Deva", "Hindi", "Deva", "Indo-European", 210, 2.6),
    ("mar-Deva", "Marathi", "Deva", "Indo-European", 266, 1.9),
    ("npi-Deva", "Nepali", "Deva", "Indo-European", 274, 1.8),
    ("ben-Beng", "Bengali", "Beng", "Indo-European", 252, 2.0),
    ("tam-Taml", "Tamil", "Taml", "Dravidian", 281, 1.7),
    ("tel-Telu", "Telugu", "Telu", "Dravidian", 289, 1.6),
    ("tha-Thai", "Thai", "Thai", "Kra-Dai", 236, 2.4),
    ("kat-Geor", "Georgian", "Geor", "Kartvelian", 297, 1.6),
    ("hye-Armn", "Armenian", "Armn", "Indo-European", 301, 1.7),
    ("amh-Ethi", "Amharic", "Ethi", "Afro-Asiatic", 356, 1.3),
    ("cmn-Hans", "Chinese, Mandarin (Simplified)", "Hans", "Sino-Tibetan", 187, 1.3),
    ("cmn-Hant", "Chinese, Mandarin (Traditional)", "Hant", "Sino-Tibetan", 196, 1.2),
    ("jpn-Jpan", "Japanese", "Jpan", "Japonic", 203, 1.3),
    ("kor-Hang", "Korean", "Hang", "Koreanic", 209, 1.5),
    ("khm-Khmr", "Khmer", "Khmr", "Austroasiatic", 331, 1.4),
]
BYTES_PER_CHAR = {
    "Latn": 1.05,
    "Cyrl": 1.9,
    "Grek": 1.9,
    "Arab": 1.85,
    "Hebr": 1.85,
    "Armn": 1.9,
    "Geor": 2.8,
}
CHARS_PER_UNIT = {"Hans": 95, "Hant": 95, "Jpan": 130, "Hang": 190}
UNITS = 8


def perplexity_rows(parallel: bool = True) -> list[dict]:
    """Plausible per-language rows as the perplexity step writes them."""
    rng = random.Random(7)
    rows = []
    for lang, name, script, family, bits_unit, chars_per_token in LANGUAGES:
        chars = int(UNITS * CHARS_PER_UNIT.get(script, 520) * rng.uniform(0.9, 1.15))
        nbytes = int(chars * BYTES_PER_CHAR.get(script, 2.9))
        tokens = int(chars / chars_per_token)
        nll = bits_unit * rng.uniform(0.97, 1.03) * UNITS * math.log(2)
        rows.append(
            {
                "lang": lang, "name": name, "script": script, "family": family, "units": UNITS,
                "tokens": tokens, "bytes": nbytes, "chars": chars, "nll": round(nll, 3),
                "ppl": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / nbytes,
                "bits_per_token": nll / math.log(2) / tokens,
                "bits_per_unit": nll / math.log(2) / UNITS if parallel else None,
            }
        )  # fmt: skip
    return rows


PROVENANCE = {
    "created": "2025-05-01T10:00:00+00:00",
    "versions": {"python": "3.11.2", "babelscope": "0.1.0", "torch": "2.6.0", "transformers": "5.0.0"},
    "platform": "Linux-6.1-x86_64-with-glibc2.36",
    "argv": ["/usr/bin/babelscope", "ppl", "--corpus", "udhr-sample", "--out", "runs/demo"],
    "model": {
        "spec": "gemma-3-270m", "name": "gemma-3-270m", "kind": "causal", "model_type": "gemma3_text",
        "parameters": 268098176, "layers": 18, "hidden_size": 640, "vocab_size": 262144,
        "checksum": "9f2c4e1d" * 8, "source": "/root/.cache/babelscope/gemma-3-270m", "dtype": "float32",
    },
    "data": {"corpus": "udhr-sample", "sha256": "ab12cd34" * 8, "languages": 40},
    "seconds": 185.4,
}  # fmt: skip


def write_ppl(
    run_dir: Path, step: str = "ppl", parallel: bool = True, created: str | None = None
) -> list[dict]:
    rows = perplexity_rows(parallel)
    prov = {**PROVENANCE, "created": created or PROVENANCE["created"]}
    Step(run_dir, step).write_results(
        kind="perplexity",
        config={
            "model": "gemma-3-270m",
            "corpus": "udhr-sample",
            "window": 512,
            "batch_size": 8,
            "languages": "all",
            "dtype": "float32",
        },  # fmt: skip
        results={
            "model": "gemma-3-270m",
            "corpus": "udhr-sample",
            "window": 512,
            "parallel": parallel,
            "summary": {
                "languages": len(rows),
                "tokens": sum(r["tokens"] for r in rows),
                "bytes": sum(r["bytes"] for r in rows),
                "mean_bits_per_byte": 0.91,
            },
        },  # fmt: skip
        tables={"per_language": rows},
        prov=prov,
    )
    return rows


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run with a perplexity step and a step of a kind that has no section yet."""
    run = tmp_path / "demo-run"
    write_ppl(run)
    Step(run, "regions").write_results(
        kind="future-analysis",
        config={"model": "gemma-3-270m", "method": "ablation", "note": "a<b> & c"},
        results={"layers": 18, "top": {"layer": 11, "score": 0.4213}, "languages": ["eng-Latn", "rus-Cyrl"]},
        tables={"per_layer": [{"layer": i, "importance": 0.01 * i * i, "heads": 4} for i in range(18)]},
        prov={**PROVENANCE, "created": "2025-05-01T11:00:00+00:00"},
    )
    return run


def section_html(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    end = html.find("<section", start)
    return html[start : end if end != -1 else len(html)]


# ------------------------------------------------------------------------------------------------ content
def test_report_has_header_sections_tables_and_figures(run_dir: Path) -> None:
    out = render_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not list(run_dir.glob(".report.html.*"))  # written atomically, no temporary left
    # self-contained: no external stylesheets, scripts or images
    assert "<link" not in html and 'src="http' not in html and "<style>" in html
    # header: model, data checksum, versions, table of contents
    header = html[: html.index("</header>")]
    for text in ["gemma-3-270m", "268,098,176", "gemma3_text", "udhr-sample", "ab12cd34ab12", "transformers",
                 "5.0.0", "Linux-6.1"]:  # fmt: skip
        assert text in header, text
    assert 'href="#step-ppl"' in html and 'href="#step-regions"' in html
    assert "section-error" not in html

    ppl = section_html(html, "step-ppl")
    assert "Perplexity of gemma-3-270m on udhr-sample" in ppl
    assert ppl.count("<img ") == 2 and html.count("<img ") == 2
    img = r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}" width="\d+" height="\d+" alt="[^"]{20,}"'
    assert len(re.findall(img, ppl)) == 2
    assert ppl.count("<figcaption>") == 2
    assert "grouped by script" in ppl and "log scale" in ppl
    assert "exp(mean token NLL)" in ppl and "ln 2" in ppl and "bits / unit" in ppl
    # the table lists all 40 languages, sorted by bits per unit
    langs = re.findall(r"<tr><td>([a-z]{3}-[A-Za-z]{4})</td>", ppl)
    rows = perplexity_rows()
    assert langs == [r["lang"] for r in sorted(rows, key=lambda r: r["bits_per_unit"])]
    assert "full table: <code>per_language.csv</code>" in ppl
    assert "<summary>configuration</summary>" in ppl and "window: 512" in ppl
    assert "took 3 min 05 s" in ppl  # the step's wall time from its provenance

    generic = section_html(html, "step-regions")
    assert "future-analysis" in generic and "No dedicated view" in generic
    assert generic.count("<tr><td") >= 18 and "per layer" in generic and "<img" not in generic
    assert "top.score" in generic and "0.4213" in generic
    assert "a&lt;b&gt; &amp; c" in generic and "a<b>" not in html  # configuration is escaped
    assert html.count("<summary>configuration</summary>") == 2


def test_not_parallel_falls_back_to_bits_per_byte(tmp_path: Path) -> None:
    write_ppl(tmp_path, parallel=False)
    html = render_report(tmp_path, out=tmp_path / "elsewhere" / "r.html").read_text(encoding="utf-8")
    assert "bits per UTF-8 byte" in html and "not parallel" in html
    assert "bits / unit" not in html
    assert html.count("<img ") == 2


def test_group_by_family_option(tmp_path: Path) -> None:
    write_ppl(tmp_path)
    html = render_report(tmp_path, options={"group_by": "family"}).read_text(encoding="utf-8")
    assert "grouped by family" in html and "grouped by script" not in html


def test_two_runs_of_a_kind_get_distinct_sections(tmp_path: Path) -> None:
    write_ppl(tmp_path, "ppl-a", created="2025-05-01T10:00:00+00:00")
    write_ppl(tmp_path, "ppl-b", created="2025-05-01T09:00:00+00:00")
    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert html.count("<img ") == 4
    assert html.index('id="step-ppl-b"') < html.index('id="step-ppl-a"')  # in the order they were run


@pytest.mark.parametrize("make", [True, False])
def test_no_results_is_an_error(tmp_path: Path, make: bool) -> None:
    run = tmp_path / "empty-run"
    if make:
        (run / "ppl").mkdir(parents=True)
    with pytest.raises(BabelscopeError) as info:
        render_report(run)
    assert str(info.value) == f"{run}: no results.json in any step folder; run a step first"
    assert not (run / "report.html").exists()


def test_registered_section_is_used_and_failures_fall_back(tmp_path: Path) -> None:
    @register_section("test-custom")
    def custom(doc: dict) -> Section:
        return Section("Custom view").text(f"answer {doc['results']['answer']} <ok>")

    @register_section("test-broken")
    def broken(doc: dict) -> Section:
        raise KeyError("missing")

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_section("test-custom")(broken)
        Step(tmp_path, "c").write_results(kind="test-custom", config={}, results={"answer": 42})
        Step(tmp_path, "b").write_results(kind="test-broken", config={}, results={"x": 1},
                                          tables={"t": [{"a": 1, "b": "z"}]})  # fmt: skip
        html = render_report(tmp_path).read_text(encoding="utf-8")
    finally:
        _SECTIONS.pop("test-custom", None)
        _SECTIONS.pop("test-broken", None)
    assert "Custom view" in html and "answer 42 &lt;ok&gt;" in html
    broken_html = section_html(html, "step-b")
    assert "section-error" in broken_html and "KeyError" in broken_html and "<h3>t</h3>" in broken_html


def test_number_formatting() -> None:
    fmt = column_formatter([0.97, 3.771, None])
    assert fmt is not None and [fmt(0.97), fmt(3.771), fmt(None)] == [
        "0.970",
        "3.771",
        '<span class="na">—</span>',
    ]
    fmt = column_formatter([812.345, 1204.0])
    assert fmt is not None and fmt(812.345) == "812" and fmt(1204.0) == "1,204"
    fmt = column_formatter([13.71, 402.9])
    assert fmt is not None and fmt(13.71) == "13.7"
    ints = column_formatter([21000, 4])
    assert ints is not None and ints(21000) == "21,000"
    assert column_formatter(["Latn", 1]) is None
    table = html_table([{"lang": "eng-Latn", "ppl": 13.7}], labels={"ppl": "perplexity"})
    assert '<th scope="col" class="num">perplexity</th>' in table and 'data-v="13.7"' in table


def test_figure_helpers_return_fig_and_ax_and_embed() -> None:
    import numpy as np

    from babelscope.report import figures

    rng = np.random.default_rng(0)
    langs = [f"l{i}" for i in range(8)]
    made = [
        figures.grouped_bar(
            [3, 1, 2, None, 5], list("abcde"), ["x", "x", "y", "y", "z"], ylabel="bits", log=True
        ),
        figures.heatmap(rng.random((8, 8)), langs, cluster=True, cbar_label="similarity"),
        figures.heatmap(rng.random((5, 9)), langs[:5], [str(i) for i in range(9)], cluster=True),
        figures.layer_lines(
            {"eng": [0.1, 0.5, 0.9], "rus": [0.2, None, 0.7]}, ylabel="score", highlight=["eng"]
        ),
        figures.labeled_scatter([1, 2, 3], [2, 1, 3], ["a", "b", "c"], groups=["p", "q", "p"], diagonal=True),
    ]
    for fig, ax in made:
        assert ax.figure is fig
        html = figures.fig_to_img_html(fig, "A caption <b>", alt="alt text")
        assert html.startswith('<figure><img src="data:image/png;base64,') and 'alt="alt text"' in html
        assert "<figcaption>A caption &lt;b&gt;</figcaption>" in html
    assert figures.cluster_order(np.array([[0, 0], [10, 10], [0.1, 0], [10, 9]])) in (
        [0, 2, 1, 3], [2, 0, 1, 3], [0, 2, 3, 1], [2, 0, 3, 1], [1, 3, 0, 2], [3, 1, 0, 2], [1, 3, 2, 0],
        [3, 1, 2, 0],
    )  # fmt: skip

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    figures.fig_to_img_html(fig, "pyplot figure")
    assert fig.number not in plt.get_fignums()  # closed


def test_import_is_cheap() -> None:
    code = (
        "import sys, babelscope.report; assert 'matplotlib' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ browser
def find_chromium() -> str:
    for name in ["chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"]:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed, so the report cannot be checked in a browser; run `make test` "
                "(which installs it) or `apt-get install -y chromium`")  # fmt: skip


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
    ]  # fmt: skip
    return subprocess.run([find_chromium(), *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    report = render_report(run_dir)
    done = chromium(["--dump-dom", report.resolve().as_uri()], tmp_path / "profile")
    match = re.search(r'<body[^>]*data-figures="(\d+)/(\d+)"', done.stdout)
    assert match, f"no figure count in the dumped page (rc {done.returncode}): {done.stderr[-2000:]}"
    loaded, total = int(match[1]), int(match[2])
    assert loaded == total == 2
    assert "Perplexity of gemma-3-270m" in done.stdout and "Contents" in done.stdout


def test_matrix_of_long_rows_and_table_lookups() -> None:
    from babelscope.report.base import matrix_of, table_file, table_rows

    rows = [{"lang": "eng", "layer": 2, "n": 5}, {"lang": "fra", "layer": 0, "n": 1},
            {"lang": "eng", "layer": 0, "n": 3}, {"lang": "deu", "layer": 1, "n": None}]
    langs, layers, M = matrix_of(rows, "lang", "layer", "n", col_labels=[0, 1, 2])
    assert langs == ["eng", "fra", "deu"] and layers == [0, 1, 2]
    assert M[0] == [3.0, M[0][1], 5.0] and math.isnan(M[0][1])  # no row for (eng, 1): NaN
    assert M[1][0] == 1.0 and all(math.isnan(v) for v in M[2])  # a None value is left out
    pairs = [{"a": "eng", "b": "fra", "j": 0.5}, {"a": "fra", "b": "deu", "j": 0.25}, {"a": "eng", "b": "xx", "j": 9}]
    labels, same, S = matrix_of(pairs, "a", "b", "j", row_labels=["eng", "fra", "deu"], symmetric=True,
                                diagonal=1.0)
    assert labels == same == ["eng", "fra", "deu"]  # the pair outside the given labels is dropped
    assert S[0][1] == S[1][0] == 0.5 and S[1][2] == S[2][1] == 0.25 and S[0][0] == S[2][2] == 1.0
    assert math.isnan(S[0][2])
    _, kinds, K = matrix_of(rows[:1], "layer", lambda r: r["lang"].upper(), lambda r: 2 * r["n"])
    assert kinds == ["ENG"] and K == [[10.0]]
    doc = {"tables": {"t": {"rows": [{"x": 1}], "file": "t.csv"}}}
    assert table_rows(doc, "t") == [{"x": 1}] and table_file(doc, "t") == "t.csv"
    assert table_rows(doc, "missing") == [] and table_file({}, "t") is None
