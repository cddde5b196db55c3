"""Report section for ``perplexity`` results: per-language information cost of a corpus under a model."""

from __future__ import annotations

from typing import Any

from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import esc, format_value, is_number, stats

COLUMNS = [
    "lang", "name", "script", "family", "units", "tokens", "bytes", "chars",
    "nll", "ppl", "bits_per_byte", "bits_per_token", "bits_per_unit",
]  # fmt: skip
LABELS = {
    "lang": "language",
    "nll": "NLL (nats)",
    "ppl": "perplexity",
    "bits_per_byte": "bits / byte",
    "bits_per_token": "bits / token",
    "bits_per_unit": "bits / unit",
}
TITLES = {
    "nll": "total negative log-likelihood of the text, in nats",
    "ppl": "exp(mean token NLL); depends on the tokenizer",
    "bits_per_byte": "total NLL / ln 2 / UTF-8 bytes",
    "bits_per_token": "total NLL / ln 2 / tokens",
    "bits_per_unit": "total NLL / ln 2 / parallel units; comparable across languages",
    "units": "parallel units (e.g. UDHR articles)",
}
MEASURE_NAMES = {"bits_per_unit": "bits per parallel unit", "bits_per_byte": "bits per UTF-8 byte"}


def _label(row: dict[str, Any]) -> str:
    return str(row.get("name") or row.get("lang") or "?")


def grouping(doc: dict[str, Any], rows: list[dict[str, Any]]) -> str | None:
    """The row field to group bars by: ``script`` unless ``group_by: family`` is asked for.

    The choice comes from the report options (``render_report(..., options={"group_by": "family"})``),
    else from ``report.group_by`` in the step's config; a field missing from every row falls back to the
    other one, and to no grouping when both are missing.
    """
    config_opts = (doc.get("config") or {}).get("report") or {}
    wanted = (doc.get("report") or {}).get("group_by") or config_opts.get("group_by") or "script"
    for key in [wanted, "script", "family"]:
        if any(row.get(key) for row in rows):
            return key
    return None


def measure(doc: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """``bits_per_unit`` for parallel corpora, else ``bits_per_byte``."""
    parallel = (doc.get("results") or {}).get("parallel", True)
    if parallel and any(is_number(row.get("bits_per_unit")) for row in rows):
        return "bits_per_unit"
    return "bits_per_byte"


def explanation(unit: str, parallel: bool) -> str:
    """The short definitions of the measures shown in this section."""
    items = [
        ("Perplexity", "exp(mean token NLL): how many tokens the model hesitates between on average. It "
         "depends on the tokenizer (a language split into more, shorter tokens looks easier), so compare "
         "it between languages with care."),
        ("Bits per byte", "total NLL / ln 2 / UTF-8 bytes. Independent of the tokenizer, but scripts "
         "need different numbers of bytes per character (Latin 1, Cyrillic 2, CJK 3), so it still favours "
         "some scripts."),
        ("Bits per unit", f"total bits per parallel unit (e.g. a UDHR {esc(unit)}). Every language says "
         "the same thing in each unit, so this is the cost of the same content: comparable across "
         "scripts and tokenizers. Lower is better."
         + ("" if parallel else " Not available here: the corpus is not parallel.")),
    ]  # fmt: skip
    body = "".join(f"<dt>{name}</dt><dd>{text}</dd>" for name, text in items)
    return f'<dl class="measures">{body}</dl>'


def perplexity_section(doc: dict[str, Any]) -> Section:
    """Bits-per-unit and perplexity charts per language, and the per-language table."""
    from babelscope.report.figures import group_colors, grouped_bar

    results = doc.get("results") or {}
    rows = table_rows(doc, "per_language")
    model = results.get("model", "?")
    corpus = results.get("corpus", "?")
    unit = str(results.get("unit") or "article")
    section = Section(title=f"Perplexity of {model} on {corpus}")

    key = measure(doc, rows)
    parallel = key == "bits_per_unit"
    lead = (
        f"<p>Model <strong>{esc(model)}</strong> read the corpus <strong>{esc(corpus)}</strong> "
        f"in {len(rows)} languages"
    )
    if results.get("window"):
        lead += f" with a context window of {format_value(results['window'])} tokens"
    lead += (
        ". The corpus is parallel: every language has the same content.</p>"
        if parallel
        else ". The corpus is not parallel, so languages are compared in bits per byte.</p>"
    )
    section.add(lead)
    summary = {k: v for k, v in (results.get("summary") or {}).items() if not isinstance(v, dict | list)}
    if summary:
        section.add(stats({k.replace("_", " "): v for k, v in summary.items()}))
    section.add(explanation(unit, parallel))
    if not rows:
        section.add('<p class="note">The per-language table is empty.</p>')
        return section

    ranked = sorted(rows, key=lambda r: (not is_number(r.get(key)), r.get(key) if is_number(r.get(key)) else 0))
    scored = [r for r in ranked if is_number(r.get(key))]
    if scored:
        best, worst = scored[0], scored[-1]
        if best[key] > 0:
            section.add(
                f"<p>Lowest {MEASURE_NAMES[key]}: <strong>{esc(_label(best))}</strong> "
                f"({format_value(best[key])}); highest: <strong>{esc(_label(worst))}</strong> "
                f"({format_value(worst[key])}), {worst[key] / best[key]:.1f}× as much.</p>"
            )

    group_key = grouping(doc, rows)
    groups = [row.get(group_key) if group_key else None for row in rows]
    colors = group_colors(groups)
    labels = [row.get("lang", "?") for row in rows]
    by = f" grouped by {group_key}" if group_key else ""
    medians: dict[Any, list[float]] = {}  # one group order (by the main measure) for both charts
    for row, group in zip(rows, groups, strict=True):
        if is_number(row.get(key)):
            medians.setdefault(group, []).append(row[key])
    order = sorted(medians, key=lambda g: (sorted(medians[g])[len(medians[g]) // 2], str(g)))

    if scored:
        fig, _ = grouped_bar([row.get(key) for row in rows], labels, groups, colors=colors, group_order=order,
                             ylabel=MEASURE_NAMES[key])  # fmt: skip
        unit_note = f" (one unit = one {unit})" if parallel else ""
        section.figure(
            fig,
            caption=f"{MEASURE_NAMES[key].capitalize()}{unit_note} for each of {len(scored)} languages"
            f"{by}, sorted within each group (lower is better); model {model}, corpus {corpus}.",
            alt=f"Bar chart of {MEASURE_NAMES[key]} for {len(scored)} languages{by}; lowest "
            f"{scored[0].get('lang', '?')} ({scored[0][key]:.3g}), "
            f"highest {scored[-1].get('lang', '?')} ({scored[-1][key]:.3g}).",
        )
    ppl = [row.get("ppl") for row in rows]
    with_ppl = [(v, lang) for v, lang in zip(ppl, labels, strict=True) if is_number(v) and v > 0]
    if with_ppl:
        fig, ax = grouped_bar(
            ppl, labels, groups, colors=colors, group_order=order, log=True, ylabel="token perplexity (log)"
        )
        if min(v for v, _ in with_ppl) >= 1:  # bars from 1 (a perfect model): heights are bits per token
            ax.set_ylim(bottom=1)
        low, high = min(with_ppl), max(with_ppl)
        section.figure(
            fig,
            caption=f"Token-level perplexity per language{by} (log scale). Perplexity counts per token, so "
            "it also reflects how finely the tokenizer splits each language.",
            alt=f"Bar chart of token perplexity on a log scale for {len(with_ppl)} languages{by}; lowest "
            f"{low[1]} ({low[0]:.3g}), highest {high[1]} ({high[0]:.3g}).",
        )

    columns = [c for c in COLUMNS if c != "bits_per_unit" or parallel]
    columns += [c for row in rows for c in row if c not in columns and c != "bits_per_unit"]
    columns = list(dict.fromkeys(columns))
    heading = f"Per language, by {MEASURE_NAMES[key]}"
    units = {row.get("units") for row in rows}
    if len(units) == 1 and None not in units:  # the same for every language: said once, not in each row
        columns.remove("units")
        heading += f" ({format_value(units.pop())} units each)"
    section.add(f"<h3>{heading}</h3>")
    table = table_file(doc, "per_language")
    section.table(ranked, columns=columns, labels=LABELS, titles=TITLES, sorted_by=key, source=table)

    for name, other in (doc.get("tables") or {}).items():  # any further tables, as recorded
        if name != "per_language" and other.get("rows"):
            section.add(f"<h3>{esc(name.replace('_', ' '))}</h3>")
            section.table(other["rows"], source=other.get("file"))
    return section
