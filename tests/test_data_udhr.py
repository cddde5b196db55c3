"""UDHR: the full corpus from the shared data directory and the embedded sample."""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from babelscope.data import open_corpus, resolve_language
from babelscope.data.udhr import UdhrCorpus, parse_declaration, read_index
from babelscope.errors import BabelscopeError
from babelscope.settings import data_dir

ARTICLES = [f"a{i}" for i in range(1, 31)]
REQUIRED = [
    "en", "zh", "fr", "de", "es", "ru", "ar", "ja", "ko", "vi", "pt", "it", "tr", "pl", "cs", "fi", "sv",
    "id", "th", "he", "fa", "bn", "gu", "hi", "ml", "mr", "ne", "sw", "ta", "te", "ur", "el", "uk", "nl",
    "hu", "ro", "am", "ka", "hy", "my", "km", "lo", "si", "pa", "kn", "yo", "ha", "zu", "tl", "ms",
]
HTML = re.compile(r"</?[a-zA-Z][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-z]+);")


@pytest.fixture(scope="module")
def udhr() -> UdhrCorpus:
    corpus = open_corpus("udhr")
    assert isinstance(corpus, UdhrCorpus)
    return corpus


def test_udhr_languages_and_stage_filter(udhr: UdhrCorpus) -> None:
    index = {e["code"]: e for e in read_index(data_dir() / "udhr")}
    langs = udhr.languages()
    assert len(langs) >= 440
    assert udhr.parallel
    for code in langs:
        assert index[udhr.files[code]]["stage"] >= 4
    # the stage-1 stubs (Mongolian script, Baybayin, Tifinagh) are not offered
    low = {e["code"] for e in index.values() if e["stage"] < 4}
    assert low and not low & set(udhr.files.values())
    assert "khk-Mong" not in langs and "khk" in langs


def test_udhr_declaration_choice(udhr: UdhrCorpus) -> None:
    expected = {"cmn-Hans": "cmn_hans", "cmn-Hant": "cmn_hant", "por-BR": "por_BR", "por-PT": "por_PT",
                "deu": "deu_1996", "deu-1901": "deu_1901", "swh": "swh", "spa": "spa", "lvs": "lav",
                "npi": "nep", "ekk": "est", "pes": "pes_1", "prs": "pes_2", "zsm": "mly_latn",
                "srp": "srp_cyrl", "srp-Latn": "srp_latn", "ell": "ell_monotonic", "jpn": "jpn", "fra": "fra",
                "fin": "fin"}
    for code, declaration in expected.items():
        assert udhr.files[code] == declaration, code
    # dialect variants and second translations are not separate languages
    assert not {"cmn_hans_beijing", "062", "063", "042", "jpn_osaka", "067"} & set(udhr.files.values())
    assert udhr.declaration_of("zh") == "cmn_hans"
    assert udhr.declaration_of("pt") == "por_BR"


def test_udhr_units_english(udhr: UdhrCorpus) -> None:
    units = udhr.units("en")
    assert [u.id for u in units] == ["preamble", *ARTICLES]
    assert all(u.lang == "eng" for u in units)
    by_id = {u.id: u.text for u in units}
    assert by_id["a1"] == (
        "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
        "conscience and should act towards one another in a spirit of brotherhood."
    )
    assert by_id["preamble"].startswith("Whereas recognition of the inherent dignity")
    assert len(by_id["preamble"].split("\n")) == 10
    # numbered paragraphs (<ol><li><p>) are joined with newlines; the heading "Article 11" is dropped
    assert by_id["a11"].count("\n") == 1 and "Article" not in by_id["a11"]


def test_udhr_same_ids_across_languages(udhr: UdhrCorpus) -> None:
    ids = {code: [u.id for u in udhr.units(code)] for code in ("eng", "cmn-Hans", "cmn-Hant", "arb", "rus",
                                                                "hin", "swh", "por-PT", "jpn", "fin")}
    assert all(v == ids["eng"] for v in ids.values())


def test_udhr_all_texts_clean(udhr: UdhrCorpus) -> None:
    complete = 0
    for code in udhr.languages():
        units = udhr.units(code)
        assert units, code
        for unit in units:
            assert unit.text.strip() == unit.text and unit.text, (code, unit.id)
            assert not HTML.search(unit.text), (code, unit.id, unit.text[:80])
            assert "&1" not in unit.text
        complete += {u.id for u in units} >= set(ARTICLES)
    assert complete >= 460


def test_udhr_parse_drops_headings(tmp_path: Path) -> None:
    page = tmp_path / "x.html"
    page.write_text(
        '<html lang="xx"><head><title>T</title></head><body><h1>Title</h1>'
        "<header><h2>Preamble</h2><p>First &amp; <b>bold</b>\n  text.</p><p>Second.</p></header>"
        '<article data-number="2"><h2>Article 2</h2><ol><li><p>One.</p></li><li>Two.</li></ol></article>'
        '<article data-number="1"><h1>Heading</h1><p>&#x26;1</p><p>Only.</p></article></body></html>',
        encoding="utf-8",
    )
    expected = {"preamble": "First & bold text.\nSecond.", "a1": "Only.", "a2": "One.\nTwo."}
    assert parse_declaration(page) == expected


def test_udhr_directory_specs(udhr: UdhrCorpus) -> None:
    root = data_dir() / "udhr"
    for spec in (str(root), f"udhr:{root}"):
        corpus = open_corpus(spec)
        assert corpus.languages() == udhr.languages()
        assert corpus.checksum("fr") == udhr.checksum("fr")


def test_udhr_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BABELSCOPE_DATA", str(tmp_path))
    with pytest.raises(BabelscopeError, match=r"BABELSCOPE_DATA.*udhr-sample"):
        open_corpus("udhr")
    with pytest.raises(BabelscopeError, match=r"index.json"):
        open_corpus(f"udhr:{tmp_path}")
    # the embedded sample needs no data directory
    sample = open_corpus("udhr-sample")
    assert len(sample.units("en")) == 4


def test_sample_contents(udhr: UdhrCorpus) -> None:
    sample = open_corpus("udhr-sample")
    langs = sample.languages()
    assert len(langs) >= 45
    assert sample.parallel
    for code in REQUIRED:
        assert sample.match_language(code) == resolve_language(code).code, code
    assert "cmn-Hans" in langs and "por-BR" in langs and "arb" in langs
    for code in langs:
        units = sample.units(code)
        assert [u.id for u in units] == ["a1", "a2", "a3", "a4"], code
        # the sample is exactly the full corpus' text
        full = {u.id: u.text for u in udhr.units(code)}
        assert all(full[u.id] == u.text for u in units), code


def test_sample_files() -> None:
    embedded = resources.files("babelscope.data").joinpath("embedded")
    raw = embedded.joinpath("udhr_sample.jsonl.gz").read_bytes()
    assert len(raw) < 300_000
    rows = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines()]
    assert all(set(r) >= {"id", "lang", "text"} for r in rows)
    attribution = embedded.joinpath("ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "Titus Wormer" in attribution and "MIT" in attribution and "6.0.0" in attribution
    licence = embedded.joinpath("LICENSE-udhr").read_text(encoding="utf-8")
    assert "MIT" in licence and "Titus Wormer" in licence
