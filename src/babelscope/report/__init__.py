"""The HTML report of a run directory: one self-contained file rendered from the results files alone.

``render_report(run_dir)`` reads every ``STEP/results.json`` (nothing is re-run) and writes
``RUN_DIR/report.html``: inline CSS, figures as embedded PNGs, tables as HTML, a header with the run's
findings (one line per step: its headline figure next to the paper's, and whether it reproduces), the run's
models, data and software versions folded below them, a table of contents and, per step, its section plus
collapsible configuration and provenance blocks.

Each results ``kind`` is drawn by the section function that the command writing it names in the command table
(:class:`babelscope.commands.Results`; the functions live in :mod:`babelscope.report.sections`), else by one
registered with :func:`register_section` (kinds of commands outside the table), else by a generic section.
Importing this package is cheap: matplotlib loads only when a figure is drawn.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babelscope.report.base import Section, load_sections, register_section, section_for, section_kinds
from babelscope.report.markup import details, esc, flatten, format_value, kv_table, slug, to_yaml

__all__ = ["Section", "register_section", "render_report", "render_html", "section_for", "section_kinds"]

log = logging.getLogger(__name__)

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.figures = ok + "/" + imgs.length;
});
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
      var desc = th.classList.contains("sorted") && !th.classList.contains("desc");
      table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("sorted", "desc"); });
      th.classList.add("sorted");
      if (desc) th.classList.add("desc");
      function key(tr) {
        var td = tr.cells[col];
        if (td.hasAttribute("data-v")) { var v = td.getAttribute("data-v"); return v === "" ? null : +v; }
        return td.textContent.trim() || null;
      }
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        var c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
        return desc ? -c : c;
      });
      rows.forEach(function (tr) { body.appendChild(tr); });
    });
  });
});
"""


def render_report(
    run_dir: str | Path, out: Path | None = None, *, options: Mapping[str, Any] | None = None
) -> Path:
    """Write the HTML report of ``run_dir`` (default ``RUN_DIR/report.html``) atomically; return its path.

    ``options`` are passed to every section as ``doc["report"]`` (e.g. ``{"group_by": "family"}``).
    Raises :class:`~babelscope.errors.BabelscopeError` when no step has results.
    """
    from babelscope.runs import write_text

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text(out, render_html(run_dir, options=options))
    return out


def render_html(run_dir: str | Path, *, options: Mapping[str, Any] | None = None) -> str:
    """The report of ``run_dir`` as one HTML string."""
    from babelscope.errors import BabelscopeError
    from babelscope.runs import iter_results

    run_dir = Path(run_dir)
    docs = iter_results(run_dir) if run_dir.is_dir() else []
    if not docs:
        raise BabelscopeError(f"{run_dir}: no results.json in any step folder; run a step first")
    docs.sort(key=lambda d: (d.get("provenance", {}).get("created", ""), str(d.get("step", ""))))
    load_sections()

    parts, toc, used, lines = [], [], set(), []
    for doc in docs:
        anchor = "step-" + slug(str(doc.get("step", "step")))
        while anchor in used:
            anchor += "-x"
        used.add(anchor)
        section = _build_section(doc, options or {})
        toc.append(
            f'<li><a href="#{anchor}">{esc(section.title)}</a>'
            f'<span class="kind">{esc(doc.get("kind", "?"))}</span></li>'
        )
        lines.append((doc, section.title, anchor))
        parts.append(_step_html(doc, section, anchor))

    title = f"Babelscope report: {run_dir.resolve().name}"
    body = [
        _header_html(run_dir, docs, title, _findings_html(lines)),
        '<nav class="toc card"><h2>Contents</h2><ol><li><a href="#findings">Findings</a></li>'
        '<li><a href="#run">Run information</a></li>',
        *toc,
        "</ol></nav>",
        *parts,
        _footer_html(run_dir),
    ]
    from importlib import resources

    css = resources.files(__name__).joinpath("report.css").read_text(encoding="utf-8")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="babelscope {esc(_version())}">\n'
        f"<title>{esc(title)}</title>\n<style>\n{css}</style>\n<script>{_SCRIPT}</script>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _build_section(doc: dict[str, Any], options: Mapping[str, Any]) -> Section:
    """Run the kind's section function; if it fails, show the generic section with the error on top."""
    from babelscope.report.base import IMPORT_ERRORS, warn
    from babelscope.report.sections._generic import generic_section

    doc = {**doc, "report": dict(options)}
    kind = str(doc.get("kind", ""))
    fn = section_for(kind)
    try:
        section = fn(doc)
        if fn is generic_section and IMPORT_ERRORS:  # maybe this kind's module is the one that failed
            failed = "; ".join(f"{m}: {e}" for m, e in IMPORT_ERRORS.items())
            section.html.insert(
                0,
                f'<p class="error section-error">A report section module failed to import ({esc(failed)}); '
                f"if it draws {esc(kind)} results, this generic view replaces it.</p>",
            )
        return section
    except Exception as exc:  # a broken section must not cost the rest of the report
        warn(f"the {kind} view of step {doc.get('step')!r} failed ({type(exc).__name__}: {exc}); "
             "the report shows the recorded results instead")
        log.debug("report section for %r failed", kind, exc_info=True)
        section = generic_section(doc)
        section.html.insert(
            0,
            f'<p class="error section-error">The {esc(kind)} view of this step failed '
            f"({esc(type(exc).__name__)}: {esc(exc)}); showing the recorded results instead.</p>",
        )
        return section


def _findings_html(lines: list[tuple[dict[str, Any], str, str]]) -> str:
    """The first screen: one row per step (a link to its section), its headline figure on this model, the
    paper's, and whether the paper's finding is reproduced (see :mod:`babelscope.report.findings`)."""
    from babelscope.report.findings import finding_for, verdict

    rows = []
    missed = 0
    for doc, title, anchor in lines:
        f = finding_for(doc)
        words, cls = verdict(f)
        missed += cls == "no"
        rows.append(f'<tr class="finding {cls}"><th scope="row"><a href="#{anchor}">{esc(title)}</a></th>'
                    f"<td>{esc(f.ours)}</td><td>{esc(f.paper) or '—'}</td>"
                    f'<td class="verdict">{esc(words)}</td></tr>')
    note = (f'<p class="note">{missed} of {len(lines)} steps do not reproduce their paper\'s finding on this '
            "model (marked <b>not reproduced on this model</b>).</p>" if missed else "")
    return (
        '<section class="card findings" id="findings"><h2>Findings</h2>'
        '<table class="findings"><thead><tr><th scope="col">step</th><th scope="col">this model</th>'
        '<th scope="col">paper</th><th scope="col">verdict</th></tr></thead><tbody>'
        + "".join(rows) + f"</tbody></table>{note}</section>"
    )


def _step_html(doc: dict[str, Any], section: Section, anchor: str) -> str:
    prov = doc.get("provenance") or {}
    meta = [f"step <code>{esc(doc.get('step', '?'))}</code>"]
    if prov.get("created"):
        meta.append(f"created {esc(prov['created'])}")
    if isinstance(prov.get("seconds"), int | float):
        meta.append(f"took {esc(_duration(prov['seconds']))}")
    argv = prov.get("argv")
    if isinstance(argv, list) and argv:
        command = shlex.join([Path(str(argv[0])).name, *map(str, argv[1:])])
        meta.append(f"command <code>{esc(command)}</code>")
    config = doc.get("config") or {}
    return (
        f'<section class="step" id="{anchor}" data-kind="{esc(doc.get("kind", ""))}">\n'
        f'<h2>{esc(section.title)}<span class="kind">{esc(doc.get("kind", "?"))}</span></h2>\n'
        f'<p class="meta">{" · ".join(meta)}</p>\n'
        + "\n".join(section.html)
        + "\n"
        + details("configuration", f'<pre class="config">{esc(to_yaml(config))}</pre>', "config")
        + details("provenance", f"<pre>{esc(to_yaml(prov))}</pre>", "provenance")
        + "\n</section>"
    )


def _duration(seconds: float) -> str:
    """``42.3 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _model_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Model info records of a step: ``provenance.model`` (dict, list or name), else ``results.model``."""
    model = (doc.get("provenance") or {}).get("model")
    if model is None:
        model = (doc.get("results") or {}).get("model") if isinstance(doc.get("results"), dict) else None
    if model is None:
        return []
    records = model if isinstance(model, list) else [model]
    return [r if isinstance(r, dict) else {"name": str(r)} for r in records]


def _add_model(models: dict[str, dict[str, Any]], record: dict[str, Any], step: str) -> None:
    """Group model records by identity (the weights' checksum, else the name): steps that record the same
    model with more or fewer fields share one column, their fields merged."""
    flat = flatten(record, max_depth=2)
    ident = str(flat.get("checksum") or flat.get("name") or flat.get("spec") or json.dumps(flat, default=str))
    entry = models.setdefault(ident, {"steps": []})
    for key, value in flat.items():
        if entry.get(key) is None and value is not None:
            entry[key] = value
    if step not in entry["steps"]:
        entry["steps"].append(step)


def _merge_named(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fold a record without a checksum into the one checksummed model of the same name or spec."""
    out = {k: m for k, m in models.items() if m.get("checksum")}
    for key, m in models.items():
        if m.get("checksum"):
            continue
        names = {m.get("name"), m.get("spec")} - {None}
        same = [o for o in out.values() if names & {o.get("name"), o.get("spec")}]
        if len(same) == 1:
            target = same[0]
            target["steps"] += [s for s in m["steps"] if s not in target["steps"]]
            for field, value in m.items():
                target.setdefault(field, value)
        else:
            out[key] = m
    return out


def _header_html(run_dir: Path, docs: list[dict[str, Any]], title: str, findings: str = "") -> str:
    models: dict[str, dict[str, Any]] = {}
    data: dict[str, tuple[Any, list[str]]] = {}
    versions: dict[str, list[str]] = {}
    platforms: list[str] = []
    created = sorted(str(d.get("provenance", {}).get("created")) for d in docs if d.get("provenance"))
    for doc in docs:
        step = str(doc.get("step", "?"))
        prov = doc.get("provenance") or {}
        for record in _model_records(doc):
            _add_model(models, record, step)
        if prov.get("data") is not None:
            key = json.dumps(prov["data"], sort_keys=True, default=str)
            data.setdefault(key, (prov["data"], []))[1].append(step)
        for name, version in (prov.get("versions") or {}).items():
            if str(version) not in versions.setdefault(name, []):
                versions[name].append(str(version))
        if prov.get("platform") and prov["platform"] not in platforms:
            platforms.append(prov["platform"])

    span = created[0] if created else "?"
    if len(created) > 1 and created[-1] != created[0]:
        span += f" – {created[-1]}"
    sub = (
        f'<p class="sub">Run directory <code>{esc(run_dir)}</code> · {len(docs)} '
        f"step{'s' if len(docs) != 1 else ''} · results from {esc(span)}</p>"
    )

    if models:
        rows = [{**m, "steps": ", ".join(m["steps"])} for m in _merge_named(models).values()]
        first = ["name", "spec", "kind", "model_type", "parameters", "layers", "hidden_size", "vocab_size"]
        columns = [c for c in first if any(c in r for r in rows)]
        columns += [c for r in rows for c in r if c not in columns and c != "steps"] + ["steps"]
        model_html = _transposed(rows, list(dict.fromkeys(columns)))
    else:
        model_html = '<p class="note">No model recorded.</p>'
    if data:
        data_html = "".join(_data_card(record, steps) for record, steps in data.values())
    else:
        data_html = '<p class="note">No data checksums recorded.</p>'
    software: dict[str, Any] = {}
    for name, values in versions.items():
        software[name] = values[0] if len(values) == 1 else " / ".join(values) + " (differs between steps)"
    for i, plat in enumerate(platforms):
        software["platform" if i == 0 else f"platform {i + 1}"] = plat
    software_html = kv_table(software) if software else '<p class="note">No versions recorded.</p>'

    return (
        f'<header class="run">\n<h1>{esc(title)}</h1>\n{sub}\n{findings}\n'
        '<details class="run-info" id="run"><summary>Run information: models, data checksums, software</summary>'
        f'<div class="cards"><div class="card models"><h2>Models</h2>{model_html}</div>\n'
        f'<div class="card data"><h2>Data</h2>{data_html}</div>\n'
        f'<div class="card versions"><h2>Software</h2>{software_html}</div></div></details>\n</header>'
    )


def _data_card(record: Any, steps: list[str], shown: int = 6) -> str:
    """The data a step read; long checksum lists (one per language) fold into a details block."""
    flat = flatten(record) if isinstance(record, dict) else {"data": record}
    caption = "used by " + ", ".join(steps)
    if len(flat) <= shown + 2:
        return kv_table(flat, caption=caption)
    head = dict(list(flat.items())[:shown])
    rest = dict(list(flat.items())[shown:])
    return kv_table(head, caption=caption) + details(f"{len(rest)} more", kv_table(rest), "data-more")


def _transposed(records: list[dict[str, Any]], fields: list[str]) -> str:
    """Records side by side: one row per field, one column per record (for a few wide records)."""
    head = "".join(
        f'<th scope="col">{esc(r.get("name", f"model {i + 1}"))}</th>' for i, r in enumerate(records)
    )
    body = "".join(
        f'<tr><th scope="row">{esc(field.replace("_", " "))}</th>'
        + "".join(f"<td>{format_value(r.get(field))}</td>" for r in records)
        + "</tr>"
        for field in fields
        if field != "name" or len(records) > 1
    )
    return f'<table class="kv models"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'


def _footer_html(run_dir: Path) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<footer>Rendered by babelscope {esc(_version())} at {esc(now)} from the results files in "
        f"<code>{esc(run_dir)}</code>; nothing was re-run. {format_value(None)} marks a missing value."
        "</footer>"
    )


def _version() -> str:
    from babelscope import __version__

    return __version__
