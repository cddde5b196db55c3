"""Small statistics the steps' summaries and the report share (standard library only)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (``None`` when none is left): the middle value, or the
    mean of the two middle ones."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None
