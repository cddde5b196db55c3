"""Report sections for the syntax steps (``syntax-extract``, ``syntax-otdd``, ``syntax-rsa``, ``syntax-probe``),
rendered from the results files alone."""

from __future__ import annotations

import math
from typing import Any

from babelscope.report.base import Section, matrix_of, table_file, table_rows
from babelscope.report.markup import esc, stats


def _clustered(M: list[list[float]], labels: list[str], distance: bool) -> tuple[list[list[float]], list[str]]:
    """Rows and columns in the leaf order of average-linkage clustering on the matrix as distances
    (``1 - M`` for similarities); unchanged when it has NaNs or fewer than 3 languages."""
    import numpy as np
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    A = np.asarray(M, dtype=float)
    D = A if distance else 1.0 - A
    if len(A) < 3 or not np.isfinite(D).all():
        return M, labels
    D = np.maximum((D + D.T) / 2, 0.0)
    np.fill_diagonal(D, 0.0)
    order = leaves_list(linkage(squareform(D, checks=False), method="average", optimal_ordering=True))
    return A[np.ix_(order, order)].tolist(), [labels[i] for i in order]


def _links(section: Section, links: dict[str, Any]) -> None:
    rows = [{"test": k.replace("_", " "), **v} for k, v in links.items() if isinstance(v, dict)]
    if rows:
        section.add("<h3>Mantel tests</h3>")
        section.text("Spearman correlation between two language-by-language matrices; the p-value permutes the "
                     "languages of one matrix, because the entries of a distance matrix are not independent.")
        section.table(rows)


def extract_section(doc: dict[str, Any]) -> Section:
    res = doc["results"]
    section = Section(f"Syntax: word representations ({res.get('model')})")
    section.add(stats({"languages": len(res.get("languages", [])), "layers": len(res.get("layers", [])),
                       "pooling": res.get("pooling"), "random init": "yes" if res.get("random_init") else "no"}))
    section.text(f"Word vectors from {res.get('treebank')} (subwords pooled '{res.get('pooling')}'), stored per "
                 "language and layer. Relation instances are h(head) - h(dependent) with the universal relation "
                 "label; POS instances are the word vectors with their UPOS tag.")
    section.table(table_rows(doc, "per_language"), source=table_file(doc, "per_language"))
    layers = table_rows(doc, "per_layer")
    if layers:
        section.add("<h3>Massive activations</h3>")
        section.text("Share of all pairwise squared Euclidean distance between word vectors carried by the single "
                     "largest dimension (max variance / total variance). Large shares mean raw Euclidean "
                     "distances mostly measure one dimension; the otdd and rsa steps report results with and "
                     "without per-dimension standardisation.")
        section.table(layers, source=table_file(doc, "per_layer"))
    return section


def otdd_section(doc: dict[str, Any]) -> Section:
    from babelscope.report.figures import heatmap, labeled_scatter

    res = doc["results"]
    langs = res["languages"]
    pairs = table_rows(doc, "pairs")
    section = Section(f"Syntax: OTDD syntactic distance (layer {res['layer']}, {res.get('store_model')})")
    section.add(stats({"languages": len(langs), "layer": res["layer"], "draws": res["draws"],
                       "samples / language": res["samples"]}))
    for key, name in (("otdd_raw", "raw vectors"), ("otdd_std", "standardised dimensions")):
        _, _, D = matrix_of(pairs, "lang_a", "lang_b", key, row_labels=langs, symmetric=True, diagonal=0.0)
        M, order = _clustered(D, langs, True)
        for i in range(len(M)):
            M[i][i] = math.nan  # blank diagonal, so the colour scale spans the pairs only
        fig, _ = heatmap(M, order, cmap="viridis", cbar_label="OTDD", fmt=".3g")
        section.figure(fig, f"Debiased optimal-transport dataset distance between the languages' relation sets "
                            f"({name}), mean of {res['draws']} seeded draws of {res['samples']} relation vectors; "
                            "rows and columns ordered by hierarchical clustering (average linkage).")
    typo = [r for r in pairs if r.get("typology") is not None and r.get("otdd_std") is not None]
    if len(typo) >= 3:
        fig, _ = labeled_scatter([r["typology"] for r in typo], [r["otdd_std"] for r in typo],
                                 [f"{r['lang_a']}-{r['lang_b']}" for r in typo],
                                 xlabel="URIEL syntactic distance (cosine)", ylabel="OTDD (standardised)")
        section.figure(fig, "Each point is a language pair: typological distance against syntactic distance.")
    _links(section, res.get("links") or {})
    if table_rows(doc, "importance"):
        section.add("<h3>Which typological features predict the distance</h3>")
        section.text("Impurity importances of a gradient-boosting regressor from per-feature URIEL differences to "
                     f"the standardised OTDD (in-sample R^2 {res['links'].get('gbr_r2_in_sample', math.nan):.2f}; "
                     "with few language pairs this is descriptive, not predictive).")
        section.table(table_rows(doc, "importance"), source=table_file(doc, "importance"))
    section.add("<h3>Pairs</h3>")
    section.table(pairs, source=table_file(doc, "pairs"), sorted_by="otdd_std")
    return section


def rsa_section(doc: dict[str, Any]) -> Section:
    from babelscope.report.figures import heatmap, layer_lines

    res = doc["results"]
    langs = res["languages"]
    pairs = table_rows(doc, "pairs")
    section = Section(f"Syntax: alignability of structural concepts ({res.get('store_model')})")
    section.add(stats({"languages": len(langs), "layer": res["layer"], "concepts": res["concepts"],
                       "min count": res["min_count"]}))
    section.text("RSA: Spearman correlation between two languages' dissimilarity matrices of concept "
                 f"prototypes ({res['metric']} distance), over the {res['concepts']} labels each pair attests at "
                 f"least {res['min_count']} times. 1 = the concepts are arranged alike in both languages.")
    for key, name in (("rsa", "raw"), ("rsa_std", "standardised dimensions")):
        _, _, S = matrix_of(pairs, "lang_a", "lang_b", key, row_labels=langs, symmetric=True, diagonal=1.0)
        fig, _ = heatmap(*_clustered(S, langs, False), cmap="viridis", vmax=1.0,
                         cbar_label="RSA (Spearman)")
        section.figure(fig, f"Language-by-language alignability at layer {res['layer']} ({name}); clustered.")
    for key in ("most_alignable", "least_alignable", "most_alignable_std", "least_alignable_std"):
        if res.get(key):
            pretty = ", ".join(f"{a}-{b} {v:.2f}" for a, b, v in res[key])
            section.add(f"<p><b>{esc(key.replace('_', ' '))}</b>: {esc(pretty)}</p>")
    curves = table_rows(doc, "per_layer")
    if len(curves) > 1:
        series = {k: [r.get(k) for r in curves] for k in ("rsa", "rsa_std", "split_half", "split_half_std",
                                                          "control_rsa", "control_rsa_std") if k in curves[0]}
        fig, ax = layer_lines(series, ylabel="mean RSA over language pairs")
        ax.set_xticks(range(len(curves)), [str(r["layer"]) for r in curves])
        control = " and the randomly initialised model (control_*)" if "control_rsa" in curves[0] else ""
        section.figure(fig, "Mean cross-lingual RSA per layer, against the within-language split-half ceiling"
                            f"{control}, with and without standardisation (_std).")
    if curves:
        section.table(curves, source=table_file(doc, "per_layer"))
    _links(section, res.get("links") or {})
    section.add("<h3>Pairs</h3>")
    section.table(pairs, source=table_file(doc, "pairs"), sorted_by="rsa")
    return section


def probe_section(doc: dict[str, Any]) -> Section:
    from babelscope.report.figures import heatmap, layer_lines

    res = doc["results"]
    langs = res["languages"]
    section = Section(f"Syntax: probes ({res.get('store_model')})")
    summary = table_rows(doc, "per_layer")
    for kind in sorted({r["concepts"] for r in summary}):
        mine = [r for r in summary if r["concepts"] == kind]
        series = {k: [r.get(k) for r in mine] for k in ("accuracy", "majority", "control_accuracy") if k in mine[0]}
        fig, ax = layer_lines(series, ylabel=f"{kind} probe accuracy")
        ax.set_xticks(range(len(mine)), [str(r["layer"]) for r in mine])
        section.figure(fig, f"Linear {kind} probe accuracy per layer (mean over languages, held-out sentences) "
                            "against the majority class and the randomly initialised model; layer 0 is the "
                            "embedding baseline.")
    matrix = table_rows(doc, "transfer")
    if matrix:
        M = [[r[b] for b in langs] for r in matrix]
        fig, _ = heatmap(M, langs, cmap="viridis", cbar_label="accuracy", vmin=0.0, vmax=1.0)
        fig.axes[0].set_ylabel("trained on")
        fig.axes[0].set_xlabel("tested on")
        section.figure(fig, f"Cross-lingual relation-probe transfer at layer {res['transfer_layer']} (train on the "
                            "row language, test on the column language's held-out sentences). A proxy for the "
                            "paper's zero-shot parsing transfer.")
    _links(section, res.get("links") or {})
    section.table(summary, source=table_file(doc, "per_layer"))
    return section
