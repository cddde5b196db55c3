"""Instruction tuning (Zhao et al. 2024, "LLaMA Beyond English", Sec. 3 and Fig. 2: SFT on 1K / 5K / 950K
instructions after further pretraining; "SFT models overfit on validation loss after one epoch").

The method here (data preparation, LoRA, validation loss, saving; the training loop is
:mod:`babelscope.transfer.loop`); the step that runs them, top to bottom, is
:func:`babelscope.transfer.steps.run_sft`:

1. read the instructions (:mod:`babelscope.transfer.instructions`: Alpaca / BELLE / chat ``messages`` JSONL) and
   hold out a validation split by a seeded hash of each row;
2. render every conversation with the tokenizer's chat template (else Gemma's turn format or the plain template)
   and label the response tokens only, from one encoding with character offsets; responses cut by
   ``--max-length`` are counted, and one cut away entirely is dropped (never trained as an empty target);
3. optionally wrap the model in LoRA (``peft``; ``--lora-r``; target modules = the linear layers inside the
   transformer blocks, read from the model). With an extended vocabulary the new embedding rows train through
   peft's ``trainable_token_indices`` (a delta for those rows only, applied to the tied LM head too);
4. train with the shared loop (:mod:`babelscope.transfer.loop`): the loss of a step is
   ``L = Σ_{response tokens t} -log p(x_t | x_<t) / T_step`` with ``T_step`` the step's target tokens over every
   micro-batch and process; validation loss (the same mean over the held-out responses) at ``--eval-every``
   samples, written as it is measured;
5. save the tuned model: merged (a normal Hugging Face directory; the default) or the LoRA adapter, which
   :func:`babelscope.models.load_model` loads onto its recorded base. The tokenizer is saved with the template as
   its chat template and the generation config stops at the template's end-of-turn token, so ``babelscope eval
   respond`` prompts the tuned model the way it was trained.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.transfer import configs
from babelscope.transfer.configs import SftConfig

KIND = "sft"
SAVE_MODES = ("merged", "adapter")
ADAPTER_RECORD = "babelscope_adapter.json"
SFT_RECORD = "babelscope_sft.json"


def default_lr(cfg: SftConfig) -> float:
    """``--lr`` when given (``None`` = not given; 0 is a value, refused by the loop's check), else 2e-4 with LoRA
    and 2e-5 without."""
    return cfg.lr if cfg.lr is not None else (2e-4 if cfg.lora_r else 2e-5)


def lora_alpha(cfg: SftConfig) -> float:
    """``--lora-alpha`` when given, else 2 x rank."""
    return cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r


def loop_config(cfg: SftConfig, n_train: int):
    """The loop's settings: the training block (:func:`babelscope.transfer.configs.loop_config`) with the default
    ``--lr``, ``--epochs`` passes, and no model saved by the loop (:func:`save_tuned` saves it)."""
    return configs.loop_config(cfg, lr=default_lr(cfg), epochs=cfg.epochs, save_model=False)


def _parse_range(text: str) -> range | None:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        return None
    return range(lo, hi) if 0 <= lo < hi else None


# ----------------------------------------------------------------------------------------------- data
@dataclass
class SftData:
    """The prepared instruction data: the template (its name and text), the encoded training and scored
    validation examples (:class:`babelscope.transfer.instructions.Encoded`), every held-out conversation and the
    counts (conversations, skipped, truncated and cut-away responses) the results report."""

    template_name: str
    template: str
    train: list
    val: list
    heldout: list
    counts: dict[str, Any]


def prepare(cfg: SftConfig, tokenizer) -> SftData:
    """Read, split, select and encode the data (every data or template error is raised here, before any
    model is loaded or anything written)."""
    import random

    from babelscope.transfer.instructions import choose_template, encode_all, read_conversations, split

    convs, skipped = read_conversations(cfg.data, cfg.lang)
    train, val = split(convs, cfg.val_fraction, cfg.seed)
    if not train or not val:
        raise BabelscopeError(f"--data {cfg.data}: {len(convs)} conversations give {len(train)} for training and "
                              f"{len(val)} for validation at --val-fraction {cfg.val_fraction}; give more data or "
                              "another fraction")
    random.Random(cfg.seed).shuffle(train)  # --samples takes a seeded random subset, as the paper's scales
    if cfg.samples is not None:
        if cfg.samples > len(train):
            raise BabelscopeError(f"--samples {cfg.samples}: only {len(train)} training conversations in "
                                  f"{cfg.data}; use --epochs for repeats or fewer samples")
        train = train[: cfg.samples]
    val_scored = val[: cfg.val_max] if cfg.val_max else val
    name, template = choose_template(tokenizer, cfg.template)
    enc_train, counts_train = encode_all(tokenizer, template, train, cfg.max_length)
    enc_val, counts_val = encode_all(tokenizer, template, val_scored, cfg.max_length)
    if not enc_train:
        raise BabelscopeError(f"--max-length {cfg.max_length}: every training response is cut away; raise it")
    if not enc_val:
        raise BabelscopeError(f"--max-length {cfg.max_length}: every validation response is cut away; raise it")
    return SftData(name, template, enc_train, enc_val, val,
                   {"conversations": len(convs), "skipped_no_answer": skipped, "train_conversations": len(train),
                    "validation_conversations": len(val), "validation_scored": len(val_scored),
                    "train": counts_train, "validation": counts_val})


def data_fingerprint(prepared: SftData) -> str:
    """sha256 of the encoded training and validation data (what the checkpoints and results depend on)."""
    from babelscope.runs import text_sha256

    return text_sha256(json.dumps([e.input_ids, e.labels]) for e in prepared.train + prepared.val)


# ----------------------------------------------------------------------------------------------- LoRA
def lora_targets(model, spec: str = "auto") -> list[str]:
    """Names of the linear layers inside the transformer blocks (``q_proj``, ..., ``down_proj`` for Llama/Gemma),
    read from the model; the LM head and embeddings are never targets."""
    from torch import nn

    from babelscope.models.arch import block_list

    prefix, _ = block_list(model)
    found = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                    if isinstance(mod, nn.Linear) and name.startswith(prefix + ".")})
    if spec == "auto":
        return found
    wanted = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise BabelscopeError(f"--lora-targets: {unknown} are not linear layers of this model; use some of {found}")
    return wanted


def new_token_ids(model_source: Path | str, model, spec: str) -> list[int]:
    """The embedding rows to train with LoRA: ``A:B``; ``none``; ``auto`` = the rows a vocabulary step added
    (from the record next to the weights: ``babelscope-vocab.json``'s ``embedding_rows`` and ``first_new_id``,
    else a ``new_token_ids`` list, or everything from ``base_vocab_size`` on); a path = such a record or the
    directory holding it (for a model pretrained after the vocabulary step)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if spec == "none":
        return []
    if _parse_range(spec):
        ids = list(_parse_range(spec))
        if ids[-1] >= rows:
            raise BabelscopeError(f"--train-tokens {spec}: the embedding has {rows} rows")
        return ids
    where = Path(model_source) if spec == "auto" else Path(spec).expanduser()  # a vocab model dir or its record
    for path in [where] if where.is_file() else sorted(where.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        doc = doc.get("vocab", doc) if isinstance(doc.get("vocab"), dict) else doc
        if isinstance(doc.get("embedding_rows"), list) and len(doc["embedding_rows"]) == 2:  # `transfer vocab`
            old, new = (int(x) for x in doc["embedding_rows"])
            first = int(doc.get("first_new_id", old))
            return sorted(set(range(old, min(new, rows))) | set(range(first, min(new, rows))))
        if isinstance(doc.get("new_token_ids"), list):
            return [int(i) for i in doc["new_token_ids"] if int(i) < rows]
        if isinstance(doc.get("base_vocab_size"), int) and doc["base_vocab_size"] < rows:
            return list(range(doc["base_vocab_size"], rows))
    return []


def wrap_lora(model, cfg: SftConfig, token_ids: list[int]):
    """The peft model (LoRA on the blocks' linear layers, plus trainable rows ``token_ids`` of the embedding)."""
    from peft import LoraConfig, get_peft_model

    embed_name = next(name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                      if mod is model.get_input_embeddings())
    config = LoraConfig(r=cfg.lora_r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.lora_dropout,
                        target_modules=lora_targets(model, cfg.lora_targets), bias="none", task_type="CAUSAL_LM",
                        trainable_token_indices={embed_name: token_ids} if token_ids else None)
    return get_peft_model(model, config)


def tied(model) -> bool:
    """True when the LM head shares its weight tensor with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# ----------------------------------------------------------------------------------------------- validation
def validation_loss(model, examples, batch_size: int, pad_id: int) -> tuple[float, int]:
    """Mean NLL over the response tokens of ``examples`` (this process's share, all-reduced), and their count."""
    import torch

    from babelscope.processes import all_reduce, rank_share
    from babelscope.transfer.loop import CausalLMLoss, collate

    device = next(model.parameters()).device
    loss_fn = CausalLMLoss(model)
    mine = rank_share(examples)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in mine[start:start + batch_size]],
                            pad_id)
            nll, n = loss_fn(**{k: v.to(device) for k, v in batch.items()})
            total += torch.tensor([float(nll), float(n)], dtype=torch.float64, device=device)
    all_reduce(total)
    return float(total[0] / max(total[1], 1)), int(total[1])


def turning_point(evals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation with the lowest validation loss when a later one is higher (where it turns), else None."""
    if len(evals) < 2:
        return None
    best = min(range(len(evals)), key=lambda i: evals[i]["val_loss"])
    if best == len(evals) - 1:
        return None
    return {k: evals[best][k] for k in ("step", "samples", "epoch", "val_loss")}


# ----------------------------------------------------------------------------------------------- saving
def save_tuned(model, peft_model, tokenizer, cfg: SftConfig, prepared: SftData, info, out: Path) -> Path:
    """Write the tuned model (merged HF directory, or the adapter) to ``out`` atomically (temporary folder, then
    rename); the tokenizer carries the training template and the generation config its end-of-turn token."""
    from babelscope.runs import write_json
    from babelscope.transfer.instructions import end_token_id

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = _with_template(tokenizer, prepared)
    end = end_token_id(tokenizer, prepared.template_name)
    if peft_model is not None and cfg.save == "adapter":
        peft_model.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / ADAPTER_RECORD, {"base": info.spec, "base_source": info.source, "base_checksum":
                                          info.checksum, "vocab_size": model.get_input_embeddings().weight.shape[0]})
        saved = model
    else:
        saved = peft_model.merge_and_unload() if peft_model is not None else model
        saved.config.use_cache = True
        gen = saved.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        gen.eos_token_id = [int(x) for x in dict.fromkeys([*[e for e in eos if e is not None], end])
                            if x is not None]
        saved.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / SFT_RECORD, {"base": info.spec, "base_checksum": info.checksum,
                                  "template": prepared.template_name, "data": cfg.data,
                                  "end_token_id": end, "save": cfg.save if peft_model is not None else "full"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return saved


def _with_template(tokenizer, prepared: SftData):
    """The tokenizer (the step's own copy) with the training template as its chat template."""
    if prepared.template_name != "chat":
        tokenizer.chat_template = prepared.template
    return tokenizer


#: The ``babelscope transfer sft`` step, importable here as before; it lives in :mod:`babelscope.transfer.steps`.
run = StepFunction("babelscope.transfer.steps", "run_sft")
