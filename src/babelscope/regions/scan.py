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

from babelscope.errors import BabelscopeError
from babelscope.regions.configs import ScanConfig

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


def run(cfg: ScanConfig, run_dir, step: str = "regions-scan", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions scan-dims`` step."""
    from tqdm.auto import tqdm

    from babelscope.data.views import SplitView, language_codes, open_text_corpus, token_windows
    from babelscope.evaluate.intervention import condition_checksum, perplexities
    from babelscope.models.engine import Engine
    from babelscope.models.params import find_norm, gamma_offset
    from babelscope.models.placement import writable_weights
    from babelscope.regions.apply import DIM_MODES, perturbed_dimension
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)

    if cfg.mode not in DIM_MODES:
        raise BabelscopeError(f"--mode {cfg.mode!r}: use one of {', '.join(DIM_MODES)}")
    if cfg.top_n < 1 or cfg.threshold <= 1:
        raise BabelscopeError(
            f"--top-n {cfg.top_n} / --threshold {cfg.threshold}: need top_n >= 1 and threshold > 1"
        )
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    view = SplitView(corpus, "test", cfg.test_fraction, cfg.seed)
    if (doc := sr.done(inputs={c: text_sha256(u.text for u in view.units(c)) for c in codes})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "scan-dims")
    name, norm = find_norm(model, cfg.layer, cfg.norm)
    offset = gamma_offset(norm, model)  # the table's: 1 for Gemma's (1 + w), 0 for w

    def engine_for(checksum: str) -> Engine:
        return sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)

    engine = engine_for(info.checksum)  # tokenizes the windows, then scores the base
    seqs = [
        s
        for code in codes
        for s, _ in token_windows(engine, [u.text for u in view.units(code)], cfg.window, cfg.max_tokens)
    ]
    peak, mean, where = activation_magnitudes(model, norm, cfg.layer, seqs)
    dims, top = choose_dims(cfg.dims, peak, cfg.top_n, cfg.seed)
    base_rows = perplexities(engine, view, codes, cfg.window, cfg.max_tokens)
    base = pooled_ppl(base_rows)
    rank = {int(d): i for i, d in enumerate(torch.argsort(peak, descending=True))}
    rows = []
    with writable_weights(model, [name]) as writable:  # the norm's own weight, or an offloaded one's copy
        weight = writable[name]
        for d in tqdm(dims, desc="scan-dims", unit="dim", leave=False, disable=not engine.is_main):
            checksum = condition_checksum(info.checksum, "dim", name, d, cfg.mode, cfg.factor)
            eng = engine_for(checksum)
            with perturbed_dimension(norm, d, cfg.mode, cfg.factor, offset, weight=weight) as gamma:
                after = perplexities(eng, view, codes, cfg.window, cfg.max_tokens)
            ppl = pooled_ppl(after)
            rows.append(
                {
                    "dim": d,
                    "gamma_before": float(weight[d]) + offset,
                    "gamma_after": gamma,
                    "act_max": float(peak[d]),
                    "act_mean": float(mean[d]),
                    "act_rank": rank[d],
                    "top_activation": d in top,
                    "ppl": ppl,
                    "ratio": ppl / base,
                    "broken": ppl >= cfg.threshold * base,
                    **{f"ppl_{code}": after[code]["ppl"] for code in codes},
                }
            )
    if not engine.is_main:
        return sr.wait()
    rows.sort(key=lambda r: -r["ratio"])
    median_act = float(mean.median())
    results = {
        "model": info.name,
        "norm": name,
        "layer": cfg.layer,
        "gamma_offset": offset,
        "norm_scale": "1 + w" if offset else "w",
        "mode": cfg.mode,
        "factor": cfg.factor,
        "base_ppl": base,
        "threshold": cfg.threshold,
        "base_ppl_per_language": {c: r["ppl"] for c, r in base_rows.items()},
        "broken_dims": [r["dim"] for r in rows if r["broken"]],
        "top_activation_dims": [int(d) for d in torch.argsort(peak, descending=True)[: cfg.top_n]],
        "median_act_mean": median_act, "activation": where,
        "scanned": len(rows),
    }
    prov = provenance(model=info.to_dict(), data={"corpus": view.name})
    return sr.write(KIND, results, {"dims": rows}, prov)

