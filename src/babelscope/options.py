"""Command-line options, built from the steps' config dataclasses. Import-light.

A step's config dataclass is the one place where an option is declared: its field gives the name (``max_tokens``
is ``--max-tokens``), the type, the default, and, through :func:`babelscope.fields.opt` (re-exported here), the
help text and constraints; configs import it from :mod:`babelscope.fields`, which needs no Typer.
:func:`step_command` turns the dataclass into a Typer command, so ``babelscope regions importance --help`` and an
experiment file's ``command: regions-importance`` accept the same options with the same defaults::

    @dataclass
    class ImportanceConfig:
        model: str = "gemma-3-270m"                  # model, dtype and device take the shared help below
        max_tokens: int = opt(2048, "Token budget per language (importance text).")

    REGIONS_IMPORTANCE = Command("regions-importance", ImportanceConfig,
                                 StepFunction("babelscope.regions.steps", "run_importance"))
    step_command(app, "importance", REGIONS_IMPORTANCE, help="...", show=results_table("per_language", [...], "..."))
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from babelscope.commands import Command, StepFunction
from babelscope.fields import COMMON, cli_fields, field_help, opt  # noqa: F401  (re-exported)

Model = Annotated[str, typer.Option(*COMMON["model"][0], help=COMMON["model"][1])]
RunDir = Annotated[
    Path | None,
    typer.Option("--run-dir", "-o", help="Run directory (default runs/<model>); re-run with the same one to resume."),
]
STEP_HELP = "Step folder name inside the run directory."


def run_dir_for(run_dir: Path | None, model: str) -> Path:
    """The run directory: the one given, else ``runs/<model name>`` (the first of comma-separated models)."""
    return run_dir or Path("runs") / Path(model.split(",")[0]).name.replace(".gguf", "")


def step_command(app: typer.Typer, name: str, cmd: Command | type, run: str | None = None, *, help: str,
                 step: str | Callable[[Any], str] | None = None, step_help: str = STEP_HELP,
                 show: Callable[[dict, Any, Path], None] | None = None, run_dir: Path | None = None,
                 arguments: Sequence[str] = (), required: Sequence[str] = ()) -> None:
    """Register ``NAME`` on ``app`` for ``cmd`` (a :class:`~babelscope.commands.Command` of the command table;
    or, in the older form, a config class and ``run`` as ``"module:function"``): one option per field of its config
    dataclass (type, default and help from the field), plus ``--run-dir`` and ``--step``. The command builds the
    config, runs the step function (imported when the command runs) into the run directory and calls
    ``show(doc, cfg, results_path)`` with the results it returns (none on ranks that wrote nothing).

    ``step``: the step folder (default: the command's name), or a function of the config (the option's default is
    then ``None``); ``run_dir``: a
    fixed default run directory (else ``runs/<model>``; a config without a model gets a ``--model`` option that
    only names it); ``arguments``: fields given as positional arguments; ``required``: fields without a default
    on the command line (an experiment file's check names them)."""
    if isinstance(cmd, Command):
        cls, function = cmd.config, cmd.run
        step = cmd.name if step is None else step
    else:
        cls, function = cmd, StepFunction.parse(run or "")
    hints = typing.get_type_hints(cls)
    P = inspect.Parameter
    params = []
    for f in cli_fields(cls):
        flags, text = field_help(f)
        info = typer.Argument(help=text) if f.name in arguments else typer.Option(*flags, help=text)
        default = P.empty if f.name in required else f.default
        params.append(P(f.name, P.KEYWORD_ONLY, default=default, annotation=Annotated[hints[f.name], info]))
    names = {p.name for p in params}
    own_model = "model" not in names and run_dir is None
    if own_model:  # select, overlap: the model only names the run directory
        params.append(P("model", P.KEYWORD_ONLY, default="gemma-3-270m", annotation=Model))
    if run_dir is None:
        params.append(P("run_dir", P.KEYWORD_ONLY, default=None, annotation=RunDir))
    else:
        params.append(P("run_dir", P.KEYWORD_ONLY, default=run_dir, annotation=Annotated[
            Path, typer.Option("--run-dir", "-o", help="Run directory; re-run with the same one to resume.")]))
    fixed_step = isinstance(step, str)
    params.append(P("step", P.KEYWORD_ONLY, default=step if fixed_step else None,
                    annotation=Annotated[str if fixed_step else str | None, typer.Option(help=step_help)]))

    def command(**options: Any) -> None:
        out, folder = options.pop("run_dir"), options.pop("step")
        model = options.pop("model") if own_model else None
        cfg = cls(**options)
        out = run_dir_for(out, model or getattr(cfg, "model", None) or "gemma-3-270m")
        folder = folder if folder is not None else step(cfg)
        doc = function(cfg, out, step=folder)
        if doc and show is not None:
            show(doc, cfg, out / folder / "results.json")

    command.__name__ = command.__qualname__ = name.replace("-", "_")
    command.__signature__ = inspect.Signature(params, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    command.config = cls  # what tests compare the options with
    app.command(name, help=help)(command)


def results_table(table: str, columns: Sequence[str], title: str | Callable[[dict, Any], str],
                  limit: int | None = None) -> Callable[[dict, Any, Path], None]:
    """A ``show`` for :func:`step_command`: the first ``limit`` rows of ``doc["tables"][table]`` as plain text."""

    def show(doc: dict, cfg: Any, results_path: Path) -> None:
        rows = doc["tables"][table]["rows"][:limit]
        print_results(doc, rows, list(columns), title if isinstance(title, str) else title(doc, cfg), results_path)

    return show


def print_results(doc: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], title: str,
                  results_path: Path) -> None:
    """Print a step's main table as plain text (no report HTML in a terminal) and where its results are; nothing
    for a rank that wrote no results (``doc`` empty)."""
    if not doc:
        return
    from rich.console import Console
    from rich.table import Table

    from babelscope.formatting import format_plain

    shown = Table(*columns, title=title)
    for r in rows:
        shown.add_row(*(format_plain(r.get(c)) for c in columns))
    Console().print(shown)
    typer.echo(f"results: {results_path}")
