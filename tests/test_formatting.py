"""Terminal values (babelscope.formatting.format_plain) follow the report's rules (report.markup.format_value)
without HTML: the plain text a browser would show for the report's cell."""

from __future__ import annotations

import html
import re

import pytest

from babelscope.formatting import format_plain
from babelscope.report.markup import format_value

VALUES = [None, float("nan"), float("inf"), True, False, 0, 12345678, -3, 1.5, 0.000123, 12345.6, -98765.4,
          3.14159, [], [1, None, 2.5], (1, "a"), [{"a": 1}], {"x": [1, 2], "é": "<b>&amp;"}, "a&b<c>", "é &lt; x",
          "f" * 64, "0123456789abcdef" * 3, "x" * 40, [[1, 2]], ["<i>", "a&amp;"]]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_plain_is_the_report_cell_as_text(value):
    assert format_plain(value) == html.unescape(re.sub(r"<[^>]+>", "", format_value(value)))
