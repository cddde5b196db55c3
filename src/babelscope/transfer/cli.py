"""``babelscope transfer ...``: vocabulary extension, further pretraining, instruction tuning. Import-light."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Language capability transfer (Zhao et al. 2024; Zhang et al. 2024): extend the vocabulary, "
    "further pretrain (with forgetting curves and region freezing), instruction-tune. Steps chain in one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS: dict[str, str] = {}

# ------------------------------------------------------------------------------------------- vocabulary (vocab)
from typing import Annotated  # noqa: E402

from babelscope.options import (  # noqa: E402
    Device,
    Dtype,
    config_from,
    run_dir_for,  # noqa: E402
)
from babelscope.options import Model as ModelOpt  # noqa: E402
from babelscope.options import RunDir as RunDirOpt  # noqa: E402

EXPERIMENT_COMMANDS["transfer-vocab"] = "babelscope.transfer.vocab:VocabConfig:run"


@app.command("vocab")
def vocab(
    lang: Annotated[str, typer.Option(help="Target language (vi, vie, zh, ...).")],
    train: Annotated[str, typer.Option(help="Training text of the target language: a corpus spec; '#split=train+dev' "
                                       "keeps those UD splits (ud:UD_Vietnamese-VTB#split=train+dev).")],
    model: ModelOpt = "gemma-3-270m",
    held_out: Annotated[str | None, typer.Option(help="Held-out target text (corpus spec, '#split=test'); default "
                                                 "10% of --train units by id.")] = None,
    parallel: Annotated[str, typer.Option(help="Parallel corpus for premium, round trip and bits per unit.")] = (
        "udhr-sample"),
    check_langs: Annotated[str, typer.Option(help="Other languages checked (round trip, changed tokenization, "
                                             "premium), comma-separated or 'all'.")] = (
        "eng,cmn-Hans,fra,deu,rus,arb,hin,jpn"),
    quality_langs: Annotated[str, typer.Option(help="Other languages in the init-quality table (each costs forward "
                                               "passes of every init).")] = "eng",
    vocab_size: Annotated[int, typer.Option(help="Size of the SentencePiece model trained on --train; pieces the "
                                            "base already has are not added.")] = 8000,
    model_type: Annotated[str, typer.Option(help="SentencePiece model: auto (the base's type), bpe, unigram.")] = (
        "auto"),
    character_coverage: Annotated[float, typer.Option(help="SentencePiece character coverage.")] = 0.9995,
    split_by_whitespace: Annotated[bool, typer.Option(help="Pieces stop at spaces (off: multi-word pieces).")] = True,
    init: Annotated[str, typer.Option(help="New rows: subword-mean (FVT, Gee et al. 2022), mean "
                                      "(transformers' mean_resizing) or random (the model's init).")] = "subword-mean",
    compare_inits: Annotated[bool, typer.Option(help="Score all three inits in the quality table.")] = True,
    max_units: Annotated[int | None, typer.Option(help="Units per text set in the quality table.")] = 200,
    window: Annotated[int, typer.Option(help="Tokens per scoring window; each starts with BOS.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the random/mean inits.")] = 0,
    out: Annotated[str | None, typer.Option(help="Directory of the extended model (default RUN_DIR/STEP/model).")] = (
        None),
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDirOpt = None,
    step: Annotated[str, typer.Option(help="Step folder name inside the run directory.")] = "vocab",
) -> None:
    """Extend the vocabulary for a target language: train SentencePiece, merge into the base tokenizer (with the
    merges that build each token), resize and initialise the embeddings, check, save a model directory."""
    from babelscope.transfer.vocab import VocabConfig, print_summary, run

    cfg = config_from(VocabConfig, locals())
    doc = run(cfg, run_dir_for(run_dir, model), step=step)
    print_summary(doc)
    typer.echo(f"model: {doc['results']['out']}")



# ------------------------------------------------------------------------------------- further pretraining (pretrain)


# --------------------------------------------------------------------------------------- instruction tuning (sft)
