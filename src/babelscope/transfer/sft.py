"""Instruction tuning (Zhao et al. 2024, "LLaMA Beyond English", Sec. 3 and Fig. 2: SFT on 1K / 5K / 950K
instructions after further pretraining; "SFT models overfit on validation loss after one epoch").

The step, top to bottom:

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
import math
import os
import shutil
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.transfer.configs import SftConfig

KIND = "sft"
SAVE_MODES = ("merged", "adapter")
ADAPTER_RECORD = "babelscope_adapter.json"
SFT_RECORD = "babelscope_sft.json"


def check(cfg: SftConfig) -> None:
    """Refuse impossible options before anything is read or loaded."""
    if cfg.save not in SAVE_MODES:
        raise BabelscopeError(f"--save {cfg.save!r}: use merged or adapter")
    if cfg.save == "adapter" and not cfg.lora_r:
        raise BabelscopeError("--save adapter needs --lora-r (full fine-tuning has no adapter)")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise BabelscopeError(f"--val-fraction {cfg.val_fraction}: use a fraction between 0 and 1")
    for name in ("max_length", "epochs", "micro_batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise BabelscopeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    for name in ("samples", "eval_every", "val_max"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise BabelscopeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.lora_r < 0:
        raise BabelscopeError(f"--lora-r {cfg.lora_r}: use 0 (full fine-tuning) or a positive rank")
    if cfg.lora_alpha is not None and cfg.lora_alpha <= 0:
        raise BabelscopeError(f"--lora-alpha {cfg.lora_alpha}: must be positive (leave it out for 2 x rank)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise BabelscopeError(f"--lora-dropout {cfg.lora_dropout}: use a probability in [0, 1)")
    if cfg.train_tokens not in ("auto", "none") and not _parse_range(cfg.train_tokens) and not Path(
            cfg.train_tokens).expanduser().exists():
        raise BabelscopeError(f"--train-tokens {cfg.train_tokens!r}: use auto, none, START:END token ids or the "
                              "directory (or record) of a `transfer vocab` model")
    from babelscope.transfer.loop import check_config

    check_config(loop_config(cfg, 1))


def check_length(cfg: SftConfig, config) -> None:
    """``--max-length`` against the model's maximum positions (its text config; no weights needed)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and cfg.max_length > limit:
        raise BabelscopeError(f"--max-length {cfg.max_length}: over the model's maximum {limit}")


def plan_check(cfg: SftConfig, run_dir: Path, earlier=()) -> None:
    """The checks that need no model, run when an experiment is planned: the options, --max-length against the
    model's config.json and, when the model's tokenizer is there (not a model an earlier step writes), the data
    and the template."""
    import dataclasses

    from babelscope.transfer.pretrain import model_text_config

    later = cfg.train_tokens not in ("auto", "none") and not _parse_range(cfg.train_tokens) and not Path(
        cfg.train_tokens).expanduser().exists() and "transfer-vocab" in earlier  # a model an earlier step writes
    check(dataclasses.replace(cfg, train_tokens="auto") if later else cfg)
    text = model_text_config(cfg.model, planning=True)
    if text is not None:
        check_length(cfg, text)
        prepare(cfg, _tokenizer(cfg.model))


def default_lr(cfg: SftConfig) -> float:
    """``--lr`` when given (``None`` = not given; 0 is a value, refused by the loop's check), else 2e-4 with LoRA
    and 2e-5 without."""
    return cfg.lr if cfg.lr is not None else (2e-4 if cfg.lora_r else 2e-5)


def lora_alpha(cfg: SftConfig) -> float:
    """``--lora-alpha`` when given, else 2 x rank."""
    return cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r


def loop_config(cfg: SftConfig, n_train: int):
    from babelscope.transfer.loop import LoopConfig

    return LoopConfig(lr=default_lr(cfg), warmup=cfg.warmup, schedule=cfg.schedule,
                      weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                      micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs,
                      seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                      gradient_checkpointing=cfg.gradient_checkpointing, mixed_precision=cfg.mixed_precision,
                      trackers=cfg.trackers, save_model=False, restart=cfg.restart)


def _parse_range(text: str) -> range | None:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        return None
    return range(lo, hi) if 0 <= lo < hi else None


# ----------------------------------------------------------------------------------------------- data
def prepare(cfg: SftConfig, tokenizer) -> dict[str, Any]:
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
    return {"template_name": name, "template": template, "train": enc_train, "val": enc_val, "heldout": val,
            "counts": {"conversations": len(convs), "skipped_no_answer": skipped, "train_conversations": len(train),
                       "validation_conversations": len(val), "validation_scored": len(val_scored),
                       "train": counts_train, "validation": counts_val}}


def data_fingerprint(prepared: dict[str, Any]) -> str:
    """sha256 of the encoded training and validation data (what the checkpoints and results depend on)."""
    from babelscope.runs import text_sha256

    return text_sha256(json.dumps([e.input_ids, e.labels]) for e in prepared["train"] + prepared["val"])


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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from babelscope.transfer.loop import read_metrics

    return read_metrics(path)


# ----------------------------------------------------------------------------------------------- saving
def save_tuned(model, peft_model, tokenizer, cfg: SftConfig, prepared: dict[str, Any], info, out: Path) -> Path:
    """Write the tuned model (merged HF directory, or the adapter) to ``out`` atomically (temporary folder, then
    rename); the tokenizer carries the training template and the generation config its end-of-turn token."""
    from babelscope.runs import write_json
    from babelscope.transfer.instructions import end_token_id

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = _with_template(tokenizer, prepared)
    end = end_token_id(tokenizer, prepared["template_name"])
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
                                  "template": prepared["template_name"], "data": cfg.data,
                                  "end_token_id": end, "save": cfg.save if peft_model is not None else "full"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return saved


def _with_template(tokenizer, prepared: dict[str, Any]):
    """The tokenizer (the step's own copy) with the training template as its chat template."""
    if prepared["template_name"] != "chat":
        tokenizer.chat_template = prepared["template"]
    return tokenizer


# ----------------------------------------------------------------------------------------------- resume
def resume_parts(cfg: SftConfig, info, tokenizer, prepared: dict[str, Any], targets: list[str] | None,
                 token_ids: list[int]) -> dict[str, Any]:
    """What changes the tuned weights besides the loop's settings (:func:`babelscope.transfer.loop.resume_key`):
    the start model and tokenizer, the dtype, the data options and the encoded data, and with LoRA its rank,
    alpha, dropout, target modules and trainable embedding rows. Never --eval-every, --val-max, --save,
    --checkpoint-every or --trackers."""
    from babelscope.models.engine import tokenizer_sha256
    from babelscope.runs import inputs_sha256

    parts: dict[str, Any] = {
        "model": info.checksum, "tokenizer": tokenizer_sha256(tokenizer), "dtype": cfg.dtype, "data": cfg.data,
        "lang": cfg.lang, "template": prepared["template_name"], "max_length": cfg.max_length,
        "val_fraction": cfg.val_fraction, "samples": cfg.samples, "encoded_data": data_fingerprint(prepared),
        "lora_r": cfg.lora_r,
    }
    if cfg.lora_r:
        rows = token_ids if len(token_ids) <= 8 else f"{len(token_ids)} rows {inputs_sha256(token_ids)[:12]}"
        parts.update(lora_alpha=lora_alpha(cfg), lora_dropout=cfg.lora_dropout, lora_targets=targets,
                     train_tokens=rows)
    return parts


# ----------------------------------------------------------------------------------------------- the step
def run(cfg: SftConfig, run_dir, step: str = "sft", loaded=None) -> dict[str, Any]:
    """The ``babelscope transfer sft`` step: train, measure validation loss as it goes, save the tuned model."""
    from babelscope.runs import is_main_process, provenance, text_sha256, write_text
    from babelscope.steps import StepRun, check_config, model_files_stamp
    from babelscope.transfer.loop import check_resumable, remove_checkpoints, resume_key, train

    check(check_config(cfg))
    # Every data/template error is raised before the model loads or anything is written. Training changes the
    # weights in place, so the step loads its own copy of the model (never the instance `loaded` shares).
    prepared = prepare(cfg, _tokenizer(cfg.model))
    sr = StepRun(cfg, run_dir, step, loaded, not_result=("device", "trackers", "restart"))  # makes the run dir
    st, config = sr.st, sr.config
    heldout = text_sha256(f"{c.id}\t{c.lang}\t{c.instruction}\t{c.reference}" for c in prepared["heldout"])
    inputs = {"data": data_fingerprint(prepared), "heldout": heldout,
              "train_tokens": None if cfg.train_tokens in ("auto", "none") else model_files_stamp(cfg.train_tokens)}
    if (doc := sr.done(inputs=inputs, when=lambda _: (st.path / "model").is_dir(), write_config=False)) is not None:
        return doc
    model, tokenizer, info = _load(cfg)
    if info.kind != "causal":
        raise BabelscopeError(f"--model {cfg.model}: an encoder; instruction tuning needs a causal LM")
    check_length(cfg, model.config)
    peft_model, token_ids, trained, targets = None, [], model, None
    if cfg.lora_r:
        token_ids = new_token_ids(Path(info.source), model, cfg.train_tokens)
        targets = lora_targets(model, cfg.lora_targets)
    n_train = len(prepared["train"])
    lcfg = loop_config(cfg, n_train)
    # A checkpoint of another configuration is refused (or discarded with --restart) before anything is written.
    key_parts = resume_parts(cfg, info, tokenizer, prepared, targets, token_ids)
    check_resumable(st.path, resume_key(lcfg, n_train, int(os.environ.get("WORLD_SIZE", "1")), key_parts),
                    cfg.restart)
    fingerprint = inputs["data"]
    if is_main_process():
        st.write_config(config)
        write_text(st.path / "heldout.jsonl", "".join(  # the held-out instructions, for `eval respond`
            json.dumps({"id": c.id, "lang": c.lang, "instruction": c.instruction, "reference": c.reference},
                       ensure_ascii=False) + "\n" for c in prepared["heldout"]))
    if cfg.lora_r:
        import torch

        torch.manual_seed(cfg.seed)  # LoRA's A matrices start random: the same seed, the same run
        peft_model = wrap_lora(model, cfg, token_ids)
        trained = peft_model.base_model.model  # the HF model with the LoRA layers in place (the loop's contract)
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = n_train * cfg.epochs
    every = cfg.eval_every or max(1, math.ceil(n_train / 4))
    eval_at = sorted({0, *range(every, total, every), total})
    val_path = st.path / "validation.jsonl"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def evaluate(m, samples: int, step_no: int) -> dict[str, Any]:
        loss, n = validation_loss(m, prepared["val"], cfg.micro_batch_size, pad_id)
        row = {"step": step_no, "samples": samples, "epoch": samples / n_train, "val_loss": loss, "val_tokens": n}
        if is_main_process():
            with open(val_path, "a", encoding="utf-8") as fh:  # a killed run keeps its curve
                fh.write(json.dumps(row) + "\n")
        return row

    if is_main_process() and not (st.path / "checkpoints").exists():
        val_path.unlink(missing_ok=True)  # a fresh run (no checkpoint to resume): a fresh curve
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared["train"]]
    result = train(trained, tokenizer, examples, lcfg, st.path, evaluate=evaluate, eval_at=eval_at,
                   fingerprint=key_parts, tracker_config={"step": step, "data": cfg.data})
    trained.config.use_cache = True
    if not is_main_process():
        return sr.wait()
    saved = save_tuned(model, peft_model, tokenizer, cfg, prepared, info, st.path / "model")
    remove_checkpoints(st.path)  # the saved model supersedes them
    curve = [{k: r.get(k) for k in ("step", "samples", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")}
             for r in _read_jsonl(result.metrics_path)]
    evals = sorted({r["step"]: r for r in _read_jsonl(val_path)}.values(), key=lambda r: r["step"])
    counts = prepared["counts"]
    results = {
        "model": info.name, "base_checksum": info.checksum, "data": cfg.data, "template": prepared["template_name"],
        "model_dir": str(st.path / "model"), "save": cfg.save if cfg.lora_r else "full",
        "lora": {"r": cfg.lora_r, "alpha": lora_alpha(cfg),
                 "targets": targets, "train_tokens": len(token_ids)}
        if cfg.lora_r else None,
        "lr": lcfg.lr, "trainable_parameters": trainable,
        "tied": tied(saved) if cfg.save == "merged" or not cfg.lora_r else None,
        "data_counts": counts, "data_sha256": fingerprint,
        "summary": {"steps": result.steps, "samples": result.samples, "epochs": cfg.epochs,
                    "target_tokens": result.tokens, "seconds": round(result.seconds, 1),
                    "final_train_loss": result.loss,
                    "first_val_loss": evals[0]["val_loss"] if evals else None,
                    "final_val_loss": evals[-1]["val_loss"] if evals else None,
                    "best_val_loss": min((e["val_loss"] for e in evals), default=None),
                    "truncated_responses": counts["train"]["truncated"] + counts["validation"]["truncated"],
                    "responses_cut_away": counts["train"]["cut_away"] + counts["validation"]["cut_away"]},
        "validation_turn": turning_point(evals),
    }
    return sr.write(KIND, results, {"train_curve": curve, "validation": evals},
                    provenance(model=info.to_dict(), loop=vars(lcfg)))


def _tokenizer(spec: str):
    from transformers import AutoTokenizer

    from babelscope.models.loader import resolve_spec

    source = Path(spec).expanduser()
    if not (source / "adapter_config.json").is_file():  # an adapter directory keeps its tokenizer
        source, _ = resolve_spec(spec)
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise BabelscopeError(f"{spec}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None


def _load(cfg: SftConfig):
    from babelscope.models import load_model

    return load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
