"""``babelscope transfer ...``: vocabulary extension, further pretraining, instruction tuning. Import-light.

Each command's options are the fields of its step's config in :mod:`babelscope.transfer.configs`."""

from __future__ import annotations

from pathlib import Path

import typer

from babelscope.commands import Command, Results, StepFunction
from babelscope.options import step_command
from babelscope.transfer.configs import PretrainConfig, SftConfig, StudyTableConfig, VocabConfig

app = typer.Typer(
    help="Language capability transfer (Zhao et al. 2024; Zhang et al. 2024): extend the vocabulary, further "
    "pretrain (with forgetting curves and region freezing), instruction-tune. Steps chain in one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
EXPERIMENT_COMMANDS: dict[str, Command] = {}

# ------------------------------------------------------------------------------------------- vocabulary (vocab)

TRANSFER_VOCAB = Command("transfer-vocab", VocabConfig, StepFunction("babelscope.transfer.steps", "run_vocab"),
                         (Results("vocab", "tokens:vocab_section"),),
                         StepFunction("babelscope.transfer.vocab", "plan_check"))
EXPERIMENT_COMMANDS[TRANSFER_VOCAB.name] = TRANSFER_VOCAB


def _show_vocab(doc: dict, cfg: VocabConfig, results_path: Path) -> None:
    from babelscope.transfer.vocab import print_summary

    print_summary(doc)
    typer.echo(f"model: {doc['results']['out']}")


step_command(app, "vocab", TRANSFER_VOCAB, step="vocab", required=("lang", "train"),
             show=_show_vocab,
             help="Extend the vocabulary for a target language: train SentencePiece, merge into the base tokenizer "
             "(with the merges that build each token), resize and initialise the embeddings, check, save a model "
             "directory.")

# ------------------------------------------------------------------------------------- further pretraining (pretrain)
TRANSFER_PRETRAIN = Command("transfer-pretrain", PretrainConfig,
                            StepFunction("babelscope.transfer.steps", "run_pretrain"),
                            (Results("transfer-pretrain", "transfer_pretrain:transfer_pretrain_section"),),
                            StepFunction("babelscope.transfer.pretrain", "plan_check"))
EXPERIMENT_COMMANDS[TRANSFER_PRETRAIN.name] = TRANSFER_PRETRAIN


def _show_curve(doc: dict, cfg: PretrainConfig, results_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from babelscope.formatting import format_plain

    rows = doc["tables"]["curve"]["rows"]

    def label(r: dict) -> str:  # a training language on its own held-out text is its own column
        return f"{r['lang']} held-out" if r.get("text") == "held-out" else r["lang"]

    langs_seen = list(dict.fromkeys(label(r) for r in rows))
    shown = Table("samples", "step", *langs_seen, title=f"perplexity while training on {cfg.langs}")
    for samples_seen in sorted({r["samples"] for r in rows}):
        at = {label(r): r for r in rows if r["samples"] == samples_seen}
        shown.add_row(format_plain(samples_seen), format_plain(next(iter(at.values()))["step"]),
                      *(format_plain(at.get(lang, {}).get("ppl")) for lang in langs_seen))
    Console().print(shown)
    typer.echo(f"results: {results_path}")


step_command(app, "pretrain", TRANSFER_PRETRAIN, step="transfer-pretrain",
             show=_show_curve,
             help="Further pretrain a causal LM on one or more languages, with a forgetting curve of held-out "
             "perplexity (Zhao et al. 2024, Table 2) and optional region freezing (Zhang et al. 2024, §5). Resumable.")

# --------------------------------------------------------------------------------------- instruction tuning (sft)
TRANSFER_SFT = Command("transfer-sft", SftConfig, StepFunction("babelscope.transfer.steps", "run_sft"),
                       (Results("sft", "transfer_sft:sft_section"),),
                       StepFunction("babelscope.transfer.steps", "plan_check_sft"))
EXPERIMENT_COMMANDS[TRANSFER_SFT.name] = TRANSFER_SFT
TRANSFER_TABLE = Command("transfer-table", StudyTableConfig, StepFunction("babelscope.transfer.study"),
                         (Results("transfer_table", "transfer_sft:table_section"),))
EXPERIMENT_COMMANDS[TRANSFER_TABLE.name] = TRANSFER_TABLE


def _show_sft(doc: dict, cfg: SftConfig, results_path: Path) -> None:
    s = doc["results"]["summary"]
    typer.echo(f"{s['steps']} steps, {s['samples']} samples; train loss {s['final_train_loss']:.4f}, validation "
               f"loss {s['first_val_loss']:.4f} -> {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f})")
    typer.echo(f"model: {doc['results']['model_dir']}\nresults: {results_path}")


step_command(app, "sft", TRANSFER_SFT, step="sft", show=_show_sft,
             help="Instruction-tune a causal LM on the response tokens (full or LoRA); validation loss on a held-out "
             "split; the tuned model in STEP/model, its held-out instructions in STEP/heldout.jsonl.")


def _show_table(doc: dict, cfg: StudyTableConfig, results_path: Path) -> None:
    for r in doc["tables"]["variants"]["rows"]:
        typer.echo("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


step_command(app, "table", TRANSFER_TABLE, step="table",
             run_dir=Path("runs") / "gemma-3-270m", show=_show_table,
             help="The study's Table 1 analog: judged ACC, F, INFO, LC, H, AVG and code-switching rate per model "
             "variant.")
