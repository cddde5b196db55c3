"""``babelscope neurons ...``: language-specific neurons (Tang et al., ACL 2024). Import-light."""

from __future__ import annotations

from typing import Annotated

import typer

from babelscope.options import Device, Dtype, Model, RunDir, config_from, print_results, run_dir_for

app = typer.Typer(
    help="Language-specific neurons (Tang et al., ACL 2024): activation probabilities of every FFN neuron per "
    "language, LAPE selection, deactivation perplexities and generations, and the overlap with the linguistic "
    "regions. Steps chain inside one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS = {
    "neurons": "babelscope.neurons.lape:NeuronsConfig:run",
    "neurons-deactivate": "babelscope.neurons.deactivate:DeactivateConfig:run",
    "neurons-overlap": "babelscope.neurons.overlap:OverlapConfig:run",
}

Corpus = Annotated[str, typer.Option(help="udhr-sample (embedded), udhr, pud or a .conllu/.txt/.jsonl path.")]
Window = Annotated[int, typer.Option(help="Tokens per window; each starts with BOS.")]
Batch = Annotated[int, typer.Option(help="Windows per forward pass.")]


def _show(doc: dict, table: str, columns: list[str], title: str, out, step: str, limit: int = 60) -> None:
    rows = doc["tables"][table]["rows"][:limit] if doc else []
    print_results(doc, rows, columns, title, out / step / "results.json")


@app.command("find")
def find_cmd(
    model: Model = "gemma-3-270m",
    corpus: Corpus = "udhr-sample",
    langs: Annotated[str, typer.Option(help="Comma-separated languages (at least two).")] =
    "eng,fra,deu,spa,rus,cmn-Hans,jpn,arb",
    max_tokens: Annotated[int, typer.Option(help="Token budget per language (the counting text).")] = 2048,
    window: Window = 512,
    batch_size: Batch = 4,
    site: Annotated[
        str, typer.Option(help="act: act(gate) > 0, the paper's; down-input: the down projection's input > 0.")
    ] = "act",
    filter_rate: Annotated[
        float, typer.Option(help="Candidates: probability in some language above this quantile of all.")
    ] = 0.95,
    top_rate: Annotated[float, typer.Option(help="Keep this share of all neurons (lowest LAPE).")] = 0.01,
    bar_rate: Annotated[
        float, typer.Option(help="Assign a kept neuron to each language above this quantile.")
    ] = 0.95,
    test_fraction: Annotated[float, typer.Option(help="Fraction of unit ids held out for deactivation.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the id-based split.")] = 0,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "neurons",
) -> None:
    """Activation probability of every FFN neuron per language, LAPE, and the language-specific neurons."""
    from babelscope.neurons.lape import NeuronsConfig, run

    cfg = config_from(NeuronsConfig, locals())
    out = run_dir_for(run_dir, model)
    _show(run(cfg, out, step=step), "per_language", ["lang", "name", "tokens", "neurons", "only_this_language"],
          "language-specific neurons", out, step)


@app.command("deactivate")
def deactivate_cmd(
    model: Model = "gemma-3-270m",
    neurons_step: Annotated[str, typer.Option(help="The neurons step folder to read.")] = "neurons",
    corpus: Annotated[str | None, typer.Option(help="Evaluation corpus (default: the neurons step's).")] = None,
    langs: Annotated[
        str | None, typer.Option(help="Evaluation languages (default: the neurons step's).")
    ] = None,
    off: Annotated[
        str | None, typer.Option(help="Languages whose neurons are switched off, one row each (default: all).")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Per-language cap on evaluation tokens.")] = 512,
    window: Window = 512,
    batch_size: Batch = 8,
    random: Annotated[bool, typer.Option(help="Also random neurons, same count per layer (control).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the random neurons.")] = 0,
    generate: Annotated[bool, typer.Option(help="Greedy generations with each language's neurons off.")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per prompt.")] = 16,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "neurons-deactivate",
) -> None:
    """Perplexity matrix (rows: language whose neurons are off, columns: language evaluated, ratio to base)."""
    from babelscope.neurons.deactivate import DeactivateConfig, run

    cfg = config_from(DeactivateConfig, locals())
    out = run_dir_for(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        cols = ["off", *doc["results"]["evaluation_languages"]]
        _show(doc, "matrix", cols, "perplexity ratio (neurons off / base)", out, step)


@app.command("overlap")
def overlap_cmd(
    model: Model = "gemma-3-270m",
    neurons_step: Annotated[str, typer.Option(help="The neurons step folder.")] = "neurons",
    select_step: Annotated[str, typer.Option(help="The regions select step folder.")] = "regions-select",
    k: Annotated[float, typer.Option(help="Region fraction (a k the select step saved, e.g. 0.01).")] = 0.01,
    scope: Annotated[str, typer.Option(help="tensor or global (as saved by select).")] = "tensor",
    regions: Annotated[
        str, typer.Option(help="lang (the language's own Top-k of |S|), mono (monolingual), core (Top-k of Imp).")
    ] = "lang,mono,core",
    draws: Annotated[int, typer.Option(help="Random neuron sets drawn for the baselines.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the random sets.")] = 0,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "neurons-overlap",
) -> None:
    """How much of each language's LAPE neurons the rows/columns of its Top-k region touch, against random."""
    from babelscope.neurons.overlap import OverlapConfig, run

    cfg = config_from(OverlapConfig, locals())
    out = run_dir_for(run_dir, model)
    _show(run(cfg, out, step=step), "overlap",
          ["lang", "region", "neurons", "weight_share", "weight_random_layer_matched", "weight_p_layer_matched",
           "weight_random_active", "weight_p_active"], "LAPE neurons in the regions", out, step)
