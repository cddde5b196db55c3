"""Report section for language steering (CLaS-Bench, Gurgurov et al. 2026): DiffMean directions against LAPE
neurons, the sweep over layers and α, and the perplexity cost."""

from __future__ import annotations

from typing import Any

from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import stats


def steer_section(doc: dict[str, Any]) -> Section:
    """Best steering per language and method, the harmonic mean over layers and α, and the perplexity cost."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    sec = Section(f"Steering the output language of {res.get('model', '?')} (DiffMean vs LAPE)")
    sec.text(
        f"Prompts: the first half of {res.get('prompts')} held-out parallel units in {res.get('source')}. DiffMean "
        "(CLaS-Bench): the mean residual stream of a language's tokens minus the other languages' mean, added with "
        "strength α at one layer during generation. LAPE (Tang et al. 2024): the target language's neurons set to α "
        "times their mean activation in it. Forcing: share of generations the code-switching measure's language "
        "identifier gives to the target; relevance: share whose own parallel reference (in the generation's "
        "language) is the closest by chrF among all prompts' references (chance 1/N); H: their harmonic mean. "
        "Perplexity cost: held-out perplexity of each other language with the best setting on, over the base."
    )
    summary = res.get("summary") or {}
    sec.add(stats({f"{m} {k}": (summary.get(m) or {}).get(k) for m in ("none", "diffmean", "lape")
                   for k in ("forcing", "relevance", "harmonic") if (summary.get(m) or {}).get(k) is not None}))
    sec.table(table_rows(doc, "best"), source=table_file(doc, "best"))
    conds = [r for r in table_rows(doc, "conditions") if r.get("method") == "diffmean"]
    if conds:
        rows = sorted({(r["lang"], r["layer"]) for r in conds})
        alphas = sorted({r["alpha"] for r in conds})
        mat = [[next((c["harmonic"] for c in conds if (c["lang"], c["layer"], c["alpha"]) == (lang, layer, a)),
                     float("nan")) for a in alphas] for lang, layer in rows]
        fig, ax = heatmap(mat, [f"{lang} @ {layer}" for lang, layer in rows], [f"{a:g}" for a in alphas],
                          cmap="viridis", cbar_label="harmonic mean", fmt=".2f", annotate=True)
        ax.set_xlabel("α")
        sec.figure(fig, "DiffMean steering: harmonic mean of forcing and relevance per target language and layer "
                        "(rows) and strength α (columns).")
    sec.table(table_rows(doc, "ppl_cost"), source=table_file(doc, "ppl_cost"))
    gens = table_rows(doc, "generations")
    if gens:
        sec.add("<h3>Generations at the best settings</h3>")
        sec.table(gens[:60], columns=["method", "lang", "layer", "alpha", "prompt_text", "identified", "forced",
                                      "relevant", "output"], source=table_file(doc, "generations"))
    return sec
