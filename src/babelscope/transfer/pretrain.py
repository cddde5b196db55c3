"""Further pretraining with forgetting curves and region freezing (Zhao et al. 2024, §3; Zhang et al. 2024, §5).

Zhao et al. ("LLaMA Beyond English") further pretrain LLaMA on 10K / 100K / 1M samples of Chinese and watch the
other languages: English perplexity 14.7 → 15.6 → 29.6 → 198.8 while Chinese falls 10.2 → 5.2 (their Table 2).
Zhang et al. ("Unveiling Linguistic Regions") freeze the core region (Top-k of Imp = Σ_l |S_l|) during such
training and report that the other languages no longer collapse. This step reproduces both on any causal LM:

1. Data: documents (corpus units) of one or more languages, mixed with proportions ``vie:0.9,eng:0.1``, each
   document ``[BOS] text [EOS]``, concatenated per language and cut into ``seq_len`` blocks. The budget is
   ``--samples`` blocks (or ``--tokens`` / ``seq_len``), split over the languages by the proportions; a language
   with fewer blocks than its share is an error unless ``--epochs`` allows that many passes. The sample order
   (language, block) is a seeded permutation saved as ``order.npy`` in the step folder.
2. Training: :func:`babelscope.transfer.loop.train` (AdamW, warmup + cosine, token-count normalised loss, fused
   head + loss, checkpoints and resume), optionally with ``--freeze-region MASKS`` from ``regions select``.
3. Forgetting curve: at each of ``--eval-at`` sample counts (0 = the start model), per-language perplexity,
   bits per byte and bits per parallel unit (:func:`babelscope.evaluate.perplexity.language_rows`) on held-out
   text of the target and other languages. When the evaluation corpus is the training corpus, the unit ids
   are split (``split_units``) and training never sees an evaluation id. Each point is written into the
   results as it is measured (``results.complete`` false until the end), so a killed run keeps its curve.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelscope.caches import digest
from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.numeric import median
from babelscope.transfer import configs
from babelscope.transfer.configs import PretrainConfig

KIND = "transfer-pretrain"
#: options that change neither the weights nor a measured point: a resumed run keeps the points measured so far
_NOT_CURVE = ("log_every", "checkpoint_every", "trackers", "save_model", "restart")


# ----------------------------------------------------------------------------------------------- options
def parse_mix(spec: str) -> list[tuple[str, float]]:
    """``"vie:0.9,eng:0.1"`` -> ``[("vie", 0.9), ("eng", 0.1)]`` (proportions normalised; default equal)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise BabelscopeError("--langs is empty; give the training languages, e.g. vie or vie:0.9,eng:0.1")
    mix = []
    for part in parts:
        lang, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise BabelscopeError(f"--langs {spec!r}: {weight!r} is not a proportion; write LANG:0.5") from None
        if w <= 0:
            raise BabelscopeError(f"--langs {spec!r}: proportion of {lang} must be positive")
        mix.append((lang.strip(), w))
    total = sum(w for _, w in mix)
    return [(lang, w / total) for lang, w in mix]


def budget(cfg: PretrainConfig) -> int:
    """Samples (blocks) of the run from ``--samples`` or ``--tokens``."""
    if (cfg.samples is None) == (cfg.tokens is None):
        raise BabelscopeError("give exactly one budget: --samples N (blocks of --seq-len tokens) or --tokens N")
    n = cfg.samples if cfg.samples is not None else math.ceil(cfg.tokens / cfg.seq_len)
    if n < 1:
        raise BabelscopeError(f"budget {cfg.samples or cfg.tokens}: must be at least one sample")
    return n


def check_options(cfg: PretrainConfig) -> tuple[int, list[int]]:
    """The checks of the options alone (no data, no model): epochs, budget, mix, eval points, held-out fraction,
    block length. Returns ``(samples, eval_at)``."""
    if cfg.epochs < 1:
        raise BabelscopeError(f"--epochs {cfg.epochs}: must be at least 1")
    if cfg.seq_len < 2:
        raise BabelscopeError(f"--seq-len {cfg.seq_len}: a block needs at least 2 tokens")
    if cfg.eval_window < 2:
        raise BabelscopeError(f"--eval-window {cfg.eval_window}: a scoring window needs at least 2 tokens")
    samples = budget(cfg)
    parse_mix(cfg.langs)
    eval_at = parse_eval_at(cfg.eval_at, samples)
    if not 0 < cfg.held_out < 1:
        raise BabelscopeError(f"--held-out {cfg.held_out}: give a fraction strictly between 0 and 1")
    return samples, eval_at


def parse_eval_at(spec: str, samples: int) -> list[int]:
    if not spec.strip():
        return sorted({0, samples // 4, samples // 2, samples})
    try:
        points = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise BabelscopeError(f"--eval-at {spec!r}: give sample counts such as 0,100,1000") from None
    if points and (points[0] < 0 or points[-1] > samples):
        raise BabelscopeError(f"--eval-at {spec!r}: sample counts must lie between 0 and the budget {samples}")
    return points


def allocate(samples: int, mix: Sequence[tuple[str, float]]) -> dict[str, int]:
    """Samples per language by the proportions (largest remainder, so they add up to ``samples``)."""
    raw = [(lang, samples * w) for lang, w in mix]
    counts = {lang: int(x) for lang, x in raw}
    rest = samples - sum(counts.values())
    for lang, _ in sorted(raw, key=lambda t: -(t[1] - int(t[1])))[:rest]:
        counts[lang] += 1
    return counts


# ----------------------------------------------------------------------------------------------- data
def pack(token_lists: Sequence[Sequence[int]], seq_len: int, bos: int | None, eos: int | None) -> np.ndarray:
    """Documents as ``[BOS] ids [EOS]``, concatenated and cut into ``(n, seq_len)`` blocks (the tail dropped).

    With a BOS (models that score after one, Gemma), every block starts with it: a block cut inside a document
    gets one in front (and an EOS that would open a block is dropped). Gemma sinks attention on a first-position
    BOS; without it the same 31 German tokens cost a loss of 10.4 nats instead of 6.0 (measured on the default
    model), and training on such blocks teaches the model to do without its BOS."""
    stream: list[int] = []
    for ids in token_lists:
        if bos is not None:
            stream.append(bos)
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    if bos is None:
        n = len(stream) // seq_len
        return np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)
    rows, i = [], 0
    while True:
        if i < len(stream) and stream[i] == eos:
            i += 1
        if i < len(stream) and stream[i] == bos:
            row, i = stream[i: i + seq_len], i + seq_len
        else:
            row, i = [bos, *stream[i: i + seq_len - 1]], i + seq_len - 1
        if len(row) < seq_len:
            break
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), seq_len)


def sample_order(counts: dict[str, int], blocks: dict[str, int], epochs: int, seed: int) -> np.ndarray:
    """``(samples, 2)`` rows of (language index, block index): per language its first ``count`` samples of
    epoch-wise seeded permutations of its blocks, then all of them shuffled together."""
    rng = np.random.default_rng(seed)
    rows = []
    for li, (lang, count) in enumerate(counts.items()):
        n = blocks[lang]
        if count > n * epochs:
            raise ValueError(lang)
        perm = np.concatenate([rng.permutation(n) for _ in range(math.ceil(count / n))])[:count]
        rows.append(np.stack([np.full(count, li), perm], axis=1))
    order = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    return order[rng.permutation(len(order))]


class PackedBlocks:
    """The run's samples in order, as loop examples (labels = input ids: every token is predicted)."""

    def __init__(self, blocks: list[np.ndarray], order: np.ndarray):
        self.blocks, self.order = blocks, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> dict[str, list[int]]:
        li, bi = self.order[j]
        ids = self.blocks[li][bi].tolist()
        return {"input_ids": ids, "labels": ids}


@dataclass
class PretrainData:
    """What :func:`prepare_data` prepares: the budget (``samples``) and the evaluation points, the training
    languages' packed blocks, the sample order, one row per language (documents, tokens, blocks, samples) and
    the training text's checksums; the held-out evaluation units (``eval_view`` of ``eval_corpus``, in
    ``eval_codes``; ``held_out_split``: split from the training corpus by unit id), and the training languages'
    own held-out text (``target_view``, named ``target_name``; ``None`` when not measured)."""

    samples: int
    eval_at: list[int]
    train_codes: list[str]
    blocks: list[np.ndarray]
    order: np.ndarray
    data_rows: list[dict[str, Any]]
    checksums: dict[str, str]
    eval_view: Any
    eval_codes: list[str]
    eval_corpus: Any
    held_out_split: bool
    target_view: Any
    target_name: str | None

    def __getitem__(self, key: str) -> Any:  # the older ``data["eval_view"]``
        return getattr(self, key)


def prepare_data(cfg: PretrainConfig, tokenizer) -> PretrainData:
    """Training blocks, order and held-out evaluation units; every budget check happens here (no model)."""
    from babelscope.data import open_corpus
    from babelscope.data.base import split_units
    from babelscope.data.views import SubsetView
    from babelscope.runs import text_sha256

    samples = budget(cfg)
    mix = parse_mix(cfg.langs)
    eval_at = parse_eval_at(cfg.eval_at, samples)
    if not 0 < cfg.held_out < 1:
        raise BabelscopeError(f"--held-out {cfg.held_out}: give a fraction strictly between 0 and 1")
    corpus = open_corpus(cfg.corpus)
    train_codes = [corpus.match_language(lang) for lang, _ in mix]
    eval_spec = cfg.eval_corpus or cfg.corpus
    eval_corpus = corpus if eval_spec == cfg.corpus else open_corpus(eval_spec)
    wanted = list(dict.fromkeys([*train_codes, *(x.strip() for x in cfg.eval_langs.split(",") if x.strip())]))
    eval_codes = list(dict.fromkeys(eval_corpus.match_language(lang) for lang in wanted))
    same = eval_corpus is corpus
    held: dict[str, set[str]] = {}
    if same:  # split by unit id: one side trains, the other evaluates
        for code in set(eval_codes) | set(train_codes):
            _, test = split_units(corpus.units(code), cfg.held_out, cfg.seed)
            held[code] = {u.id for u in test}
        eval_view = SubsetView(corpus, held)
    else:
        eval_view = eval_corpus
    # The training languages on held-out text of their own kind (Zhao et al. 2024, Table 2: the target's
    # perplexity is measured on its own held-out text, the others' on theirs), besides the evaluation corpus.
    target_view, target_name = None, None
    if not same and cfg.target_eval not in ("", "none"):
        if cfg.target_eval == "split":
            for code in train_codes:
                _, test = split_units(corpus.units(code), cfg.held_out, cfg.seed)
                held[code] = {u.id for u in test}
            target_view = SubsetView(corpus, {c: held[c] for c in train_codes})
            target_name = f"{corpus.name} (held-out {cfg.held_out:g} of its units)"
        else:
            target_view = open_corpus(cfg.target_eval)
            target_name = target_view.name
        for code in train_codes:
            if not target_view.units(target_view.match_language(code)):
                raise BabelscopeError(f"--target-eval {cfg.target_eval}: no text of {code} there; give a corpus "
                                      "with the training languages, 'split' or 'none'")
    from babelscope.models.families import document_separator, scoring_prefix

    # BOS only where the tokenizer adds it (not Qwen's or SmolLM2's), documents ended by the pretraining separator
    # (<|endoftext|> for ChatML models, whose EOS <|im_end|> ends a chat turn)
    bos, eos = scoring_prefix(None, tokenizer), document_separator(tokenizer)
    blocks, doc_rows, checksums = [], [], {}
    counts = allocate(samples, [(code, w) for code, (_, w) in zip(train_codes, mix, strict=True)])
    for code in train_codes:
        units = [u for u in corpus.units(code) if u.id not in held.get(code, set()) and u.text.strip()]
        ids = tokenizer([u.text for u in units], add_special_tokens=False)["input_ids"] if units else []
        packed = pack(ids, cfg.seq_len, bos, eos)
        blocks.append(packed)
        checksums[code] = text_sha256(u.text for u in units)
        need = counts[code]
        if need > len(packed) * cfg.epochs:
            have = sum(len(x) for x in ids)
            epochs = math.ceil(need / max(len(packed), 1))
            more = f"raise --epochs to {epochs}, " if len(packed) else ""
            raise BabelscopeError(
                f"corpus {corpus.name!r} has {len(packed)} blocks of {cfg.seq_len} tokens of {code} ({have} "
                f"tokens in {len(units)} documents), the budget needs {need} x {cfg.epochs} epoch(s); "
                f"{more}lower --samples/--tokens or give more text"
            )
        doc_rows.append({"lang": code, "documents": len(units), "tokens": sum(len(x) + 2 for x in ids),
                         "blocks": len(packed), "samples": need,
                         "epochs": need / len(packed) if len(packed) else None})
    order = sample_order(counts, {c: len(b) for c, b in zip(train_codes, blocks, strict=True)}, cfg.epochs,
                         cfg.seed)
    for code in eval_codes:  # an evaluation language must have held-out text
        if not eval_view.units(code):
            raise BabelscopeError(f"corpus {eval_corpus.name!r} has no held-out text for {code}; drop it from "
                                  "--eval-langs or give --eval-corpus")
    return PretrainData(samples=samples, eval_at=eval_at, train_codes=train_codes, blocks=blocks, order=order,
                        data_rows=doc_rows, checksums=checksums, eval_view=eval_view, eval_codes=eval_codes,
                        eval_corpus=eval_corpus, held_out_split=same, target_view=target_view,
                        target_name=target_name)


def data_fingerprint(data: PretrainData) -> str:
    """sha256 of the training text (per language), its packed blocks and the sample order: the data the weights
    are trained on."""
    return digest([json.dumps(data.checksums, sort_keys=True), np.ascontiguousarray(data.order).tobytes(),
                   *(np.ascontiguousarray(b).tobytes() for b in data.blocks)])


def resume_parts(cfg: PretrainConfig, model_checksum: str, tokenizer_sha: str, data: PretrainData,
                 mask_checksum: str) -> dict[str, Any]:
    """What changes the trained weights besides the loop's settings (:func:`babelscope.transfer.loop.resume_key`):
    the start model and tokenizer, the dtype, the options that choose the training data and the data itself,
    and the freezing mask. Never --log-every, --checkpoint-every, --trackers or the evaluation options."""
    return {"model": model_checksum, "tokenizer": tokenizer_sha, "dtype": cfg.dtype, "corpus": cfg.corpus,
            "langs": cfg.langs, "seq_len": cfg.seq_len, "samples": data.samples, "epochs": cfg.epochs,
            "held_out": cfg.held_out if data.held_out_split else None, "training_data": data_fingerprint(data),
            "freeze_region": mask_checksum or None}


# ----------------------------------------------------------------------------------------------- masks
def mask_path(spec: str, run_dir: Path) -> Path:
    path = Path(spec).expanduser()
    for candidate in (run_dir / path, path):
        if candidate.is_file():
            return candidate
    raise BabelscopeError(f"--freeze-region {spec}: no such mask file (looked in {run_dir} and here); give a "
                          "masks/*.safetensors file of `babelscope regions select`")


def check_mask_model(path: Path, model_spec: str, source: Path | str | None = None) -> None:
    """Refuse, before loading the model, a file that is not a mask of ``regions select`` and a mask made for
    another model: by the weight checksum in its metadata, and by its tensors' names and shapes against the
    model's safetensors headers (nothing but the headers is read). ``source``: ``model_spec`` already resolved."""
    from babelscope.models.loader import _weights_checksum, resolve_spec

    meta, shapes = _mask_header(path)
    if source is None:
        source, _ = resolve_spec(model_spec)
    if not (isinstance(source, Path) and list(source.glob("*.safetensors"))):
        return  # a hub id: checked once the model is loaded
    checksum = _weights_checksum(source, None)
    if meta.get("model") not in (None, checksum):
        raise BabelscopeError(
            f"{path}: mask for another model (made for weights {str(meta.get('model'))[:12]}, --model "
            f"{model_spec} has {checksum[:12]}); select the region from this model's importance scores"
        )
    weights = _weight_shapes(source)
    for name, (shape, dtype) in shapes.items():
        if dtype != "BOOL":
            raise BabelscopeError(f"{path}: {name} is {dtype}, a mask is boolean; give a masks/*.safetensors file of "
                                  "`babelscope regions select`")
        found = weights.get(name) or next((w for k, w in weights.items() if k.endswith("." + name)), None)
        if found is not None and tuple(found) != tuple(shape):
            raise BabelscopeError(
                f"{path}: mask for another model ({name} has shape {tuple(shape)}, the model's is {tuple(found)}); "
                "select the region from this model's importance scores"
            )


def _mask_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[list[int], str]]]:
    """A mask file's metadata and ``{name: (shape, dtype)}`` from its header; one line when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            raw = fh.metadata() or {}
            shapes = {k: (fh.get_slice(k).get_shape(), fh.get_slice(k).get_dtype()) for k in fh.keys()}  # noqa: SIM118
        meta = {k: json.loads(v) for k, v in raw.items()}
    except Exception as exc:  # a truncated or foreign file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BabelscopeError(
            f"--freeze-region {path}: not a mask file of `babelscope regions select` ({reason}); give one of the "
            "masks/*.safetensors files that step writes"
        ) from None
    return meta, shapes


def _weight_shapes(source: Path) -> dict[str, list[int]]:
    """``{tensor name: shape}`` of a model directory's safetensors files, from their headers alone."""
    from safetensors import safe_open

    out: dict[str, list[int]] = {}
    for f in sorted(source.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as fh:
            for k in fh.keys():  # noqa: SIM118 (a safetensors handle)
                out[k] = fh.get_slice(k).get_shape()
    return out


def model_text_config(spec: str, planning: bool = False, source: Path | str | None = None):
    """The model's (text) config from its ``config.json``, without the weights; ``planning``: ``None`` when the
    model is not there yet (a directory an earlier step writes) or a hub id (nothing is fetched to plan);
    ``source``: ``spec`` already resolved."""
    from babelscope.models.loader import _load_config, resolve_spec

    if planning:
        path = Path(spec).expanduser()
        if spec != "gemma-3-270m" and not (path / "config.json").is_file() and path.suffix != ".gguf":
            return None
    if source is None:
        source, _ = resolve_spec(spec)
    if planning and not isinstance(source, Path):
        return None
    config = _load_config(source, False)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_seq_len(cfg: PretrainConfig, planning: bool = False, source: Path | str | None = None) -> None:
    """``--seq-len`` against the model's maximum positions, read from its config (no weights); ``source``:
    ``cfg.model`` already resolved."""
    text = model_text_config(cfg.model, planning, source)
    limit = getattr(text, "max_position_embeddings", None) if text is not None else None
    if cfg.seq_len < 2:
        raise BabelscopeError(f"--seq-len {cfg.seq_len}: a block needs at least 2 tokens")
    if limit and cfg.seq_len > limit:
        raise BabelscopeError(f"--seq-len {cfg.seq_len} is over the model's maximum of {limit} positions "
                              f"({cfg.model}); lower --seq-len")


# ----------------------------------------------------------------------------------------------- baselines
def check_baseline(cfg: PretrainConfig) -> dict[str, list[str]]:
    """Check the freezing-baseline options before anything loads; the SSU source texts ``{lang: texts}``."""
    if not cfg.freeze_baseline:
        return {}
    from babelscope.transfer.baselines import BASELINES

    if cfg.freeze_baseline not in BASELINES:
        raise BabelscopeError(f"--freeze-baseline {cfg.freeze_baseline!r}: use one of {', '.join(BASELINES)}")
    if cfg.freeze_region:
        raise BabelscopeError("--freeze-region and --freeze-baseline: give one of them (a baseline replaces the "
                              "region)")
    if not 0 < cfg.freeze_fraction < 1:
        raise BabelscopeError(f"--freeze-fraction {cfg.freeze_fraction}: must lie strictly between 0 and 1")
    if cfg.freeze_baseline != "ssu":
        return {}
    from babelscope.data.views import open_text_corpus

    corpus = open_text_corpus(cfg.ssu_corpus)
    out = {}
    for lang in (x.strip() for x in cfg.ssu_langs.split(",") if x.strip()):
        try:
            code = corpus.match_language(lang)
        except BabelscopeError:
            code = None
        texts = [u.text for u in corpus.units(code) if u.text.strip()] if code else []
        if not texts:
            raise BabelscopeError(f"--ssu-langs {cfg.ssu_langs}: corpus {cfg.ssu_corpus!r} has no text in {lang}; "
                                  "give a source language it has or another --ssu-corpus")
        out[code] = texts
    if not out:
        raise BabelscopeError(f"--ssu-langs {cfg.ssu_langs!r}: no source language given")
    return out


def baseline_for(cfg: PretrainConfig, model, tokenizer, ssu_texts: dict[str, list[str]]) -> dict:
    """The baseline's masks for ``model`` (SSU scored on ``ssu_texts``, --ssu-max-tokens per language)."""
    from babelscope.data.views import language_windows
    from babelscope.models.engine import Engine
    from babelscope.transfer.baselines import baseline_masks, ssu_scores

    scores = None
    if cfg.freeze_baseline == "ssu":
        engine = Engine(model, tokenizer, batch_size=cfg.eval_batch_size, progress=False)
        seqs = [s for texts in ssu_texts.values()
                for s in language_windows(engine, texts, cfg.eval_window, cfg.ssu_max_tokens)]
        scores = ssu_scores(model, seqs, cfg.eval_batch_size, engine.pad_id)
    return baseline_masks(model, cfg.freeze_baseline, cfg.freeze_fraction, cfg.seed, scores)


# ----------------------------------------------------------------------------------------------- step
def loop_config(cfg: PretrainConfig):
    """The loop's settings: the training block (:func:`babelscope.transfer.configs.loop_config`), the blocks in
    their packed order once (the budget is the samples), and pretraining's own schedule floor, logging, LM-head
    chunks, norm freezing and saving."""
    return configs.loop_config(cfg, min_lr_ratio=cfg.min_lr_ratio, log_every=cfg.log_every,
                               logit_chunk=cfg.logit_chunk, freeze_norms=cfg.freeze_norms, save_model=cfg.save_model,
                               epochs=1, shuffle=False)


def plan_check(cfg: PretrainConfig, run_dir: Path, earlier: Sequence[str] = ()) -> None:
    """The checks that need no model, run when an experiment is planned (before its first step): the loop's
    settings, the options (epochs, budget, eval points, seq-len against the model's config.json), the mask
    (readable, this model's checksum and shapes) and, when the model's tokenizer is there, the budget against
    the data. What an earlier step writes (``earlier``: their commands) is checked when this step runs."""
    from babelscope.transfer.loop import check_config

    check_config(loop_config(cfg))
    check_options(cfg)
    check_seq_len(cfg, planning=True)
    ready = model_text_config(cfg.model, planning=True) is not None
    if cfg.freeze_region:
        from babelscope.regions.select import MASK_WRITERS

        try:
            mask_file = mask_path(cfg.freeze_region, run_dir)
        except BabelscopeError:
            if not MASK_WRITERS & set(earlier):
                raise
            mask_file = None  # written by an earlier `regions select` (or `regions`) step
        if mask_file is not None:
            check_mask_model(mask_file, cfg.model) if ready else _mask_header(mask_file)
    if ready:
        from transformers import AutoTokenizer

        from babelscope.models.loader import resolve_spec

        source, _ = resolve_spec(cfg.model)
        prepare_data(cfg, AutoTokenizer.from_pretrained(str(source)))


def compare_rows(run_dir: Path, step: str, checksum: str, curve: list[dict], frozen: dict) -> list[dict]:
    """The curves of every finished pretraining step of ``run_dir`` from the same start model (this one
    included), for the report's overlay; empty when this is the only one."""
    from babelscope.runs import iter_results

    def label(freeze: dict) -> str:
        if freeze and freeze.get("baseline"):
            return f"{freeze['baseline']}@{freeze.get('k')}"
        return f"{freeze.get('region')}@{freeze.get('k')}" if freeze and freeze.get("file") else "none"

    keep = ("samples", "lang", "text", "target", "ppl", "bits_per_unit")
    rows = [{"run": step, "freeze": label(frozen), **{k: r[k] for k in keep}} for r in curve]
    others = 0
    for doc in iter_results(run_dir):
        res = doc.get("results") or {}
        if doc.get("kind") != KIND or doc.get("step") == step or res.get("model_checksum") != checksum:
            continue
        if not res.get("complete"):
            continue
        others += 1
        for r in doc["tables"].get("curve", {}).get("rows", []):
            rows.append({"run": doc["step"], "freeze": label(res.get("freeze") or {}), **{k: r.get(k) for k in keep}})
    return rows if others else []


def freeze_summary(model, masks: dict | None, mask_file: Path | None, mask_meta: dict[str, Any],
                   freeze_norms: bool) -> dict[str, Any]:
    """What is frozen: the mask file, region, k, scope or baseline rule; with a mask, the frozen parameters, their
    share of the blocks, the QKV-bias entries among them, and how the LM head trains."""
    frozen = {"file": str(mask_file) if mask_file else None, "region": mask_meta.get("region"),
              "k": mask_meta.get("k"), "scope": mask_meta.get("scope"), "baseline": mask_meta.get("baseline")}
    if masks is not None:
        from babelscope.models.families import head_is_tied, qkv_bias_names
        from babelscope.models.params import norm_modules

        norms = set() if freeze_norms else set(norm_modules(model))
        frozen["parameters"] = sum(int(m.sum()) for n, m in masks.items() if n not in norms)
        frozen["fraction_of_blocks"] = frozen["parameters"] / sum(m.numel() for m in masks.values())
        # what the mask covers beyond the matrices: the attention's QKV biases (Qwen2) are block parameters and
        # freeze with it; the LM head is outside the blocks and trains (tied: as the embedding; untied: its own)
        frozen["qkv_bias_entries"] = sum(int(masks[n].sum()) for n in qkv_bias_names(model) if n in masks)
        frozen["lm_head"] = "tied to the embedding, trains" if head_is_tied(model) else "untied, trains"
    return frozen


def curve_point(model, tokenizer, data: PretrainData, cfg: PretrainConfig, checksum: str, samples: int,
                at_step: int, lr: float) -> list[dict[str, Any]]:
    """One point of the forgetting curve: the perplexity of ``model`` after ``samples`` training samples on the
    held-out text of every evaluation language, and of the training languages on their own held-out text."""
    from babelscope.evaluate.perplexity import PplConfig, language_rows
    from babelscope.models.engine import Engine

    ppl_cfg = PplConfig(window=cfg.eval_window, max_tokens=cfg.eval_max_tokens)
    engine = Engine(model, tokenizer, batch_size=cfg.eval_batch_size, checksum=f"{checksum}@{samples}")
    if any(hasattr(p, "placements") for p in model.parameters()):  # FSDP 2: every rank runs every forward
        engine.state = None  # (sharded blocks gather their weights collectively: no split of requests)
    rows, _, _ = language_rows(engine, data.eval_view, data.eval_codes, ppl_cfg)
    texts = [data.eval_corpus.name] * len(rows)
    if data.target_view is not None:  # the training languages on their own held-out text
        tv = data.target_view
        held, _, _ = language_rows(engine, tv, [tv.match_language(c) for c in data.train_codes], ppl_cfg)
        for r, code in zip(held, data.train_codes, strict=True):
            r["lang"] = code
        rows, texts = rows + held, texts + ["held-out"] * len(held)
    targets = set(data.train_codes)
    return [{"samples": samples, "step": at_step, "tokens": samples * cfg.seq_len, "lr": lr,
             "lang": r["lang"], "name": r["name"], "text": text, "target": r["lang"] in targets,
             "ppl": r["ppl"], "bits_per_unit": r["bits_per_unit"], "bits_per_byte": r["bits_per_byte"],
             "nll": r["nll"], "eval_tokens": r["tokens"], "units": r["units"]}
            for r, text in zip(rows, texts, strict=True)]


def curve_summary(curve: list[dict[str, Any]], targets: set[str]) -> dict[str, Any]:
    """Perplexity ratios last point / start (medians): the training languages on their own held-out text when
    measured there (Zhao et al. 2024, Table 2), else on the evaluation corpus; and the other languages."""
    last = max((r["samples"] for r in curve), default=None)
    final = [r for r in curve if r["samples"] == last]
    start = [r for r in curve if r["samples"] == 0]
    if not (final and start):
        return {}
    base = {(r["lang"], r.get("text")): r["ppl"] for r in start}
    ratio = {(r["lang"], r.get("text")): r["ppl"] / base[r["lang"], r.get("text")] for r in final
             if base.get((r["lang"], r.get("text")))}
    held = {k: v for k, v in ratio.items() if k[1] == "held-out"}
    on_eval = {k: v for k, v in ratio.items() if k[1] != "held-out"}
    return {
        # the target on its own held-out text when measured there (Table 2), else on the eval corpus
        "target_ppl_ratio": median(list(held.values()) or [v for k, v in on_eval.items() if k[0] in targets]),
        "target_eval_corpus_ppl_ratio": median([v for k, v in on_eval.items() if k[0] in targets]),
        "others_median_ppl_ratio": median([v for k, v in on_eval.items() if k[0] not in targets]) if any(
            k[0] not in targets for k in on_eval) else None,
    }


#: the step (:func:`babelscope.transfer.steps.run_pretrain`), under its older name
run = StepFunction("babelscope.transfer.steps", "run_pretrain")
