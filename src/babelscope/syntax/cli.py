"""``babelscope syntax extract | otdd | rsa | probe | meta`` (kept import-light: the work happens in :mod:`.steps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelscope.options import config_from

app = typer.Typer(help="Syntax and structural concepts: relation vectors, OTDD syntactic distance, RSA "
                       "alignability, probes (Xu et al. 2022; 2023).", no_args_is_help=True)

EXPERIMENT_COMMANDS = {
    "syntax-extract": "babelscope.syntax.steps:ExtractConfig:run_extract",
    "syntax-otdd": "babelscope.syntax.steps:OtddConfig:run_otdd",
    "syntax-rsa": "babelscope.syntax.steps:RsaConfig:run_rsa",
    "syntax-probe": "babelscope.syntax.steps:ProbeConfig:run_probe",
    "syntax-meta": "babelscope.syntax.meta:MetaConfig:run",
}

RunDir = Annotated[Path, typer.Option("--run-dir", "-o", help="Run directory; re-run with the same one to resume.")]
Store = Annotated[str, typer.Option(help="Step folder (in the run directory) of the extract step to read.")]
Langs = Annotated[str, typer.Option(help="Comma-separated languages, or 'all' (every language in the store).")]
Seed = Annotated[int, typer.Option(help="Seed of every subsample, split and permutation.")]


def _echo(doc: dict, run_dir: Path, step: str) -> None:
    if doc:
        import json

        typer.echo(json.dumps(doc["results"], indent=1, ensure_ascii=False, default=str)[:4000])
        typer.echo(f"results: {run_dir / step / 'results.json'}")


@app.command("extract")
def extract(
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec: gemma-3-270m, a directory, a .gguf.")]
    = "gemma-3-270m",
    treebank: Annotated[str, typer.Option(help="pud (21 PUD treebanks), pud-sample (embedded) or a .conllu "
                                               "file / treebank folder.")] = "pud-sample",
    langs: Annotated[str, typer.Option(help="Comma-separated languages, or 'all'.")] = "all",
    layers: Annotated[str, typer.Option(help="all, middle, or comma-separated layers (0 = embeddings).")] = "all",
    pooling: Annotated[str, typer.Option(help="Subword pooling: auto (first for encoders, last for decoders), "
                                              "first, last, mean.")] = "auto",
    max_sentences: Annotated[int | None, typer.Option(help="First N sentences (the same sent_ids on PUD).")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Sentences per forward pass.")] = 16,
    random_init: Annotated[bool, typer.Option(help="Use a randomly initialised copy of the model (control).")]
    = False,
    seed: Seed = 0,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: where it loads).")] = None,
    run_dir: RunDir = Path("runs/syntax"),
    step: Annotated[str, typer.Option(help="Step folder name.")] = "syntax-extract",
) -> None:
    """Word vectors per layer for every UD word into a streaming store (per language and layer)."""
    from babelscope.syntax.steps import ExtractConfig, run_extract

    cfg = config_from(ExtractConfig, locals())
    _echo(run_extract(cfg, run_dir, step=step), run_dir, step)


@app.command("otdd")
def otdd(
    store: Store = "syntax-extract",
    langs: Langs = "all",
    layer: Annotated[str, typer.Option(help="Layer of the store, or middle.")] = "middle",
    samples: Annotated[int, typer.Option(help="Relation vectors per language per draw.")] = 1000,
    draws: Annotated[int, typer.Option(help="Seeded subsamples (mean and standard deviation).")] = 3,
    reg: Annotated[float, typer.Option(help="Outer entropic regularisation, times the median cost (0.01-10).")] = 0.05,
    inner: Annotated[str, typer.Option(help="Label-to-label OT: emd (exact) or sinkhorn (the paper's).")] = "emd",
    max_per_label: Annotated[int, typer.Option(help="Vectors per label in the label-to-label OT.")] = 50,
    typology: Annotated[str, typer.Option(help="URIEL syntax features: knn (imputed) or wals.")] = "knn",
    mantel_perm: Annotated[int, typer.Option(help="Permutations of the Mantel tests.")] = 9999,
    seed: Seed = 0,
    run_dir: RunDir = Path("runs/syntax"),
    step: Annotated[str, typer.Option(help="Step folder name.")] = "syntax-otdd",
) -> None:
    """Optimal-transport dataset distance between languages' relation sets, and its typological links."""
    from babelscope.syntax.steps import OtddConfig, run_otdd

    cfg = config_from(OtddConfig, locals())
    _echo(run_otdd(cfg, run_dir, step=step), run_dir, step)


@app.command("rsa")
def rsa(
    store: Store = "syntax-extract",
    control: Annotated[str, typer.Option(help="Extract step of the randomly initialised model ('' = none).")]
    = "",
    langs: Langs = "all",
    layers: Annotated[str, typer.Option(help="Layers of the per-layer curves (all = every stored layer).")]
    = "all",
    layer: Annotated[str, typer.Option(help="Layer of the language-by-language heatmap, or middle.")] = "middle",
    concepts: Annotated[str, typer.Option(help="relation or pos.")] = "relation",
    min_count: Annotated[int, typer.Option(help="Instances a concept needs in both languages.")] = 20,
    metric: Annotated[str, typer.Option(help="RDM distance: euclidean, cosine or correlation.")] = "euclidean",
    n_perm: Annotated[int, typer.Option(help="Permutations for the heatmap layer's p-values.")] = 1000,
    seed: Seed = 0,
    run_dir: RunDir = Path("runs/syntax"),
    step: Annotated[str, typer.Option(help="Step folder name.")] = "syntax-rsa",
) -> None:
    """Alignability of structural concepts across languages (RSA, Procrustes) with controls."""
    from babelscope.syntax.steps import RsaConfig, run_rsa

    cfg = config_from(RsaConfig, locals())
    _echo(run_rsa(cfg, run_dir, step=step), run_dir, step)


@app.command("probe")
def probe(
    store: Store = "syntax-extract",
    control: Annotated[str, typer.Option(help="Extract step of the randomly initialised model ('' = none).")]
    = "",
    langs: Langs = "all",
    layers: Annotated[str, typer.Option(help="Layers to probe (all = every stored layer).")] = "all",
    concepts: Annotated[str, typer.Option(help="relation, pos or both (comma-separated).")] = "relation,pos",
    transfer_layer: Annotated[str, typer.Option(help="Layer of the transfer matrix, or middle.")] = "middle",
    test_fraction: Annotated[float, typer.Option(help="Share of sent_ids held out for testing.")] = 0.5,
    max_train: Annotated[int, typer.Option(help="Training instances per language (subsample).")] = 3000,
    otdd_step: Annotated[str, typer.Option("--otdd", help="OTDD step to correlate transfer with ('' = none).")]
    = "",
    seed: Seed = 0,
    run_dir: RunDir = Path("runs/syntax"),
    step: Annotated[str, typer.Option(help="Step folder name.")] = "syntax-probe",
) -> None:
    """Linear relation/POS probes per layer with baselines, and the cross-lingual transfer matrix."""
    from babelscope.syntax.steps import ProbeConfig, run_probe

    cfg = config_from(ProbeConfig, locals(), otdd="otdd_step")
    _echo(run_probe(cfg, run_dir, step=step), run_dir, step)


@app.command("meta")
def meta(
    store: Store = "syntax-extract",
    test_store: Annotated[str, typer.Option(help="Extract step of the held-out languages with UD splits ('' = the "
                                                 "same store; then name --test-langs).")] = "",
    source: Annotated[str, typer.Option(help="Source language of the prototypes.")] = "en",
    meta_langs: Annotated[str, typer.Option(help="Meta-training languages ('all' = the store's, less the source "
                                                 "and the test languages).")] = "all",
    test_langs: Annotated[str, typer.Option(help="Held-out languages ('all' = every language of --test-store).")]
    = "all",
    test_treebank: Annotated[str, typer.Option(help="Treebank giving the held-out sentences' UD splits ('' = the "
                                                    "one the store records).")] = "",
    concepts: Annotated[str, typer.Option(help="pos, relation or both (comma-separated).")] = "pos,relation",
    layer: Annotated[str, typer.Option(help="A stored layer, middle, or auto (best English probe dev accuracy).")]
    = "middle",
    shots: Annotated[str, typer.Option(help="Labelled target sentences N (0 = zero-shot), comma-separated.")]
    = "0,1,5,10,20",
    runs: Annotated[int, typer.Option(help="Seeded runs per setting (mean and standard deviation).")] = 10,
    min_count: Annotated[int, typer.Option(help="Instances a concept needs in English and in the language.")] = 10,
    dev_fraction: Annotated[float, typer.Option(help="Share of PUD sent_ids held out as dev.")] = 0.2,
    probe_epochs: Annotated[int, typer.Option(help="Epochs of the prototype probes (best on dev).")] = 20,
    probe_lr: Annotated[float, typer.Option(help="Adam learning rate of the prototype probes.")] = 1e-4,
    probe_batch: Annotated[int, typer.Option(help="Instances per prototype-probe step.")] = 64,
    meta_epochs: Annotated[int, typer.Option(help="Meta-training epochs (best zero-shot dev accuracy kept).")] = 5,
    episodes_per_lang: Annotated[int, typer.Option(help="Episodes per meta-training language and epoch.")] = 50,
    support: Annotated[int, typer.Option(help="Support sentences per meta-training episode.")] = 20,
    query: Annotated[int, typer.Option(help="Query sentences per meta-training episode.")] = 30,
    meta_lr: Annotated[float, typer.Option(help="Adam learning rate of meta-training.")] = 1e-3,
    pos_step: Annotated[str, typer.Option(help="In-context POS step of the run dir for MONO / EN ('' = none).")]
    = "pos",
    model: Annotated[str, typer.Option("--model", "-m", help="Check the stores were made with this model "
                                                             "('' = no check).")] = "",
    seed: Seed = 0,
    run_dir: RunDir = Path("runs/syntax"),
    step: Annotated[str, typer.Option(help="Step folder name.")] = "syntax-meta",
) -> None:
    """Meta-learned concept alignment: zero- and few-shot POS / relation classification in held-out languages
    from English prototypes, against probe and in-context baselines (Xu et al. 2023, Fig. 17)."""
    from babelscope.syntax.meta import MetaConfig, run

    cfg = config_from(MetaConfig, locals())
    _echo(run(cfg, run_dir, step=step), run_dir, step)
