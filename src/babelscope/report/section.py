"""What one step contributes to the report (:class:`Section`): the report's base, its sections and the generic
section all build on it, so none of them needs the others."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from babelscope.report.markup import esc, html_table


@dataclass
class Section:
    """What one step contributes to the report: a title and HTML fragments shown in order.

    Build it with :meth:`add` (raw HTML), :meth:`text` (an escaped paragraph), :meth:`figure`
    (a matplotlib figure, embedded as PNG) and :meth:`table` (rows as an HTML table). The report adds the
    step's configuration and provenance blocks itself.
    """

    title: str
    html: list[str] = field(default_factory=list)
    figures: int = 0

    def add(self, fragment: str) -> Section:
        """Append a raw HTML fragment (already escaped)."""
        self.html.append(fragment)
        return self

    def text(self, paragraph: str) -> Section:
        """Append a paragraph of plain text (escaped here)."""
        return self.add(f"<p>{esc(paragraph)}</p>")

    def figure(self, fig: Any, caption: str, alt: str | None = None) -> Section:
        """Embed a matplotlib figure (closed afterwards) with a caption and alt text."""
        from babelscope.report.figures import fig_to_img_html

        self.figures += 1
        return self.add(fig_to_img_html(fig, caption, alt=alt))

    def table(self, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> Section:
        """Append rows as a table; keyword arguments go to :func:`babelscope.report.markup.html_table`."""
        return self.add(html_table(rows, **kwargs))
