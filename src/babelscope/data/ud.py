"""Universal Dependencies treebanks: a checked CoNLL-U reader and treebank corpora (PUD and any UD folder).

Sentence text is rebuilt from the surface tokens (multiword-token lines give the surface form;
``SpaceAfter=No`` and ``SpacesAfter`` in MISC give the spacing), never by joining words with spaces; every
syntactic word gets the character span of its surface token in that text. Field values are parsed with
the ``conllu`` library.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from babelscope.data.base import Corpus, Unit, check_unique_ids
from babelscope.data.languages import Language, refine_by_script, resolve_language
from babelscope.errors import BabelscopeError

__all__ = ["Sentence", "Token", "UdCorpus", "read_conllu", "treebank_files"]

_SPLITS = ("train", "dev", "test")
_SPLIT_RE = re.compile(r"-ud-(train|dev|test)\.conllu$")
_ESCAPES = {"\\s": " ", "\\t": "\t", "\\n": "\n", "\\r": "\r", "\\p": "|", "\\\\": "\\"}


@dataclass(frozen=True)
class Token:
    """One syntactic word. ``head`` is 0 for the root and -1 when the file leaves it unannotated (``_``);
    ``start``/``end`` are character offsets of its surface token in :attr:`Sentence.text` (the words of a
    multiword token share the span of that token)."""

    id: int
    form: str
    lemma: str
    upos: str
    head: int
    deprel: str
    start: int = 0
    end: int = 0
    xpos: str | None = None
    feats: str | None = None
    misc: str | None = None


@dataclass(frozen=True)
class Sentence:
    """One CoNLL-U sentence: id (``# sent_id``), language code, rebuilt text, syntactic words, comments."""

    id: str
    lang: str
    text: str
    tokens: list[Token]
    meta: dict[str, str] = field(default_factory=dict)  # the comment lines: sent_id, text, text_en, ...
    source: str = ""  # "path:line" of the sentence's first line

    @property
    def text_comment(self) -> str | None:
        """The ``# text`` comment of the file (for comparison with the rebuilt :attr:`text`)."""
        return self.meta.get("text")


def _unescape(value: str) -> str:
    return re.sub(r"\\[stnrp\\]", lambda m: _ESCAPES[m.group(0)], value)


def _spacing(misc: str) -> str:
    """The whitespace after a surface token, from its MISC column."""
    if misc in ("_", ""):
        return " "
    if "SpaceAfter=No" in misc.split("|"):
        return ""
    for item in misc.split("|"):
        if item.startswith("SpacesAfter="):
            return _unescape(item[len("SpacesAfter="):])
    return " "


def _error(path: Path, lineno: int, message: str) -> BabelscopeError:
    return BabelscopeError(f"{path}:{lineno}: {message}")


def _language_from_name(path: Path) -> Language | None:
    prefix = path.name.split("_")[0].split("-")[0]
    try:
        return resolve_language(prefix)
    except BabelscopeError:
        return None


def _build_sentence(path: Path, number: int, comments: list[tuple[int, str]],
                    rows: list[tuple[int, object, list[str]]]) -> Sentence:
    from conllu.exceptions import ParseException
    from conllu.parser import parse_comment_line, parse_int_value

    meta: dict[str, str] = {}
    for lineno, line in comments:
        try:
            pairs = parse_comment_line(line)
        except ParseException as exc:  # pragma: no cover - conllu accepts every line starting with '#'
            raise _error(path, lineno, f"bad comment ({exc})") from None
        for key, value in pairs:
            meta.setdefault(key, value or "")
    first_line = (comments or rows)[0][0]
    sent_id = meta.get("sent_id") or f"{path.stem}:{number}"

    words = [(lineno, wid, cols) for lineno, wid, cols in rows if isinstance(wid, int)]
    n = len(words)
    for expected, (lineno, wid, _) in enumerate(words, 1):
        if wid != expected:
            raise _error(path, lineno, f"word id {wid} out of order (expected {expected}); "
                                       "number the words 1..n")
    heads: dict[int, int] = {}
    for lineno, wid, cols in words:
        value = cols[6]
        try:
            head = int(value) if value.isdigit() and value.isascii() else parse_int_value(value)
        except ParseException:
            raise _error(path, lineno, f"HEAD {cols[6]!r} is not an integer; give the id of the head word "
                                       "(0 for the root)") from None
        if head is None:
            head = -1
        elif not 0 <= head <= n:
            raise _error(path, lineno, f"HEAD {head} is out of range (the sentence has {n} words); "
                                       f"use 0..{n}")
        heads[wid] = head

    # rebuild the text from surface tokens
    pieces: list[str] = []
    pos = 0
    spans: dict[int, tuple[int, int]] = {}
    covered_until = 0
    for lineno, wid, cols in rows:
        if isinstance(wid, tuple):
            if wid[1] != "-":
                continue  # empty node (decimal id)
            first, last = wid[0], wid[2]
            if last > n:
                raise _error(path, lineno, f"multiword token {cols[0]} ends after the last word ({n})")
            form = cols[1]
            for w in range(first, last + 1):
                spans[w] = (pos, pos + len(form))
            covered_until = last
        else:
            if wid <= covered_until:
                continue  # part of a multiword token: the surface form came from the range line
            form = cols[1]
            spans[wid] = (pos, pos + len(form))
        space = _spacing(cols[9])
        pieces.append(form)
        pieces.append(space)
        pos += len(form) + len(space)
    text = "".join(pieces).rstrip()

    tokens = []
    for _, wid, cols in words:
        start, end = spans[wid]
        tokens.append(Token(
            id=wid, form=cols[1], lemma=cols[2], upos=cols[3], head=heads[wid], deprel=cols[7],
            start=start, end=end, xpos=None if cols[4] == "_" else cols[4],
            feats=None if cols[5] == "_" else cols[5], misc=None if cols[9] == "_" else cols[9],
        ))
    _check_cycles(path, sent_id, first_line, heads)
    return Sentence(sent_id, "und", text, tokens, meta, f"{path}:{first_line}")


def _check_cycles(path: Path, sent_id: str, line: int, heads: dict[int, int]) -> None:
    state = dict.fromkeys(heads, 0)  # 0 unvisited, 1 on the current path, 2 done
    for start in heads:
        trail = []
        node = start
        while node > 0 and state[node] == 0:
            state[node] = 1
            trail.append(node)
            node = heads[node]
        if node > 0 and state[node] == 1:
            cycle = trail[trail.index(node):]
            raise BabelscopeError(
                f"{path}: sentence {sent_id} (line {line}): the heads of words {', '.join(map(str, cycle))} "
                "form a cycle; fix their HEAD column so that every word leads to the root (0)"
            )
        for visited in trail:
            state[visited] = 2


def read_conllu(path: str | Path, lang: str | Language | None = None) -> list[Sentence]:
    """Read and check a CoNLL-U file.

    The language is ``lang``, else the file name's prefix (``en_pud-ud-test.conllu`` -> ``eng``), refined by
    the script of the text (Chinese treebanks in traditional characters -> ``cmn-Hant``); ``und`` when neither
    names one. Malformed lines (not 10 columns, bad ID or HEAD, HEAD out of range) and dependency cycles
    raise a BabelscopeError naming the file and line (or sentence).
    """
    from conllu.exceptions import ParseException
    from conllu.parser import parse_id_value

    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BabelscopeError(f"{path} not found: give an existing .conllu file") from None
    except UnicodeDecodeError as exc:
        raise BabelscopeError(f"{path}: not UTF-8 ({exc}); convert the file to UTF-8") from None
    sentences: list[Sentence] = []
    comments: list[tuple[int, str]] = []
    rows: list[tuple[int, object, list[str]]] = []
    lines = data.split("\n")
    for lineno, raw in enumerate([*lines, ""], 1):
        line = raw.rstrip("\r")
        if not line.strip():
            if rows:
                sentences.append(_build_sentence(path, len(sentences) + 1, comments, rows))
            elif comments and lineno <= len(lines):
                raise _error(path, comments[0][0], "comment lines without any word lines; remove them or "
                                                   "add the sentence")
            comments, rows = [], []
            continue
        if line.startswith("#"):
            if rows:
                raise _error(path, lineno, "comment line inside a sentence; move it before the word lines")
            comments.append((lineno, line))
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise _error(path, lineno, f"expected 10 tab-separated columns, found {len(cols)}; "
                                       "CoNLL-U lines are ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS "
                                       "MISC")
        value = cols[0]
        try:
            plain = value.isdigit() and value.isascii() and value[0] != "0"
            wid = int(value) if plain else parse_id_value(value)
        except ParseException:
            wid = None
        if wid is None:
            raise _error(path, lineno, f"ID {cols[0]!r} is not a word id (n), a range (n-m) "
                                       "or an empty node (n.k)")
        rows.append((lineno, wid, cols))

    language = resolve_language(lang) if lang is not None else _language_from_name(path)
    if language is not None:
        if lang is None or (isinstance(lang, str) and not any(sep in lang for sep in "-_")):
            language = refine_by_script(language, "".join(s.text for s in sentences[:200]))
        sentences = [replace(s, lang=language.code) for s in sentences]
    return sentences


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, mtime_ns: int, size: int, lang: Language) -> tuple[Sentence, ...]:
    return tuple(read_conllu(path, lang))


def _read_file(path: Path, lang: Language) -> list[Sentence]:
    """read_conllu with a per-process cache keyed by file identity (corpora opened twice parse once)."""
    stat = path.stat()
    return list(_read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, lang))


def treebank_files(root: str | Path) -> list[Path]:
    """The CoNLL-U files of a treebank folder, a folder of treebanks, or one file (train, dev, test order)."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.conllu")) or sorted(root.glob("*/*.conllu"))

    def order(p: Path) -> tuple[str, int, str]:
        m = _SPLIT_RE.search(p.name)
        return (str(p.parent), _SPLITS.index(m.group(1)) if m else len(_SPLITS), p.name)

    return sorted(files, key=order)


def _peek_language(path: Path) -> Language | None:
    """The language of a file from its name and the script of its first ``# text`` lines (cheap)."""
    language = _language_from_name(path)
    if language is None:
        return None
    with open(path, encoding="utf-8-sig") as fh:
        head = fh.read(40000)
    texts = [ln[len("# text = "):] for ln in head.splitlines() if ln.startswith("# text = ")]
    if not texts:
        texts = [ln.split("\t")[1] for ln in head.splitlines() if ln and ln[0].isdigit() and "\t" in ln]
    return refine_by_script(language, " ".join(texts))


class UdCorpus(Corpus):
    """Sentences of UD treebanks (one file, a treebank folder or a folder of treebank folders).

    Unit id = ``# sent_id``; unit meta: split, treebank, source (file:line) and the ``# text`` comment.
    Parallel when every treebank is a PUD treebank.
    """

    def __init__(self, files: list[Path], name: str, lang: str | Language | None = None,
                 parallel: bool | None = None) -> None:
        super().__init__()
        if not files:
            raise BabelscopeError(f"corpus {name!r}: no .conllu files found; give a treebank folder or file")
        self.name = name
        self.files = files
        self.forced = resolve_language(lang) if lang is not None else None
        self.by_lang: dict[str, list[Path]] = {}
        for path in files:
            language = self.forced or _peek_language(path)
            if language is None:
                raise BabelscopeError(
                    f"{path}: cannot tell the language from the file name; name it <code>_<treebank>-ud-"
                    f"<split>.conllu or give it: ud:{path}#lang=CODE"
                )
            self.by_lang.setdefault(language.code, []).append(path)
        if parallel is None:
            parallel = all(p.parent.name.endswith("-PUD") for p in files)
        self.parallel = parallel
        self._sentences: dict[str, list[Sentence]] = {}

    def languages(self) -> list[str]:
        return sorted(self.by_lang)

    def sentences(self, lang: str | Language) -> list[Sentence]:
        """The parsed sentences (tokens, heads, spans) of one language, in unit order."""
        code = self.match_language(lang)
        if code not in self._sentences:
            self.units(code)
        return list(self._sentences[code])

    def _load(self, code: str) -> list[Unit]:
        sentences: list[Sentence] = []
        units: list[Unit] = []
        for path in self.by_lang[code]:
            m = _SPLIT_RE.search(path.name)
            split = m.group(1) if m else None
            for sentence in _read_file(path, resolve_language(code)):
                sentences.append(sentence)
                units.append(Unit(sentence.id, code, sentence.text, {
                    "split": split, "treebank": path.parent.name, "source": sentence.source,
                    "text_comment": sentence.text_comment,
                }))
        check_unique_ids(units, f"corpus {self.name!r}")
        self._sentences[code] = sentences
        return units


PUD_SAMPLE_LANGS = ("en", "de", "fr", "ru", "ja", "tr")


def pud_sample_dir() -> Path:
    """The embedded PUD sample (60 sentences of six languages, CC BY-SA 3.0, ``data/embedded/syntax/NOTICE.md``),
    decompressed once into the cache directory."""
    import gzip
    from importlib import resources

    from babelscope.runs import write_text
    from babelscope.settings import cache_dir

    out = cache_dir() / "syntax" / "pud-sample"
    src = resources.files("babelscope.data").joinpath("embedded/syntax")
    for lang in PUD_SAMPLE_LANGS:
        name = f"{lang}_pud-ud-test.conllu"
        if not (out / name).exists():
            with src.joinpath(name + ".gz").open("rb") as fh:
                write_text(out / name, gzip.decompress(fh.read()).decode("utf-8"))
    return out


# ----------------------------------------------------------------------------------------------- UD specs
def pud_paths() -> list[Path]:
    """The CoNLL-U files of every PUD treebank in the shared data directory (``DATA/ud/UD_*-PUD``)."""
    from babelscope.settings import DATA_ENV, data_dir

    root = data_dir() / "ud"
    files = [f for d in sorted(root.glob("UD_*-PUD")) for f in treebank_files(d)]
    if not files:
        raise BabelscopeError(
            f"no PUD treebanks at {root}/UD_*-PUD: set {DATA_ENV} to the shared data directory "
            "(with ud/UD_<Language>-PUD folders)"
        )
    return files


def ud_path(text: str) -> Path:
    """A treebank path: as given when it exists, else a treebank name under ``DATA/ud`` (``UD_English-EWT`` or
    ``English-EWT``)."""
    from babelscope.settings import data_dir

    path = Path(text).expanduser()
    if path.exists():
        return path
    root = data_dir() / "ud"
    for candidate in (root / text, root / f"UD_{text}"):
        if candidate.exists():
            return candidate
    raise BabelscopeError(
        f"treebank {text!r} not found: no such file or folder (looked at {path} and under {root}); give a .conllu "
        "file, a UD_* folder, pud or pud-sample"
    )


def treebank_paths(spec: str) -> list[Path]:
    """The CoNLL-U files a treebank spec names: ``pud`` (the PUD treebanks of the shared data directory),
    ``pud-sample`` (embedded), or ``[ud:]PATH`` (a ``.conllu`` file, a treebank folder, a folder of treebank
    folders, or a treebank name under ``DATA/ud``). The one UD spec parser: corpus specs and treebank options
    both read it."""
    if spec == "pud-sample":
        root = pud_sample_dir()
    elif spec == "pud":
        return pud_paths()
    else:
        root = ud_path(spec.removeprefix("ud:"))
    files = treebank_files(root)
    if not files:
        raise BabelscopeError(f"treebank {spec!r}: no .conllu files in {root}")
    return files


def load_treebanks(spec: str, langs: str = "all", max_sentences: int | None = None) -> dict[str, list]:
    """``{language code: [Sentence]}`` for the languages asked for (``all`` or a comma-separated list).

    On a parallel treebank (PUD) only the sentence ids every chosen language has are kept, in sent_id order, so
    ``max_sentences`` picks the same sentences in every language.
    """
    from babelscope.data.languages import parse_languages

    corpus = UdCorpus(treebank_paths(spec), name=spec)
    codes = corpus.languages() if langs in ("all", "", None) else [
        corpus.match_language(lang) for lang in parse_languages(langs)
    ]
    if not codes:
        raise BabelscopeError(f"treebank {spec!r}: no languages selected")
    sentences = {code: corpus.sentences(code) for code in codes}
    for code, sents in sentences.items():
        if not sents:
            raise BabelscopeError(f"treebank {spec!r}: no sentences for {code}; drop it from --langs")
    if corpus.parallel and len(codes) > 1:
        common = set.intersection(*({s.id for s in sents} for sents in sentences.values()))
        if not common:
            raise BabelscopeError(f"treebank {spec!r}: the languages share no sent_id; use a parallel treebank")
        sentences = {code: sorted((s for s in sents if s.id in common), key=lambda s: s.id)
                     for code, sents in sentences.items()}
    if max_sentences is not None:
        sentences = {code: sents[:max_sentences] for code, sents in sentences.items()}
    return sentences
