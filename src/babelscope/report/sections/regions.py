"""Report sections for the linguistic-regions steps (Zhang et al. 2024): importance, regions, removal, scan."""

from __future__ import annotations

import math
from typing import Any

from babelscope.report.base import Section, matrix_of, table_file, table_rows
from babelscope.report.markup import esc, format_value, is_number, stats

WHICH_COLORS = {"base": "#7f7f7f", "top": "#d62728", "bottom": "#2ca02c", "random": "#1f77b4"}


def importance_section(doc: dict[str, Any]) -> Section:
    """Per-language loss and score mass, and the mean importance per layer and matrix type."""
    from babelscope.report.figures import layer_lines

    res = doc.get("results") or {}
    sec = Section(f"Parameter importance of {res.get('model', '?')} ({res.get('method', '?')})")
    sec.text(
        "Importance of each weight inside the decoder layers for each language: S = θ ⊙ ∂L/∂θ, the "
        "first-order Taylor estimate of the loss change when the weight is removed, with the loss summed over "
        "tokens and divided by the language's token count; Imp = Σ over languages of |S| (Zhang et al. 2024, "
        "Eq. 2-3). The text is disjoint (by unit id) from the text the removal is evaluated on."
    )
    sec.add(
        stats(
            {
                "languages": len(res.get("languages") or []),
                "scored parameters": res.get("scored_parameters"),
                "tensors": res.get("scored_tensors"),
            }
        )
    )
    rows = table_rows(doc, "per_language")
    sec.table(
        rows,
        labels={"sum_abs_score": "Σ|S|", "loss": "loss (nats/token)"},
        source=table_file(doc, "per_language"),
    )
    by = table_rows(doc, "by_matrix")
    if by:
        layers = sorted({r["layer"] for r in by})
        series: dict[str, list[float | None]] = {}
        for r in by:
            series.setdefault(r["kind"].removesuffix(".weight"), [None] * len(layers))[
                layers.index(r["layer"])
            ] = r["mean_importance"]
        fig, ax = layer_lines(series, ylabel="mean Imp per weight (log)")
        if all(is_number(v) and v > 0 for vs in series.values() for v in vs if v is not None):
            ax.set_yscale("log")
        sec.figure(
            fig,
            "Mean importance per weight, by layer and matrix type: where the languages' loss is most "
            "sensitive to removing weights.",
        )
    return sec


def select_section(doc: dict[str, Any]) -> Section:
    """Saved regions, the per-matrix kept-percentage table and the overlap heatmap."""
    from babelscope.report.figures import heatmap

    res = doc.get("results") or {}
    sec = Section(f"Linguistic regions: core and monolingual ({len(res.get('languages') or [])} languages)")
    sec.text(
        "Top-k: the fraction k of weights with the highest Imp (the core region); Bottom-k: the lowest; "
        "Random-k: the same count at random. Per tensor, every matrix loses exactly k; globally, one ranking "
        "over all weights. A monolingual region is a language's own Top-k of |S| minus every other "
        "language's Top-k."
    )
    sec.table(table_rows(doc, "regions"), source=table_file(doc, "regions"))
    per = table_rows(doc, "per_matrix")
    if per:
        sec.add("<h3>Weights kept per matrix after removing a region (%)</h3>")
        sec.text(
            "As in the paper's per-matrix table: global selection, so removal concentrates on some "
            "matrices. Rows: region, k and layer; columns: matrix types."
        )
        kinds = list(dict.fromkeys(r["kind"].removesuffix(".weight") for r in per))
        pivot: dict[tuple, dict[str, Any]] = {}
        for r in per:
            key = (r["region"], r["k"], r["layer"])
            row = pivot.setdefault(key, {"region": r["region"], "k": r["k"], "layer": r["layer"]})
            row[r["kind"].removesuffix(".weight")] = round(100 * r["kept"], 2)
        sec.table(
            list(pivot.values()), columns=["region", "k", "layer", *kinds], source=table_file(doc, "per_matrix")
        )
        _per_matrix_heatmaps(sec, per, kinds)
    overlap = table_rows(doc, "overlap")
    if overlap:
        langs, _, mat = matrix_of(overlap, "a", "b", "jaccard", symmetric=True, diagonal=1.0)
        fig, _ = heatmap(mat, langs, cmap="magma", cbar_label="Jaccard", vmin=0, vmax=1)
        sec.figure(
            fig,
            f"Overlap (Jaccard) of the languages' Top-{overlap[0]['k']:g} regions "
            f"({overlap[0]['scope']} selection).",
        )
        by = table_rows(doc, "overlap_by_matrix")
        if by:
            sec.add("<h3>Mean pairwise overlap per layer and matrix type</h3>")
            sec.table(by, source=table_file(doc, "overlap_by_matrix"))
    return sec


def _per_matrix_heatmaps(sec: Section, per: list[dict[str, Any]], kinds: list[str], limit: int = 4) -> None:
    """The per-matrix table drawn as layer x matrix-type heatmaps (core regions first, at most ``limit``)."""
    from babelscope.report.figures import heatmap

    groups = list(dict.fromkeys((r["region"], r["k"]) for r in per))
    groups.sort(key=lambda g: (g[0] != "core", g[1]))
    for region, k in groups[:limit]:
        cells = [r for r in per if (r["region"], r["k"]) == (region, k)]
        layers, _, mat = matrix_of(cells, "layer", lambda r: r["kind"].removesuffix(".weight"),
                                   lambda r: 100 * r["kept"], row_labels=sorted({r["layer"] for r in cells}),
                                   col_labels=kinds)
        values = [v for row in mat for v in row if is_number(v)]
        fig, _ = heatmap(mat, [str(x) for x in layers], kinds, cmap="viridis", cbar_label="% kept",
                         vmin=min(values, default=0.0), vmax=100.0, annotate=False)
        sec.figure(fig, f"Weights kept (%) per layer (rows) and matrix type (columns) after removing the "
                   f"{region} region at k = {k:g} (global selection); darker = more removed.")
    if len(groups) > limit:
        sec.text(f"{len(groups) - limit} more regions are in the table above.")


def ablation_section(doc: dict[str, Any]) -> Section:
    """Perplexity per language for Base / Top / Bottom / Random, the median ratios and the generations."""
    from babelscope.report.figures import log_axis, new_figure

    res = doc.get("results") or {}
    rows = table_rows(doc, "per_language")
    sec = Section(f"Removing regions from {res.get('model', '?')} ({res.get('mode', 'zero')})")
    held = res.get("heldout_languages") or []
    sec.text(
        f"Perplexity of held-out text in {len(res.get('evaluation_languages') or [])} languages "
        f"({len(held)} of them not used for importance) before (Base) and after changing each region. "
        "The paper's finding: removing the Top-k (core) region breaks every language, removing the same "
        "number of random or least important weights barely matters."
    )
    summary = table_rows(doc, "summary")
    sec.table(
        summary,
        labels={
            "median_ratio": "median PPL ratio",
            "median_ratio_heldout_langs": "median ratio, held-out langs",
            "median_ratio_importance_langs": "median ratio, importance langs",
        },
        source=table_file(doc, "summary"),
    )
    conditions = list(dict.fromkeys((r["k"], r["scope"]) for r in rows if r["region"] != "base"))
    for k, scope in conditions[:4]:
        langs = [r["lang"] for r in rows if r["region"] == "base"]
        fig, ax = new_figure(min(18.0, max(7.0, 0.45 * len(langs) + 2)), 4.0)
        regions = ["base", "top", "bottom", "random"]
        width = 0.8 / len(regions)
        values = []
        for i, region in enumerate(regions):
            by_lang = {
                r["lang"]: r["ppl"]
                for r in rows
                if r["region"] == region and (region == "base" or (r["k"], r["scope"]) == (k, scope))
            }
            ys = [by_lang.get(lang) if is_number(by_lang.get(lang)) else math.nan for lang in langs]
            values += [y for y in ys if is_number(y) and y > 0]
            ax.bar(
                [j + (i - 1.5) * width for j in range(len(langs))],
                ys,
                width=width,
                color=WHICH_COLORS[region],
                label=region.capitalize(),
            )
        ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=8)
        if values:
            log_axis(ax.yaxis, min(values), max(values))
        ax.set_ylabel("perplexity (log)")
        ax.legend(frameon=False, fontsize=8, ncol=4)
        sec.figure(fig, f"Perplexity per language, Base vs Top/Bottom/Random-{k:g} ({scope} selection).")
    gens = table_rows(doc, "generations")
    if gens:
        sec.add("<h3>Generations: “Fudan University is located in …”</h3>")
        cols = list(
            dict.fromkeys(
                r["region"] if r["region"] == "base" else f"{r['region']}@{r['k']:g}/{r['scope']}"
                for r in gens
            )
        )
        table: dict[str, dict[str, Any]] = {}
        for r in gens:
            col = r["region"] if r["region"] == "base" else f"{r['region']}@{r['k']:g}/{r['scope']}"
            table.setdefault(r["lang"], {"lang": r["lang"], "prompt": r["prompt"]})[col] = r["output"]
        sec.table(list(table.values()), columns=["lang", "prompt", *cols], source=table_file(doc, "generations"))
    sec.add("<h3>Per language</h3>")
    sec.table(rows, source=table_file(doc, "per_language"))
    return sec


def scan_section(doc: dict[str, Any]) -> Section:
    """Perplexity after perturbing each dimension against its activation magnitude."""
    from babelscope.report.figures import labeled_scatter

    res = doc.get("results") or {}
    rows = table_rows(doc, "dims")
    sec = Section(f"Dimension dependence: {res.get('norm', '?')} ({res.get('mode', '?')})")
    sec.text(
        f"Each scanned dimension d of the norm's effective scale γ (γ = {format_value(res.get('gamma_offset'))}"
        f" + w) was perturbed alone ({res.get('mode')}) and held-out perplexity measured; a dimension is "
        f"flagged when perplexity reaches {format_value(res.get('threshold'))}× the base. The paper's "
        "breaking dimensions carry massive activations."
    )
    broken = res.get("broken_dims") or []
    sec.add(
        stats(
            {
                "base PPL": res.get("base_ppl"),
                "dimensions scanned": res.get("scanned"),
                "flagged": len(broken),
            }
        )
    )
    sec.add(
        f"<p>Flagged: <strong>{esc(', '.join(map(str, broken)) or 'none')}</strong>; largest activations: "
        f"{esc(', '.join(map(str, res.get('top_activation_dims') or [])))}.</p>"
    )
    pts = [
        r
        for r in rows
        if is_number(r.get("act_max")) and r["act_max"] > 0 and is_number(r.get("ratio")) and r["ratio"] > 0
    ]
    if pts:
        fig, ax = labeled_scatter(
            [r["act_max"] for r in pts],
            [r["ratio"] for r in pts],
            [str(r["dim"]) for r in pts],
            groups=["breaks" if r["broken"] else "ok" for r in pts],
            xlabel=f"max |activation| ({res.get('activation', 'norm input')})",
            ylabel="PPL ratio (after / base)",
            logx=True,
            logy=True,
        )
        ax.axhline(res.get("threshold") or 10, color="#d62728", ls=":", lw=1)
        sec.figure(fig, "Perplexity ratio after perturbing each dimension against its activation magnitude.")
    sec.table(rows, source=table_file(doc, "dims"))
    return sec
