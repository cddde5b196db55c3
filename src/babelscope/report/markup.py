"""HTML building blocks for the report: escaping, number formatting, tables and key/value lists.

Only the standard library is used here, so sections can build fragments without importing matplotlib.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from babelscope.formatting import format_plain  # noqa: F401  (re-exported: its home was here)

#: Tables longer than this are cut in the report (the full table is in the step's CSV file).
MAX_TABLE_ROWS = 1000
#: Rows shown open; the rest of a longer table is folded into a closed ``<details>`` block below it.
FOLD_ROWS = 25
#: A float column whose nonzero magnitudes span more than this factor gets significant digits per value
#: (a ratio column holding 2.18 and 1.4e8 must not print "2").
WIDE_RANGE = 1e3
#: Text cells longer than this may wrap; shorter ones stay on one line.
WRAP_CHARS = 24


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute content."""
    return html.escape(str(value), quote=True)


def slug(text: str) -> str:
    """An id-safe version of ``text`` (letters, digits, ``-``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "section"


def is_number(value: Any) -> bool:
    """True for ints and finite floats (not bools)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def format_value(value: Any) -> str:
    """Format one value on its own (used for key/value lists); returns escaped HTML."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<span class="na">—</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return esc(f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}")
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list) for v in value):
            return ", ".join(format_value(v) for v in value) or '<span class="na">—</span>'
        return f"<code>{esc(json.dumps(value, ensure_ascii=False))}</code>"
    if isinstance(value, dict):
        return f"<code>{esc(json.dumps(value, ensure_ascii=False))}</code>"
    text = str(value)
    if re.fullmatch(r"[0-9a-f]{40,}", text):  # checksums: show a prefix, keep the whole in the tooltip
        return f'<code title="{esc(text)}">{esc(text[:12])}…</code>'
    return esc(text)


def _decimals_for(magnitude: float) -> int:
    """Decimals for a column whose largest value is ``magnitude``: four significant digits from 1 up
    (none from 1000), three below 1 (``0.970``, ``0.0412``)."""
    if magnitude == 0 or magnitude >= 1000:
        return 0
    exponent = math.floor(math.log10(magnitude))
    return min(4, 3 - exponent if exponent >= 0 else 2 - exponent)


def _format_float(value: float, decimals: int) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:,.{decimals}f}"


def column_formatter(values: Iterable[Any]) -> Callable[[Any], str] | None:
    """A formatter giving one number of decimals to a whole numeric column; None for text columns.

    Integer columns get thousands separators; float columns get about four significant digits of their
    largest value (so 0.970 and 3.771 line up, 812.3 and 1,204.0 too). Missing values show as a dash.
    """
    values = [v for v in values if v is not None]
    if not values or any(not isinstance(v, int | float) or isinstance(v, bool) for v in values):
        return None
    finite = [v for v in values if math.isfinite(v)]

    def missing() -> str:
        return '<span class="na">—</span>'

    if all(isinstance(v, int) for v in values):
        return lambda v: missing() if v is None else f"{v:,}"
    magnitudes = [abs(v) for v in finite if v != 0]
    decimals = _decimals_for(max(magnitudes, default=0.0))
    wide = bool(magnitudes) and max(magnitudes) > WIDE_RANGE * min(magnitudes)

    def fmt(v: Any) -> str:
        if v is None or not math.isfinite(v):
            return missing()
        return significant(float(v)) if wide else _format_float(float(v), decimals)

    return fmt


def significant(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits: 2.184, 0.04120, 812.3, 1.400e+08 (scientific from 10^6)."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if exponent >= 6 or exponent < -3:
        return f"{value:.{digits - 1}e}"
    return f"{value:,.{max(0, digits - 1 - exponent)}f}"


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    caption: str | None = None,
    *,
    max_rows: int = MAX_TABLE_ROWS,
    source: str | None = None,
    sorted_by: str | None = None,
    titles: Mapping[str, str] | None = None,
    fold: int = FOLD_ROWS,
) -> str:
    """Render rows (dicts) as a sortable HTML table; numeric columns are right-aligned and formatted.

    ``columns`` picks and orders columns (default: union of keys in first-seen order), ``labels`` renames
    headers, ``titles`` adds header tooltips, ``source`` names the CSV file holding the full table. The first
    ``fold`` rows show; the rest (up to ``max_rows``) sit in a closed ``<details>`` block below, formatted alike.
    """
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    columns = [c for c in columns if any(c in row for row in rows)] or list(columns)
    labels = labels or {}
    titles = titles or {}
    formatters = {c: column_formatter(row.get(c) for row in rows) for c in columns}
    head = ["<thead><tr>"]
    for col in columns:
        classes = ["num"] if formatters[col] else []
        if col == sorted_by:
            classes.append("sorted")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        tip = f' title="{esc(titles[col])}"' if col in titles else ""
        head.append(f'<th scope="col"{cls}{tip}>{esc(labels.get(col, col.replace("_", " ")))}</th>')
    head.append("</tr></thead>")

    def body(part: Sequence[Mapping[str, Any]]) -> str:
        out = ["<tbody>"]
        for row in part:
            cells = []
            for col in columns:
                value = row.get(col)
                fmt = formatters[col]
                if fmt is None:
                    wrap = ' class="wrap"' if isinstance(value, str) and len(value) > WRAP_CHARS else ""
                    cells.append(f"<td{wrap}>{format_value(value)}</td>")
                else:
                    raw = "" if value is None or not math.isfinite(value) else repr(value)
                    cells.append(f'<td class="num" data-v="{raw}">{fmt(value)}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody>")
        return "".join(out)

    shown = rows[:max_rows]
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    out = [f'<div class="table-wrap"><table class="data sortable">{cap}{"".join(head)}{body(shown[:fold])}'
           "</table></div>"]
    if len(shown) > fold:  # the rest folded: a long table must not make the report tens of thousands of px tall
        rest = f'<div class="table-wrap"><table class="data sortable">{"".join(head)}{body(shown[fold:])}</table></div>'
        out.append(details(f"{len(shown) - fold:,} more rows", rest, "table-more"))
    notes = []
    if len(rows) > max_rows:
        notes.append(f"showing the first {max_rows:,} of {len(rows):,} rows")
    if source:
        notes.append(f"full table: <code>{esc(source)}</code>")
    if notes:
        out.append(f'<p class="table-note">{"; ".join(notes)}</p>')
    return "".join(out)


def flatten(obj: Any, prefix: str = "", max_depth: int = 3) -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (``summary.tokens``), down to ``max_depth`` levels."""
    if not isinstance(obj, dict) or max_depth == 0:
        return {prefix: obj} if prefix else {"value": obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name, max_depth - 1))
        else:
            flat[name] = value
    return flat


def kv_table(items: Mapping[str, Any], caption: str | None = None, css_class: str = "kv") -> str:
    """A two-column key/value table (values formatted by :func:`format_value`)."""
    out = [f'<table class="{esc(css_class)}">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    for key, value in items.items():
        out.append(f'<tr><th scope="row">{esc(key)}</th><td>{format_value(value)}</td></tr>')
    out.append("</table>")
    return "".join(out)


def stats(items: Mapping[str, Any]) -> str:
    """A row of small headline numbers ("45 languages", "21,000 tokens")."""
    cards = "".join(
        f'<div class="stat"><span class="stat-value">{format_value(v)}</span>'
        f'<span class="stat-label">{esc(k)}</span></div>'
        for k, v in items.items()
    )
    return f'<div class="stats">{cards}</div>'


def to_yaml(obj: Any) -> str:
    """``obj`` as block YAML (plain types only), for the configuration blocks."""
    import yaml

    from babelscope.runs import to_jsonable

    text = yaml.safe_dump(to_jsonable(obj), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "{}\n" if text.strip() in {"", "{}"} else text


def details(summary: str, body_html: str, css_class: str = "") -> str:
    """A collapsible block (closed by default)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<details{cls}><summary>{esc(summary)}</summary>{body_html}</details>"
