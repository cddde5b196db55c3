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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.caches import json_sha256
from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.regions.configs import ImportanceConfig
from babelscope.tensorfiles import commit_file, write_temporary

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
def score_key(obj: Any) -> str:
    """The key of a score file (16 hex digits of the JSON sha256 of what changes the scores)."""
    return json_sha256(obj, 16)


# ------------------------------------------------------------------------------------------------ step
def plan_check(cfg: ImportanceConfig, run_dir=None, earlier=()) -> None:
    """The option checks (method, window, token budget), run when an experiment is planned and again by the
    step."""
    if cfg.method not in METHODS:
        raise BabelscopeError(f"--method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.window < 2 or cfg.max_tokens < 1:
        raise BabelscopeError(f"--window {cfg.window} / --max-tokens {cfg.max_tokens}: both must be positive")


def fold_scores(scores: dict[str, torch.Tensor], aggregate: dict[str, torch.Tensor]) -> float:
    """Add |S_l| into ``aggregate`` (Eq. 3), one tensor at a time (the signed scores stay intact for the file);
    returns Σ|S_l|."""
    abs_sum = 0.0
    for name, s in scores.items():
        magnitude = s.abs()
        aggregate[name].add_(magnitude)
        abs_sum += float(magnitude.sum(dtype=torch.float64))
    return abs_sum


def save_scores(scores: dict[str, torch.Tensor], path: Path, meta: dict,
                dropped: threading.Event | None = None) -> None:
    """Save one language's signed scores (a writer thread's work: file I/O only, no tensor arithmetic to compete
    with the scoring). Stream them into a temporary file, drop them (``dropped`` is set then, also on an error),
    then make the file durable and give it its name."""
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


#: the step (:func:`babelscope.regions.steps.run_importance`), under its older name
run = StepFunction("babelscope.regions.steps", "run_importance")
