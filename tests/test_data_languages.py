"""The language registry: resolution of codes, tags and names, defaults, coverage, scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from babelscope.data import (
    DEFAULTS,
    Language,
    all_languages,
    open_corpus,
    parse_languages,
    resolve_language,
    script_of_text,
)
from babelscope.data.languages import refine_by_script
from babelscope.errors import BabelscopeError
from babelscope.settings import data_dir

# every default documented in the brief and in languages.DEFAULTS' comment
DOCUMENTED_DEFAULTS = [
    ("zh", "cmn-Hans"), ("zho", "cmn-Hans"), ("chi", "cmn-Hans"), ("Chinese", "cmn-Hans"),
    ("cmn", "cmn-Hans"),
    ("ar", "arb"), ("ara", "arb"),
    ("sw", "swh"), ("swa", "swh"),
    ("ne", "npi"), ("nep", "npi"),
    ("fa", "pes"), ("fas", "pes"), ("per", "pes"),
    ("pt", "por-BR"), ("por", "por-BR"),
    ("ms", "zsm"), ("msa", "zsm"),
    ("et", "ekk"), ("est", "ekk"),
    ("lv", "lvs"), ("lav", "lvs"),
    ("uz", "uzn"), ("uzb", "uzn"),
    ("no", "nob"), ("nor", "nob"),
    ("az", "azj"), ("mn", "khk"), ("ku", "kmr"), ("ps", "pbu"), ("qu", "quz"), ("sq", "als"), ("yi", "ydd"),
    ("om", "gaz"), ("mg", "plt"), ("gn", "gug"), ("ay", "ayr"), ("ak", "twi"), ("ff", "fuv"), ("iu", "ike"),
    ("kr", "knc"), ("kg", "kng"), ("za", "zyb"), ("sc", "src"), ("oj", "ojb"), ("or", "ory"), ("kv", "kpv"),
]


@pytest.mark.parametrize(("text", "code"), DOCUMENTED_DEFAULTS)
def test_documented_defaults(text: str, code: str) -> None:
    assert resolve_language(text).code == code


def test_every_default_target_exists() -> None:
    codes = {lang.code for lang in all_languages()}
    assert set(DEFAULTS.values()) <= codes


@pytest.mark.parametrize(("text", "code"), [
    ("en", "eng"), ("eng", "eng"), ("English", "eng"), ("ENGLISH", "eng"), ("  english ", "eng"),
    ("Mandarin Chinese", "cmn-Hans"), ("mandarin", "cmn-Hans"), ("Swahili", "swh"), ("Portuguese", "por-BR"),
    ("Arabic", "arb"), ("Persian", "pes"), ("Farsi", "pes"), ("Malay", "zsm"), ("Norwegian", "nob"),
    ("Greek", "ell"), ("German", "deu"), ("Japanese", "jpn"), ("Korean", "kor"), ("Icelandic", "isl"),
    ("Cantonese", "yue"), ("Filipino", "tgl"), ("Bangla", "ben"), ("Quechua", "quz"),
])
def test_names_and_codes(text: str, code: str) -> None:
    assert resolve_language(text).code == code


@pytest.mark.parametrize(("text", "code"), [
    ("cmn-Hans", "cmn-Hans"), ("CMN-hans", "cmn-Hans"), ("zh-Hans", "cmn-Hans"), ("zh-Hant", "cmn-Hant"),
    ("cmn-Hant", "cmn-Hant"), ("zh-TW", "cmn-Hant"), ("zh-HK", "cmn-Hant"), ("zh-CN", "cmn-Hans"),
    ("zho_Hant", "cmn-Hant"), ("por-BR", "por-BR"), ("pt-BR", "por-BR"), ("pt-PT", "por-PT"),
    ("pt_pt", "por-PT"), ("fra_Latn", "fra"), ("arb_Arab", "arb"), ("en-US", "eng"), ("en-GB", "eng"),
    ("es-419", "spa"), ("sr", "srp"), ("sr-Cyrl", "srp"), ("sr-Latn", "srp-Latn"), ("de-1901", "deu-1901"),
    ("uz-Cyrl", "uzn-Cyrl"), ("ms-Arab", "zsm-Arab"), ("ger", "deu"), ("fre", "fra"), ("iw", "heb"),
])
def test_tags(text: str, code: str) -> None:
    assert resolve_language(text).code == code


def test_language_fields() -> None:
    zh = resolve_language("zh")
    assert zh == Language("cmn-Hans", "cmn", "Chinese (Simplified)", "Hans", None, "zh", "Sino-Tibetan")
    pt = resolve_language("pt-PT")
    assert (pt.iso639_3, pt.variant, pt.iso639_1, pt.script) == ("por", "PT", "pt", "Latn")
    assert str(resolve_language("en")) == "eng"
    assert resolve_language(zh) is zh


@pytest.mark.parametrize("text", ["xx", "Klingon", "", "e n", "qqq"])
def test_unknown_language(text: str) -> None:
    with pytest.raises(BabelscopeError) as err:
        resolve_language(text)
    assert str(err.value) == (
        f"unknown language {text!r}: give an ISO 639-1 or 639-3 code or an English name "
        "(run `babelscope langs` to list them)"
    )


def test_unknown_forms() -> None:
    with pytest.raises(BabelscopeError, match=r"no AO form of por .*por-BR, por-PT"):
        resolve_language("pt-AO")
    with pytest.raises(BabelscopeError, match=r"no Cyrl form of eng"):
        resolve_language("eng-Cyrl")


def test_parse_languages() -> None:
    assert [x.code for x in parse_languages("en, zh,eng ,English,fr,")] == ["eng", "cmn-Hans", "fra"]
    assert [x.code for x in parse_languages(["pt", "pt-BR", "pt-PT,de"])] == ["por-BR", "por-PT", "deu"]
    assert parse_languages("") == []
    with pytest.raises(BabelscopeError, match="'xx'"):
        parse_languages("en,xx")


def test_registry_covers_udhr_index() -> None:
    index = json.loads((data_dir() / "udhr" / "index.json").read_text(encoding="utf-8"))
    isos = {lang.iso639_3 for lang in all_languages()}
    wanted = {e["iso6393"] for e in index if e["iso6393"] != "und"}
    assert len(wanted) == 447
    wanted = wanted - {"zlm"} | {"zsm"}  # the UDHR's Malay (zlm) is registered as Standard Malay (zsm)
    assert wanted <= isos
    for entry in index:
        if entry["iso6393"] != "und":
            resolve_language(entry["iso6393"])


def test_iso639_1_complete() -> None:
    two_letter = {lang.iso639_1 for lang in all_languages() if lang.iso639_1}
    two_letter |= {k for k in DEFAULTS if len(k) == 2}
    assert len(two_letter) >= 184
    for code in two_letter:
        assert resolve_language(code).iso639_1 in (code, None) or code in DEFAULTS


def test_ud_and_benchmark_languages_resolve() -> None:
    prefixes = {p.name.split("_")[0] for p in (data_dir() / "ud").glob("UD_*/*.conllu")}
    assert len(prefixes) >= 27
    for prefix in prefixes:
        resolve_language(prefix)
    xcopa = {p.name for p in (data_dir() / "bench" / "xcopa" / "data").iterdir() if p.is_dir()}
    assert len(xcopa) == 11
    # MGSM and XWinograd languages (MANIFEST); XWinograd writes Japanese as "jp"
    for code in xcopa | {"en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh", "pt"}:
        assert resolve_language(code).family


def test_families() -> None:
    langs = all_languages()
    assert len(langs) >= 500
    assert sum(1 for x in langs if x.family) >= 120
    expected = {"en": "Indo-European", "zh": "Sino-Tibetan", "ja": "Japonic", "ko": "Koreanic",
                "fi": "Uralic", "tr": "Turkic", "sw": "Niger-Congo", "ar": "Afro-Asiatic", "ta": "Dravidian",
                "vi": "Austroasiatic", "th": "Tai-Kadai", "id": "Austronesian", "eu": "Language isolate",
                "ka": "Kartvelian"}
    for code, family in expected.items():
        assert resolve_language(code).family == family
    assert len({x.code for x in langs}) == len(langs)


def test_script_of_text_real_texts() -> None:
    sample = open_corpus("udhr-sample")
    expected = {"eng": "Latn", "rus": "Cyrl", "arb": "Arab", "hin": "Deva", "ben": "Beng", "tam": "Taml",
                "tel": "Telu", "guj": "Gujr", "mal": "Mlym", "tha": "Thai", "heb": "Hebr", "ell": "Grek",
                "amh": "Ethi", "kat": "Geor", "hye": "Armn", "kor": "Hang", "jpn": "Jpan", "cmn-Hans": "Hans",
                "cmn-Hant": "Hant", "mya": "Mymr", "khm": "Khmr", "lao": "Laoo", "sin": "Sinh", "pan": "Guru",
                "kan": "Knda", "bod": "Tibt", "urd": "Arab", "ukr": "Cyrl", "vie": "Latn"}
    for code, script in expected.items():
        text = "\n".join(u.text for u in sample.units(code))
        assert script_of_text(text) == script, code
    # the registry's script agrees with the text for every sample language
    for code in sample.languages():
        text = "\n".join(u.text for u in sample.units(code))
        assert script_of_text(text) == resolve_language(code).script, code


def test_script_of_text_edge_cases() -> None:
    assert script_of_text("") == "Zyyy"
    assert script_of_text("123, 456 !?") == "Zyyy"
    assert script_of_text("中文") == "Hani"  # no character decides simplified vs traditional
    assert script_of_text("hello мир мир") == "Cyrl"
    assert script_of_text("東京は日本の首都です") == "Jpan"


def test_refine_by_script() -> None:
    zh = resolve_language("zh")
    assert refine_by_script(zh, "這是一個國家的語言").code == "cmn-Hant"
    assert refine_by_script(zh, "这是一个国家的语言").code == "cmn-Hans"
    sr = resolve_language("sr")
    assert refine_by_script(sr, "Sva ljudska bića rađaju se slobodna").code == "srp-Latn"
    assert refine_by_script(resolve_language("en"), "Привет").code == "eng"


def test_import_is_cheap() -> None:
    code = ("import sys, babelscope.data; "
            "print(sorted(m for m in ('torch', 'conllu', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
