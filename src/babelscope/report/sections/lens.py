"""Report sections for the logit lens (Wendler et al. 2024): translation probabilities and script shares per
layer, one chart per language with 95% bands."""

from __future__ import annotations

from typing import Any

from babelscope.report.base import Section, table_file, table_rows


def _band_chart(rows: list[dict[str, Any]], series: list[tuple[str, str, str]], ylabel: str, title: str):
    from babelscope.report.figures import new_figure

    fig, ax = new_figure(6.0, 3.4)
    layers = [r["layer"] for r in rows]
    for key, label, color in series:
        ax.plot(layers, [r[key] for r in rows], marker="o", ms=3, color=color, label=label)
        ax.fill_between(layers, [max(0.0, r[f"{key}_lo"]) for r in rows], [r[f"{key}_hi"] for r in rows],
                        color=color, alpha=0.2, lw=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig, ax


def translation_section(doc: dict[str, Any]) -> Section:
    res = doc.get("results") or {}
    sec = Section(f"Latent language: word translation through the logit lens ({res.get('model', '?')})")
    sec.text(
        f"Prompts of {res.get('shots')} demonstrations 'source: \"x\" - target: \"y\"' then the query, from "
        f"{res.get('source')} into each target; at the last position every layer's residual stream is decoded "
        "through the final norm and the unembedding. Curves: the probability of the answer in the target "
        "language and of the English word for the same concept (all tokens spelling a prefix of the word), mean "
        "over items with a 95% band; items whose two token sets overlap are dropped. Wendler et al. find English "
        "peaking in the middle layers on Llama-2 before the target language takes over."
    )
    sec.table(table_rows(doc, "summary"), source=table_file(doc, "summary"))
    per_layer = table_rows(doc, "per_layer")
    for lang in dict.fromkeys(r["lang"] for r in per_layer):
        mine = [r for r in per_layer if r["lang"] == lang]
        fig, _ = _band_chart(mine, [("p_target", lang, "#1f77b4"), ("p_english", "English", "#d62728")],
                             "probability", f"{res.get('source')} → {lang} ({mine[0]['items']} items)")
        sec.figure(fig, f"Lens probability per layer of the {lang} answer and of its English word.")
    return sec


def script_section(doc: dict[str, Any]) -> Section:
    res = doc.get("results") or {}
    sec = Section(f"Latent language: script of the logit-lens prediction ({res.get('model', '?')})")
    sec.text(
        f"While the model reads {res.get('corpus')} text in each language, the share of every layer's lens "
        "distribution (next token, every position) on Latin-script tokens, on the text's own script and on others "
        "(the rest has no letters), mean over positions with a 95% band. Does the Latin (English) mass peak in "
        "the middle layers?"
    )
    sec.table(table_rows(doc, "summary"), source=table_file(doc, "summary"))
    per_layer = table_rows(doc, "per_layer")
    for lang in dict.fromkeys(r["lang"] for r in per_layer):
        mine = [r for r in per_layer if r["lang"] == lang]
        fig, _ = _band_chart(mine, [("own", f"{mine[0]['script']} (own script)", "#1f77b4"),
                                    ("Latn", "Latin", "#d62728"), ("other", "other scripts", "#2ca02c")],
                             "share of the lens distribution", f"{lang} ({mine[0]['positions']} positions)")
        sec.figure(fig, f"Script shares per layer while reading {lang}.")
    return sec
