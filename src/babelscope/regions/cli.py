"""``babelscope regions ...``: importance, select, ablate, scan-dims (Zhang et al. 2024). Import-light."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from babelscope.options import Device, Dtype, Model, RunDir, config_from, print_results, run_dir_for

app = typer.Typer(
    help="Linguistic regions (Zhang et al., ACL 2024): per-language parameter importance, Top/Bottom/Random-k "
    "regions, removal and dimension perturbation. Steps chain inside one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS = {
    "regions": "babelscope.regions.pipeline:RegionsConfig:run",
    "regions-importance": "babelscope.regions.importance:ImportanceConfig:run",
    "regions-select": "babelscope.regions.select:SelectConfig:run",
    "regions-ablate": "babelscope.regions.ablate:AblateConfig:run",
    "regions-scan": "babelscope.regions.scan:ScanConfig:run",
}

Corpus = Annotated[str, typer.Option(help="udhr-sample (embedded), udhr, pud or a .conllu/.txt/.jsonl path.")]
Window = Annotated[int, typer.Option(help="Tokens per window; each starts with BOS.")]
Batch = Annotated[int, typer.Option(help="Windows per forward (and backward) pass.")]


def _finish(run, cfg, out: Path, step: str, table: Callable[[dict], list[dict]], columns: list[str],
            title: Callable[[dict], str]) -> None:
    """Run the step into the run directory ``out``, then print its main table and where the results are."""
    doc = run(cfg, out, step=step)
    if doc:
        print_results(doc, table(doc), columns, title(doc), out / step / "results.json")


@app.command("importance")
def importance_cmd(
    model: Model = "gemma-3-270m",
    corpus: Corpus = "udhr-sample",
    langs: Annotated[
        str, typer.Option(help="Comma-separated languages to score.")
    ] = "eng,fra,deu,spa,rus,cmn-Hans",
    max_tokens: Annotated[int, typer.Option(help="Token budget per language (importance text).")] = 2048,
    window: Window = 512,
    batch_size: Batch = 4,
    method: Annotated[
        str, typer.Option(help="taylor: θ⊙Σg (the paper's); per-step: Σ|θ⊙g| per batch.")
    ] = "taylor",
    test_fraction: Annotated[float, typer.Option(help="Fraction of unit ids held out for evaluation.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the id-based split.")] = 0,
    include: Annotated[str, typer.Option(help="Regex: score only block parameters whose name matches.")] = "",
    exclude: Annotated[str, typer.Option(help="Regex: leave out block parameters whose name matches.")] = "",
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "regions-importance",
) -> None:
    """Per-language importance S = θ ⊙ ∂L/∂θ (one safetensors file per language) and Imp = Σ|S|."""
    from babelscope.regions.importance import ImportanceConfig, run

    cfg = config_from(ImportanceConfig, locals())
    _finish(run, cfg, run_dir_for(run_dir, model), step, lambda doc: doc["tables"]["per_language"]["rows"],
            ["lang", "name", "tokens", "ppl", "sum_abs_score"], lambda doc: f"importance ({cfg.method})")


@app.command("select")
def select_cmd(
    model: Model = "gemma-3-270m",
    importance_step: Annotated[
        str, typer.Option(help="The importance step folder to read.")
    ] = "regions-importance",
    k: Annotated[
        str, typer.Option(help="Fractions whose masks are saved, e.g. 0.01,0.03 (each in (0, 1)).")
    ] = "0.01,0.03",
    scope: Annotated[
        str, typer.Option(help="tensor (per matrix, the paper's default), global, or both.")
    ] = "tensor,global",
    table_k: Annotated[str, typer.Option(help="Fractions of the per-matrix table.")] = "0.01,0.03,0.05",
    monolingual: Annotated[bool, typer.Option(help="Also save monolingual regions and overlaps.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of Random-k.")] = 0,
    skip_zeros: Annotated[
        bool,
        typer.Option(
            help="Draw Bottom-k and Random-k among weights whose importance is not 0 (weights already 0, e.g. "
            "in a quantised model, change nothing when removed); --no-skip-zeros: the paper's plain ranking."
        ),
    ] = True,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "regions-select",
) -> None:
    """Top-k / Bottom-k / Random-k and monolingual region masks, overlaps and the per-matrix table."""
    from babelscope.regions.select import SelectConfig, run

    cfg = config_from(SelectConfig, locals())
    _finish(run, cfg, run_dir_for(run_dir, model), step, lambda doc: doc["tables"]["regions"]["rows"],
            ["region", "k", "scope", "parameters", "norm_entries", "zero_importance", "file"], lambda doc: "regions")


@app.command("ablate")
def ablate_cmd(
    model: Model = "gemma-3-270m",
    select_step: Annotated[
        str, typer.Option(help="The select step folder whose masks are applied.")
    ] = "regions-select",
    corpus: Corpus = "udhr-sample",
    langs: Annotated[
        str, typer.Option(help="Evaluation languages (their held-out text).")
    ] = "eng,fra,deu,spa,rus,"
    "cmn-Hans,ita,por-BR,nld,pol,ces,swe,tur,arb,heb,hin,jpn,kor,vie,ind,ell,fin,hun,ukr",
    k: Annotated[str, typer.Option(help="Fractions to apply (masks saved by select).")] = "0.01,0.03",
    scope: Annotated[str, typer.Option(help="tensor, global, or both.")] = "tensor,global",
    regions: Annotated[str, typer.Option(help="Any of top,bottom,random.")] = "top,bottom,random",
    mode: Annotated[
        str, typer.Option(help="zero (remove), reset (to --initial), scale (× factor), noise.")
    ] = "zero",
    factor: Annotated[
        float, typer.Option(help="Multiplier (scale) or noise σ in units of the tensor's std.")
    ] = 0.0,
    include_norms: Annotated[
        bool, typer.Option(help="Also zero norm weights (off, as in the paper).")
    ] = False,
    initial: Annotated[
        str | None, typer.Option(help="Initial weights (safetensors file or dir) for reset.")
    ] = None,
    window: Window = 512,
    batch_size: Batch = 8,
    max_tokens: Annotated[int | None, typer.Option(help="Per-language cap on evaluation tokens.")] = None,
    generate: Annotated[
        bool, typer.Option(help="Greedy 'Fudan University is located in' before/after.")
    ] = True,
    gen_langs: Annotated[
        str, typer.Option(help="Languages of the generation prompt.")
    ] = "eng,cmn-Hans,fra,deu,spa,rus,jpn,arb",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per prompt.")] = 16,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "regions-ablate",
) -> None:
    """Perplexity per language with each region removed (Base / Top / Bottom / Random), and generations."""
    from babelscope.regions.ablate import AblateConfig, run

    cfg = config_from(AblateConfig, locals())
    _finish(run, cfg, run_dir_for(run_dir, model), step, lambda doc: doc["results"]["summary"],
            ["region", "k", "scope", "changed", "median_ratio", "median_ratio_heldout_langs"],
            lambda doc: "perplexity after / before")


@app.command("scan-dims")
def scan_cmd(
    model: Model = "gemma-3-270m",
    corpus: Corpus = "udhr-sample",
    langs: Annotated[
        str, typer.Option(help="Languages whose held-out text is scored.")
    ] = "eng,fra,deu,cmn-Hans,rus",
    layer: Annotated[int, typer.Option(help="Block index (0-based).")] = 1,
    norm: Annotated[
        str, typer.Option(help="Norm name inside the block, e.g. input_layernorm, post_attention_layernorm.")
    ] = "post_attention_layernorm",
    mode: Annotated[str, typer.Option(help="one (γ=1), scale (γ×factor) or zero (γ=0).")] = "zero",
    factor: Annotated[float, typer.Option(help="Multiplier for --mode scale.")] = 0.0,
    dims: Annotated[
        str, typer.Option(help="quick (top-N by activation + N random), all, or a comma list.")
    ] = "quick",
    top_n: Annotated[int, typer.Option(help="N of the quick scan.")] = 8,
    threshold: Annotated[float, typer.Option(help="Flag a dimension when PPL ≥ threshold × base.")] = 10.0,
    max_tokens: Annotated[int | None, typer.Option(help="Per-language token cap.")] = 128,
    window: Window = 512,
    batch_size: Batch = 8,
    test_fraction: Annotated[
        float, typer.Option(help="Fraction of unit ids held out (the scored side).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the random dimensions.")] = 0,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "regions-scan",
) -> None:
    """Perturb each dimension of a norm's scale γ and flag those that break the model."""
    from babelscope.regions.scan import ScanConfig, run

    cfg = config_from(ScanConfig, locals())
    _finish(run, cfg, run_dir_for(run_dir, model), step, lambda doc: doc["tables"]["dims"]["rows"][:20],
            ["dim", "act_max", "act_rank", "ppl", "ratio", "broken"],
            lambda doc: f"{doc['results']['norm']} ({cfg.mode}); base PPL {doc['results']['base_ppl']:.2f}")
