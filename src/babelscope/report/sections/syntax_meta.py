"""Report section for ``babelscope syntax meta`` (results kind ``syntax-meta``): a chart in the form of Fig. 17 of
Xu et al. (2023) per concept kind (per held-out language: MONO, EN and META bars with error bars) and the table."""

from __future__ import annotations

from typing import Any

from babelscope.report.base import Section, table_rows
from babelscope.report.markup import stats


def _chart_shots(shots: list[int]) -> int | None:
    few = [n for n in shots if n > 0]
    return 10 if 10 in few else (max(few) if few else None)


def fig17(summary: list[dict[str, Any]], langs: list[str], marks: dict[str, str], kind: str, shots: int | None):
    """Grouped bars per language: ICL MONO, ICL EN (when present), META zero-shot and META with ``shots``
    sentences, the English linear probe; error bars = standard deviation over the seeded runs."""
    from babelscope.report.figures import PALETTE, new_figure

    series = [("ICL-MONO", None, "MONO (in-context)"), ("ICL-EN", None, "EN (in-context)"),
              ("EN-probe", 0, "EN linear probe"), ("META", 0, "META zero-shot")]
    if shots:
        series += [("META", shots, f"META {shots}-shot"), ("target-probe", shots, f"target probe {shots}-shot")]
    index = {(r["lang"], r["method"], r["shots"] if r["method"] not in ("ICL-MONO", "ICL-EN") else None): r
             for r in summary if r["concepts"] == kind}
    series = [s for s in series if any((lang, s[0], s[1]) in index for lang in langs)]
    fig, ax = new_figure(max(6.0, 1.1 * len(langs) * max(len(series), 1) / 3 + 2), 4.0)
    width = 0.8 / max(len(series), 1)
    for j, (method, n, label) in enumerate(series):
        xs, ys, es = [], [], []
        for i, lang in enumerate(langs):
            r = index.get((lang, method, n))
            if r is not None and r.get("mean") is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r["mean"])
                es.append(r.get("std") or 0.0)
        ax.bar(xs, ys, width=width * 0.95, yerr=es, capsize=2, label=label, color=PALETTE[j % len(PALETTE)],
               edgecolor="none", error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(langs)), [f"{lang}{marks.get(lang, '')}" for lang in langs])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{kind} accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, ncol=min(len(series), 3), loc="upper left", bbox_to_anchor=(0, 1.18), frameon=False)
    return fig, ax


def meta_section(doc: dict[str, Any]) -> Section:
    res = doc["results"]
    langs = res.get("test_langs", [])
    summary = table_rows(doc, "summary")
    languages = table_rows(doc, "languages")
    marks = {r["lang"]: r.get("mark", "") for r in languages}
    section = Section(f"Syntax: meta-learned concept alignment ({res.get('model')})")
    section.add(stats({"source": res.get("source"), "meta-training languages": len(res.get("meta_langs", [])),
                       "held-out languages": len(langs), "runs": res.get("runs"),
                       "layer": ", ".join(f"{k} {v}" for k, v in (res.get("layer") or {}).items())}))
    section.text("English concept prototypes (class means of word vectors for POS, of h(head) - h(dependent) for "
                 "relations, through the English prototype probe's projection) are mapped by a meta-learned "
                 "adaptor; target words go through a small network; a word gets the concept of the nearest "
                 "prototype. Zero-shot uses no target labels; N-shot adds N labelled target sentences as support. "
                 "Accuracy over the held-out languages' test words of the concepts attested at least "
                 f"{doc.get('config', {}).get('min_count')} times in both English and the language; "
                 "in-context (ICL) accuracy comes from the evaluation suite's pos step (all test tokens).")
    section.text("Marks: " + "; ".join(f"{k} = {v}" for k, v in (res.get("marks") or {}).items())
                 + f". Pretraining languages: {res.get('pretraining_languages')}.")
    shots = _chart_shots(res.get("shots") or [])
    for kind in res.get("concepts", []):
        fig, _ = fig17(summary, langs, marks, kind, shots)
        section.figure(fig, f"{kind}: accuracy per held-out language (mean and standard deviation over "
                            f"{res.get('runs')} seeded runs), in the form of Xu et al. (2023), Fig. 17.")
    section.add("<h3>Languages</h3>")
    section.table(languages, source="languages.csv")
    section.add("<h3>Accuracy (mean, std over runs)</h3>")
    section.table(summary, source="summary.csv")
    if table_rows(doc, "layers"):
        section.add("<h3>Layer choice</h3>")
        section.text("English prototype-probe dev accuracy per candidate layer; the best layer is used.")
        section.table(table_rows(doc, "layers"), source="layers.csv")
    if res.get("meta_langs_left_out"):
        section.text(f"Left out of meta-training (fewer than 2 shared concepts): {res['meta_langs_left_out']}")
    return section
