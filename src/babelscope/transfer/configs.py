"""The configs of the transfer steps: one dataclass per step, the single source of its command-line options
(:func:`babelscope.options.step_command`) and experiment-file keys. Import-light (no torch, no numpy).

The two training steps share one block of training options, :class:`TrainOptions`, and one conversion into the
loop's settings, :func:`loop_config`. A config includes the block as a base class after its own inputs, so its
options read inputs first, then training::

    @dataclass
    class SftConfig(TrainOptions, SftInputs):   # fields: SftInputs's, then TrainOptions's, then its own
        ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, opt, variant


@dataclass
class VocabConfig:
    model: str = "gemma-3-270m"
    lang: str = opt("", "Target language (vi, vie, zh, ...).")
    train: str = opt("", "Training text of the target language: a corpus spec; '#split=train+dev' keeps those UD "
                     "splits (ud:UD_Vietnamese-VTB#split=train+dev).")
    held_out: str | None = opt(None, "Held-out target text (corpus spec, '#split=test'); default 10% of --train "
                               "units by id.")
    parallel: str = opt("udhr-sample", "Parallel corpus for premium, round trip and bits per unit.")
    check_langs: str = languages("eng,cmn-Hans,fra,deu,rus,arb,hin,jpn", "Other languages checked (round trip, changed "
                                 "tokenization, premium), comma-separated or 'all'.")
    quality_langs: str = opt("eng", "Other languages in the init-quality table (each costs forward passes of every "
                             "init).", may_be_empty=True)  # "": the table scores the target language alone
    keep_old: bool = opt(True, "Leave out new pieces whose merges would change the tokenization of any other "
                         "language's text in --parallel (every old text keeps its ids); --no-keep-old adds them all.")
    vocab_size: int = opt(8000, "Size of the SentencePiece model trained on --train; pieces the base already has "
                          "are not added.")
    model_type: str = opt("auto", "SentencePiece model: auto (the base's type), bpe, unigram.")
    character_coverage: float = opt(0.9995, "SentencePiece character coverage.")
    split_by_whitespace: bool = opt(True, "Pieces stop at spaces (off: multi-word pieces).")
    init: str = opt("subword-mean", "New rows: subword-mean (FVT, Gee et al. 2022), mean (transformers' "
                    "mean_resizing) or random (the model's init).")
    compare_inits: bool = opt(True, "Score all three inits in the quality table.")
    max_units: int | None = count(200, "Units per text set in the quality table.")
    window: int = count(512, "Tokens per scoring window; each starts with BOS.")
    batch_size: int = count(8, "Windows per forward pass.")
    seed: int = opt(0, "Seed of the held-out split and the random/mean inits.")
    out: str | None = opt(None, "Directory of the extended model (default RUN_DIR/STEP/model).")
    dtype: str = "float32"
    device: str | None = None


@dataclass
class TrainOptions:
    """The training loop's options that pretraining and instruction tuning share (:class:`PretrainConfig`,
    :class:`SftConfig`), each with its constraint; :func:`loop_config` turns them into the loop's settings. A
    config that words an option its own way says so with :func:`babelscope.fields.variant`."""

    lr: float = opt(5e-5, "Peak learning rate (AdamW).")
    warmup: int = opt(0, "Optimizer steps of linear warmup.")
    schedule: str = opt("cosine", "Decay after warmup: cosine, linear or constant.")
    weight_decay: float = opt(0.0, "AdamW decoupled weight decay (matrices only).")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 = off).", minimum=0)  # 0 = no clipping
    micro_batch_size: int = count(4, "Blocks per forward/backward on each process.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    seed: int = opt(0, "Seed of the sample order and the id split.")
    checkpoint_every: int = opt(0, "Save a resumable checkpoint every N steps (0 = none).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward (less memory).")
    trackers: str = opt("", "Accelerate trackers to log to: tensorboard, wandb, mlflow (off).")
    mixed_precision: str = opt("auto", "auto (bf16 on GPUs, fp32 on CPUs), no, bf16 or fp16.")
    restart: bool = opt(False, "Discard this step's checkpoint (of any configuration) and train from the start.")


def loop_config(options: TrainOptions, **settings: Any):
    """The loop's settings (:class:`babelscope.transfer.loop.LoopConfig`): every option of the training block as
    the config holds it, then ``settings``, what the step sets itself (pretraining: no shuffling, its own
    ``--min-lr-ratio``; instruction tuning: ``--epochs``, its default ``--lr``)."""
    from babelscope.transfer.loop import LoopConfig

    shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(TrainOptions)}
    return LoopConfig(**{**shared, **settings})


@dataclass
class PretrainInputs:
    """The data, budget, evaluation and freezing options of ``transfer pretrain``."""

    model: str = opt("gemma-3-270m", "Start model: gemma-3-270m, a directory (e.g. a vocabulary-extended model), a "
                     ".gguf or a hub id.")
    corpus: str = opt("udhr", "Training text: udhr, udhr-sample, pud, pud-sample (embedded), ud:PATH (e.g. "
                      "ud:UD_Vietnamese-VTB), a .txt/.jsonl file or a folder.")
    langs: str = languages("vie", "Training languages with optional proportions of the samples: vie, or "
                           "vie:0.9,eng:0.1 (the multilingual mix).")
    seq_len: int = opt(256, "Tokens per training block (documents packed with BOS/EOS).")
    samples: int | None = count(None, "Budget in blocks (the paper's 10K / 100K / 1M).")
    tokens: int | None = opt(None, "Budget in tokens (instead of --samples).")
    epochs: int = opt(1, "Passes over a language's blocks allowed when the budget exceeds them.")
    eval_corpus: str = opt("", "Held-out text (default: the training corpus, split by unit id).")
    target_eval: str = opt("split", "When --eval-corpus is another corpus, the training languages are also scored on "
                           "held-out text of the training corpus's own kind: 'split' (--held-out of its unit ids, "
                           "never trained on), a corpus spec (e.g. ud:UD_Vietnamese-VTB#split=test), or 'none'.")
    eval_langs: str = languages("eng,fra,deu,rus,cmn-Hans,jpn", "Languages of the forgetting curve (training languages "
                                "are added).")
    eval_at: str = opt("", "Sample counts to measure at, e.g. 0,100,1000 (default 0, 1/4, 1/2, all).")
    held_out: float = opt(0.3, "Fraction of unit ids held out when evaluating on the training corpus.")
    eval_max_tokens: int | None = count(1024, "Evaluation tokens per language (whole units).")
    eval_window: int = count(256, "Scoring window of the evaluation (tokens, BOS first).")
    eval_batch_size: int = count(8, "Windows per evaluation forward.")
    freeze_region: str | None = opt(None, "Mask file of `babelscope regions select` (e.g. "
                                    "regions-select/masks/top-k0.01-global.safetensors): those weights never change.")
    freeze_norms: bool = opt(False, "Also freeze masked entries of norm vectors.")
    freeze_baseline: str | None = opt(None, "Instead of a region, freeze by a baseline rule: ssu (columns by "
                                      "||W[:, j]|| E[x_j^2] on --ssu-langs text, Yamaguchi et al. 2025), half (a "
                                      "random share of the matrices), magnitude (largest |W|) or random entries.")
    freeze_fraction: float = opt(0.5, "Share of each block matrix (of the matrices, for half) the baseline freezes.")
    ssu_corpus: str = opt("udhr-sample", "SSU: the source-language text that scores the columns.")
    ssu_langs: str = languages("eng", "SSU: source languages (comma-separated).")
    ssu_max_tokens: int = count(1024, "SSU: tokens per source language.")


@dataclass
class PretrainConfig(TrainOptions, PretrainInputs):
    """``transfer pretrain``: its inputs, the training block, and the loop options only pretraining has."""

    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of --lr.")
    log_every: int = opt(1, "Steps per metrics line (metrics.jsonl, trackers).")
    logit_chunk: int = opt(512, "Rows per chunk of the fused LM head + loss.")
    save_model: bool = opt(True, "Save the trained model as a Hugging Face directory in the step.")
    dtype: str = "float32"
    device: str | None = None


@dataclass
class SftInputs:
    """The data options of ``transfer sft``."""

    model: str = "gemma-3-270m"
    data: str = opt("embedded", "Instructions: embedded (ours, for the demo), belle (BELLE eval set, rows with "
                    "answers), belle-seeds, alpaca-seeds (research-only, read from the shared data folder), or "
                    "JSONL/JSON files of instruction/input/output, question/std_answer or messages rows "
                    "(comma-separated).")
    lang: str | None = opt(None, "Language of rows without a 'lang' field.")
    template: str = opt("auto", "auto (the tokenizer's chat template, else Gemma's turn format when it has those "
                        "tokens, else plain), chat, gemma, plain, or a .jinja file.")
    max_length: int = count(512, "Tokens per conversation; longer ones are cut (counted).")
    val_fraction: float = opt(0.1, "Held-out share (by a seeded hash of each row).")
    val_max: int | None = opt(200, "Validation conversations scored per evaluation.")
    samples: int | None = count(None, "Training conversations (the paper's 1K/5K/950K; default all).")
    epochs: int = opt(1, "Passes over the training conversations.")
    eval_every: int | None = opt(None, "Samples between validation losses (default 4 per epoch).")


@dataclass
class SftConfig(TrainOptions, SftInputs):
    """``transfer sft``: its data options, the training block (worded for conversations), and LoRA and saving."""

    lr: float | None = variant(TrainOptions, "lr", "Peak learning rate, positive (default 2e-5, or 2e-4 with "
                               "LoRA).", default=None)
    schedule: str = variant(TrainOptions, "schedule", "cosine, linear or constant after warmup.")
    weight_decay: float = variant(TrainOptions, "weight_decay", "AdamW weight decay (matrices only).")
    micro_batch_size: int = variant(TrainOptions, "micro_batch_size", "Conversations per forward pass.")
    seed: int = variant(TrainOptions, "seed", "Seed of the split, the subset and the order.")
    checkpoint_every: int = variant(TrainOptions, "checkpoint_every", "Optimizer steps between checkpoints "
                                    "(0 = none).")
    gradient_checkpointing: bool = variant(TrainOptions, "gradient_checkpointing", "Recompute activations in "
                                           "backward.")
    trackers: str = variant(TrainOptions, "trackers", "Accelerate trackers: tensorboard, wandb, mlflow.")
    mixed_precision: str = variant(TrainOptions, "mixed_precision", "auto (bf16 on GPUs, fp32 on CPUs), no, bf16, "
                                   "fp16.")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning).")
    lora_alpha: float | None = opt(None, "LoRA alpha (default 2 x rank; must be positive).")
    lora_dropout: float = opt(0.0, "LoRA dropout.")
    lora_targets: str = opt("auto", "auto (every linear layer of the blocks, read from the model) or module names, "
                            "comma-separated.")
    train_tokens: str = opt("auto", "With LoRA, embedding rows that train: auto (those a vocabulary step added), "
                            "none, or START:END.")
    save: str = opt("merged", "merged (a full Hugging Face directory) or adapter (LoRA only; `load_model` merges it "
                    "onto its base).")
    dtype: str = "float32"
    device: str | None = None


@dataclass
class StudyTableConfig:
    steps: str = opt("all", "Response steps of the run directory, comma-separated, one row each (default: every "
                     "judged response step).")
    labels: str | None = opt(None, "Row labels, comma-separated (default: the model names).")

    def __post_init__(self) -> None:  # checked when an experiment file is planned, before any step runs
        if self.labels and self.steps not in ("all", "", None):
            labels, steps = self.labels.split(","), self.steps.split(",")
            if len(labels) != len(steps):
                raise BabelscopeError(f"--labels {self.labels!r}: {len(labels)} labels for {len(steps)} steps; give "
                                      "one each (a label cannot contain a comma)")
