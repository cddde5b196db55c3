"""Corpus specs, text/jsonl corpora, units, checksums and the id-based split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelscope.data import Unit, open_corpus, split_units
from babelscope.errors import BabelscopeError
from babelscope.runs import text_sha256


def test_unit_hash_and_equality() -> None:
    a = Unit("a1", "eng", "text", {"split": "test"})
    b = Unit("a1", "eng", "text", {"split": "dev", "extra": [1, 2]})
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Unit("a2", "eng", "text")}) == 2
    with pytest.raises(AttributeError):
        a.text = "x"  # type: ignore[misc]


def test_txt_file(tmp_path: Path) -> None:
    path = tmp_path / "news.txt"
    path.write_text("Bonjour le monde.\n\n  Deuxième ligne.  \n", encoding="utf-8")
    corpus = open_corpus(f"{path}#lang=fra")
    assert corpus.languages() == ["fra"] and not corpus.parallel
    units = corpus.units("fr")
    assert [(u.id, u.lang, u.text) for u in units] == [("L1", "fra", "Bonjour le monde."),
                                                      ("L3", "fra", "Deuxième ligne.")]
    assert units[1].meta["source"] == f"{path}:3"
    with pytest.raises(BabelscopeError, match=r"news\.txt#lang=CODE"):
        open_corpus(str(path))
    named = tmp_path / "deu.txt"
    named.write_text("Hallo Welt\n", encoding="utf-8")
    assert open_corpus(str(named)).languages() == ["deu"]
    with pytest.raises(BabelscopeError, match=r"not in corpus .*deu\.txt.*1 languages: deu"):
        open_corpus(str(named)).units("fr")


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    rows = [{"id": "q1", "lang": "en", "text": "One."},
            {"id": "q1", "lang": "zh", "text": "一。", "label": 3},
            {"id": "q2", "lang": "en", "text": "Two."},
            {"id": "q2", "lang": "zh-Hans", "text": "二。"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    corpus = open_corpus(str(path))
    assert corpus.languages() == ["cmn-Hans", "eng"] and corpus.parallel
    zh = corpus.units("Chinese")
    assert [u.id for u in zh] == ["q1", "q2"] and zh[0].meta["label"] == 3
    # defaults: lang from the spec, ids from line numbers
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    units = open_corpus(f"{plain}#lang=sw").units("swh")
    assert [(u.id, u.lang) for u in units] == [("L1", "swh"), ("L3", "swh")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "lang": "en"}\n{"text": 5, "lang": "en"}\n', encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"bad\.jsonl:2: expected an object with a string 'text'"):
        open_corpus(str(bad))
    bad.write_text('{"text": "a", "lang": "en"}\n{oops\n', encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"bad\.jsonl:2: not valid JSON"):
        open_corpus(str(bad))
    bad.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"bad\.jsonl:1: no 'lang' field"):
        open_corpus(str(bad))
    bad.write_text('{"id": 1, "text": "a", "lang": "en"}\n{"id": 1, "text": "b", "lang": "en"}\n',
                   encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"unit id '1' appears twice"):
        open_corpus(str(bad))


def test_text_directory(tmp_path: Path) -> None:
    (tmp_path / "eng.txt").write_text("Hello.\nWorld.\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_text("Bonjour.\nMonde.\n", encoding="utf-8")
    corpus = open_corpus(str(tmp_path))
    assert corpus.languages() == ["eng", "fra"] and corpus.parallel
    assert [u.id for u in corpus.units("fra")] == ["L1", "L2"]
    assert not open_corpus(f"{tmp_path}#parallel=no").parallel
    (tmp_path / "de.txt").write_text("Hallo.\n", encoding="utf-8")
    assert not open_corpus(str(tmp_path)).parallel  # line counts differ


@pytest.mark.parametrize(("spec", "message"), [
    ("nonsense", r"unknown corpus 'nonsense': use udhr-sample, udhr"),
    ("missing/file.txt", r"missing/file\.txt not found"),
    ("pud#colour=red", r"bad option 'colour=red'"),
    ("pud#parallel=maybe", r"parallel='maybe'"),
    ("hf:", r"give a dataset name"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(BabelscopeError, match=message):
        open_corpus(spec)


def test_hf_error_path() -> None:
    # without the optional `datasets` package (or offline) the user is told what to do
    pattern = r"(cannot load|needs the Hugging Face).*'hf:babelscope/no-such-dataset:cfg'|babelscope\[hf\]"
    with pytest.raises(BabelscopeError, match=pattern):
        open_corpus("hf:babelscope/no-such-dataset:cfg")


def test_checksum() -> None:
    sample = open_corpus("udhr-sample")
    english = sample.checksum("en")
    assert english == text_sha256(u.text for u in sample.units("eng"))
    assert english == open_corpus("udhr-sample").checksum("eng")
    assert english != sample.checksum("fr")
    assert len(english) == 64


def test_split_consistent_across_languages() -> None:
    pud = open_corpus("pud")
    splits = {code: split_units(pud.units(code), 0.5, seed=0) for code in ("eng", "deu", "isl", "cmn-Hant")}
    train_ids = {code: {u.id for u in train} for code, (train, _) in splits.items()}
    test_ids = {code: {u.id for u in test} for code, (_, test) in splits.items()}
    assert all(ids == train_ids["eng"] for ids in train_ids.values())
    assert all(ids == test_ids["eng"] for ids in test_ids.values())
    assert not train_ids["eng"] & test_ids["eng"]
    assert 400 <= len(test_ids["eng"]) <= 600
    # order is kept; deterministic; another seed gives another split
    train, test = splits["eng"]
    order = [u.id for u in pud.units("eng")]
    assert [u.id for u in train] == [i for i in order if i in train_ids["eng"]]
    assert split_units(pud.units("eng"), 0.5, seed=0) == (train, test)
    assert {u.id for u in split_units(pud.units("eng"), 0.5, seed=1)[1]} != test_ids["eng"]
    small = split_units(pud.units("eng"), 0.1, seed=0)[1]
    assert 50 <= len(small) <= 150


def test_split_edges() -> None:
    units = open_corpus("udhr-sample").units("en")
    assert split_units(units, 0.0) == (units, [])
    assert split_units(units, 1.0) == ([], units)
    with pytest.raises(BabelscopeError, match="test_fraction 1.5"):
        split_units(units, 1.5)


def test_split_and_normalize_options(tmp_path: Path) -> None:
    """``#split=`` keeps those UD splits (it was silently ignored: every split was read) and ``#normalize=NFC``
    composes text (the UDHR's Vietnamese is decomposed: NFD 'ệ' is three code points)."""
    import unicodedata

    sentence = "# sent_id = {sid}\n# text = Việt\n1\tViệt\tViệt\tPROPN\t_\t_\t0\troot\t_\t_\n\n"
    tb = tmp_path / "UD_Vietnamese-X"
    tb.mkdir()
    for split, n in (("train", 3), ("dev", 2), ("test", 1)):
        text = "".join(sentence.format(sid=f"{split}-{i}") for i in range(n))
        (tb / f"vi_x-ud-{split}.conllu").write_text(unicodedata.normalize("NFD", text), encoding="utf-8")
    assert len(open_corpus(f"ud:{tb}").units("vie")) == 6
    kept = open_corpus(f"ud:{tb}#split=train+dev").units("vie")
    assert sorted(u.meta["split"] for u in kept) == ["dev"] * 2 + ["train"] * 3
    raw = open_corpus(f"ud:{tb}#split=test").units("vie")[0].text
    nfc = open_corpus(f"ud:{tb}#split=test&normalize=NFC").units("vie")[0].text
    assert not unicodedata.is_normalized("NFC", raw) and nfc == unicodedata.normalize("NFC", raw) == "Việt"
    corpus = open_corpus(f"ud:{tb}#normalize=nfc")
    assert corpus.name == f"ud:{tb}#normalize=nfc" and corpus.checksum("vie") != open_corpus(f"ud:{tb}").checksum("vie")
    with pytest.raises(BabelscopeError, match="no units in split 'valid'"):
        open_corpus(f"ud:{tb}#split=valid")
    with pytest.raises(BabelscopeError, match="normalize='NFX'"):
        open_corpus(f"ud:{tb}#normalize=NFX")


def test_embedded_pud_sample_is_a_corpus_for_every_reader() -> None:
    """``pud-sample`` opens through ``open_corpus`` (training text, vocabulary text, syntax): six parallel PUD
    languages of 60 sentences with shared sentence ids, and the options apply to it like to any UD corpus."""
    corpus = open_corpus("pud-sample")
    assert set(corpus.languages()) == {"eng", "deu", "fra", "rus", "jpn", "tur"}
    eng, deu = corpus.units("eng"), corpus.units("deu")
    assert len(eng) == len(deu) == 60 and [u.id for u in eng] == [u.id for u in deu]
    assert len(open_corpus("pud-sample#split=test").units("eng")) == 60
    with pytest.raises(BabelscopeError, match="no units in split"):
        open_corpus("pud-sample#split=train")
