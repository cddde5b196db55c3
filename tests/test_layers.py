"""The one ``--layers`` grammar (babelscope.layers) and the shared median (babelscope.numeric)."""

from __future__ import annotations

import statistics

import pytest

from babelscope.errors import BabelscopeError
from babelscope.layers import parse_layers
from babelscope.numeric import median


def test_layers_grammar():
    assert parse_layers("all", 3) == parse_layers(None, 3) == parse_layers("", 3) == [0, 1, 2, 3]
    assert parse_layers("middle", 18) == [9]
    assert parse_layers("4-8", 18) == [4, 5, 6, 7, 8]
    assert parse_layers("9, 3,6", 18) == [3, 6, 9]
    assert parse_layers("-1", 18) == [18] and parse_layers("-4--1", 18) == [15, 16, 17, 18]
    assert parse_layers("0,middle,-1", 18) == [0, 9, 18]
    assert parse_layers(9, 18) == [9] and parse_layers([6, "3"], 18) == [3, 6]  # experiment files: int or list
    with pytest.raises(BabelscopeError, match=r"layer\(s\) \[4\] out of range.*0\.\.3"):
        parse_layers("1,4", 3)
    with pytest.raises(BabelscopeError, match=r"layer\(s\) \[-5\] out of range"):
        parse_layers("-5", 3)
    with pytest.raises(BabelscopeError, match="not a layer"):
        parse_layers("x", 3)
    with pytest.raises(BabelscopeError, match="empty"):
        parse_layers("3-1", 3)


def test_the_lens_and_syntax_read_the_same_grammar():
    from babelscope.lens.logit_lens import parse_layers as lens_layers
    from babelscope.syntax.steps import parse_layers as syntax_layers

    assert lens_layers is parse_layers and syntax_layers is parse_layers


def test_median():
    assert median([]) is None and median([None]) is None
    assert median([3.0, None, 1.0]) == 2.0
    values = [0.3, 1.7, 2.2, 9.1, 4.4]
    assert median(values) == statistics.median(values) == 2.2
