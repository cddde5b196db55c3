"""``babelscope syntax extract | otdd | rsa | probe | meta`` (kept import-light: the work happens in :mod:`.steps`).

Each command's options are the fields of its step's config in :mod:`babelscope.syntax.configs`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from babelscope.commands import Command, Results, StepFunction, command_table
from babelscope.options import step_command
from babelscope.syntax.configs import ExtractConfig, MetaConfig, OtddConfig, ProbeConfig, RsaConfig

app = typer.Typer(help="Syntax and structural concepts: relation vectors, OTDD syntactic distance, RSA "
                       "alignability, probes (Xu et al. 2022; 2023).", no_args_is_help=True)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
SYNTAX_EXTRACT = Command("syntax-extract", ExtractConfig, StepFunction("babelscope.syntax.steps", "run_extract"),
                         (Results("syntax-extract", "syntax:extract_section"),))
SYNTAX_OTDD = Command("syntax-otdd", OtddConfig, StepFunction("babelscope.syntax.steps", "run_otdd"),
                      (Results("syntax-otdd", "syntax:otdd_section"),))
SYNTAX_RSA = Command("syntax-rsa", RsaConfig, StepFunction("babelscope.syntax.steps", "run_rsa"),
                     (Results("syntax-rsa", "syntax:rsa_section"),))
SYNTAX_PROBE = Command("syntax-probe", ProbeConfig, StepFunction("babelscope.syntax.steps", "run_probe"),
                       (Results("syntax-probe", "syntax:probe_section"),))
SYNTAX_META = Command("syntax-meta", MetaConfig, StepFunction("babelscope.syntax.steps", "run_meta"),
                      (Results("syntax-meta", "syntax_meta:meta_section"),))
EXPERIMENT_COMMANDS = command_table(SYNTAX_EXTRACT, SYNTAX_OTDD, SYNTAX_RSA, SYNTAX_PROBE, SYNTAX_META)

RUN_DIR = Path("runs/syntax")


def _echo(doc: dict, cfg, results_path: Path) -> None:
    typer.echo(json.dumps(doc["results"], indent=1, ensure_ascii=False, default=str)[:4000])
    typer.echo(f"results: {results_path}")


step_command(app, "extract", SYNTAX_EXTRACT, step="syntax-extract",
             run_dir=RUN_DIR, show=_echo,
             help="Word vectors per layer for every UD word into a streaming store (per language and layer).")
step_command(app, "otdd", SYNTAX_OTDD, step="syntax-otdd", run_dir=RUN_DIR,
             show=_echo, help="Optimal-transport dataset distance between languages' relation sets, and its "
             "typological links.")
step_command(app, "rsa", SYNTAX_RSA, step="syntax-rsa", run_dir=RUN_DIR,
             show=_echo, help="Alignability of structural concepts across languages (RSA, Procrustes) with controls.")
step_command(app, "probe", SYNTAX_PROBE, step="syntax-probe", run_dir=RUN_DIR,
             show=_echo, help="Linear relation/POS probes per layer with baselines, and the cross-lingual transfer "
             "matrix.")
step_command(app, "meta", SYNTAX_META, step="syntax-meta", run_dir=RUN_DIR, show=_echo,
             help="Meta-learned concept alignment: zero- and few-shot POS / relation classification in held-out "
             "languages from English prototypes, against probe and in-context baselines (Xu et al. 2023, Fig. 17).")
