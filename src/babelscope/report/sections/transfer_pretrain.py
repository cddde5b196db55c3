"""Report section for ``transfer-pretrain`` results: forgetting curves of further pretraining (Zhao et al. 2024,
Table 2) and, when the run directory holds several trainings, their curves overlaid (Zhang et al. 2024, §5)."""

from __future__ import annotations

import math
from typing import Any

from babelscope.numeric import median
from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import esc, format_value, is_number, stats


def _positive(v: Any) -> bool:
    return is_number(v) and v > 0


def _positive_median(values: list[Any]) -> float | None:
    return median(v for v in values if _positive(v))


def series(r: dict[str, Any]) -> str:
    """A curve's label: the language, marked when it is a training language on its own held-out text."""
    return f"{r['lang']} held-out" if r.get("text") == "held-out" else str(r["lang"])


def is_target(r: dict[str, Any], rows: list[dict[str, Any]]) -> bool | None:
    """``True``: the target's curve (on its held-out text when measured there); ``False``: another language;
    ``None``: the target language on the evaluation corpus when it also has a held-out curve (neither side)."""
    if not r.get("target"):
        return False
    if r.get("text") == "held-out" or not any(x.get("text") == "held-out" for x in rows):
        return True
    return None


def _x_axis(ax: Any, xs: list[float]) -> None:
    """Samples seen: a symmetric-log axis when the points span decades (0 is a point), else linear."""
    positive = sorted(x for x in xs if x > 0)
    if positive and positive[-1] / positive[0] >= 20:
        ax.set_xscale("symlog", linthresh=positive[0])
    ax.set_xlabel("samples seen")


def curve_figure(rows: list[dict[str, Any]], title: str | None = None):
    """Perplexity (log) against samples seen, one line per language; the target(s) bold."""
    from babelscope.report.figures import group_colors, log_axis, new_figure

    fig, ax = new_figure(8.0, 4.2)
    labels = list(dict.fromkeys(series(r) for r in rows))
    colors = group_colors(labels)
    values = []
    for label in labels:
        mine = sorted((r for r in rows if series(r) == label and _positive(r.get("ppl"))), key=lambda r: r["samples"])
        if not mine:
            continue
        role = is_target(mine[0], rows)
        ax.plot([r["samples"] for r in mine], [r["ppl"] for r in mine], marker="o", color=colors[label],
                lw=2.6 if role else 1.3, ls="-" if role else ":" if role is None else "--",
                label=f"{label} (target)" if role else f"{label} (target, eval corpus)" if role is None else label)
        values += [r["ppl"] for r in mine]
    _x_axis(ax, [r["samples"] for r in rows])
    if values:
        log_axis(ax.yaxis, min(values), max(values))
    ax.set_ylabel("held-out perplexity (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig, ax


def compare_figure(rows: list[dict[str, Any]]):
    """Per training: the target's perplexity (solid) and the median of the other languages' (dashed)."""
    from babelscope.report.figures import group_colors, log_axis, new_figure

    fig, ax = new_figure(8.0, 4.2)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    colors = group_colors(runs)
    values = []
    for run in runs:
        mine = [r for r in rows if r["run"] == run]
        xs = sorted({r["samples"] for r in mine})
        target = [_positive_median([r["ppl"] for r in mine if r["samples"] == x and is_target(r, mine)]) for x in xs]
        others = [_positive_median([r["ppl"] for r in mine if r["samples"] == x and is_target(r, mine) is False])
                  for x in xs]
        ax.plot(xs, [math.nan if v is None else v for v in target], marker="o", lw=2.4, color=colors[run],
                label=f"{run}: target")
        ax.plot(xs, [math.nan if v is None else v for v in others], marker="s", lw=1.4, ls="--",
                color=colors[run], label=f"{run}: median of others")
        values += [v for v in target + others if v is not None]
    _x_axis(ax, [r["samples"] for r in rows])
    if values:
        log_axis(ax.yaxis, min(values), max(values))
    ax.set_ylabel("held-out perplexity (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, ax


def pivot(rows: list[dict[str, Any]], key: str = "ppl") -> list[dict[str, Any]]:
    """One row per measured point: samples, step, tokens, learning rate, then each language's ``key``."""
    out = []
    for samples in sorted({r["samples"] for r in rows}):
        at = [r for r in rows if r["samples"] == samples]
        row = {"samples": samples, "step": at[0].get("step"), "tokens": at[0].get("tokens"), "lr": at[0].get("lr")}
        row.update({series(r): r.get(key) for r in at})
        out.append(row)
    return out


def _freeze_text(freeze: dict[str, Any]) -> str:
    frac = (freeze or {}).get("fraction_of_blocks")
    share = f", {frac:.2%} of the block weights" if isinstance(frac, float) else ""
    if freeze and freeze.get("baseline"):
        return (f"baseline {esc(freeze['baseline'])}@{esc(format_value(freeze.get('k')))} frozen "
                f"({esc(format_value(freeze.get('parameters')))} weights{share})")
    if not freeze or not freeze.get("file"):
        return "no weights frozen"
    return (f"region {esc(freeze.get('region'))}@{esc(format_value(freeze.get('k')))}/{esc(freeze.get('scope'))} "
            f"frozen ({esc(format_value(freeze.get('parameters')))} weights{share})")


def transfer_pretrain_section(doc: dict[str, Any]) -> Section:
    """Forgetting curve chart and table, training loss, the data used, and the overlay of several trainings."""
    res = doc.get("results") or {}
    curve = table_rows(doc, "curve")
    targets = ", ".join(res.get("targets") or [])
    section = Section(title=f"Further pretraining of {res.get('model', '?')} on {targets} "
                            f"({_freeze_text(res.get('freeze') or {}).split(' (')[0]})")
    state = "" if res.get("complete") else (' <strong class="warn">Incomplete: the run stopped or is still '
                                            "running; the curve shows the points measured so far.</strong>")
    section.add(
        f"<p>{esc(res.get('model'))} trained on <strong>{esc(targets)}</strong> text of "
        f"<code>{esc(res.get('train_corpus'))}</code>: {format_value(res.get('samples'))} samples of "
        f"{format_value(res.get('seq_len'))} tokens ({format_value(res.get('tokens'))} tokens, "
        f"{format_value(res.get('steps'))} optimizer steps of {format_value(res.get('samples_per_step'))} samples, "
        f"peak learning rate {format_value(res.get('lr'))}, {esc(res.get('schedule'))} decay), "
        f"{_freeze_text(res.get('freeze') or {})}. Perplexity is measured on held-out text of "
        f"<code>{esc(res.get('eval_corpus'))}</code>"
        + (" (unit ids split from the training text)" if res.get("held_out_split") else " (another corpus)")
        + (f"; the training languages also on held-out text of their own kind, <code>{esc(res['target_eval'])}"
           "</code>, never trained on (marked <em>held-out</em>)" if res.get("target_eval") else "")
        + f".{state}</p>"
    )
    summary = res.get("summary") or {}
    if summary:
        shown = {"target ppl, end / start": summary.get("target_ppl_ratio")}
        if res.get("target_eval"):
            shown["target ppl on the eval corpus, end / start"] = summary.get("target_eval_corpus_ppl_ratio")
        shown["other languages' median ppl, end / start"] = summary.get("others_median_ppl_ratio")
        section.add(stats(shown))
    if curve:
        fig, _ = curve_figure(curve)
        langs = sorted({r["lang"] for r in curve})
        section.figure(fig, caption=f"Held-out perplexity (log scale) of {len(langs)} languages against samples "
                       f"seen while training on {targets}; the target bold (on its own held-out text when "
                       "measured there; dotted: on the evaluation corpus), the others dashed.",
                       alt=f"Line chart of perplexity against samples for {', '.join(langs)}.")
        section.add("<h3>Perplexity at each measured point</h3>")
        section.table(pivot(curve), source=table_file(doc, "curve"))
        if any(r.get("bits_per_unit") is not None for r in curve):
            section.add("<h3>Bits per parallel unit at each measured point</h3>")
            section.table(pivot(curve, "bits_per_unit"))
    compare = table_rows(doc, "compare")
    if len({r["run"] for r in compare}) > 1:
        fig, _ = compare_figure(compare)
        section.figure(fig, caption="The trainings of this run directory from the same start: the target's "
                       "perplexity (solid) and the median perplexity of the other languages (dashed).",
                       alt="Line chart overlaying the forgetting curves of several trainings.")
        section.add("<h3>Trainings compared (median perplexity of the other languages)</h3>")
        rows = []
        for run in dict.fromkeys(r["run"] for r in compare):
            mine = [r for r in compare if r["run"] == run]
            for samples in sorted({r["samples"] for r in mine}):
                at = [r for r in mine if r["samples"] == samples]
                rows.append({"run": run, "freeze": at[0].get("freeze"), "samples": samples,
                             "target_ppl": _positive_median([r["ppl"] for r in at if is_target(r, mine)]),
                             "others_median_ppl": _positive_median([r["ppl"] for r in at
                                                                    if is_target(r, mine) is False])})
        section.table(rows)
    metrics = table_rows(doc, "metrics")
    if metrics:
        from babelscope.report.figures import new_figure

        fig, ax = new_figure(8.0, 3.0)
        ax.plot([m["samples"] for m in metrics], [m["loss"] for m in metrics], lw=1.2)
        ax.set_xlabel("samples seen")
        ax.set_ylabel("training loss (nats / token)")
        ax.grid(alpha=0.3)
        section.figure(fig, caption="Training loss per optimizer step (mean over the step's target tokens).",
                       alt="Line chart of the training loss.")
    data = table_rows(doc, "data")
    if data:
        section.add("<h3>Training data</h3>")
        section.table(data)
    return section
