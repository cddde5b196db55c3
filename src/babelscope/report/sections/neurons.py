"""Report sections for language-specific neurons (Tang et al., ACL 2024): counts per language and layer, the
deactivation perplexity matrix with generations, and the overlap with the linguistic regions."""

from __future__ import annotations

import math
from typing import Any

from babelscope.report.base import Section, matrix_of, table_file, table_rows
from babelscope.report.markup import stats


def neurons_section(doc: dict[str, Any]) -> Section:
    """Language-specific neurons per language and per layer."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    cfg = doc.get("config") or {}
    sec = Section(f"Language-specific neurons of {res.get('model', '?')} (LAPE)")
    sec.text(
        "Activation probability of every FFN neuron per language: the share of tokens on which the activation "
        f"({'act(gate) > 0' if res.get('site') == 'act' else 'down-projection input > 0'}) is positive. "
        "Normalised over the languages, its entropy is the LAPE score. As the official code: candidates have "
        f"some probability above the {cfg.get('filter_rate', 0.95):g} quantile of all probabilities, the "
        f"{100 * cfg.get('top_rate', 0.01):g}% of all neurons with the lowest LAPE among them are kept, each "
        f"assigned to every language above the {cfg.get('bar_rate', 0.95):g} quantile (Tang et al. 2024, §2)."
    )
    sec.add(stats({"languages": len(res.get("languages") or []), "layers": res.get("layers"),
                   "neurons per layer": res.get("neurons_per_layer"), "selected": res.get("selected"),
                   "probability threshold": (res.get("thresholds") or {}).get("filter")}))
    sec.table(table_rows(doc, "per_language"), labels={"only_this_language": "only this language"},
              source=table_file(doc, "per_language"))
    per_layer = table_rows(doc, "per_layer")
    if per_layer:
        langs, layers, mat = matrix_of(per_layer, "lang", "layer", "neurons",
                                       col_labels=sorted({r["layer"] for r in per_layer}))
        fig, ax = heatmap(mat, langs, [str(x) for x in layers], cmap="viridis", cbar_label="neurons", fmt=".0f",
                          annotate=len(layers) <= 30)
        ax.set_xlabel("layer")
        sec.figure(fig, "Language-specific neurons per language (rows) and layer (columns). The paper finds them "
                        "mostly in the top and bottom layers.")
    return sec


def deactivation_section(doc: dict[str, Any]) -> Section:
    """The perplexity-ratio matrix and the generations with a language's neurons off."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    sec = Section(f"Deactivating language-specific neurons of {res.get('model', '?')}")
    sec.text(
        "Perplexity of held-out text after setting one language's neurons to zero, as a ratio to the base model. "
        "Rows: the language whose neurons are off; columns: the language evaluated. The paper's finding: the "
        "diagonal rises most. The random control switches off the same number of random neurons per layer."
    )
    summary = res.get("summary") or {}
    sec.add(stats({"mean diagonal ratio": summary.get("mean_diagonal_ratio"),
                   "mean off-diagonal ratio": summary.get("mean_off_diagonal_ratio"),
                   "mean random (diagonal)": summary.get("mean_random_diagonal_ratio"),
                   "rows whose max is the diagonal": f"{summary.get('diagonal_is_row_max')}/{summary.get('rows')}"}))
    matrix = table_rows(doc, "matrix")
    cols = res.get("evaluation_languages") or []
    if matrix and cols:
        data = [[r.get(c) if r.get(c) is not None else math.nan for c in cols] for r in matrix]
        logs = [[math.log(v) if isinstance(v, float) and v > 0 else math.nan for v in row] for row in data]
        fig, ax = heatmap(logs, [r["off"] for r in matrix], cols, cmap="magma", cbar_label="log PPL ratio")
        ax.set_xlabel("evaluated language")
        ax.set_ylabel("neurons off")
        sec.figure(fig, "log(PPL with the row language's neurons off / base PPL).")
        sec.table(matrix, source=table_file(doc, "matrix"))
    gens = table_rows(doc, "generations")
    if gens:
        sec.add("<h3>Generations with a language's neurons off</h3>")
        sec.table(gens, columns=["off", "neurons", "lang", "prompt", "output"], source=table_file(doc, "generations"))
    return sec


def overlap_section(doc: dict[str, Any]) -> Section:
    """Share of the regions' FFN weights on the LAPE neurons against random neuron sets."""
    from babelscope.report.figures import new_figure

    res = doc.get("results") or {}
    rows = table_rows(doc, "overlap")
    sec = Section(f"Language-specific neurons and the Top-{100 * res.get('k', 0):g}% regions ({res.get('scope')})")
    sec.text(
        "A region touches a neuron through its row in the gate/up projections and its column in the down "
        "projection. Touched share: the LAPE neurons whose row or column holds a region weight; weight share: "
        "the part of the region's FFN weights on those neurons. Random: neuron sets of the same size, uniform "
        "with the same count per layer, and from the often-active but not language-specific neurons (the LAPE "
        "filter's other candidates: a neuron that fires often gets large importance whatever its language); p: "
        "share of 1 + draws at least as large."
    )
    sec.table(rows, columns=["lang", "region", "neurons", "touched_share", "touched_random",
                             "touched_random_layer_matched", "weight_share", "weight_random",
                             "weight_random_layer_matched", "weight_enrichment_layer_matched",
                             "weight_p_layer_matched", "weight_random_active", "weight_p_active"],
              source=table_file(doc, "overlap"))
    shown = [r for r in rows if r.get("weight_share") is not None]
    if shown:
        fig, ax = new_figure(max(6.0, 0.6 * len(shown) + 2), 4.0)
        x = range(len(shown))
        ax.bar([i - 0.27 for i in x], [r["weight_share"] for r in shown], width=0.27, label="LAPE neurons",
               color="#d62728")
        ax.bar(list(x), [r["weight_random_layer_matched"] for r in shown], width=0.27,
               label="random, same per layer", color="#7f7f7f")
        ax.bar([i + 0.27 for i in x], [r.get("weight_random_active") or 0 for r in shown], width=0.27,
               label="random active neurons", color="#1f77b4")
        ax.set_xticks(list(x), [f"{r['lang']}/{r['region']}" for r in shown], rotation=90, fontsize=8)
        ax.set_ylabel("share of the region's FFN weights")
        ax.legend(frameon=False, fontsize=8)
        sec.figure(fig, "Share of each region's FFN weights lying on the language's LAPE neurons, against random "
                        "neuron sets with the same number per layer.")
    return sec


def plnd_section(doc: dict[str, Any]) -> Section:
    """PLND neurons per language and layer, and their overlap with LAPE neurons and regions."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    sec = Section(f"Language neurons of {res.get('model', '?')} by deactivation (PLND)")
    sec.text(
        "Parallel language-specific neuron detection (Zhao et al., NeurIPS 2024): a neuron's importance for a "
        "document is the change of its FFN's output when it is deactivated, ‖a_j‖ · ‖W_down[:, j]‖, for all neurons "
        f"of a layer in one pass. A language's neurons are in the top {100 * res.get('top_rate', 0):g}% of a "
        f"document's importances in at least {100 * res.get('consistency', 0):g}% of its documents; neurons of "
        "every language (language-agnostic) are left out. Overlap with LAPE: shared neurons against the "
        "hypergeometric expectation for random sets of the same sizes; with the region: share of the region's FFN "
        "weights on the neurons against random sets with the same count per layer."
    )
    sec.add(stats({"languages": len(res.get("languages") or []), "selected": res.get("selected"),
                   "language-agnostic": res.get("agnostic"), "total neurons": res.get("total_neurons")}))
    sec.table(table_rows(doc, "per_language"), source=table_file(doc, "per_language"))
    per_layer = table_rows(doc, "per_layer")
    if per_layer:
        langs, layers, mat = matrix_of(per_layer, "lang", "layer", "neurons",
                                       col_labels=sorted({r["layer"] for r in per_layer}))
        fig, ax = heatmap(mat, langs, [str(x) for x in layers], cmap="viridis", cbar_label="neurons", fmt=".0f",
                          annotate=len(layers) <= 30)
        ax.set_xlabel("layer")
        sec.figure(fig, "PLND neurons per language (rows) and layer (columns).")
    overlap = table_rows(doc, "overlap")
    if overlap:
        sec.table(overlap, source=table_file(doc, "overlap"))
    return sec
