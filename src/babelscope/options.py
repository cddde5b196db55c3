"""Command-line options shared by every capability's commands, and configs built from them. Import-light."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

Model = Annotated[
    str, typer.Option("--model", "-m", help="Model spec: gemma-3-270m, a directory, a .gguf or a hub id.")
]
RunDir = Annotated[
    Path | None,
    typer.Option("--run-dir", "-o", help="Run directory (default runs/<model>); re-run with the same one to resume."),
]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: where it loads).")]

C = TypeVar("C")


def run_dir_for(run_dir: Path | None, model: str) -> Path:
    """The run directory: the one given, else ``runs/<model name>``."""
    return run_dir or Path("runs") / Path(model).name.replace(".gguf", "")


def config_from(cls: type[C], options: dict[str, Any], **renamed: str) -> C:
    """A step's config dataclass from a command's options (``locals()``), keeping the config's fields only;
    ``renamed`` maps a field to the option that carries it (``otdd="otdd_step"``)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in options.items() if k in fields}
    values.update({field: options[option] for field, option in renamed.items()})
    return cls(**values)


def print_results(doc: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], title: str,
                  results_path: Path) -> None:
    """Print a step's main table as plain text (no report HTML in a terminal) and where its results are; nothing
    for a rank that wrote no results (``doc`` empty)."""
    if not doc:
        return
    from rich.console import Console
    from rich.table import Table

    from babelscope.report.markup import format_plain

    shown = Table(*columns, title=title)
    for r in rows:
        shown.add_row(*(format_plain(r.get(c)) for c in columns))
    Console().print(shown)
    typer.echo(f"results: {results_path}")
