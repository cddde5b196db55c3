"""The ``--layers`` grammar, one for every command that takes layers.

Layers are numbered 0..n for a model of n blocks: 0 is the embeddings, i the output of block i. A spec is
``all`` (0..n), ``middle`` (n // 2), or a comma-separated list of layers (``3,6,9``), ranges (``4-8``, both ends
included) and negative indices counted from the end (``-1`` = n, the last block's output; ``-4--1`` the last four);
an experiment file may also give an int or a list. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from babelscope.errors import BabelscopeError

_ITEM = re.compile(r"(-?\d+)(?:-(-?\d+))?")
HELP = "all, middle, or layers like 3,6,9, 4-8 and -1 (0 = embeddings, i = output of block i, -1 = the last)"


def parse_layers(spec: str | int | Iterable[int | str] | None, n_layers: int) -> list[int]:
    """The sorted layers ``spec`` names among 0..``n_layers``; a one-line error naming the valid range
    otherwise."""
    if spec in (None, "", "all"):
        return list(range(n_layers + 1))
    items = ([spec] if isinstance(spec, int) else str(spec).split(",") if isinstance(spec, str)
             else list(spec))
    out: list[int] = []
    bad: list[int] = []
    for item in items:
        part = str(item).strip()
        if part == "middle":
            out.append(n_layers // 2)
            continue
        match = _ITEM.fullmatch(part)
        if match is None:
            raise BabelscopeError(f"--layers {spec!r}: {part!r} is not a layer or a range; give {HELP}")
        given = [int(x) for x in match.groups() if x is not None]
        bad += [x for x in given if not 0 <= _index(x, n_layers) <= n_layers]
        lo, hi = (_index(x, n_layers) for x in (given * 2)[:2])
        if lo > hi:
            raise BabelscopeError(f"--layers {spec!r}: the range {part!r} is empty; give the lower layer first")
        out += list(range(lo, hi + 1))
    if bad:
        raise BabelscopeError(
            f"--layers {spec!r}: layer(s) {bad} out of range; this model has layers 0..{n_layers} "
            "(0 = embeddings, i = output of block i)"
        )
    return sorted(set(out))


def _index(layer: int, n_layers: int) -> int:
    """A negative index counts from the end: -1 is layer ``n_layers``."""
    return layer + n_layers + 1 if layer < 0 else layer

