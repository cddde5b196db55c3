"""The report's first screen: one line per step with its headline figure next to the paper's, and whether this
model reproduces the paper's finding.

Each results ``kind`` with a finding has a function ``doc -> Finding`` below (reading ``results`` and tables only);
a kind without one gets a line that points to its section. ``reproduced`` is ``True`` / ``False`` when the paper
states a direction this step can check (e.g. removing the Top-1% region makes perplexity collapse while a random
1% barely moves it), ``None`` for a measurement without a paper's claim to check, and the line says plainly when a
finding is not reproduced or could not be measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Finding:
    """One line of the findings summary."""

    ours: str  # the headline figure on this model
    paper: str = ""  # what the paper reports (or the reference point)
    reproduced: bool | None = None  # None: nothing to check, or not measured (see ``status``)
    status: str | None = None  # overrides the verdict's words (e.g. "not measured")


FINDINGS: dict[str, Callable[[dict[str, Any]], Finding | None]] = {}


def finding(kind: str):
    def register(fn: Callable[[dict[str, Any]], Finding | None]):
        FINDINGS[kind] = fn
        return fn

    return register


def _num(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def ratio(x: Any) -> str:
    """A perplexity ratio as ``×1.65`` / ``×1.0e8``."""
    v = _num(x)
    if v is None:
        return "×?"
    return f"×{v:.1e}" if v >= 1000 else f"×{v:.2f}"


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    s = (doc.get("results") or {}).get("summary")
    return s if isinstance(s, dict) else {}


def _rows(doc: dict[str, Any], table: str) -> list[dict[str, Any]]:
    return list(((doc.get("tables") or {}).get(table) or {}).get("rows") or [])


@finding("perplexity")
def _ppl(doc):
    rows = [r for r in _rows(doc, "per_language") if _num(r.get("ppl")) is not None]
    if not rows:
        return None
    low = min(rows, key=lambda r: r["ppl"])
    high = max(rows, key=lambda r: r["ppl"])
    bpb = statistics.median(r["bits_per_byte"] for r in rows if _num(r.get("bits_per_byte")) is not None)
    return Finding(f"median perplexity {statistics.median(r['ppl'] for r in rows):.1f} over {len(rows)} languages "
                   f"(lowest {low['lang']} {low['ppl']:.1f}, highest {high['lang']} {high['ppl']:.1f}); median "
                   f"{bpb:.2f} bits/byte", "a measurement (compare languages by bits per byte or per parallel unit, "
                   "not token perplexity)")


@finding("knowledge")
def _bench(doc):
    res, s = doc.get("results") or {}, _summary(doc)
    rows = _rows(doc, "per_subset")
    if "exact_match" in s:
        return Finding(f"{res.get('benchmark')} exact match {s['exact_match']:.3f} over {s.get('items')} items",
                       "Zhao et al. 2024 report benchmark scores for 7B models; no claim to check at this size")
    acc, n = s.get("acc"), s.get("items") or 0
    items = _rows(doc, "per_item")
    choices = len(str(items[0].get("loglikelihoods", "")).split()) if items else 0
    chance = 1 / choices if choices else None
    se = math.sqrt(acc * (1 - acc) / max(n - 1, 1)) if acc is not None else None
    above = chance is not None and se is not None and acc - 2 * se > chance
    ours = (f"{res.get('benchmark')} accuracy {acc:.3f} ± {se:.3f} over {n} items in {len(rows)} subsets"
            + (f"; chance {chance:.2f}: {'above chance' if above else 'not distinguishable from chance'}"
               if chance else ""))
    return Finding(ours, "a measurement (chance level is the reference at this model size)")


@finding("responses")
def _respond(doc):
    res, s = doc.get("results") or {}, _summary(doc)
    if not s.get("judged"):
        return Finding(f"no response could be judged ({s.get('unparsed', 0)} unparsed, {s.get('failed', 0)} "
                       f"failed of {s.get('responses', 0)}) by {res.get('judge')}",
                       "Zhao et al. 2024 Table 1: a judge scores ACC, F, INFO, LC, H (0-3)", None, "not measured")
    return Finding(f"judged AVG {s['AVG']:.2f} / 3 over {s['judged']} of {s['responses']} responses "
                   f"(judge {res.get('judge')})", "Zhao et al. 2024 Table 1: AVG 0-3 per model variant")


@finding("codeswitch")
def _codeswitch(doc):
    s = _summary(doc)
    if _num(s.get("rate")) is None:
        return None
    return Finding(f"code-switching rate {s['rate']:.2f} ({s.get('switched')} of {s.get('responses')} responses)",
                   "Zhao et al. 2024: code-switching appears in responses of models tuned across languages")


@finding("pos")
def _pos(doc):
    s = _summary(doc)
    mono, en = _num(s.get("MONO_mean")), _num(s.get("EN_mean"))
    if mono is None or en is None:
        return None
    return Finding(f"in-context POS accuracy with target-language demonstrations {mono:.2f}, with English "
                   f"{en:.2f}", "Xu et al. 2023: MONO demonstrations beat EN", mono > en)


@finding("regions-ablation")
def _ablation(doc):
    summary = (doc.get("results") or {}).get("summary")
    if not isinstance(summary, list):
        return None
    by = {r.get("region"): r for r in summary if isinstance(r, dict)}
    top, rnd = by.get("top"), by.get("random")
    if not top:
        return None
    k = _num(top.get("k")) or 0
    parts = [f"removing the Top-{k:.0%} region: median perplexity {ratio(top.get('median_ratio'))}"]
    if rnd:
        parts.append(f"random {k:.0%}: {ratio(rnd.get('median_ratio'))}")
    if by.get("bottom"):
        parts.append(f"bottom {k:.0%}: {ratio(by['bottom'].get('median_ratio'))}")
    t, r = _num(top.get("median_ratio")), _num(rnd.get("median_ratio")) if rnd else None
    ok = None if t is None or r is None else (t > 10 and r < 2)
    return Finding("; ".join(parts), "Zhang et al. 2024 Table 2: collapse (perplexity ×100 and more) vs ≈1", ok)


@finding("neurons-deactivation")
def _deactivate(doc):
    s = _summary(doc)
    d, o, r = (_num(s.get(k)) for k in ("mean_diagonal_ratio", "mean_off_diagonal_ratio",
                                        "mean_random_diagonal_ratio"))
    if d is None:
        return None
    ok = o is not None and d > o and (r is None or d > r)
    return Finding(f"deactivating a language's neurons: its own perplexity {ratio(d)}, other languages' "
                   f"{ratio(o)}, random neurons {ratio(r)}",
                   "Tang et al. 2024 Fig. 3: the language's own perplexity rises most", ok)


@finding("transfer-pretrain")
def _pretrain(doc):
    res, s = doc.get("results") or {}, _summary(doc)
    t, o = _num(s.get("target_ppl_ratio")), _num(s.get("others_median_ppl_ratio"))
    if t is None:
        return None
    freeze = res.get("freeze") or {}
    frozen = (f" with the {freeze.get('region') or 'given'} region frozen ({freeze.get('parameters', 0):,} weights)"
              if freeze.get("file") else "")
    if res.get("target_eval"):
        where = (f"on its own held-out text ({ratio(s.get('target_eval_corpus_ppl_ratio'))} on "
                 f"{res.get('eval_corpus')})")
    elif res.get("held_out_split"):
        where = f"on held-out {res.get('train_corpus')}"
    else:
        where = f"on {res.get('eval_corpus')}"
    ok = t < 1 and (o is None or o > 1)
    plain = _unfrozen_others_ratio(_rows(doc, "compare"), doc.get("step")) if freeze.get("file") else None
    if plain is not None and o is not None:  # Zhang et al. §5: freezing the core region protects the others
        return Finding(f"after {res.get('samples')} samples{frozen}: target perplexity {ratio(t)} {where}; other "
                       f"languages {ratio(o)} vs {ratio(plain)} with every weight trained",
                       "Zhang et al. 2024 §5: with the core region frozen the other languages degrade less",
                       bool(o < plain and t < 1))
    return Finding(f"after {res.get('samples')} samples{frozen}: target ({', '.join(res.get('targets') or [])}) "
                   f"perplexity {ratio(t)} {where}, other languages {ratio(o)}",
                   "Zhao et al. 2024 Table 2: the target's perplexity falls, the others' rise (Zhang et al. §5: "
                   "less with the core region frozen)", ok)


def _unfrozen_others_ratio(compare: list[dict[str, Any]], step: Any) -> float | None:
    """The median end/start perplexity ratio of the non-target languages in a training of the same run directory
    with no weights frozen (the ``compare`` table of a pretraining step)."""
    runs = {r.get("run") for r in compare if r.get("run") != step and r.get("freeze") in (None, "", "none")}
    for run in sorted(str(x) for x in runs):
        mine = [r for r in compare if r.get("run") == run and not r.get("target") and _num(r.get("ppl"))]
        if not mine:
            continue
        last = max(r["samples"] for r in mine)
        start = {(r["lang"], r.get("text")): r["ppl"] for r in mine if r["samples"] == 0}
        ratios = [r["ppl"] / start[r["lang"], r.get("text")] for r in mine
                  if r["samples"] == last and start.get((r["lang"], r.get("text")))]
        if ratios:
            return statistics.median(ratios)
    return None


@finding("vocab")
def _vocab(doc):
    res, s = doc.get("results") or {}, _summary(doc)
    b, a = _num(s.get("premium_before")), _num(s.get("premium_after"))
    tb, ta = _num(s.get("held_out_tokens_before")), _num(s.get("held_out_tokens_after"))
    if tb is None or ta is None:
        return None
    premium = f"; premium on the parallel text {b:.3f} → {a:.3f}" if b is not None and a is not None else ""
    return Finding(f"{s.get('added')} new pieces for {res.get('lang')}: held-out text {tb:.0f} → {ta:.0f} tokens "
                   f"({ta / tb - 1:+.1%}){premium}", "Zhao et al. 2024: extending the vocabulary shortens the "
                   "target's text substantially (Chinese: about half the tokens)", ta < 0.95 * tb)


@finding("lens-translation")
def _lens(doc):
    rows = (doc.get("results") or {}).get("summary")
    if not isinstance(rows, list) or not rows:
        return None
    above = sum(1 for r in rows if (r.get("layers_english_above_target") or 0) > 0)
    peaks = ", ".join(f"{r['lang']} {r['english_peak_p']:.2f}@L{r['english_peak_layer']}" for r in rows
                      if _num(r.get("english_peak_p")) is not None)
    return Finding(f"English is decoded above the target in some layer for {above} of {len(rows)} targets "
                   f"(peak P(English): {peaks})", "Wendler et al. 2024: English dominates the middle layers",
                   above > len(rows) / 2)


def _mantel(m: dict[str, Any]) -> tuple[bool | None, str | None]:
    """A Mantel test's verdict: with n < 4 languages there are n! <= 6 permutations, so p >= 1/6 whatever the
    data: not a test."""
    n = m.get("languages") or 0
    if n < 4:
        return None, f"not testable with {n} languages"
    return bool(m["r"] > 0 and m["p"] < 0.05), None


@finding("syntax-otdd")
def _otdd(doc):
    links = (doc.get("results") or {}).get("links") or {}
    m = links.get("mantel_otdd_std_vs_typology") or links.get("mantel_otdd_raw_vs_typology")
    if not m:
        return None
    n = m.get("languages")
    return Finding(f"Mantel r between OTDD and typological distance {m['r']:+.2f} (p {m['p']:.3f}, {n} languages)",
                   "Xu et al. 2022: syntactic distance correlates with typology (r > 0)", *_mantel(m))


@finding("syntax-rsa")
def _rsa(doc):
    res = doc.get("results") or {}
    m = (res.get("links") or {}).get("mantel_1-rsa_vs_typology")
    best = (res.get("most_alignable") or [[None, None, None]])[0]
    if not m:
        return None
    return Finding(f"most alignable pair {best[0]}-{best[1]} (RSA {best[2]}); Mantel r with typology {m['r']:+.2f} "
                   f"(p {m['p']:.3f}, {m.get('languages')} languages)",
                   "Xu et al. 2023: closer languages are more alignable", *_mantel(m))


@finding("regions-importance")
def _importance(doc):
    res = doc.get("results") or {}
    rows = _rows(doc, "per_language")
    if not res.get("scored_parameters"):
        return None
    toks = sum(int(r.get("tokens") or 0) for r in rows)
    return Finding(f"|θ ⊙ ∇θ L| scored for {res['scored_parameters']:,} parameters on {len(rows)} languages "
                   f"({toks:,} tokens)", "Zhang et al. 2024 Eq. 2 (the input of the regions below)")


@finding("regions-select")
def _select(doc):
    pairs = [r for r in _rows(doc, "overlap") if _num(r.get("jaccard")) is not None]
    if not pairs:
        return None
    mean = statistics.fmean(r["jaccard"] for r in pairs)
    return Finding(f"Top-k regions of different languages overlap: mean Jaccard {mean:.2f} over {len(pairs)} "
                   "pairs", "Zhang et al. 2024 §3: a core region shared by all languages")


@finding("syntax-extract")
def _extract(doc):
    rows = _rows(doc, "per_language")
    if not rows:
        return None
    return Finding(f"{sum(int(r.get('words') or 0) for r in rows):,} word vectors from "
                   f"{sum(int(r.get('sentences') or 0) for r in rows)} sentences in {len(rows)} languages",
                   "the input of the syntax steps")


@finding("tokens")
def _tokens(doc):
    rows = [r for r in _rows(doc, "per_language") if _num(r.get("premium")) is not None]
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["premium"])
    return Finding(f"tokenizer premium vs English: median {statistics.median(r['premium'] for r in rows):.2f}, "
                   f"highest {worst['lang']} {worst['premium']:.2f}",
                   "Petrov et al. 2023: premiums up to 15× for some languages")


@finding("neurons")
def _neurons(doc):
    res = doc.get("results") or {}
    if not res.get("total_neurons"):
        return None
    return Finding(f"{res.get('selected')} language-specific FFN neurons of {res['total_neurons']} "
                   f"({res.get('selected', 0) / res['total_neurons']:.2%}) for {len(res.get('languages') or [])} "
                   "languages", "Tang et al. 2024: about 1% of neurons, mostly in the top and bottom layers")


def finding_for(doc: dict[str, Any]) -> Finding:
    """The step's finding; a pointer to its section when its kind has none (or its results lack the figure)."""
    fn = FINDINGS.get(str(doc.get("kind")))
    try:
        found = fn(doc) if fn else None
    except Exception as exc:  # noqa: BLE001 - a summary line must not cost the report
        return Finding(f"headline unavailable ({type(exc).__name__}: {exc}); see the section")
    return found or Finding("see the section")


def verdict(f: Finding) -> tuple[str, str]:
    """``(words, css class)`` of a finding's verdict."""
    if f.status:
        return f.status, "unknown"
    if f.reproduced is True:
        return "reproduced", "yes"
    if f.reproduced is False:
        return "not reproduced on this model", "no"
    return "—", "none"
