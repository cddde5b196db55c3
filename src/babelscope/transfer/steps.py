"""The transfer steps apart from their methods: ``vocab`` (vocabulary extension, the method in :mod:`.vocab`),
``pretrain`` (further pretraining, :mod:`.pretrain`) and ``sft`` (instruction tuning, :mod:`.sft`); the training
loop of both is :mod:`.loop`.

A step checks its options and data before any model loads (its command's ``check`` does the same when an
experiment is planned), calls the method and returns its tables; :class:`babelscope.steps.StepRun` does the rest
(the done check, provenance, atomic writes, barriers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.transfer import pretrain, sft, vocab
from babelscope.transfer.configs import PretrainConfig, SftConfig, VocabConfig


# ----------------------------------------------------------------------------------------------- checks
def check(cfg: SftConfig) -> None:
    """Refuse impossible options before anything is read or loaded."""
    if cfg.save not in sft.SAVE_MODES:
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
    if cfg.train_tokens not in ("auto", "none") and not sft._parse_range(cfg.train_tokens) and not Path(
            cfg.train_tokens).expanduser().exists():
        raise BabelscopeError(f"--train-tokens {cfg.train_tokens!r}: use auto, none, START:END token ids or the "
                              "directory (or record) of a `transfer vocab` model")
    from babelscope.transfer.loop import check_config

    check_config(sft.loop_config(cfg, 1))


def check_length(cfg: SftConfig, config) -> None:
    """``--max-length`` against the model's maximum positions (its text config; no weights needed)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and cfg.max_length > limit:
        raise BabelscopeError(f"--max-length {cfg.max_length}: over the model's maximum {limit}")


def plan_check_sft(cfg: SftConfig, run_dir: Path, earlier=()) -> None:
    """The checks that need no model, run when an experiment is planned: the options, --max-length against the
    model's config.json and, when the model's tokenizer is there (not a model an earlier step writes), the data
    and the template."""
    import dataclasses

    from babelscope.transfer.pretrain import model_text_config

    later = cfg.train_tokens not in ("auto", "none") and not sft._parse_range(cfg.train_tokens) and not Path(
        cfg.train_tokens).expanduser().exists() and "transfer-vocab" in earlier  # a model an earlier step writes
    check(dataclasses.replace(cfg, train_tokens="auto") if later else cfg)
    text = model_text_config(cfg.model, planning=True)
    if text is not None:
        check_length(cfg, text)
        sft.prepare(cfg, _tokenizer(cfg.model))


def resume_parts(cfg: SftConfig, info, tokenizer, prepared: sft.SftData, targets: list[str] | None,
                 token_ids: list[int]) -> dict[str, Any]:
    """What changes the tuned weights besides the loop's settings (:func:`babelscope.transfer.loop.resume_key`):
    the start model and tokenizer, the dtype, the data options and the encoded data, and with LoRA its rank,
    alpha, dropout, target modules and trainable embedding rows. Never --eval-every, --val-max, --save,
    --checkpoint-every or --trackers."""
    from babelscope.models.engine import tokenizer_sha256
    from babelscope.runs import inputs_sha256

    parts: dict[str, Any] = {
        "model": info.checksum, "tokenizer": tokenizer_sha256(tokenizer), "dtype": cfg.dtype, "data": cfg.data,
        "lang": cfg.lang, "template": prepared.template_name, "max_length": cfg.max_length,
        "val_fraction": cfg.val_fraction, "samples": cfg.samples, "encoded_data": sft.data_fingerprint(prepared),
        "lora_r": cfg.lora_r,
    }
    if cfg.lora_r:
        rows = token_ids if len(token_ids) <= 8 else f"{len(token_ids)} rows {inputs_sha256(token_ids)[:12]}"
        parts.update(lora_alpha=sft.lora_alpha(cfg), lora_dropout=cfg.lora_dropout, lora_targets=targets,
                     train_tokens=rows)
    return parts


# ----------------------------------------------------------------------------------------------- sft
def _write_heldout(path: Path, prepared: sft.SftData) -> None:
    """The held-out instructions as JSONL, for ``eval respond``."""
    from babelscope.runs import write_text

    write_text(path, "".join(json.dumps({"id": c.id, "lang": c.lang, "instruction": c.instruction,
                                         "reference": c.reference}, ensure_ascii=False) + "\n"
                             for c in prepared.heldout))


def _validation(prepared: sft.SftData, cfg: SftConfig, pad_id: int, val_path: Path):
    """The loop's ``evaluate(model, samples, step)``: validation loss on the held-out responses, appended to
    ``val_path`` as it is measured (a killed run keeps its curve)."""
    from babelscope.runs import is_main_process

    n_train = len(prepared.train)

    def evaluate(m, samples: int, step_no: int) -> dict[str, Any]:
        loss, n = sft.validation_loss(m, prepared.val, cfg.micro_batch_size, pad_id)
        row = {"step": step_no, "samples": samples, "epoch": samples / n_train, "val_loss": loss, "val_tokens": n}
        if is_main_process():
            with open(val_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    return evaluate


def _sft_results(cfg: SftConfig, info, prepared: sft.SftData, result, evals: list[dict], lcfg, saved, trainable: int,
                 targets: list[str] | None, token_ids: list[int], model_dir: Path, fingerprint: str) -> dict[str, Any]:
    counts = prepared.counts
    return {
        "model": info.name, "base_checksum": info.checksum, "data": cfg.data, "template": prepared.template_name,
        "model_dir": str(model_dir), "save": cfg.save if cfg.lora_r else "full",
        "lora": {"r": cfg.lora_r, "alpha": sft.lora_alpha(cfg),
                 "targets": targets, "train_tokens": len(token_ids)}
        if cfg.lora_r else None,
        "lr": lcfg.lr, "trainable_parameters": trainable,
        "tied": sft.tied(saved) if cfg.save == "merged" or not cfg.lora_r else None,
        "data_counts": counts, "data_sha256": fingerprint,
        "summary": {"steps": result.steps, "samples": result.samples, "epochs": cfg.epochs,
                    "target_tokens": result.tokens, "seconds": round(result.seconds, 1),
                    "final_train_loss": result.loss,
                    "first_val_loss": evals[0]["val_loss"] if evals else None,
                    "final_val_loss": evals[-1]["val_loss"] if evals else None,
                    "best_val_loss": min((e["val_loss"] for e in evals), default=None),
                    "truncated_responses": counts["train"]["truncated"] + counts["validation"]["truncated"],
                    "responses_cut_away": counts["train"]["cut_away"] + counts["validation"]["cut_away"]},
        "validation_turn": sft.turning_point(evals),
    }


def run_sft(cfg: SftConfig, run_dir, step: str = "sft", loaded=None) -> dict[str, Any]:
    """The ``babelscope transfer sft`` step: train, measure validation loss as it goes, save the tuned model."""
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun, check_config, model_files_stamp
    from babelscope.transfer.loop import check_resumable, read_metrics, remove_checkpoints, resume_key, train

    check(check_config(cfg))
    # Every data/template error is raised before the model loads or anything is written. Training changes the
    # weights in place, so the step loads its own copy of the model (never the instance `loaded` shares).
    prepared = sft.prepare(cfg, _tokenizer(cfg.model))
    sr = StepRun(cfg, run_dir, step, loaded, not_result=("device", "trackers", "restart"))  # makes the run dir
    heldout = text_sha256(f"{c.id}\t{c.lang}\t{c.instruction}\t{c.reference}" for c in prepared.heldout)
    inputs = {"data": sft.data_fingerprint(prepared), "heldout": heldout,
              "train_tokens": None if cfg.train_tokens in ("auto", "none") else model_files_stamp(cfg.train_tokens)}
    if (doc := sr.done(inputs=inputs, when=lambda _: (sr.path / "model").is_dir(), write_config=False)) is not None:
        return doc
    model, tokenizer, info = _load(cfg)
    if info.kind != "causal":
        raise BabelscopeError(f"--model {cfg.model}: an encoder; instruction tuning needs a causal LM")
    check_length(cfg, model.config)
    peft_model, token_ids, trained, targets = None, [], model, None
    if cfg.lora_r:
        token_ids = sft.new_token_ids(Path(info.source), model, cfg.train_tokens)
        targets = sft.lora_targets(model, cfg.lora_targets)
    n_train = len(prepared.train)
    lcfg = sft.loop_config(cfg, n_train)
    # A checkpoint of another configuration is refused (or discarded with --restart) before anything is written.
    key_parts = resume_parts(cfg, info, tokenizer, prepared, targets, token_ids)
    check_resumable(sr.path, resume_key(lcfg, n_train, int(os.environ.get("WORLD_SIZE", "1")), key_parts),
                    cfg.restart)
    sr.write_config()
    if is_main_process():
        _write_heldout(sr.path / "heldout.jsonl", prepared)
    if cfg.lora_r:
        import torch

        torch.manual_seed(cfg.seed)  # LoRA's A matrices start random: the same seed, the same run
        peft_model = sft.wrap_lora(model, cfg, token_ids)
        trained = peft_model.base_model.model  # the HF model with the LoRA layers in place (the loop's contract)
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = n_train * cfg.epochs
    every = cfg.eval_every or max(1, math.ceil(n_train / 4))
    eval_at = sorted({0, *range(every, total, every), total})
    val_path = sr.path / "validation.jsonl"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if is_main_process() and not (sr.path / "checkpoints").exists():
        val_path.unlink(missing_ok=True)  # a fresh run (no checkpoint to resume): a fresh curve
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.train]
    result = train(trained, tokenizer, examples, lcfg, sr.path, evaluate=_validation(prepared, cfg, pad_id, val_path),
                   eval_at=eval_at, fingerprint=key_parts, tracker_config={"step": step, "data": cfg.data})
    trained.config.use_cache = True
    if not is_main_process():
        return sr.wait()
    saved = sft.save_tuned(model, peft_model, tokenizer, cfg, prepared, info, sr.path / "model")
    remove_checkpoints(sr.path)  # the saved model supersedes them
    curve = [{k: r.get(k) for k in ("step", "samples", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")}
             for r in read_metrics(result.metrics_path)]
    evals = sorted({r["step"]: r for r in read_metrics(val_path)}.values(), key=lambda r: r["step"])
    results = _sft_results(cfg, info, prepared, result, evals, lcfg, saved, trainable, targets, token_ids,
                           sr.path / "model", inputs["data"])
    return sr.write(sft.KIND, results, {"train_curve": curve, "validation": evals},
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


# ------------------------------------------------------------------------------------------------ vocab
@dataclass
class VocabInputs:
    """The texts of a vocabulary step, all read before anything loads: the target's training and held-out units
    (and their corpora), the parallel corpus, its units per checked language, and the init-quality languages."""

    lang: str
    train_corpus: Any
    train: list
    held_corpus: Any
    held: list
    par: Any
    par_units: dict[str, list]
    quality: list[str]


def vocab_inputs(cfg: VocabConfig) -> VocabInputs:
    """Read and check the texts of ``cfg`` (one-line errors: no target text, too few units to hold out)."""
    from babelscope.data import open_corpus, parse_languages, resolve_language, split_units
    from babelscope.evaluate.tokens import parallel_units

    lang = resolve_language(cfg.lang).code
    train_corpus, train = vocab.target_units(cfg.train, lang, "train")
    if cfg.held_out:
        held_corpus, held = vocab.target_units(cfg.held_out, lang, "held-out")
    else:
        train, held = split_units(train, test_fraction=0.1, seed=cfg.seed)
        held_corpus = train_corpus
        if not held or not train:
            raise BabelscopeError(f"--train {cfg.train!r}: too few units to hold 10% out; give --held-out")
    par = open_corpus(cfg.parallel)
    others = "all" if cfg.check_langs == "all" else ",".join(
        lang_.code for lang_ in parse_languages(cfg.check_langs) if lang_.code != lang)  # fmt: skip
    par_units = parallel_units(par, others, "eng", None) if others else {}
    if lang in par.languages() and lang not in par_units:
        par_units = parallel_units(par, ",".join([lang, *par_units]), "eng", None)
    quality = [lang] + [q.code for q in parse_languages(cfg.quality_langs)] if cfg.quality_langs else [lang]
    quality = [q for q in dict.fromkeys(quality) if q in par_units]
    return VocabInputs(lang, train_corpus, train, held_corpus, held, par, par_units, quality)


def base_tokenizer(cfg: VocabConfig, texts: list[str], lang: str):
    """``(base, base_sha256, model_type)``: the base tokenizer's kind (:func:`.tokenizers.detect`), its checksum
    and the SentencePiece model type to train; refused when its normaliser would rewrite the target text."""
    from babelscope.evaluate.tokens import load_backend
    from babelscope.models.loader import resolve_spec
    from babelscope.transfer import tokenizers as tk

    source, _ = resolve_spec(cfg.model)
    # the checks before the step runs read tokenizer.json with the tokenizers library (a second for a 262k
    # vocabulary); the transformers tokenizer comes with the model, once the step runs
    check_tok, base_sha = load_backend(cfg.model)
    base = tk.detect(Path(source), check_tok)
    model_type = base.model_type if cfg.model_type == "auto" else cfg.model_type
    if base.model_type == "unigram" and model_type != "unigram":
        raise BabelscopeError(f"{cfg.model}: a Unigram tokenizer scores pieces by log-probability; train unigram "
                              "pieces (--model-type unigram or auto)")  # fmt: skip
    rewritten, example = tk.normaliser_rewrites(base, texts)
    if rewritten > 0.01 * len(texts):
        raise BabelscopeError(
            f"--train {cfg.train!r}: the base tokenizer's normaliser rewrites {rewritten} of {len(texts)} {lang} "
            f"texts ({example}), so pieces learnt from them could not be reached; normalise the text the same way "
            "first (e.g. NFKC) or extend a tokenizer whose normaliser keeps this script"
        )
    return base, base_sha, model_type


def run_vocab(cfg: VocabConfig, run_dir, step: str = "vocab", loaded=None) -> dict[str, Any]:
    """The ``babelscope transfer vocab`` step; returns the results doc. The step resizes the model in place, so it
    works on a copy of the model other steps share (``loaded``; a deep copy in memory, no reloading), or on one it
    loads itself."""
    from babelscope.processes import launched
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun
    from babelscope.transfer import tokenizers as tk

    sr = StepRun(cfg, run_dir, step, loaded)
    vocab.check(cfg)
    if launched():
        raise BabelscopeError("transfer vocab writes one model directory from one process; run it without "
                              "accelerate launch / torchrun")  # fmt: skip
    data = vocab_inputs(cfg)
    lang, par, texts, held_texts = data.lang, data.par, [u.text for u in data.train], [u.text for u in data.held]
    out = Path(cfg.out) if cfg.out else sr.path / "model"
    base, base_sha, model_type = base_tokenizer(cfg, texts, lang)
    inputs = {"train": text_sha256(texts), "held_out": text_sha256(held_texts),
              "parallel": {c: text_sha256(u.text for u in us) for c, us in data.par_units.items()},
              "tokenizer": base_sha}
    # the config is written once SentencePiece trained and added pieces: a refused run leaves nothing
    if (doc := sr.done(inputs=inputs, when=lambda _: (out / vocab.RECORD).is_file(), write_config=False)) is not None:
        return doc
    settings = tk.spm_settings(base)
    trained = tk.train_sentencepiece(texts, cfg.vocab_size, model_type, cfg.character_coverage, settings,
                                     cfg.split_by_whitespace, what=f"the {lang} training text")  # fmt: skip
    pieces = tk.new_pieces(base, trained)
    if not pieces:
        raise BabelscopeError(f"every piece of the {cfg.vocab_size}-piece {lang} model is already in the base "
                              "vocabulary; raise --vocab-size to add pieces")  # fmt: skip
    sr.write_config()
    new_tok, ids, extra, dropped = _extend_tokenizer(cfg, base, pieces, par, lang, sr.path)
    model, base_tok, info = _own_copy(cfg, loaded)  # never the shared model itself: the step resizes it in place
    if info.kind != "causal":
        raise BabelscopeError(f"{cfg.model}: vocabulary extension scores and saves a causal LM; this is an {info.kind}")
    base = replace(base, tokenizer=base_tok)
    sets = {f"{lang} held-out": held_texts, **{f"{c} {par.name}": [u.text for u in us]
                                               for c, us in data.par_units.items()}}
    trips = vocab.tokenization_checks(base_tok, new_tok, sets)
    added = vocab.reachability(base, new_tok, ids, texts + held_texts)
    eff, fert = vocab.efficiency_tables(base_tok, new_tok, lang, data.held, data.held_corpus, par, data.par_units)
    score_sets = {f"{lang} held-out": held_texts[: cfg.max_units]}
    score_sets.update({f"{q} {par.name}": [u.text for u in data.par_units[q]][: cfg.max_units] for q in data.quality})
    quality, old_rows, rows = vocab.extend_and_score(model, base_tok, new_tok, ids, score_sets, cfg)
    record = {
        "base_model": info.to_dict(), "base_tokenizer_sha256": base_sha, "kind": base.kind, "lang": lang,
        "train": cfg.train, "train_sha256": text_sha256(texts), "train_units": len(texts), "vocab_size": cfg.vocab_size,
        "model_type": model_type, "character_coverage": cfg.character_coverage, "spm_settings": settings,
        "split_by_whitespace": cfg.split_by_whitespace, "init": cfg.init, "seed": cfg.seed,
        "added": len(ids), "first_new_id": min(ids.values()), "embedding_rows": [old_rows, rows],
    }  # fmt: skip
    vocab.save_extended(model, new_tok, extra, record, out)
    unreachable = [r["piece"] for r in added if not r["reachable"]]
    results = {"model": info.name, "lang": lang, "kind": base.kind, "out": str(out), "model_type": model_type,
               "vocab_size": cfg.vocab_size, "init": cfg.init, "parallel": par.name,
               "summary": vocab.summarize(ids, dropped, added, trips, eff, lang),
               "unreachable_pieces": unreachable[:200], "record": record}  # fmt: skip
    tables = {"efficiency": eff, "round_trip": trips, "init_quality": quality, "added_tokens": added}
    if fert:
        tables["fertility"] = fert
    prov_data = {"train": cfg.train, "held_out": cfg.held_out or "10% of --train", "parallel": par.name}
    return sr.write(vocab.KIND, results, tables, provenance(model=info.to_dict(), data=prov_data))


def _extend_tokenizer(cfg: VocabConfig, base, pieces, par, lang: str, folder: Path):
    """The extended tokenizer (:func:`.tokenizers.extend_keeping`, built in a temporary folder of the step):
    ``(tokenizer, new ids, extra files, pieces dropped)``; with ``--keep-old`` the text of every other language
    of the parallel corpus keeps its tokenization."""
    from babelscope.transfer import tokenizers as tk

    work = tk.temporary_dir(folder, ".tokenizer.")
    old_texts = [u.text for c in par.languages() if c != lang for u in par.units(c)] if cfg.keep_old else []
    try:
        return tk.extend_keeping(base, pieces, work, old_texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _own_copy(cfg: VocabConfig, loaded=None):
    """``(model, tokenizer, info)``: a deep copy of the experiment's shared model (its tokenizer is only read),
    else the model loaded here."""
    if loaded is not None:
        import copy

        shared, tokenizer, info = loaded()
        return copy.deepcopy(shared), tokenizer, info
    from babelscope.models import load_model

    return load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)


# --------------------------------------------------------------------------------------------- pretrain
def run_pretrain(cfg: PretrainConfig, run_dir, step: str = "transfer-pretrain", loaded=None) -> dict[str, Any]:
    """The ``babelscope transfer pretrain`` step (resumable). The model is always loaded afresh from
    ``cfg.model`` (training changes it; a shared ``loaded`` model is not used)."""
    import numpy as np

    from babelscope.models import load_model
    from babelscope.models.engine import tokenizer_sha256
    from babelscope.models.loader import resolve_spec
    from babelscope.processes import launched_world
    from babelscope.runs import is_main_process
    from babelscope.steps import StepRun
    from babelscope.transfer.loop import check_config, check_resumable, remove_checkpoints, resume_key, train

    sr = StepRun(cfg, run_dir, step, loaded, not_result=("device", "restart"))
    lcfg = pretrain.loop_config(cfg)
    check_config(lcfg)
    # Options and data first: nothing is loaded or written before they pass.
    pretrain.check_options(cfg)
    source, _ = resolve_spec(cfg.model)  # once: the checks, the tokenizer and the model all read it
    pretrain.check_seq_len(cfg, source=source)
    ssu_texts = pretrain.check_baseline(cfg)
    mask_file = pretrain.mask_path(cfg.freeze_region, sr.run_dir) if cfg.freeze_region else None
    if mask_file is not None:
        pretrain.check_mask_model(mask_file, cfg.model, source)
    tokenizer = _pretrain_tokenizer(source)  # the data's and, once the step runs, the model's
    data = pretrain.prepare_data(cfg, tokenizer)
    inputs = _pretrain_inputs(data, mask_file, ssu_texts)
    # finished = complete (a killed run left partial results); the config is written once the model passed
    if (doc := sr.done(inputs=inputs, when=lambda d: d["results"].get("complete"), write_config=False)) is not None:
        return doc
    model, tokenizer, info = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, source=source,
                                        tokenizer=tokenizer)
    if info.kind != "causal":
        raise BabelscopeError(f"{cfg.model}: further pretraining needs a causal LM, this is an {info.kind}")
    masks, mask_meta, mask_sum = _freeze_masks(cfg, model, tokenizer, info, mask_file, ssu_texts, inputs["mask"])
    # A checkpoint of another configuration is refused (or discarded with --restart) before anything is written.
    key_parts = pretrain.resume_parts(cfg, info.checksum, tokenizer_sha256(tokenizer), data, mask_sum)
    key = resume_key(lcfg, len(data.order), launched_world(), key_parts)
    check_resumable(sr.path, key, cfg.restart)
    sr.write_config()
    if is_main_process():
        np.save(sr.path / ".order.npy.tmp.npy", data.order)
        (sr.path / ".order.npy.tmp.npy").replace(sr.path / "order.npy")
    curve = _resumed_curve(sr, key["sha256"])  # the forgetting curve's points so far (a resumed run keeps them)
    frozen = pretrain.freeze_summary(model, masks, mask_file, mask_meta, cfg.freeze_norms)
    per_step = cfg.micro_batch_size * cfg.grad_accum * launched_world()
    steps = (math.ceil(data.samples / per_step), per_step)
    write = _pretrain_writer(sr, cfg, info, data, curve, frozen, key["sha256"], steps)
    trained = train(model, tokenizer, pretrain.PackedBlocks(data.blocks, data.order), lcfg, sr.path,
                    evaluate=_curve_evaluator(cfg, tokenizer, info, data, curve, lcfg, steps[0], write),
                    eval_at=data.eval_at, freeze=masks, fingerprint=key_parts,
                    tracker_config={"model": cfg.model, "langs": cfg.langs})
    if is_main_process():
        sr.write_config()
        write(True, trained)
        remove_checkpoints(sr.path)  # finished: the results (and the model, when saved) supersede them
    return sr.wait()  # every rank: the next step reads what rank 0 wrote


def _pretrain_tokenizer(source: Path | str):
    """The tokenizer of the resolved model ``source`` (read before the model, for the training data)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def _pretrain_inputs(data: pretrain.PretrainData, mask_file: Path | None, ssu_texts: dict) -> dict[str, Any]:
    """The checksums of what the step reads: the training text, the evaluation text, the mask file, the SSU
    source text and the training languages' own held-out text."""
    from babelscope.runs import file_sha256, text_sha256

    evals = {code: text_sha256(u.text for u in data.eval_view.units(code)) for code in data.eval_codes}
    inputs = {"train": data.checksums, "eval": evals, "mask": file_sha256(mask_file) if mask_file is not None else ""}
    if ssu_texts:
        inputs["ssu"] = {code: text_sha256(texts) for code, texts in ssu_texts.items()}
    if data.target_view is not None:
        tv = data.target_view
        inputs["target_eval"] = {c: text_sha256(u.text for u in tv.units(tv.match_language(c)))
                                 for c in data.train_codes}
    return inputs


def _freeze_masks(cfg: PretrainConfig, model, tokenizer, info, mask_file: Path | None, ssu_texts: dict,
                  mask_sum: str) -> tuple[dict | None, dict[str, Any], str]:
    """``(masks, their metadata, their checksum)``: the region mask of ``--freeze-region`` (refused when made from
    another model's weights), or the baseline rule's masks computed on this model; ``None`` without either."""
    masks, mask_meta = None, {}
    if mask_file is not None:
        from babelscope.models.params import scored_parameters
        from babelscope.regions.select import load_mask

        masks, mask_meta = load_mask(mask_file, scored_parameters(model), info.checksum)
        if mask_meta.get("other_model"):
            raise BabelscopeError(f"{mask_file}: mask for another model (weights differ from {cfg.model}); select "
                                  "the region from this model's importance scores")
    if cfg.freeze_baseline:
        from babelscope.transfer.baselines import masks_sha256

        masks = pretrain.baseline_for(cfg, model, tokenizer, ssu_texts)
        mask_sum = masks_sha256(masks)
        mask_meta = {"baseline": cfg.freeze_baseline, "k": cfg.freeze_fraction}
    return masks, mask_meta, mask_sum


def _resumed_curve(sr, fingerprint: str) -> list[dict[str, Any]]:
    """The curve points of an interrupted run of this step (its checkpoints still there) on the same data, with
    the same config (but for the options that do not change the curve) and inputs; else none."""
    from babelscope.runs import inputs_sha256, load_results, to_jsonable

    if not (sr.results_path.exists() and (sr.path / "checkpoints").exists()):
        return []
    old = load_results(sr.results_path)
    same = {k: v for k, v in to_jsonable(sr.config).items() if k not in pretrain._NOT_CURVE}
    if ((old.get("provenance") or {}).get("data") or {}).get("fingerprint") == fingerprint and {
            k: v for k, v in (old.get("config") or {}).items() if k not in pretrain._NOT_CURVE} == same \
            and old.get("inputs") == inputs_sha256(sr.inputs):
        return list(old["tables"].get("curve", {}).get("rows", []))
    return []


def _pretrain_writer(sr, cfg: PretrainConfig, info, data: pretrain.PretrainData, curve: list[dict],
                     frozen: dict, fingerprint: str, steps: tuple[int, int]):
    """``write(complete, trained=None)``: the results so far (rank 0; partial at each curve point, complete with
    the comparison to the run's other pretraining steps at the end). ``steps``: the optimizer steps and the
    samples per step."""
    from babelscope.runs import provenance

    def write(complete: bool, trained=None) -> None:
        from babelscope.transfer.loop import read_metrics

        tables = {"curve": sorted(curve, key=lambda r: (r["samples"], r["lang"], r.get("text") or "")),
                  "data": data.data_rows, "metrics": read_metrics(sr.path / "metrics.jsonl")}
        compare = pretrain.compare_rows(sr.run_dir, sr.step, info.checksum, tables["curve"], frozen) if complete \
            else []
        if compare:
            tables["compare"] = compare
        prov = provenance(model=info.to_dict(), data={"sha256": data.checksums, "fingerprint": fingerprint},
                          freeze=frozen)
        sr.save(pretrain.KIND, _pretrain_results(cfg, info, data, curve, frozen, complete, trained, steps),
                tables, prov)

    return write


def _curve_evaluator(cfg: PretrainConfig, tokenizer, info, data: pretrain.PretrainData, curve: list[dict], lcfg,
                     total_steps: int, write):
    """The loop's ``evaluate(model, samples, at_step)``: a curve point (:func:`.pretrain.curve_point`) put in
    ``curve`` (replacing a resumed run's point at the same samples) and written as partial results."""
    from babelscope.runs import is_main_process
    from babelscope.transfer.loop import lr_at

    def evaluate(m, samples: int, at_step: int) -> dict[str, Any]:
        lr = lr_at(at_step - 1, total_steps, lcfg) if at_step else 0.0
        point = pretrain.curve_point(m, tokenizer, data, cfg, info.checksum, samples, at_step, lr)
        curve[:] = [r for r in curve if r["samples"] != samples] + point
        if is_main_process():
            write(False)
        return {"samples": samples, "rows": point}

    return evaluate


def _pretrain_results(cfg: PretrainConfig, info, data: pretrain.PretrainData, curve: list[dict], frozen: dict,
                      complete: bool, trained, steps: tuple[int, int]) -> dict[str, Any]:
    """The results document of a pretraining step (partial, or ``complete`` with the ``trained`` loop's result)."""
    total_steps, per_step = steps
    return {
        "model": info.name, "model_checksum": info.checksum, "corpus": data.eval_corpus.name
        if data.held_out_split else cfg.corpus, "train_corpus": cfg.corpus,
        "eval_corpus": data.eval_corpus.name, "held_out_split": data.held_out_split,
        "target_eval": data.target_name,
        "targets": data.train_codes, "eval_langs": data.eval_codes, "seq_len": cfg.seq_len,
        "samples": data.samples, "tokens": data.samples * cfg.seq_len, "steps": total_steps,
        "samples_per_step": per_step, "lr": cfg.lr,
        "schedule": cfg.schedule, "eval_at": data.eval_at,
        "freeze": frozen, "complete": complete, "summary": pretrain.curve_summary(curve, set(data.train_codes)),
        "model_dir": str(trained.model_dir) if trained is not None and trained.model_dir else None,
        "train_seconds": trained.seconds if trained is not None else None,
        "final_loss": trained.loss if trained is not None else None,
    }
