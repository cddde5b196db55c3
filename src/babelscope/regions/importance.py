"""Per-language parameter importance (Zhang et al. 2024, §2.1, Eq. 1-3).

For language ``l`` with text ``D_l`` (``N_l`` tokens), the causal-LM loss is the token-normalised sum

    L_l(θ) = (1 / N_l) Σ_{x ∈ D_l} Σ_t -log p_θ(x_t | x_<t)

and the importance of each scored parameter is its first-order Taylor estimate of the loss change when it is
set to zero (Eq. 2):

    S_l = θ ⊙ ∂L_l/∂θ                          (method "taylor", the paper's; signed, saved per language)
    S_l = Σ_b |θ ⊙ ∂L_{l,b}/∂θ|                 (method "per-step": one term per batch b, each already /N_l)

and the model-wide importance (Eq. 3) is ``Imp = Σ_l |S_l|``. Dividing the *summed* token loss by the
language's total token count (not a per-batch mean) makes ``S_l`` independent of the batch size and of the
number of processes: gradients are accumulated with no optimizer step and summed across processes once. The
per-step variant takes absolute values before summing, so opposite-signed batch gradients no longer cancel;
it is never smaller than |taylor| and depends on how the text is batched.

Each language's scores are written (safetensors, atomically) as soon as it finishes; a re-run loads finished
languages and computes only the rest. Memory: the model, its gradients (decoder layers only), one
per-language score set (held in the gradient buffers) and the aggregate; freed memory goes back to the system
after each language (:mod:`babelscope.memory`), so nothing accumulates with the number of languages: the peak is
that of the language with the largest padded batches.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.caches import json_sha256
from babelscope.errors import BabelscopeError
from babelscope.regions.configs import ImportanceConfig
from babelscope.tensorfiles import commit_file, load_tensors, read_metadata, save_tensors, write_temporary

KIND = "regions-importance"
METHODS = ("taylor", "per-step")


# ------------------------------------------------------------------------------------------------ scoring
@contextlib.contextmanager
def grads_only_for(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only (embeddings and head frozen) within the block; flags restored after."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params.values()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        yield
    finally:
        for p in model.parameters():  # (FSDP 2 may have swapped in other parameter objects on an error)
            p.requires_grad_(flags.get(id(p), p.requires_grad))
            p.grad = None


@contextlib.contextmanager
def checkpointed(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Within the block, the model's blocks recompute their activations in the backward (transformers' gradient
    checkpointing, non-reentrant) while every module stays in eval mode (no dropout): only the blocks' own
    ``training`` flag, which is what switches the checkpointing on, is set. Undone on every exit path."""
    from babelscope.models.arch import block_list

    if not on:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise BabelscopeError(f"--gradient-checkpointing: {type(model).__name__} does not support it; leave it out")
    _, blocks = block_list(model)
    was = model.is_activation_checkpointing
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    flags = [b.training for b in blocks]
    try:
        for b in blocks:
            b.training = True
        yield
    finally:
        for b, flag in zip(blocks, flags, strict=True):
            b.training = flag
        if not was:
            model.activation_checkpointing_disable()


def language_scores(
    engine,
    params: dict[str, nn.Parameter],
    seqs: list[tuple[list[int], int]],
    method: str = "taylor",
    on_batch=None,
    before_grads=None,
    fsdp: bool = False,
) -> tuple[dict[str, torch.Tensor], float, int]:
    """``(S_l per parameter (float32, CPU), summed NLL, tokens)`` for one language's windows ``seqs``.

    Call inside :func:`grads_only_for`. Under Accelerate every process takes its share of ``seqs`` and the
    gradients are summed across processes, so every rank returns the same scores. ``fsdp`` (blocks sharded by
    :func:`babelscope.regions.shards.shard_blocks`): FSDP 2 sums the gradients into each process's rows, and
    each process returns the scores of its own rows. ``before_grads()`` is called once, when the backward pass
    reaches the first scored weight (before any of their gradients exists; the first batch's forward has run):
    the step waits there until the previous language's scores are written and dropped, so two score sets never
    coexist with the gradients.
    """
    from babelscope.processes import GradView, all_reduce_grads, sum_across
    from babelscope.regions.shards import local

    if method not in METHODS:
        raise BabelscopeError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    tokens = sum(n for _, n in seqs)
    if tokens == 0:
        raise BabelscopeError("no tokens to score importance on; raise --max-tokens or give more text")
    for p in params.values():
        p.grad = None
    acc: dict[str, torch.Tensor] = {}

    def step(n_seqs: int) -> None:
        if method == "per-step":
            for name, p in params.items():
                if p.grad is None:
                    continue
                term = (p.detach().float() * p.grad.float()).abs_()
                acc[name] = acc[name].add_(term) if name in acc else term
                p.grad = None
        if on_batch:
            on_batch(n_seqs)

    handles = []
    if before_grads is not None:
        called = []

        def gate(grad: torch.Tensor) -> None:
            if not called:
                called.append(True)
                before_grads()

        handles = [p.register_hook(gate) for p in params.values()]
    try:
        nll = engine.backward(seqs, normalizer=float(tokens), on_batch=step, even=fsdp)
    finally:
        for h in handles:
            h.remove()
    if method == "taylor":
        scale = 1.0
        if fsdp:  # FSDP 2 reduce-scattered them already, as a mean
            from babelscope.regions.shards import gradient_scale

            scale = gradient_scale()
        else:
            all_reduce_grads(list(params.values()))
        for name, p in params.items():
            grad = local(p.grad) if p.grad is not None else torch.zeros_like(local(p))
            grad = grad.float()
            if scale != 1.0:
                grad.mul_(scale)
            acc[name] = grad.mul_(local(p).detach().float()).cpu()  # S = θ ⊙ g (Eq. 2), in the grad's memory
            p.grad = None
    else:
        for name, p in params.items():
            acc.setdefault(name, torch.zeros(p.shape, dtype=torch.float32, device=p.device))
        all_reduce_grads([GradView(t) for t in acc.values()])
        acc = {name: t.cpu() for name, t in acc.items()}
    nll = sum_across(nll)
    return acc, nll, tokens


def aggregate_importance(per_language: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``Imp = Σ_l |S_l|`` (Eq. 3) over a list of per-language score sets (for small cases and tests)."""
    total: dict[str, torch.Tensor] = {}
    for scores in per_language:
        for name, s in scores.items():
            total[name] = total[name] + s.abs() if name in total else s.abs().clone()
    return total


# ------------------------------------------------------------------------------------------------ files
def _key(obj: Any) -> str:
    return json_sha256(obj, 16)


# ------------------------------------------------------------------------------------------------ step
def plan_check(cfg: ImportanceConfig, run_dir=None, earlier=()) -> None:
    """The option checks (method, window, token budget), run when an experiment is planned and again by
    :func:`run`."""
    if cfg.method not in METHODS:
        raise BabelscopeError(f"--method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.window < 2 or cfg.max_tokens < 1:
        raise BabelscopeError(f"--window {cfg.window} / --max-tokens {cfg.max_tokens}: both must be positive")


def run(cfg: ImportanceConfig, run_dir, step: str = "regions-importance", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions importance`` step: per-language scores, then ``importance.safetensors``."""
    from tqdm.auto import tqdm

    from babelscope.data.views import language_codes, open_text_corpus, split_side, token_windows
    from babelscope.memory import release_freed_memory
    from babelscope.models.families import describe_architecture, qkv_bias_names
    from babelscope.models.params import layer_and_kind, scored_parameters
    from babelscope.processes import sum_across
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    if cfg.fsdp:  # before anything is written
        from babelscope.regions.shards import check_fsdp

        rank, world = check_fsdp()
        if cfg.method != "taylor":
            raise BabelscopeError(f"--method {cfg.method} with --fsdp: per-step scores need each batch's own "
                                  "gradient, which FSDP 2 sums across processes; use --method taylor")
    sr = StepRun(cfg, run_dir, step, loaded)
    plan_check(cfg)
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    texts = {code: split_side(corpus, code, "train", cfg.test_fraction, cfg.seed) for code in codes}
    if (doc := sr.done(inputs={c: text_sha256(u.text for u in us) for c, us in texts.items()})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "importance")
    shard: dict[str, Any] = {}
    if cfg.fsdp:
        from babelscope.regions.shards import local, shard_blocks, shard_path, shard_rows

        shard_blocks(model)  # in place: the model of an experiment stays sharded for its later steps
    params = scored_parameters(model, cfg.include, cfg.exclude)
    engine = sr.engine(batch_size=cfg.batch_size, cache=False, progress=False)
    shapes = {name: list(p.shape) for name, p in params.items()}
    if cfg.fsdp:
        shard = {"rank": rank, "world": world, "rows": {name: shard_rows(p) for name, p in params.items()}}
        aggregate = {name: torch.zeros(local(p).shape, dtype=torch.float32) for name, p in params.items()}
    else:
        aggregate = {name: torch.zeros(p.shape, dtype=torch.float32) for name, p in params.items()}
    writes = cfg.fsdp or engine.is_main  # under FSDP 2 every process writes its rows
    for stale in (sr.path / "scores").glob(".*.tmp"):  # left by an interrupted run
        stale.unlink()
    rows: list[dict[str, Any]] = []
    saves: list[Future] = []
    dropped: list[threading.Event] = []  # set when the writer has dropped a language's scores
    bar = tqdm(total=len(codes), desc="importance", unit="lang", disable=not engine.is_main, leave=False)
    # One writer thread saves each language's scores while the next language runs (past the page cache, see
    # babelscope.tensorfiles); it drops them as soon as they are written, before the fsync.
    with bar, grads_only_for(model, params), checkpointed(model, cfg.gradient_checkpointing), \
            ThreadPoolExecutor(1, thread_name_prefix="scores") as writer:
        for code in codes:
            units = texts[code]
            sha = text_sha256(u.text for u in units)
            key = _key(
                {
                    "model": info.checksum,
                    "lang": code,
                    "text": sha,
                    "window": cfg.window,
                    "max_tokens": cfg.max_tokens,
                    "method": cfg.method,
                    "shapes": shapes,
                    "batch_size": cfg.batch_size if cfg.method == "per-step" else None,
                    "shard": [shard["rank"], shard["world"]] if shard else None,
                }
            )
            path = sr.path / "scores" / f"{code}.safetensors"
            if shard:
                path = shard_path(path, rank, world)
            meta = read_metadata(path) if path.exists() else {}
            if _on_every_rank(meta.get("key") == key, cfg.fsdp):  # finished in an earlier run
                scores, save = load_tensors(path), None
            else:
                seqs = token_windows(engine, [u.text for u in units], cfg.window, cfg.max_tokens)
                # unsharded: the next language's gradients wait until the writer dropped the previous scores
                gate = None if cfg.fsdp else (lambda: _wait_dropped(dropped))
                scores, nll, tokens = language_scores(engine, params, seqs, cfg.method, fsdp=cfg.fsdp,
                                                      before_grads=gate)
                if not math.isfinite(nll):  # never saved: a re-run at another dtype starts clean
                    raise BabelscopeError(f"{code}: the loss came out {nll} (the model overflows in --dtype "
                                          f"{cfg.dtype}); nothing was saved: re-run with --dtype float32")
                meta = {
                    "format": "babelscope.importance-language/1",
                    "key": key,
                    "lang": code,
                    "model": info.checksum,
                    "dtype": cfg.dtype,
                    "method": cfg.method,
                    "tokens": tokens,
                    "nll": nll,
                    "units": [u.id for u in units],
                    "text_sha256": sha,
                    **({"shard": shard, "shapes": shapes} if shard else {}),
                }
                save = path
            if writes:
                abs_sum = _fold(scores, aggregate)
                if cfg.fsdp:
                    abs_sum = sum_across(abs_sum)
                if engine.is_main:
                    rows.append(_language_row(code, meta, abs_sum))
                if save is not None:
                    dropped.append(threading.Event())
                    saves.append(writer.submit(_save, scores, save, meta, dropped[-1]))
                _raise_failed(saves)
            del scores
            release_freed_memory()  # flat in the number of languages (see babelscope.memory)
            bar.update(1)
        for f in saves:
            f.result()
    imp_meta = {
        "format": "babelscope.importance/1",
        "model": info.checksum,
        "model_name": info.name,
        "languages": codes,
        "tokens": {r["lang"]: r["tokens"] for r in rows},
        "dtype": cfg.dtype,
        "method": cfg.method,
        "shapes": shapes,
    }
    sums = torch.tensor([float(t.sum(dtype=torch.float64)) for t in aggregate.values()], dtype=torch.float64)
    peaks = torch.tensor([float(t.max()) if t.numel() else 0.0 for t in aggregate.values()], dtype=torch.float64)
    if cfg.fsdp:  # every process its rows; the table's sums and maxima over all of them
        from babelscope.processes import all_reduce

        save_tensors(shard_path(sr.path / "importance.safetensors", rank, world), aggregate, {**imp_meta,
                                                                                               "shard": shard})
        all_reduce(sums)
        all_reduce(peaks, op="max")
    if not engine.is_main:
        return sr.wait()
    if not cfg.fsdp:
        save_tensors(sr.path / "importance.safetensors", aggregate, imp_meta)
    by_matrix = []
    for i, name in enumerate(aggregate):
        layer, kind = layer_and_kind(name)
        size = math.prod(shapes[name])
        by_matrix.append(
            {
                "layer": layer,
                "kind": kind,
                "parameters": size,
                "mean_importance": float(sums[i]) / size,
                "max_importance": float(peaks[i]),
            }
        )
    results = {
        "model": info.name,
        "corpus": corpus.name,
        "languages": codes,
        "method": cfg.method,
        "scored_parameters": sum(p.numel() for p in params.values()),
        # the blocks' QKV biases (Qwen2, GPT-2, BERT) are scored with the matrices; the LM head, tied or untied,
        # is outside the blocks and never scored (Zhang et al. 2024, §2)
        "scored_qkv_bias_parameters": sum(params[n].numel() for n in qkv_bias_names(model) if n in params),
        "architecture": describe_architecture(model),
        "scored_tensors": len(params),
        "importance_file": "importance.safetensors",
        "score_files": {code: f"scores/{code}.safetensors" for code in codes},
    }
    prov = provenance(
        model=info.to_dict(), data={"corpus": corpus.name, "units": {r["lang"]: r["units"] for r in rows}}
    )
    return sr.write(KIND, results, {"per_language": rows, "by_matrix": by_matrix}, prov)


def _on_every_rank(flag: bool, collective: bool) -> bool:
    """``flag`` held on every process (under FSDP 2 all of them must take the same branch: each forward is a
    collective); ``flag`` itself otherwise."""
    if not collective:
        return flag
    from babelscope.processes import all_reduce

    t = torch.tensor([int(flag)])
    all_reduce(t, op="min")
    return bool(t[0])


def _fold(scores: dict[str, torch.Tensor], aggregate: dict[str, torch.Tensor]) -> float:
    """Add |S_l| into ``aggregate`` (Eq. 3), one tensor at a time (the signed scores stay intact for the file);
    returns Σ|S_l|."""
    abs_sum = 0.0
    for name, s in scores.items():
        magnitude = s.abs()
        aggregate[name].add_(magnitude)
        abs_sum += float(magnitude.sum(dtype=torch.float64))
    return abs_sum


def _save(scores: dict[str, torch.Tensor], path: Path, meta: dict, dropped: threading.Event | None = None) -> None:
    """(Writer thread: file I/O only, no tensor arithmetic to compete with the scoring.) Stream the signed scores
    into a temporary file, drop them (``dropped`` is set then, also on an error), then make the file durable and
    give it its name."""
    from babelscope.memory import release_freed_memory

    try:
        tmp = write_temporary(path, scores, meta)
        scores.clear()
        release_freed_memory()
    finally:
        scores.clear()
        if dropped is not None:
            dropped.set()
    commit_file(tmp, path)


def _wait_dropped(dropped: list[threading.Event]) -> None:
    """Wait until the writer has dropped the previous language's scores (its file is written; fsync and rename
    may still run): the next language's gradients then take their place instead of coming on top."""
    if dropped:
        dropped[-1].wait()


def _raise_failed(futures: list) -> None:
    """Surface a writer-thread error (disk full, permissions) at once rather than after every language."""
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


def _language_row(code: str, meta: dict[str, Any], abs_sum: float) -> dict[str, Any]:
    from babelscope.data.languages import resolve_language

    tokens, nll = meta["tokens"], meta["nll"]
    return {
        "lang": code,
        "name": resolve_language(code).name,
        "units": ",".join(meta["units"]),
        "tokens": tokens,
        "loss": nll / tokens,
        "ppl": math.exp(nll / tokens),
        "sum_abs_score": abs_sum,
    }

