"""Report sections of ``babelscope eval``: knowledge accuracy, judged responses, code-switching, in-context POS."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import esc, format_value, stats


def bars_with_errors(labels: Sequence[str], series: dict[str, Sequence[float | None]],
                     errors: dict[str, Sequence[float | None]] | None = None, *, ylabel: str = "",
                     reference: float | None = None, reference_label: str = "", ymax: float | None = None):
    """Side-by-side bars per label for each series, with optional error bars and a dashed reference line."""
    from babelscope.report.figures import PALETTE, new_figure

    n, k = len(labels), max(len(series), 1)
    fig, ax = new_figure(min(16.0, max(5.0, 0.45 * n * k + 2.0)), 4.0)
    width = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        ys = [math.nan if v is None else float(v) for v in values]
        errs = None
        if errors and errors.get(name) is not None:
            errs = [0.0 if e is None or not math.isfinite(e) else float(e) for e in errors[name]]
        ax.bar(xs, ys, width=width * 0.95, yerr=errs, capsize=3 if errs else 0, label=name,
               color=PALETTE[j % len(PALETTE)], edgecolor="none")
    if reference is not None:
        ax.axhline(reference, color="#777777", lw=0.9, ls="--", label=reference_label or None)
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=90 if n > 8 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    if ymax is not None:
        ax.set_ylim(0, ymax)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(series) > 1 or reference_label:
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, ax


def _chance(rows: list[dict[str, Any]], items: list[dict[str, Any]]) -> float | None:
    counts = [len(str(r.get("loglikelihoods", "")).split()) for r in items if r.get("loglikelihoods")]
    return 1.0 / (sum(counts) / len(counts)) if counts else None


def knowledge_section(doc: dict[str, Any]) -> Section:
    """Accuracy bars per subset (language or subject) with standard errors, and the per-subset table."""
    res = doc.get("results") or {}
    rows, items = table_rows(doc, "per_subset"), table_rows(doc, "per_item")
    bench, model = res.get("benchmark", "?"), res.get("model", "?")
    section = Section(f"{bench} ({res.get('shots', 0)}-shot) on {model}")
    gen = bool(res.get("generation"))
    section.text(
        f"{'Greedy answers, last number compared with the gold number (exact match)' if gen else 'Each choice scored by its log-likelihood after the prompt, as lm-evaluation-harness does; accuracy picks the most likely choice, length-normalised accuracy divides by the choice length in characters'}. "  # noqa: E501
        "Error bars are one standard error of the mean.")
    summary = {k: v for k, v in (res.get("summary") or {}).items() if k != "prompts_sha256"}
    section.add(stats(summary))
    if not rows:
        return section
    metrics = ["exact_match"] if gen else ["acc", "acc_norm"]
    labels = [r["subset"] for r in rows]
    fig, _ = bars_with_errors(labels, {m: [r.get(m) for r in rows] for m in metrics},
                              {m: [r.get(f"{m}_stderr") for r in rows] for m in metrics},
                              ylabel="accuracy", reference=None if gen else _chance(rows, items),
                              reference_label="chance", ymax=1.0)
    section.figure(fig, f"{bench}: {', '.join(metrics)} per {'language' if res.get('benchmark') in ('xcopa', 'xwinograd', 'mgsm') else 'subset'} "  # noqa: E501
                   f"({len(items)} items), model {model}.",
                   alt=f"Bar chart of {metrics[0]} for {len(rows)} subsets of {bench}.")
    section.table(rows, source=table_file(doc, "per_subset"))
    return section


def responses_section(doc: dict[str, Any]) -> Section:
    """The judged response-quality table (the paper's Tables 1 and 3): five criteria 0-3 and their mean."""
    res = doc.get("results") or {}
    section = Section(f"Response quality of {res.get('model', '?')} judged by {res.get('judge', '?')}")
    if res.get("pipeline_check"):
        section.add('<p class="note"><strong>Pipeline check, not a quality measure:</strong> a few instructions '
                    "judged by a small local model, to show the generation and judging pipeline end to end.</p>")
    section.text("Each response is judged on accuracy (ACC), fluency (F), informativeness (INFO), logical "
                 "coherence (LC) and harmlessness (H), each 0-3, given the instruction, the response and the "
                 "reference answer; AVG is the mean of the five.")
    section.add(stats({k: v for k, v in (res.get("summary") or {}).items() if not isinstance(v, dict | list)}))
    rows = table_rows(doc, "per_language")
    if rows:
        section.table(rows, source=table_file(doc, "per_language"))
    items = table_rows(doc, "per_item")
    if items:
        section.add("<h3>Judgments</h3>")
        shown = [{k: v for k, v in r.items() if k in ("id", "lang", "ACC", "F", "INFO", "LC", "H", "AVG", "status")}
                 for r in items]
        section.table(shown, source=table_file(doc, "per_item"))
    return section


def codeswitch_section(doc: dict[str, Any]) -> Section:
    """Code-switching rate per language (the paper's Figure 4)."""
    res = doc.get("results") or {}
    rows = table_rows(doc, "per_language")
    section = Section(f"Code-switching rate of {res.get('model', '?')}")
    section.text("Share of responses in each target language that contain a segment in another language: by "
                 "Unicode script, and by language identification for languages that share a script; code, URLs, "
                 "numbers and names are ignored.")
    section.add(stats({k: v for k, v in (res.get("summary") or {}).items() if not isinstance(v, dict | list)}))
    if rows:
        fig, _ = bars_with_errors([r["lang"] for r in rows], {"code-switching rate": [r["rate"] for r in rows]},
                                  ylabel="share of responses with a switch", ymax=1.0)
        section.figure(fig, f"Code-switching rate per language over {sum(r['responses'] for r in rows)} "
                       "responses.", alt=f"Bar chart of code-switching rates for {len(rows)} languages.")
        section.table(rows, source=table_file(doc, "per_language"))
    examples = [r for r in table_rows(doc, "per_response") if r.get("switched")][:10]
    if examples:
        section.add("<h3>Examples of switches</h3>")
        section.table([{k: r.get(k) for k in ("id", "lang", "segments", "response")} for r in examples])
    return section


def pos_section(doc: dict[str, Any]) -> Section:
    """In-context POS accuracy per language, MONO vs EN demonstrations, mean and std over runs (Xu et al. Fig. 17)."""
    res = doc.get("results") or {}
    rows = table_rows(doc, "per_language")
    section = Section(f"In-context POS tagging with {res.get('model', '?')}")
    section.add(f"<p>{esc(res.get('shots', '?'))} demonstrations from the target language (MONO) or from English "
                f"(EN), then the query sentence; token accuracy against UD over {esc(res.get('runs', '?'))} runs "
                "with different demonstrations (bars: mean, error bars: standard deviation).</p>")
    if rows:
        langs = [r["lang"] for r in rows]
        series = {s: [r.get(f"{s}_mean") for r in rows] for s in ("MONO", "EN") if any(f"{s}_mean" in r for r in rows)}
        errors = {s: [r.get(f"{s}_std") for r in rows] for s in series}
        fig, _ = bars_with_errors(langs, series, errors, ylabel="token accuracy", ymax=1.0)
        section.figure(fig, "In-context POS tagging accuracy per language (mean ± std over runs).",
                       alt=f"Grouped bar chart of POS accuracy for {len(langs)} languages, MONO vs EN.")
        section.table(rows, source=table_file(doc, "per_language"))
    if res.get("summary"):
        section.add(stats({k: format_value(v) for k, v in res["summary"].items()}))
    return section
