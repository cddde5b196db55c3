"""``babelscope export ...``: a finished step's results in other tools' formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Export a finished step's results in other tools' formats: lm-evaluation-harness's "
                  "results/samples files, Every Eval Ever records.", no_args_is_help=True)

#: no experiment steps here
EXPERIMENT_COMMANDS: dict[str, str] = {}

Step = Annotated[Path, typer.Argument(help="A finished step folder, RUN_DIR/STEP (e.g. runs/mine/bench-xcopa).")]


@app.command("lm-eval")
def lm_eval(step: Step) -> None:
    """Write lm-evaluation-harness's results_<time>.json and samples_<task>_<time>.jsonl into STEP/lm-eval/
    (an `eval bench` step only; `eval bench` writes them itself too)."""
    from babelscope.evaluate.knowledge import step_items
    from babelscope.evaluate.lm_eval_files import check_bench_step, write_lm_eval_files

    doc = check_bench_step(step)
    for path in write_lm_eval_files(step, doc, step_items(doc)):
        typer.echo(str(path))


@app.command("eee")
def eee(step: Step) -> None:
    """Write STEP as an Every Eval Ever record (schema 0.3.0) under STEP/eee/data/<evaluation>/<developer>/<model>/:
    <uuid>.json plus, for benchmark and judged steps, <uuid>_samples.jsonl (one record per item)."""
    from babelscope.export.eee import write_eee

    for path in write_eee(step):
        typer.echo(str(path))
