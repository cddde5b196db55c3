"""Dimension dependence (Zhang et al. 2024, §4): perturb one dimension of one norm and watch perplexity.

A norm's effective scale is ``γ = offset + w`` (``1 + w`` for Gemma's RMSNorm, ``w`` for Llama's; the offset is
probed from the module). For each dimension ``d`` of the chosen norm at the chosen layer the step sets
``γ_d = 1`` (``one``), ``γ_d = factor · γ_d`` (``scale``) or ``γ_d = 0`` (``zero``), computes the perplexity
of held-out text, and flags ``d`` as *breaking* the model when ``PPL_d ≥ threshold · PPL_base`` (10 by default).
Next to it, the dimension's activation magnitude (max and mean ``|x_d|`` over the text) in the residual stream
after the block (the norm's own input for q/k norms):
the paper's breaking dimensions are the "massive activation" ones. A quick scan perturbs the ``top_n``
dimensions of largest max ``|x_d|`` plus ``top_n`` others drawn at random (seeded); ``dims=all`` scans all.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.regions.configs import ScanConfig  # noqa: F401  (re-exported: the older import path)

KIND = "regions-scan"


@torch.no_grad()
def activation_magnitudes(model, norm: torch.nn.Module, layer: int, seqs: list[list[int]]
                          ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(max |x_d|, mean |x_d|, where)`` over every token of ``seqs`` (one window at a time).

    ``x`` is the residual stream at the output of block ``layer`` (where massive activations live) when the
    norm has the hidden size, else the norm's own input (q/k norms act per head)."""
    from babelscope.models.arch import base_model
    from babelscope.models.hooks import capture_layers, run_until_stopped
    from babelscope.models.placement import input_device

    hidden = model.get_input_embeddings().weight.shape[1]
    residual = norm.weight.shape[0] == hidden
    peak, total, count = None, None, 0

    def add(x: torch.Tensor) -> None:
        nonlocal peak, total, count
        x = x.detach().float().abs().reshape(-1, x.shape[-1])
        peak = x.max(0).values if peak is None else torch.maximum(peak, x.max(0).values)
        total = x.sum(0) if total is None else total + x.sum(0)
        count += x.shape[0]

    device = input_device(model)
    if residual:
        for seq in seqs:
            with capture_layers(model, [layer + 1]) as store:
                run_until_stopped(base_model(model), input_ids=torch.tensor([seq], device=device), use_cache=False)
                add(store[layer + 1])
    else:
        handle = norm.register_forward_pre_hook(lambda module, args: add(args[0]))
        try:
            for seq in seqs:
                base_model(model)(input_ids=torch.tensor([seq], device=device), use_cache=False)
        finally:
            handle.remove()
    where = f"residual stream after block {layer}" if residual else "norm input"
    return peak.cpu(), (total / count).cpu(), where


def choose_dims(spec: str, magnitude: torch.Tensor, top_n: int, seed: int) -> tuple[list[int], set[int]]:
    """``(dims to scan, the top-activation ones)`` for ``quick``, ``all`` or a comma list."""
    size = magnitude.numel()
    top = [int(i) for i in torch.argsort(magnitude, descending=True)[:top_n]]
    if spec == "all":
        return list(range(size)), set(top)
    if spec == "quick":
        rest = [d for d in range(size) if d not in top]
        return top + sorted(random.Random(seed).sample(rest, min(top_n, len(rest)))), set(top)
    try:
        dims = [int(x) for x in spec.split(",")]
    except ValueError:
        raise BabelscopeError(f"--dims {spec!r}: use quick, all or a comma list of integers") from None
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise BabelscopeError(f"--dims {bad}: this norm has dimensions 0..{size - 1}")
    return dims, set(top)


def pooled_ppl(rows: dict[str, dict]) -> float:
    nll = sum(r["nll"] for r in rows.values())
    tokens = sum(r["tokens"] for r in rows.values())
    return math.exp(nll / tokens) if tokens else math.nan


def activation_ranks(peak: torch.Tensor) -> dict[int, int]:
    """Each dimension's rank by peak activation magnitude (0: the largest)."""
    return {int(d): i for i, d in enumerate(torch.argsort(peak, descending=True))}


def dimension_row(d: int, gamma_before: float, gamma_after: float, peak: torch.Tensor, mean: torch.Tensor,
                  rank: dict[int, int], top: set[int], after: dict[str, dict], base: float, threshold: float
                  ) -> dict[str, Any]:
    """One scanned dimension: its scale before and after, its activation, and the pooled perplexity over the
    base one (``broken`` at ``threshold`` times the base or more), with each language's perplexity."""
    ppl = pooled_ppl(after)
    return {
        "dim": d,
        "gamma_before": gamma_before,
        "gamma_after": gamma_after,
        "act_max": float(peak[d]),
        "act_mean": float(mean[d]),
        "act_rank": rank[d],
        "top_activation": d in top,
        "ppl": ppl,
        "ratio": ppl / base,
        "broken": ppl >= threshold * base,
        **{f"ppl_{code}": row["ppl"] for code, row in after.items()},
    }


#: the step moved to :func:`babelscope.regions.steps.run_scan`; this name still runs it
run = StepFunction("babelscope.regions.steps", "run_scan")
