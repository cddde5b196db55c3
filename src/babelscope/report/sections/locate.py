"""Report section: where language lives, four ways at once (``babelscope locate``)."""

from __future__ import annotations

import math
from typing import Any

from babelscope.report.base import Section, matrix_of, table_file, table_rows


def locate_section(doc: dict[str, Any]) -> Section:
    """Causal effects per localizer (with its paper), pairwise overlaps, and the localizers by layer and matrix."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    sec = Section(f"Where language lives in {res.get('model') or '?'}: four localizers side by side")
    sec.text(
        "LAPE neurons (Tang et al. 2024), PLND neurons (Zhao et al. 2024), the θ ⊙ ∇ regions (Zhang et al. 2024) and "
        "DiffMean directions (CLaS-Bench) of the same model on the same data. Causal effects: deactivation (PPL "
        "ratio on the language's own held-out text and on the others'), steering (harmonic mean of forcing and "
        "relevance at the best layer and α; 'others': median PPL ratio of the other languages with the steering "
        "on; 'random': the unsteered forcing), freezing during further pretraining (PPL ratio end/start of the "
        "target and the median of the others). 'random' is each test's control."
    )
    causal = table_rows(doc, "causal")
    if causal:
        sec.table(causal, columns=["localizer", "test", "effect", "own", "others", "random", "forcing", "relevance",
                                   "frozen_share", "paper"], source=table_file(doc, "causal"))
    pairs = table_rows(doc, "pairs")
    if pairs:
        langs = sorted({r["lang"] for r in pairs})
        kinds = sorted({r["pair"] for r in pairs})
        mat = [[next((math.log2(r["enrichment"]) for r in pairs if r["lang"] == lang and r["pair"] == k
                      and r.get("enrichment")), math.nan) for k in kinds] for lang in langs]
        fig, ax = heatmap(mat, langs, kinds, cmap="coolwarm", cbar_label="log2 enrichment over random",
                          fmt=".1f", annotate=True, vmin=-4, vmax=4)
        sec.figure(fig, "Overlap of the localizers per language against random sets of the same size (log2 of "
                        "observed over expected; 0 = as random).")
        sec.table(pairs, source=table_file(doc, "pairs"))
    by_layer = [r for r in table_rows(doc, "by_layer") if r.get("value") is not None]
    for localizer in ("lape", "plnd", "region", "diffmean"):
        rows = [r for r in by_layer if r["localizer"] == localizer]
        if not rows:
            continue
        langs, layers, mat = matrix_of(rows, "lang", "layer", "value", col_labels=sorted({r["layer"] for r in rows}))
        fig, ax = heatmap(mat, langs, [str(x) for x in layers], cmap="viridis",
                          cbar_label="‖d‖ / mean ‖h‖" if localizer == "diffmean" else "share of the set",
                          fmt=".2f", annotate=False)
        ax.set_xlabel("layer")
        sec.figure(fig, {"lape": "LAPE neurons", "plnd": "PLND neurons", "region": "region weights",
                         "diffmean": "DiffMean direction norm over the layer's mean residual norm"}[localizer]
                   + " per language (rows) and layer (columns).")
    by_matrix = table_rows(doc, "by_matrix")
    if by_matrix:
        langs, kinds, mat = matrix_of(by_matrix, "lang", "matrix", "share")
        fig, ax = heatmap(mat, langs, [str(k) for k in kinds], cmap="magma", cbar_label="share of the region",
                          fmt=".2f")
        sec.figure(fig, "The regions' weights by matrix type (share of each language's region).")
    return sec
