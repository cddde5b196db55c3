"""Per-language perplexity, bits per byte and bits per parallel unit.

For language ``l`` with units ``u`` (UDHR articles, PUD sentences, lines), total NLL in nats
``N_l = sum_u sum_t -log p(x_t | x_<t)`` over every token, each text scored in disjoint windows of ``window``
tokens that each start with BOS (so no token is scored twice and none without its BOS):

* token-level perplexity ``PPL_l = exp(N_l / T_l)`` (``T_l`` scored tokens; depends on the tokenizer);
* bits per byte ``BPB_l = N_l / ln 2 / B_l`` (``B_l`` UTF-8 bytes; comparable across tokenizers, not scripts);
* bits per parallel unit ``BPU_l = N_l / ln 2 / U_l`` over the same ``U_l`` unit ids in every language: the
  information the model needs to encode one translation of the same content, comparable across scripts and
  tokenizers (only on parallel corpora).

The method is :func:`language_rows` (an engine, a corpus, languages -> rows) and, for a few texts in a notebook,
:func:`perplexities`; the step (``babelscope ppl``: options, caching, results files) is
:func:`babelscope.evaluate.steps.run_ppl`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, opt
from babelscope.numeric import median

KIND = "perplexity"


@dataclass
class PplConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", "udhr-sample (embedded), udhr, pud, a .conllu/.txt/.jsonl path, hf:NAME.")
    langs: str = languages("all", "Comma-separated languages, or 'all' (every language in the corpus).")
    window: int = count(512, "Tokens per scoring window; each starts with BOS.")
    batch_size: int = count(8, "Windows per forward pass.")
    max_units: int | None = count(None, "Score only the first N units (same ids in every language).")
    max_tokens: int | None = count(None, "Per-language cap in tokens (whole units).")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


def select_units(corpus, languages: Sequence[str], max_units: int | None) -> dict[str, list]:
    """Units per language; on a parallel corpus only the ids every language has, in the first's order."""
    units = {lang: corpus.units(lang) for lang in languages}
    for lang, us in units.items():
        if not us or not any(u.text.strip() for u in us):
            raise BabelscopeError(f"corpus {corpus.name!r} has no text for language {lang}; drop it from --langs")
    if corpus.parallel and len(languages) > 1:
        common = set.intersection(*({u.id for u in us} for us in units.values()))
        if not common:
            raise BabelscopeError(f"corpus {corpus.name!r}: the languages share no unit id; choose other languages")
        units = {lang: [u for u in us if u.id in common] for lang, us in units.items()}
    if max_units is not None:
        units = {lang: us[:max_units] for lang, us in units.items()}
    return units


def cap_tokens(units: list, token_counts: list[int], max_tokens: int | None) -> int:
    """How many leading units fit in ``max_tokens`` (at least one)."""
    if max_tokens is None:
        return len(units)
    total, keep = 0, 0
    for n in token_counts:
        if keep and total + n > max_tokens:
            break
        total += n
        keep += 1
    return keep


def language_rows(engine, corpus, languages: Sequence[Any], cfg: PplConfig) -> tuple[list[dict], list[dict], dict]:
    """Score every language's units in one length-sorted pass.

    Returns (per-language rows, per-unit rows, sha256 of the texts scored per language)."""
    from babelscope.data.languages import resolve_language, script_of_text
    from babelscope.runs import text_sha256

    codes = [corpus.match_language(lang) for lang in languages]
    units = select_units(corpus, codes, cfg.max_units)
    if cfg.max_tokens is not None:
        for code in codes:
            counts = [len(ids) for ids in engine.encode([u.text for u in units[code]])]
            units[code] = units[code][: cap_tokens(units[code], counts, cfg.max_tokens)]
        if corpus.parallel and len(codes) > 1:  # keep the same ids in every language
            keep = min(len(us) for us in units.values())
            units = {code: us[:keep] for code, us in units.items()}
    flat = [(code, u) for code in codes for u in units[code]]
    scores = engine.rolling_loglikelihood([u.text for _, u in flat], window=cfg.window, desc="perplexity")
    unit_rows = [
        {
            "lang": code,
            "unit": u.id,
            "tokens": s.tokens,
            "bytes": len(u.text.encode("utf-8")),
            "chars": len(u.text),
            "nll": s.nll,
        }
        for (code, u), s in zip(flat, scores, strict=True)
    ]
    rows = []
    for code in codes:
        mine = [r for r in unit_rows if r["lang"] == code]
        nll = sum(r["nll"] for r in mine)
        tokens = sum(r["tokens"] for r in mine)
        nbytes = sum(r["bytes"] for r in mine)
        language = resolve_language(code)
        bits = nll / math.log(2)
        rows.append(
            {
                "lang": code,
                "name": language.name,
                "script": language.script or script_of_text(" ".join(u.text for u in units[code][:3])),
                "family": language.family,
                "units": len(mine),
                "tokens": tokens,
                "bytes": nbytes,
                "chars": sum(r["chars"] for r in mine),
                "nll": nll,
                "ppl": math.exp(nll / tokens) if tokens else None,
                "bits_per_token": bits / tokens if tokens else None,
                "bits_per_byte": bits / nbytes if nbytes else None,
                "bits_per_unit": bits / len(mine) if corpus.parallel and mine else None,
                "tokens_per_byte": tokens / nbytes if nbytes else None,
            }
        )
    checksums = {code: text_sha256(u.text for u in units[code]) for code in codes}
    return rows, unit_rows, checksums


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sort ``rows`` (in place) by bits per parallel unit, else bits per byte; their totals and medians."""
    rows.sort(key=lambda r: r["bits_per_unit"] if r["bits_per_unit"] is not None else r["bits_per_byte"])
    return {
        "languages": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "units": sum(r["units"] for r in rows),
        "median_ppl": median([r["ppl"] for r in rows]),
        "median_bits_per_byte": median([r["bits_per_byte"] for r in rows]),
    }


def perplexities(model, tokenizer, texts: Sequence[str], window: int = 512, batch_size: int = 8) -> list[float]:
    """Token-level perplexity ``exp(N / T)`` of each text, scored in disjoint BOS-prefixed windows of ``window``
    tokens (no cache, no run directory): ``perplexities(model, tokenizer, ["Alle Menschen ..."])``."""
    from babelscope.models.engine import Engine

    engine = Engine(model, tokenizer, batch_size=batch_size, progress=False)
    scores = engine.rolling_loglikelihood(list(texts), window=window, desc="perplexity")
    return [math.exp(s.nll / s.tokens) if s.tokens else float("nan") for s in scores]


#: The ``babelscope ppl`` step, importable here as before; it lives in :mod:`babelscope.evaluate.steps`.
run = StepFunction("babelscope.evaluate.steps", "run_ppl")
