"""``babelscope transfer ...``: vocabulary extension, further pretraining, instruction tuning. Import-light."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelscope.options import Device, Dtype, RunDir, config_from, run_dir_for
from babelscope.options import Model as ModelOpt

app = typer.Typer(
    help="Language capability transfer (Zhao et al. 2024; Zhang et al. 2024): extend the vocabulary, "
    "further pretrain (with forgetting curves and region freezing), instruction-tune. Steps chain in one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS: dict[str, str] = {}

# ------------------------------------------------------------------------------------------- vocabulary (vocab)


# ------------------------------------------------------------------------------------- further pretraining (pretrain)


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
