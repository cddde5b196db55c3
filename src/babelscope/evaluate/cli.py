"""``babelscope eval ...``: knowledge benchmarks, judged response quality, code-switching, in-context POS.

Each command's options are the fields of its step's config (:func:`babelscope.options.step_command`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from babelscope.commands import Command, Results, StepFunction, command_table
from babelscope.evaluate.codeswitch import CodeSwitchConfig
from babelscope.evaluate.knowledge import BenchConfig
from babelscope.evaluate.pos import PosConfig
from babelscope.evaluate.respond import RespondConfig
from babelscope.options import step_command

app = typer.Typer(help="Evaluate: knowledge benchmarks (MC by log-likelihood, MGSM), judged responses, "
                  "code-switching rate, in-context POS tagging.", no_args_is_help=True)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
BENCH = Command("bench", BenchConfig, StepFunction("babelscope.evaluate.knowledge"),
                (Results("knowledge", "evaluate:knowledge_section"),))
RESPOND = Command("respond", RespondConfig, StepFunction("babelscope.evaluate.steps", "run_respond"),
                  (Results("responses", "evaluate:responses_section"),))
CODESWITCH = Command("codeswitch", CodeSwitchConfig, StepFunction("babelscope.evaluate.steps", "run_codeswitch"),
                     (Results("codeswitch", "evaluate:codeswitch_section"),))
POS = Command("pos", PosConfig, StepFunction("babelscope.evaluate.steps", "run_pos"),
              (Results("pos", "evaluate:pos_section"),))
EXPERIMENT_COMMANDS = command_table(BENCH, RESPOND, CODESWITCH, POS)


def _rows(table: str, title: Callable[[dict, object], str]) -> Callable[[dict, object, Path], None]:
    """Show every column of ``doc["tables"][table]`` (floats to 3 decimals) and where the results are."""

    def show(doc: dict, cfg, results_path: Path) -> None:
        from rich.console import Console
        from rich.table import Table

        rows = doc["tables"][table]["rows"]
        if rows:
            shown = Table(*rows[0].keys(), title=title(doc, cfg))
            for r in rows:
                shown.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()])
            Console().print(shown)
        typer.echo(f"results: {results_path}")

    return show


step_command(app, "bench", BENCH, arguments=("benchmark",),
             step=lambda cfg: f"bench-{Path(cfg.benchmark).stem}", step_help="Step folder (default bench-<benchmark>).",
             show=_rows("per_subset", lambda doc, cfg: f"{doc['results']['benchmark']} "
                        f"({doc['results']['shots']}-shot) on {doc['results']['model']}"),
             help="Score a benchmark: accuracy and length-normalised accuracy per subset (MC), exact match (MGSM).")

step_command(app, "respond", RESPOND, step="respond",
             show=_rows("per_language", lambda doc, cfg: f"responses of {doc['results']['model']} judged by "
                        f"{doc['results']['judge']}"),
             help="Generate responses and judge them: ACC, F, INFO, LC, H (0-3 each) and AVG per language.")

step_command(app, "codeswitch", CODESWITCH, step="codeswitch",
             show=_rows("per_language", lambda doc, cfg: "code-switching rate"),
             help="Code-switching rate per language: share of responses with a segment in another language.")

step_command(app, "pos", POS, step="pos",
             show=_rows("per_language", lambda doc, cfg: f"in-context POS, {cfg.shots}-shot, {cfg.runs} runs"),
             help="In-context POS tagging: token accuracy against UD with MONO or EN demonstrations, mean and std "
             "over runs.")
