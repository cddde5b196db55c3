"""``babelscope syntax extract | otdd | rsa | probe | meta`` (kept import-light: the work happens in :mod:`.steps`).

Each command's options are the fields of its step's config in :mod:`babelscope.syntax.configs`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from babelscope.options import step_command
from babelscope.syntax.configs import ExtractConfig, MetaConfig, OtddConfig, ProbeConfig, RsaConfig

app = typer.Typer(help="Syntax and structural concepts: relation vectors, OTDD syntactic distance, RSA "
                       "alignability, probes (Xu et al. 2022; 2023).", no_args_is_help=True)

EXPERIMENT_COMMANDS = {
    "syntax-extract": "babelscope.syntax.steps:ExtractConfig:run_extract",
    "syntax-otdd": "babelscope.syntax.steps:OtddConfig:run_otdd",
    "syntax-rsa": "babelscope.syntax.steps:RsaConfig:run_rsa",
    "syntax-probe": "babelscope.syntax.steps:ProbeConfig:run_probe",
    "syntax-meta": "babelscope.syntax.meta:MetaConfig:run",
}

RUN_DIR = Path("runs/syntax")


def _echo(doc: dict, cfg, results_path: Path) -> None:
    typer.echo(json.dumps(doc["results"], indent=1, ensure_ascii=False, default=str)[:4000])
    typer.echo(f"results: {results_path}")


step_command(app, "extract", ExtractConfig, "babelscope.syntax.steps:run_extract", step="syntax-extract",
             run_dir=RUN_DIR, show=_echo,
             help="Word vectors per layer for every UD word into a streaming store (per language and layer).")
step_command(app, "otdd", OtddConfig, "babelscope.syntax.steps:run_otdd", step="syntax-otdd", run_dir=RUN_DIR,
             show=_echo, help="Optimal-transport dataset distance between languages' relation sets, and its "
             "typological links.")
step_command(app, "rsa", RsaConfig, "babelscope.syntax.steps:run_rsa", step="syntax-rsa", run_dir=RUN_DIR,
             show=_echo, help="Alignability of structural concepts across languages (RSA, Procrustes) with controls.")
step_command(app, "probe", ProbeConfig, "babelscope.syntax.steps:run_probe", step="syntax-probe", run_dir=RUN_DIR,
             show=_echo, help="Linear relation/POS probes per layer with baselines, and the cross-lingual transfer "
             "matrix.")
step_command(app, "meta", MetaConfig, "babelscope.syntax.meta:run", step="syntax-meta", run_dir=RUN_DIR, show=_echo,
             help="Meta-learned concept alignment: zero- and few-shot POS / relation classification in held-out "
             "languages from English prototypes, against probe and in-context baselines (Xu et al. 2023, Fig. 17).")
