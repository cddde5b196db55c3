"""Tokenizer efficiency per language, without a forward pass.

On parallel text (the same unit ids in every language), for language ``l`` with ``T_l`` tokens, ``B_l`` UTF-8
bytes, ``C_l`` characters and ``U_l`` units:

* tokens per byte ``T_l / B_l``, per character ``T_l / C_l`` and per parallel unit ``T_l / U_l``;
* the **premium** of ``l`` relative to English on the same units, ``T_l / T_eng`` (Petrov et al. 2023,
  "Language Model Tokenizers Introduce Unfairness Between Languages", Sec. 3: a premium of 2 means the same
  content costs twice as many tokens, hence twice the compute and half the context);
* the share of byte-fallback tokens (``<0xNN>``, characters missing from the vocabulary; in a byte-level BPE such
  as Qwen's or GPT-2's, tokens of one non-ASCII byte alone) and of unknown tokens;
* the share of units whose text is not in Unicode NFC: decomposed accents (the UDHR's Vietnamese) cost tokens that
  the composed text would not.

On UD treebanks (Rust et al. 2021, "How Good is Your Tokenizer?", Sec. 4.1): **fertility**, the mean number of
subword tokens per word (UD surface token), and the **split share** (continued words), the share of words split
into two or more tokens. Each sentence is tokenized once in context; a token counts for every word whose
character span it overlaps (from the tokenizer's offsets), so a word's tokens are those of running text.

Every language is tokenized in one batched call (the fast tokenizer's Rust threads), so all 92 languages of the
embedded UDHR sample take about a second once the tokenizer is loaded.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, opt

KIND = "tokens"
BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class TokensConfig:
    model: str = opt("gemma-3-270m", "Model or tokenizer specs, comma-separated (a,b): measured side by side.")
    corpus: str = opt("udhr-sample", "Parallel corpus for the premium: udhr-sample, udhr, pud, ...")
    langs: str = languages("all", "Comma-separated languages, or 'all'.")
    reference: str = opt("eng", "Premium denominator language (Petrov et al. 2023).")
    ud: str | None = opt("pud-sample", "Treebanks for fertility: pud-sample (embedded), pud, a UD path, none.")
    ud_langs: str = languages("all", "Languages of the treebanks, or 'all'.")
    max_units: int | None = count(None, "First N parallel units per language.")
    max_sentences: int | None = count(200, "First N UD sentences per language.")


# ---------------------------------------------------------------------------------------------- tokenizers
def load_tokenizer(spec: str):
    """The fast tokenizer of a model spec (no weights are loaded) and the sha256 of its files."""
    from transformers import AutoTokenizer

    from babelscope.models.loader import resolve_spec

    source, _ = resolve_spec(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise BabelscopeError(f"{spec}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise BabelscopeError(f"{spec}: not a fast tokenizer; convert it (tokenizer.json) to measure it")
    return tokenizer, tokenizer_checksum(source)


def load_backend(spec: str):
    """The Rust tokenizer (``tokenizers.Tokenizer``) of a model spec and the sha256 of its files: read straight
    from its ``tokenizer.json`` when it has one (about a second for a 262k vocabulary; transformers' class for
    Gemma rebuilds the same tokenizer from that file's vocabulary and merges in Python, several times slower:
    ``tests/test_tokens_vocab.py`` checks that both give the same ids and offsets), else :func:`load_tokenizer`
    (a ``tokenizer.model`` converted by transformers). Every function here takes either."""
    from tokenizers import Tokenizer

    from babelscope.models.loader import resolve_spec

    source, _ = resolve_spec(spec)
    path = Path(str(source)) / "tokenizer.json"
    if not path.is_file():
        return load_tokenizer(spec)
    try:
        return Tokenizer.from_file(str(path)), tokenizer_checksum(source)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises its own Exception subclass
        raise BabelscopeError(f"{path}: cannot read the tokenizer ({str(exc).splitlines()[0]})") from None


def tokenizer_checksum(source: Path | str) -> str:
    """sha256 over the tokenizer files of a model directory (what changes the tokenization)."""
    from babelscope.caches import digest

    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
    paths = [(name, Path(source) / name) for name in names]
    return digest(part for name, path in paths if path.is_file() for part in (name, path.read_bytes()))


def _backend(tokenizer):
    """The Rust tokenizer of a transformers fast tokenizer, or the Rust tokenizer itself, with no truncation or
    padding (a ``tokenizer.json`` may carry them; transformers sets them again on its next call)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


#: every spelling ``<0xNN>`` a byte-fallback token can have (the pattern ``BYTE_TOKEN``: either case of hex digit)
_HEX = "0123456789abcdefABCDEF"
BYTE_SPELLINGS = tuple(f"<0x{a}{b}>" for a in _HEX for b in _HEX)


def _byte_level(backend) -> bool:
    """Whether the tokenizer is byte-level BPE (GPT-2, Qwen, SmolLM2): its text is bytes mapped to characters."""
    import json

    spec = json.loads(backend.to_str())
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def lone_byte_ids(backend) -> set[int]:
    """Byte-level BPE's counterpart of byte fallback: the tokens that are one byte 0x80-0xFF alone, a piece of a
    character's UTF-8 sequence (a character the merges never built): single-character entries that the
    tokenizer's own byte-level decoder turns into an incomplete UTF-8 sequence (U+FFFD). ASCII bytes are whole
    characters."""
    decoder = backend.decoder
    return {i for token, i in backend.get_vocab(with_added_tokens=False).items()
            if len(token) == 1 and decoder.decode([token]) == "\ufffd"}


def special_ids(tokenizer) -> tuple[set[int], int | None]:
    """Ids of byte-fallback tokens (``<0xNN>``, only when the model falls back to bytes; for a byte-level BPE
    the tokens of one non-ASCII byte alone, :func:`lone_byte_ids`) and the unk id.

    A BPE model (the common case) answers both by lookups: its ``byte_fallback`` flag, ``token_to_id`` of the 484
    spellings of ``<0xNN>`` and of its unk token. Other models are read from their JSON (tens of MB for a large
    vocabulary), once per tokenizer object."""
    import json

    cached = getattr(tokenizer, "_babelscope_special_ids", None)
    if cached is not None:
        return cached
    backend = _backend(tokenizer)
    model = backend.model
    if type(model).__name__ == "BPE":
        fallback = bool(model.byte_fallback)
        unk_token = model.unk_token
    else:
        spec = json.loads(backend.to_str()).get("model", {})
        fallback = bool(spec.get("byte_fallback"))
        unk_token = spec.get("unk_token")
        if unk_token is None and spec.get("unk_id") is not None:
            unk_token = backend.id_to_token(spec["unk_id"])
    byte_ids = {i for i in map(backend.token_to_id, BYTE_SPELLINGS) if i is not None} if fallback else set()
    if not fallback and _byte_level(backend):
        byte_ids = lone_byte_ids(backend)
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not backend else (
        backend.token_to_id(unk_token) if unk_token is not None else None)  # fmt: skip
    result = (byte_ids, unk)
    with contextlib.suppress(AttributeError, TypeError):  # the Rust tokenizer takes no new attributes
        tokenizer._babelscope_special_ids = result
    return result


def encode_batch(tokenizer, texts: Sequence[str], offsets: bool = False) -> dict[str, Any]:
    """One batched call of the Rust tokenizer for all texts (no special tokens): ids, and character offsets (the
    same as ``tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)``)."""
    if not texts:
        return {"input_ids": [], "offset_mapping": []}
    encodings = _backend(tokenizer).encode_batch(list(texts), add_special_tokens=False)
    out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
    if offsets:
        out["offset_mapping"] = [e.offsets for e in encodings]
    return out


def count_tokens(tokenizer, texts: Sequence[str], ids_info=None) -> list[tuple[int, int, int]]:
    """``(tokens, byte-fallback tokens, unknown tokens)`` per text, from one batched call of the Rust tokenizer
    (``encode_batch_fast``: no offsets; the same ids as ``tokenizer(texts, add_special_tokens=False)``)."""
    import numpy as np

    if not texts:
        return []
    byte_ids, unk = ids_info or special_ids(tokenizer)
    backend = _backend(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    encodings = encode(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    flat = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(encodings)), lengths)
    is_byte = np.isin(flat, np.fromiter(byte_ids, dtype=np.int64)) if byte_ids else np.zeros(len(flat), bool)
    n_bytes = np.bincount(owner[is_byte], minlength=len(encodings))
    n_unk = np.bincount(owner[flat == unk], minlength=len(encodings)) if unk is not None else np.zeros_like(lengths)
    return [(int(n), int(b), int(u)) for n, b, u in zip(lengths, n_bytes, n_unk, strict=True)]


# ---------------------------------------------------------------------------------------------- measures
def efficiency_rows(tokenizer, units: dict[str, list], reference: str | None, parallel: bool,
                    ids_info=None) -> list[dict[str, Any]]:  # fmt: skip
    """Per-language tokens per byte / char / unit, premium vs ``reference`` and byte-fallback / unk shares.

    ``units`` maps language code -> units (on a parallel corpus, the same ids in every language)."""
    from babelscope.data.languages import resolve_language, script_of_text

    codes = list(units)
    flat = [(code, u) for code in codes for u in units[code]]
    counts = count_tokens(tokenizer, [u.text for _, u in flat], ids_info)
    per_lang: dict[str, list[int]] = {code: [0, 0, 0, 0, 0, 0, 0] for code in codes}
    for (code, u), (n, nb, nu) in zip(flat, counts, strict=True):
        acc = per_lang[code]
        acc[6] += not unicodedata.is_normalized("NFC", u.text)
        acc[0] += n
        acc[1] += nb
        acc[2] += nu
        acc[3] += len(u.text.encode("utf-8"))
        acc[4] += len(u.text)
        acc[5] += 1
    ref_tokens = per_lang[reference][0] if parallel and reference in per_lang else None
    rows = []
    for code in codes:
        tokens, nb, nu, nbytes, nchars, nunits, not_nfc = per_lang[code]
        language = resolve_language(code)
        rows.append({
            "lang": code,
            "name": language.name,
            "script": language.script or script_of_text(" ".join(u.text for u in units[code][:3])),
            "units": nunits,
            "tokens": tokens,
            "bytes": nbytes,
            "chars": nchars,
            "tokens_per_byte": tokens / nbytes if nbytes else None,
            "tokens_per_char": tokens / nchars if nchars else None,
            "tokens_per_unit": tokens / nunits if nunits else None,
            "premium": tokens / ref_tokens if ref_tokens else None,
            "byte_fallback_share": nb / tokens if tokens else None,
            "unk_share": nu / tokens if tokens else None,
            "not_nfc_share": not_nfc / nunits if nunits else None,
        })  # fmt: skip
    return rows


def fertility_rows(tokenizer, sentences: dict[str, list]) -> list[dict[str, Any]]:
    """Fertility (tokens per word) and split share per language on UD sentences (Rust et al. 2021, Sec. 4.1).

    Words are the surface tokens of the treebank (a multiword token counts once); a subword token counts for
    each word whose character span it overlaps."""
    import numpy as np

    codes = list(sentences)
    flat = [(code, s) for code in codes for s in sentences[code]]
    enc = encode_batch(tokenizer, [s.text for _, s in flat], offsets=True)
    acc = {code: [0, 0, 0] for code in codes}  # words, tokens over words, split words
    for (code, s), offs in zip(flat, enc["offset_mapping"], strict=True):
        spans = sorted({(t.start, t.end) for t in s.tokens if t.end > t.start})
        if not spans:
            continue
        offs = [(a, b) for a, b in offs if b > a]
        starts = np.array([a for a, _ in offs], dtype=np.int64)
        ends = np.maximum.accumulate(np.array([b for _, b in offs], dtype=np.int64)) if offs else starts
        w_start = np.array([a for a, _ in spans], dtype=np.int64)
        w_end = np.array([b for _, b in spans], dtype=np.int64)
        # tokens overlapping [a, b): start < b and end > a (starts and ends are non-decreasing)
        n = np.searchsorted(starts, w_end, side="left") - np.searchsorted(ends, w_start, side="right")
        n = np.maximum(n, 1)
        row = acc[code]
        row[0] += len(spans)
        row[1] += int(n.sum())
        row[2] += int((n >= 2).sum())
    return [
        {"lang": code, "sentences": len(sentences[code]), "words": w,
         "fertility": t / w if w else None, "split_share": k / w if w else None}
        for code, (w, t, k) in acc.items()
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- inputs
def parallel_units(corpus, langs: str, reference: str | None, max_units: int | None) -> dict[str, list]:
    """The units to measure per language (the reference language added when the corpus is parallel)."""
    from babelscope.data import parse_languages
    from babelscope.evaluate.perplexity import select_units

    codes = corpus.languages() if langs in ("all", "", None) else [
        corpus.match_language(lang) for lang in parse_languages(langs)
    ]  # fmt: skip
    if corpus.parallel and reference and reference not in codes:
        codes = [corpus.match_language(reference), *codes]
    return select_units(corpus, list(dict.fromkeys(codes)), max_units)


def ud_sentences(spec: str, langs: str, max_sentences: int | None) -> dict[str, list]:
    """UD sentences per language for fertility (``pud-sample``, ``pud`` or a treebank path)."""
    from babelscope.data.ud import load_treebanks

    return load_treebanks(spec, langs, max_sentences)


def _summary(rows: list[dict], fert: list[dict]) -> dict[str, Any]:
    def med(key: str, table: list[dict]) -> float | None:
        vals = [r[key] for r in table if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {
        "languages": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "median_premium": med("premium", rows),
        "max_premium": max((r["premium"] for r in rows if r["premium"] is not None), default=None),
        "median_tokens_per_byte": med("tokens_per_byte", rows),
        "median_fertility": med("fertility", fert),
    }


def run(cfg: TokensConfig, run_dir, step: str = "tokens", loaded=None) -> dict[str, Any]:
    """The ``babelscope tokens`` step: efficiency of each tokenizer in ``cfg.model`` (comma-separated)."""
    from babelscope.data import open_corpus, resolve_language
    from babelscope.models.loader import resolve_spec
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    specs = [s.strip() for s in str(cfg.model).split(",") if s.strip()]
    if not specs:
        raise BabelscopeError("--model: give at least one model or tokenizer spec")
    corpus = open_corpus(cfg.corpus)
    reference = resolve_language(cfg.reference).code if cfg.reference else None
    units = parallel_units(corpus, cfg.langs, reference, cfg.max_units)  # fails before any tokenizer loads
    if reference and corpus.parallel:
        reference = corpus.match_language(reference)
    ud_spec = None if str(cfg.ud).lower() in ("none", "", "no") else cfg.ud
    sentences = ud_sentences(ud_spec, cfg.ud_langs, cfg.max_sentences) if ud_spec else {}
    sums = {spec: _checksum_of(spec, resolve_spec) for spec in specs}
    data = {"corpus": corpus.name, "sha256": {c: text_sha256(u.text for u in us) for c, us in units.items()}}
    ud = {lang: text_sha256(s.text for s in sents) for lang, sents in sentences.items()}
    if (doc := sr.done(inputs={"tokenizers": sums, "texts": data["sha256"], "ud": ud})) is not None:
        return doc
    if not is_main_process():  # one process tokenizes (nothing here is split over ranks)
        return sr.wait()
    rows, fert, tokenizers = [], [], {}
    for spec in specs:
        tokenizer, checksum = load_backend(spec)
        info = special_ids(tokenizer)
        name = _short_name(spec)
        entries = len(tokenizer) if hasattr(tokenizer, "backend_tokenizer") else tokenizer.get_vocab_size(True)
        tokenizers[name] = {"spec": spec, "sha256": checksum, "entries": entries,
                            "byte_fallback": bool(info[0])}  # fmt: skip
        rows += [{"model": name, **r} for r in efficiency_rows(tokenizer, units, reference, corpus.parallel, info)]
        fert += [{"model": name, **r} for r in fertility_rows(tokenizer, sentences)]
    results = {
        "models": list(tokenizers),
        "tokenizers": tokenizers,
        "corpus": corpus.name,
        "parallel": corpus.parallel,
        "reference": reference,
        "ud": ud_spec,
        "summary": {m: _summary([r for r in rows if r["model"] == m], [r for r in fert if r["model"] == m])
                    for m in tokenizers},  # fmt: skip
    }
    tables = {"per_language": rows}
    if fert:
        tables["fertility"] = fert
    return sr.write(KIND, results, tables, provenance(data=data))


def _checksum_of(spec: str, resolve_spec) -> str:
    source, _ = resolve_spec(spec)
    return tokenizer_checksum(source) if Path(str(source)).is_dir() else str(source)


def _short_name(spec: str) -> str:
    from babelscope.models.loader import model_name

    return model_name(spec)


def print_table(doc: dict[str, Any]) -> None:
    """The per-language table on the terminal (one column group per tokenizer)."""
    from rich.console import Console
    from rich.table import Table

    rows = doc["tables"]["per_language"]["rows"]
    fert = {(r["model"], r["lang"]): r for r in (doc["tables"].get("fertility") or {}).get("rows", [])}
    table = Table("model", "lang", "script", "tokens", "tok/byte", "tok/unit", "premium", "bytes%", "fertility",
                  title=f"tokenizer efficiency on {doc['results']['corpus']}")  # fmt: skip
    for r in rows:
        f = fert.get((r["model"], r["lang"]), {}).get("fertility")
        table.add_row(r["model"], r["lang"], r["script"] or "", str(r["tokens"]), f"{r['tokens_per_byte']:.3f}",
                      f"{r['tokens_per_unit']:.1f}", "-" if r["premium"] is None else f"{r['premium']:.2f}",
                      f"{100 * (r['byte_fallback_share'] or 0):.1f}", "-" if f is None else f"{f:.2f}")  # fmt: skip
    Console().print(table)
