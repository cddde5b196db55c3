"""The fallback section for results kinds that have no section of their own."""

from __future__ import annotations

from typing import Any

from babelscope.report.markup import esc, flatten, kv_table
from babelscope.report.section import Section


def results_summary(results: Any) -> dict[str, Any]:
    """Scalar-ish results as a flat dict (long lists are summarised, lists of records left to tables)."""
    flat = flatten(results) if isinstance(results, dict) else {"results": results}
    summary: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, list) and (len(value) > 12 or any(isinstance(v, dict | list) for v in value)):
            summary[key] = f"[{len(value)} items]"
        else:
            summary[key] = value
    return summary


def table_blocks(section: Section, doc: dict[str, Any]) -> None:
    """Append every table of ``doc`` to ``section``, each under its name."""
    for name, table in (doc.get("tables") or {}).items():
        rows = table.get("rows") or []
        section.add(f"<h3>{esc(name.replace('_', ' '))}</h3>")
        if rows:
            section.table(rows, source=table.get("file"))
        else:
            section.add(
                f'<p class="table-note">No rows (file <code>{esc(table.get("file", ""))}</code>).</p>'
            )


def generic_section(doc: dict[str, Any]) -> Section:
    """Results summary and every table, for kinds without a dedicated section."""
    kind = doc.get("kind", "?")
    section = Section(title=str(doc.get("step", kind)))
    section.add(
        f'<p class="note">No dedicated view for results of kind <code>{esc(kind)}</code> yet; '
        "showing the recorded results and tables as they are.</p>"
    )
    summary = results_summary(doc.get("results") or {})
    if summary:
        section.add("<h3>Results</h3>" + kv_table(summary))
    table_blocks(section, doc)
    return section
