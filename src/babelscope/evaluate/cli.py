"""``babelscope eval ...``: knowledge benchmarks, judged response quality, code-switching, in-context POS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelscope.options import config_from

app = typer.Typer(help="Evaluate: knowledge benchmarks (MC by log-likelihood, MGSM), judged responses, "
                  "code-switching rate, in-context POS tagging.", no_args_is_help=True)

#: experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run"
EXPERIMENT_COMMANDS = {
    "bench": "babelscope.evaluate.knowledge:BenchConfig:run",
    "respond": "babelscope.evaluate.respond:RespondConfig:run",
    "codeswitch": "babelscope.evaluate.codeswitch:CodeSwitchConfig:run",
    "pos": "babelscope.evaluate.pos:PosConfig:run",
}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec: gemma-3-270m, a directory, a .gguf or a "
                                       "hub id.")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", "-o", help="Run directory (default runs/<model>); "
                                                "re-run with the same one to resume.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: where it loads).")]


def _run_dir(run_dir: Path | None, model: str) -> Path:
    return run_dir or Path("runs") / Path(model).name.replace(".gguf", "")


@app.command("bench")
def bench(
    benchmark: Annotated[str, typer.Argument(help="xcopa, xwinograd, mmlu, ceval, agieval, gaokao, mgsm, or a task "
                                             "YAML path.")] = "xcopa",
    model: ModelOpt = "gemma-3-270m",
    subsets: Annotated[str, typer.Option(help="Languages or subjects, comma-separated, or 'all'.")] = "all",
    shots: Annotated[int | None, typer.Option(help="Solved examples in each prompt (default: the task's: 5 for "
                                              "MMLU/C-Eval, 4 for MGSM, else 0).")] = None,
    limit: Annotated[int | None, typer.Option(help="First N items per subset.")] = None,
    path: Annotated[str | None, typer.Option(help="Override the task's data path pattern ({lang}, {subject}, "
                                             "{split}); 'embedded/xcopa-sample.jsonl' is the embedded sample.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation tasks: answer length cap.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    run_dir: RunDirOpt = None,
    step: Annotated[str | None, typer.Option(help="Step folder (default bench-<benchmark>).")] = None,
) -> None:
    """Score a benchmark: accuracy and length-normalised accuracy per subset (MC), exact match (MGSM)."""
    from babelscope.evaluate.knowledge import BenchConfig, run

    cfg = config_from(BenchConfig, locals())
    out = _run_dir(run_dir, model)
    name = step or f"bench-{Path(benchmark).stem}"
    doc = run(cfg, out, step=name)
    if doc:
        _print_rows(doc["tables"]["per_subset"]["rows"], f"{doc['results']['benchmark']} "
                    f"({doc['results']['shots']}-shot) on {doc['results']['model']}")
        typer.echo(f"results: {out / name / 'results.json'}")


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(*rows[0].keys(), title=title)
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()])
    Console().print(table)


@app.command("respond")
def respond(
    model: ModelOpt = "gemma-3-270m",
    instructions: Annotated[str, typer.Option(help="'embedded' (a few of ours), 'belle' (BELLE eval set, "
                                              "research-only) or a JSONL of instruction/reference/lang.")] = "embedded",
    langs: Annotated[str, typer.Option(help="Only these languages (comma-separated) or 'all'.")] = "all",
    limit: Annotated[int | None, typer.Option(help="First N instructions.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Response length cap in tokens.")] = 64,
    judge: Annotated[str, typer.Option(help="local (a Hugging Face model), openai (an OpenAI-compatible "
                                       "endpoint) or none.")] = "local",
    judge_model: Annotated[str | None, typer.Option(help="Local judge model spec (default: --model).")] = None,
    judge_url: Annotated[str | None, typer.Option(help="Endpoint base URL, e.g. http://127.0.0.1:8000/v1.")] = None,
    judge_api_model: Annotated[str | None, typer.Option(help="Model name at the endpoint.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable with the endpoint's API key (the key "
                                             "itself is never stored).")] = "OPENAI_API_KEY",
    timeout: Annotated[float, typer.Option(help="Seconds per judge request.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries on timeouts, connection errors, 429 and 5xx.")] = 4,
    judge_max_tokens: Annotated[int, typer.Option(help="Judge reply length cap in tokens.")] = 64,
    pipeline_check: Annotated[bool, typer.Option(help="Label results as a pipeline check.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 4,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    run_dir: RunDirOpt = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "respond",
) -> None:
    """Generate responses and judge them: ACC, F, INFO, LC, H (0-3 each) and AVG per language."""
    from babelscope.evaluate.respond import RespondConfig, run

    cfg = config_from(RespondConfig, locals())
    out = _run_dir(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        _print_rows(doc["tables"]["per_language"]["rows"], f"responses of {doc['results']['model']} judged by "
                    f"{doc['results']['judge']}")
        typer.echo(f"results: {out / step / 'results.json'}")


@app.command("codeswitch")
def codeswitch(
    responses: Annotated[str, typer.Option(help="A finished step in the run directory (e.g. respond) or a JSONL "
                                           "of id/lang/response.")] = "respond",
    model: ModelOpt = "gemma-3-270m",
    min_letters: Annotated[int, typer.Option(help="Letters a run in a foreign script needs to count.")] = 2,
    min_words: Annotated[int, typer.Option(help="Words a clause needs before language identification.")] = 5,
    threshold: Annotated[float, typer.Option(help="Language-identification probability for a switch.")] = 0.95,
    run_dir: RunDirOpt = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "codeswitch",
) -> None:
    """Code-switching rate per language: share of responses with a segment in another language."""
    from babelscope.evaluate.codeswitch import CodeSwitchConfig, run

    cfg = config_from(CodeSwitchConfig, locals())
    out = _run_dir(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        _print_rows(doc["tables"]["per_language"]["rows"], "code-switching rate")
        typer.echo(f"results: {out / step / 'results.json'}")


@app.command("pos")
def pos(
    model: ModelOpt = "gemma-3-270m",
    langs: Annotated[str, typer.Option(help="Languages with a UD treebank (comma-separated).")] = "de,fr,ru",
    treebanks: Annotated[str, typer.Option(help="ud (the shared UD folder) or embedded (small PUD samples).")] = "ud",
    settings: Annotated[str, typer.Option(help="Demonstrations from the target language (MONO), English (EN) "
                                          "or both.")] = "MONO,EN",
    shots: Annotated[int, typer.Option(help="Demonstrations per prompt.")] = 3,
    runs: Annotated[int, typer.Option(help="Runs with different demonstration samples (mean and std).")] = 10,
    queries: Annotated[int, typer.Option(help="Query sentences per language.")] = 20,
    max_words: Annotated[int, typer.Option(help="Only sentences with at most this many words.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the demonstration samples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 4,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    run_dir: RunDirOpt = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "pos",
) -> None:
    """In-context POS tagging: token accuracy against UD with MONO or EN demonstrations, mean and std over runs."""
    from babelscope.evaluate.pos import PosConfig, run

    cfg = config_from(PosConfig, locals())
    out = _run_dir(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        _print_rows(doc["tables"]["per_language"]["rows"], f"in-context POS, {shots}-shot, {runs} runs")
        typer.echo(f"results: {out / step / 'results.json'}")
