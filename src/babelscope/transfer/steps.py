"""The transfer steps apart from their methods: ``vocab`` (vocabulary extension, the method in :mod:`.vocab`)
and ``sft`` (instruction tuning, the method in :mod:`.sft`, the training loop in :mod:`.loop`).

A step checks its options and data before any model loads (``plan_check`` does the same when an experiment is
planned), calls the method and returns its tables; :class:`babelscope.steps.StepRun` does the rest (the done check,
provenance, atomic writes, barriers).
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
from babelscope.transfer import sft, vocab
from babelscope.transfer.configs import SftConfig, VocabConfig


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


def plan_check(cfg: Any, run_dir: Path, earlier=()) -> None:
    """The checks of a step here that need no model, run when an experiment is planned (by the config's type)."""
    if isinstance(cfg, VocabConfig):
        vocab.plan_check(cfg, run_dir, earlier)
    elif isinstance(cfg, SftConfig):
        plan_check_sft(cfg, run_dir, earlier)


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
