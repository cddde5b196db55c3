"""``babelscope transfer ...``: vocabulary extension, further pretraining, instruction tuning. Import-light."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelscope.options import Device, Dtype, RunDir, config_from, run_dir_for
from babelscope.options import Model as ModelOpt
from babelscope.options import RunDir as RunDirOpt

app = typer.Typer(
    help="Language capability transfer (Zhao et al. 2024; Zhang et al. 2024): extend the vocabulary, further "
    "pretrain (with forgetting curves and region freezing), instruction-tune. Steps chain in one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS: dict[str, str] = {}

# ------------------------------------------------------------------------------------------- vocabulary (vocab)

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
EXPERIMENT_COMMANDS["transfer-pretrain"] = "babelscope.transfer.pretrain:PretrainConfig:run"


def _opt(help_text: str):
    return typer.Option(help=help_text)


@app.command("pretrain")
def pretrain_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Start model: gemma-3-270m, a directory (e.g. a "
                                       "vocabulary-extended model), a .gguf or a hub id.")] = "gemma-3-270m",
    corpus: Annotated[str, _opt("Training text: udhr, udhr-sample, pud, pud-sample (embedded), ud:PATH "
                                "(e.g. ud:UD_Vietnamese-VTB), a .txt/.jsonl file or a folder.")] = "udhr",
    langs: Annotated[str, _opt("Training languages with optional proportions of the samples: vie, or "
                               "vie:0.9,eng:0.1 (the multilingual mix).")] = "vie",
    seq_len: Annotated[int, _opt("Tokens per training block (documents packed with BOS/EOS).")] = 256,
    samples: Annotated[int | None, _opt("Budget in blocks (the paper's 10K / 100K / 1M).")] = None,
    tokens: Annotated[int | None, _opt("Budget in tokens (instead of --samples).")] = None,
    epochs: Annotated[int, _opt("Passes over a language's blocks allowed when the budget exceeds them.")] = 1,
    eval_corpus: Annotated[str, _opt("Held-out text (default: the training corpus, split by unit id).")] = "",
    eval_langs: Annotated[str, _opt("Languages of the forgetting curve (training languages are added).")]
    = "eng,fra,deu,rus,cmn-Hans,jpn",
    eval_at: Annotated[str, _opt("Sample counts to measure at, e.g. 0,100,1000 (default 0, 1/4, 1/2, all).")]
    = "",
    held_out: Annotated[float, _opt("Fraction of unit ids held out when evaluating on the training corpus.")]
    = 0.3,
    eval_max_tokens: Annotated[int | None, _opt("Evaluation tokens per language (whole units).")] = 1024,
    eval_window: Annotated[int, _opt("Scoring window of the evaluation (tokens, BOS first).")] = 256,
    eval_batch_size: Annotated[int, _opt("Windows per evaluation forward.")] = 8,
    freeze_region: Annotated[str | None, _opt("Mask file of `babelscope regions select` (e.g. regions-select/"
                                              "masks/top-k0.01-global.safetensors): those weights never change.")]
    = None,
    freeze_norms: Annotated[bool, _opt("Also freeze masked entries of norm vectors.")] = False,
    lr: Annotated[float, _opt("Peak learning rate (AdamW).")] = 5e-5,
    warmup: Annotated[int, _opt("Optimizer steps of linear warmup.")] = 0,
    schedule: Annotated[str, _opt("Decay after warmup: cosine, linear or constant.")] = "cosine",
    min_lr_ratio: Annotated[float, _opt("Final learning rate as a fraction of --lr.")] = 0.1,
    weight_decay: Annotated[float, _opt("AdamW decoupled weight decay (matrices only).")] = 0.0,
    max_grad_norm: Annotated[float, _opt("Gradient clipping norm (0 = off).")] = 1.0,
    micro_batch_size: Annotated[int, _opt("Blocks per forward/backward on each process.")] = 4,
    grad_accum: Annotated[int, _opt("Micro-batches per optimizer step.")] = 1,
    seed: Annotated[int, _opt("Seed of the sample order and the id split.")] = 0,
    checkpoint_every: Annotated[int, _opt("Save a resumable checkpoint every N steps (0 = none).")] = 0,
    gradient_checkpointing: Annotated[bool, _opt("Recompute activations in backward (less memory).")] = False,
    log_every: Annotated[int, _opt("Steps per metrics line (metrics.jsonl, trackers).")] = 1,
    logit_chunk: Annotated[int, _opt("Rows per chunk of the fused LM head + loss.")] = 512,
    trackers: Annotated[str, _opt("Accelerate trackers to log to: tensorboard, wandb, mlflow (off).")] = "",
    mixed_precision: Annotated[str, _opt("auto (bf16 on GPUs, fp32 on CPUs), no, bf16 or fp16.")] = "auto",
    save_model: Annotated[bool, _opt("Save the trained model as a Hugging Face directory in the step.")] = True,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, _opt("Step folder name.")] = "transfer-pretrain",
) -> None:
    """Further pretrain a causal LM on one or more languages, with a forgetting curve of held-out perplexity
    (Zhao et al. 2024, Table 2) and optional region freezing (Zhang et al. 2024, §5). Resumable."""
    from rich.console import Console
    from rich.table import Table

    from babelscope.report.markup import format_plain
    from babelscope.transfer.pretrain import PretrainConfig, run

    cfg = config_from(PretrainConfig, locals())
    out = run_dir_for(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        rows = doc["tables"]["curve"]["rows"]
        langs_seen = list(dict.fromkeys(r["lang"] for r in rows))
        shown = Table("samples", "step", *langs_seen, title=f"perplexity while training on {cfg.langs}")
        for samples_seen in sorted({r["samples"] for r in rows}):
            at = {r["lang"]: r for r in rows if r["samples"] == samples_seen}
            shown.add_row(format_plain(samples_seen), format_plain(next(iter(at.values()))["step"]),
                          *(format_plain(at.get(lang, {}).get("ppl")) for lang in langs_seen))
        Console().print(shown)
        typer.echo(f"results: {out / step / 'results.json'}")


# --------------------------------------------------------------------------------------- instruction tuning (sft)
EXPERIMENT_COMMANDS["transfer-sft"] = "babelscope.transfer.sft:SftConfig:run"
EXPERIMENT_COMMANDS["transfer-table"] = "babelscope.transfer.study:StudyTableConfig:run"


@app.command("sft")
def sft(
    model: ModelOpt = "gemma-3-270m",
    data: Annotated[str, typer.Option(help="Instructions: embedded (ours, for the demo), belle (BELLE eval set, "
                                      "rows with answers), belle-seeds, alpaca-seeds (research-only, read from the "
                                      "shared data folder), or JSONL/JSON files of instruction/input/output, "
                                      "question/std_answer or messages rows (comma-separated).")] = "embedded",
    lang: Annotated[str | None, typer.Option(help="Language of rows without a 'lang' field.")] = None,
    template: Annotated[str, typer.Option(help="auto (the tokenizer's chat template, else Gemma's turn format "
                                          "when it has those tokens, else plain), chat, gemma, plain, or a .jinja "
                                          "file.")] = "auto",
    max_length: Annotated[int, typer.Option(help="Tokens per conversation; longer ones are cut (counted).")] = 512,
    val_fraction: Annotated[float, typer.Option(help="Held-out share (by a seeded hash of each row).")] = 0.1,
    val_max: Annotated[int | None, typer.Option(help="Validation conversations scored per evaluation.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the split, the subset and the order.")] = 0,
    samples: Annotated[int | None, typer.Option(help="Training conversations (the paper's 1K/5K/950K; default "
                                                "all).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training conversations.")] = 1,
    eval_every: Annotated[int | None, typer.Option(help="Samples between validation losses (default 4 per "
                                                   "epoch).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-5, or 2e-4 with LoRA).")] = None,
    warmup: Annotated[int, typer.Option(help="Optimizer steps of linear warmup.")] = 0,
    schedule: Annotated[str, typer.Option(help="cosine, linear or constant after warmup.")] = "cosine",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (matrices only).")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0 = off).")] = 1.0,
    micro_batch_size: Annotated[int, typer.Option(help="Conversations per forward pass.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0 = full fine-tuning).")] = 0,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2 x rank).")] = None,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    lora_targets: Annotated[str, typer.Option(help="auto (every linear layer of the blocks, read from the model) "
                                              "or module names, comma-separated.")] = "auto",
    train_tokens: Annotated[str, typer.Option(help="With LoRA, embedding rows that train: auto (those a "
                                              "vocabulary step added), none, or START:END.")] = "auto",
    save: Annotated[str, typer.Option(help="merged (a full Hugging Face directory) or adapter (LoRA only; "
                                      "`load_model` merges it onto its base).")] = "merged",
    checkpoint_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints (0 = none).")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward.")] = False,
    mixed_precision: Annotated[str, typer.Option(help="auto (bf16 on GPUs, fp32 on CPUs), no, bf16, fp16.")] = "auto",
    trackers: Annotated[str, typer.Option(help="Accelerate trackers: tensorboard, wandb, mlflow.")] = "",
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "sft",
) -> None:
    """Instruction-tune a causal LM on the response tokens (full or LoRA); validation loss on a held-out split;
    the tuned model in STEP/model, its held-out instructions in STEP/heldout.jsonl."""
    from babelscope.transfer.sft import SftConfig, run

    cfg = config_from(SftConfig, locals())
    out = run_dir_for(run_dir, model)
    doc = run(cfg, out, step=step)
    if doc:
        s = doc["results"]["summary"]
        typer.echo(f"{s['steps']} steps, {s['samples']} samples; train loss {s['final_train_loss']:.4f}, validation "
                   f"loss {s['first_val_loss']:.4f} -> {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f})")
        typer.echo(f"model: {doc['results']['model_dir']}\nresults: {out / step / 'results.json'}")


@app.command("table")
def table(
    steps: Annotated[str, typer.Option(help="Response steps of the run directory, comma-separated, one row each "
                                       "(default: every judged response step).")] = "all",
    labels: Annotated[str | None, typer.Option(help="Row labels, comma-separated (default: the model names).")]
    = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "table",
) -> None:
    """The study's Table 1 analog: judged ACC, F, INFO, LC, H, AVG and code-switching rate per model variant."""
    from babelscope.transfer.study import StudyTableConfig, run

    cfg = config_from(StudyTableConfig, locals())
    out = run_dir or Path("runs") / "gemma-3-270m"
    doc = run(cfg, out, step=step)
    if doc:
        for r in doc["tables"]["variants"]["rows"]:
            typer.echo("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
