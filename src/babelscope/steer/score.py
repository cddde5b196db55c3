"""The CLaS-Bench score of steered generations (Gurgurov et al. 2026): language forcing, semantic relevance and
their harmonic mean.

* **Language forcing** ``F = (1/N) Σ_i 1[lid(g_i) = T]``: the share of generations ``g_i`` that the language
  identifier of the code-switching measure (:mod:`babelscope.evaluate.codeswitch`: py3langid restricted to a
  candidate set plus ``T``, on the text without code, URLs and numbers) gives to the steered language ``T``.
* **Semantic relevance** (a reference-based proxy for CLaS-Bench's judge): prompts are the first half of parallel
  units; generation ``g_i`` is *relevant* when, among the parallel references of all ``N`` prompts in the language
  ``g_i`` is written in (its identified language when the corpus has it, else ``T``), its own unit's reference is
  the closest by chrF (character n-gram F-score, n = 1..6, β = 2; Popović 2015):
  ``R = (1/N) Σ_i 1[chrF(g_i, r_i) > max_{j≠i} chrF(g_i, r_j)]``. Chance is ``1/N``; a generation that keeps to the
  prompt's content in any language scores, fluent text off the topic does not.
* **Harmonic mean** ``H = 2 F R / (F + R)`` (0 when both are 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def identify(text: str, lang: str, candidates: str | None = None) -> str | None:
    """ISO 639-1 code py3langid gives ``text`` among the candidates plus ``lang``'s (None for empty text)."""
    from babelscope.evaluate.codeswitch import CANDIDATES, _identifier, clean, target_scripts

    body = clean(text).strip()
    if not any(ch.isalpha() for ch in body):
        return None
    _, iso1 = target_scripts(lang)
    pool = tuple(sorted({*(c.strip() for c in (candidates or CANDIDATES).split(",") if c.strip()),
                         *([iso1] if iso1 else [])}))
    return _identifier(pool).classify(body)[0]


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015): mean over n = 1..max_n of character n-gram precision and recall (spaces removed),
    combined as ``(1 + β²) P R / (β² P + R)``; in [0, 1]."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


def relevant(generation: str, own: int, references: Sequence[str]) -> bool:
    """Whether reference ``own`` is strictly the closest to ``generation`` by chrF among ``references``."""
    scores = [chrf(generation, r) for r in references]
    best_other = max((s for j, s in enumerate(scores) if j != own), default=0.0)
    return scores[own] > best_other


def harmonic(forcing: float | None, relevance: float | None) -> float | None:
    """``2 F R / (F + R)``."""
    if forcing is None or relevance is None:
        return None
    return 0.0 if forcing + relevance == 0 else 2 * forcing * relevance / (forcing + relevance)


def score_generations(generations: Sequence[str], target: str, references: dict[str, Sequence[str]],
                      iso_to_code: dict[str, str], candidates: str | None = None) -> tuple[dict, list[dict]]:
    """``(summary, rows)`` of generations ``g_i`` (one per prompt ``i``) steered into ``target`` (a corpus code):
    forcing, relevance and harmonic mean. ``references``: ``{corpus code: the N units' texts}``; ``iso_to_code``:
    ISO 639-1 -> corpus code of the languages with references."""
    from babelscope.data.languages import resolve_language

    target_iso = resolve_language(target).iso639_1
    rows = []
    for i, g in enumerate(generations):
        found = identify(g, target, candidates)
        ref_lang = iso_to_code.get(found or "", target)
        rows.append({"prompt": i, "identified": found, "forced": found is not None and found == target_iso,
                     "reference_lang": ref_lang, "relevant": relevant(g, i, references[ref_lang]),
                     "output": g})
    n = len(rows)
    forcing = sum(r["forced"] for r in rows) / n if n else None
    relevance = sum(r["relevant"] for r in rows) / n if n else None
    return {"forcing": forcing, "relevance": relevance, "harmonic": harmonic(forcing, relevance), "n": n,
            "chance_relevance": 1 / n if n else None}, rows
