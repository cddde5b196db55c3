"""Plain-text values for terminal tables (the command line's results tables); standard library only.

The same rules as the report's :func:`babelscope.report.markup.format_value`, without HTML: a dash for missing
and non-finite values, thousands separators, four significant digits, checksums cut to 12 characters.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MISSING = "—"


def format_plain(value: Any) -> str:
    """One value as plain text, for a terminal table."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list) for v in value):
            return ", ".join(format_plain(v) for v in value) or MISSING
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    if re.fullmatch(r"[0-9a-f]{40,}", text):  # checksums: a prefix
        return f"{text[:12]}…"
    return text
