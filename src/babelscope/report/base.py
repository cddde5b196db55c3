"""Sections of the report, and how a results ``kind`` finds the function that renders it: the command table
first (each :class:`~babelscope.commands.Command` names the kinds it writes and their sections), then the
sections registered with :func:`register_section` (kinds of commands outside the table), else the generic one."""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from babelscope.report.section import Section


def table_rows(doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The rows of the results table ``name`` of a results document (``[]`` when the step wrote none)."""
    return list(((doc.get("tables") or {}).get(name) or {}).get("rows") or [])


def table_file(doc: Mapping[str, Any], name: str) -> str | None:
    """The file, beside the results, that holds table ``name`` in full (linked under the table)."""
    return ((doc.get("tables") or {}).get(name) or {}).get("file")


def matrix_of(
    rows: Iterable[Mapping[str, Any]],
    row: str | Callable[[Mapping[str, Any]], Any],
    col: str | Callable[[Mapping[str, Any]], Any],
    value: str | Callable[[Mapping[str, Any]], Any],
    *,
    row_labels: Sequence[Any] | None = None,
    col_labels: Sequence[Any] | None = None,
    symmetric: bool = False,
    diagonal: float = math.nan,
) -> tuple[list[Any], list[Any], list[list[float]]]:
    """Long table rows as a matrix for a heatmap: ``(row labels, column labels, M)`` with
    ``M[i][j] = value(r)`` for the row ``r`` at ``(row(r), col(r))``. Each of ``row``, ``col`` and ``value`` is a
    field name or a function of the row. Labels are taken in first-seen order unless given (rows outside given
    labels are left out, and rows whose value is None give no cell); cells no row gives are NaN. ``symmetric``:
    one label list for both axes, each value mirrored, ``diagonal`` on the diagonal."""
    row_of, col_of, value_of = (f if callable(f) else (lambda r, k=f: r.get(k)) for f in (row, col, value))
    cells = [(row_of(r), col_of(r), value_of(r)) for r in rows]
    if symmetric:  # one label list, in first-seen order over both ends of every pair
        row_labels = col_labels = row_labels or list(dict.fromkeys(x for a, b, _ in cells for x in (a, b)))
    row_labels = list(row_labels or dict.fromkeys(a for a, _, _ in cells))
    col_labels = list(col_labels or dict.fromkeys(b for _, b, _ in cells))
    ri, ci = {x: i for i, x in enumerate(row_labels)}, {x: j for j, x in enumerate(col_labels)}
    M = [[diagonal if symmetric and i == j else math.nan for j in range(len(col_labels))]
         for i in range(len(row_labels))]
    for a, b, v in cells:
        if v is None or a not in ri or b not in ci:
            continue
        M[ri[a]][ci[b]] = float(v)
        if symmetric:
            M[ci[b]][ri[a]] = float(v)
    return row_labels, col_labels, M


log = logging.getLogger(__name__)

SectionFn = Callable[[dict[str, Any]], Section]

_SECTIONS: dict[str, SectionFn] = {}
#: the sections the command table names, by kind (filled by :func:`load_sections`)
_TABLE: dict[str, SectionFn] = {}
_LOADED = False
#: Section modules that failed to import: ``{module: "ErrorType: message"}`` (shown in the report and on stderr).
IMPORT_ERRORS: dict[str, str] = {}


def warn(message: str) -> None:
    """A report problem, on stderr (the report shows it too): never only in a log nobody reads."""
    print(f"babelscope report: {message}", file=sys.stderr)


def register_section(kind: str, *, replace: bool = False) -> Callable[[SectionFn], SectionFn]:
    """Decorator: render results of ``kind`` with the decorated ``(doc) -> Section`` function (for a kind that no
    command of the table names a section for; the table's own section comes first).

    ``doc`` is the step's results document (see :mod:`babelscope.runs`) plus ``doc["report"]``, the
    report options (e.g. ``{"group_by": "family"}``).
    """

    def decorate(fn: SectionFn) -> SectionFn:
        old = _SECTIONS.get(kind)
        if old is not None and not replace and _qualname(old) != _qualname(fn):
            raise ValueError(f"a report section for kind {kind!r} is already registered ({_qualname(old)})")
        _SECTIONS[kind] = fn
        return fn

    return decorate


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def load_sections() -> None:
    """Import every module in :mod:`babelscope.report.sections` (so a module that fails to import is named, and
    any section registered there counts), then the sections of the command table."""
    global _LOADED
    if _LOADED:
        return
    from babelscope.report import sections

    for info in pkgutil.iter_modules(sections.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{sections.__name__}.{info.name}")
        except Exception as exc:  # one broken section module must not cost the whole report
            IMPORT_ERRORS[info.name] = f"{type(exc).__name__}: {exc}"
            warn(f"section module {info.name!r} failed to import ({IMPORT_ERRORS[info.name]}); the kinds it "
                 "draws fall back to the generic view")
            log.debug("section module %r failed to import", info.name, exc_info=True)
    _TABLE.clear()
    _TABLE.update(table_sections())
    _LOADED = True


def table_sections() -> dict[str, SectionFn]:
    """``{kind: section}`` of every command in the table that names a section of its own (not the generic one);
    a section whose module fails to import is left out (its kinds get the generic view) and named."""
    from babelscope.commands import GENERIC_SECTION
    from babelscope.registry import all_commands

    try:
        commands = all_commands()
    except Exception as exc:  # a broken capability must not cost the whole report
        warn(f"the command table failed to load ({type(exc).__name__}: {exc}); every kind falls back to a "
             "registered or the generic view")
        return {}
    out: dict[str, SectionFn] = {}
    named: dict[str, str] = {}
    for cmd in commands.values():
        for res in cmd.results:
            if res.section == GENERIC_SECTION:
                continue
            if named.setdefault(res.kind, res.section) != res.section:
                raise ValueError(f"results kind {res.kind!r} has two sections in the command table: "
                                 f"{named[res.kind]} and {res.section}")
            if res.kind in out:
                continue
            try:
                out[res.kind] = res.load_section()
            except Exception as exc:
                name = res.module.rpartition(".")[2]
                if name not in IMPORT_ERRORS:
                    IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
                    warn(f"section module {name!r} failed to import ({IMPORT_ERRORS[name]}); the kinds it draws "
                         "fall back to the generic view")
    return out


def section_for(kind: str) -> SectionFn:
    """The section function for ``kind``: the command table's, else a registered one, else the generic
    section."""
    load_sections()
    from babelscope.report.sections._generic import generic_section

    return _TABLE.get(kind) or _SECTIONS.get(kind, generic_section)


def section_kinds() -> list[str]:
    """Kinds that have a custom section (in the command table or registered)."""
    load_sections()
    return sorted(set(_TABLE) | set(_SECTIONS))
