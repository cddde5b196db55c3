"""The steering sweep (CLaS-Bench, Gurgurov et al. 2025): generations under each steering condition (DiffMean at
each layer and α, Rimsky et al. 2024; LAPE neurons set to α times their mean, Tang et al. 2024), scored by
:func:`~babelscope.steer.score.score_generations`; the best setting per method and language (highest harmonic
mean of forcing and relevance, Eq. 3); and its perplexity cost on every language.

Plain functions on a model and callables: ``generate(change, prompts)`` and ``perplexity(change)`` run the model
as it is while the steering ``change`` is applied (``()``: unsteered), so a caller chooses the engine, its cache
(keyed by ``change``) and its length limits. No run directory, no printing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from babelscope.caches import digest
from babelscope.numeric import median

METHODS = ("diffmean", "lape")
#: the columns of a condition that name it (method, language, layer, α)
SETTING = ("method", "lang", "layer", "alpha")

Generate = Callable[[tuple, list[str]], list[str]]
Perplexity = Callable[[tuple], dict[str, dict]]


def tensor_sha(tensor: torch.Tensor) -> str:
    """Short checksum of a tensor's bytes: part of a steering condition's name (and so of its cache key)."""
    return digest([tensor.numpy().tobytes()], 16)


@dataclass
class Steering:
    """What the conditions steer with: DiffMean ``directions`` ``(languages, layers + 1, H)`` over ``codes``, and
    LAPE neuron ``masks`` ``{lang: (layers, neurons) bool}`` with each language's mean FFN activations
    ``ffn_means`` ``{lang: (layers, neurons)}`` on the FFN modules ``ffns`` of ``model``."""

    model: Any
    ffns: Sequence
    codes: list[str]
    directions: torch.Tensor
    ffn_means: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directions_sha = tensor_sha(self.directions)

    def lape_targets(self, targets: Sequence[str]) -> list[str]:
        """The targets that have at least one LAPE neuron."""
        return [t for t in targets if t in self.masks and bool(self.masks[t].any())]

    def condition(self, method: str, target: str, layer: int | None, alpha: float
                  ) -> tuple[AbstractContextManager, tuple]:
        """The context that applies one steering condition, and the condition's name (its cache identity)."""
        from babelscope.neurons.lape import neuron_indices
        from babelscope.steer.apply import neurons_set, steered

        if method == "diffmean":
            t = self.codes.index(target)
            return (steered(self.model, {layer: self.directions[t, layer]}, alpha),
                    ("diffmean", target, layer, alpha, self.directions_sha))
        mask = self.masks[target]
        return (neurons_set(self.ffns, neuron_indices(mask), self.ffn_means[target], alpha),
                ("lape", target, alpha, tensor_sha(mask), self.directions_sha))


def sweep(steering: Steering, prompts: list[str], targets: Sequence[str], layers: Sequence[int],
          alphas: Sequence[float], lape_alphas: Sequence[float], refs: dict[str, Sequence[str]],
          iso: dict[str, str], generate: Generate, on_condition: Callable[[], None] | None = None
          ) -> tuple[list[dict], list[dict]]:
    """Generate ``prompts`` unsteered, then under every DiffMean (layer, α) and LAPE α condition of each target,
    and score each set (forcing, relevance, harmonic). Returns the conditions table and the per-generation rows."""
    from babelscope.steer.score import score_generations

    conditions: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []

    def record(method: str, target: str, layer, alpha, outs: list[str], neurons: int | None = None) -> None:
        summary, rows = score_generations(outs, target, refs, iso)
        conditions.append({"method": method, "lang": target, "layer": layer, "alpha": alpha, "neurons": neurons,
                           **summary})
        samples.extend({"method": method, "lang": target, "layer": layer, "alpha": alpha,
                        "prompt_text": prompts[r["prompt"]], **r} for r in rows)

    base_out = generate((), prompts)
    for target in targets:
        record("none", target, None, 0.0, base_out)
    lape_targets = steering.lape_targets(targets)
    for target in targets:
        for layer in layers:
            for alpha in alphas:
                ctx, change = steering.condition("diffmean", target, layer, alpha)
                with ctx:
                    outs = generate(change, prompts)
                record("diffmean", target, layer, alpha, outs)
                if on_condition:
                    on_condition()
        if target in lape_targets:
            for alpha in lape_alphas:
                ctx, change = steering.condition("lape", target, None, alpha)
                with ctx as n:
                    outs = generate(change, prompts)
                record("lape", target, None, alpha, outs, neurons=n)
                if on_condition:
                    on_condition()
    return conditions, samples


def best_condition(conditions: list[dict], method: str, target: str) -> dict | None:
    """The condition of ``method`` steering into ``target`` with the highest harmonic mean (ties: higher forcing,
    then the smaller |α|); ``None`` when there is none."""
    mine = [c for c in conditions if c["method"] == method and c["lang"] == target]
    if not mine:
        return None
    return max(mine, key=lambda c: (c["harmonic"] or 0.0, c["forcing"] or 0.0, -abs(c["alpha"])))


def ppl_cost(steering: Steering, conditions: list[dict], targets: Sequence[str], perplexity: Perplexity
             ) -> tuple[list[dict], list[dict]]:
    """Each method's best setting per target (:func:`best_condition`) with its perplexity ratio, steered over
    unsteered, on the target and (median) on the other languages. Returns the best table and the ratio rows."""
    base_ppl = perplexity(())
    best_rows, ppl_rows = [], []
    for method in METHODS:
        for target in targets:
            best = best_condition(conditions, method, target)
            if best is None:
                continue
            ctx, change = steering.condition(method, target, best["layer"], best["alpha"])
            with ctx:
                after = perplexity(change)
            ratios = {}
            for code in steering.codes:
                ratio = after[code]["ppl"] / base_ppl[code]["ppl"] if base_ppl[code]["ppl"] else None
                ratios[code] = ratio
                ppl_rows.append({"method": method, "steered": target, "lang": code, "ppl": after[code]["ppl"],
                                 "base_ppl": base_ppl[code]["ppl"], "ratio": ratio})
            base_forcing = next(c["forcing"] for c in conditions if c["method"] == "none" and c["lang"] == target)
            best_rows.append({**{k: best[k] for k in (*SETTING, "forcing", "relevance", "harmonic", "n")},
                              "base_forcing": base_forcing, "own_ppl_ratio": ratios.get(target),
                              "others_median_ppl_ratio": median(v for c, v in ratios.items() if c != target)})
    return best_rows, ppl_rows


def summarize(best_rows: list[dict], conditions: list[dict]) -> dict[str, dict]:
    """Mean forcing, relevance and harmonic of each method's best settings over the languages, and the unsteered
    forcing and relevance."""
    summary = {}
    for method in METHODS:
        rows = [r for r in best_rows if r["method"] == method]
        if rows:
            summary[method] = {k: sum(r[k] for r in rows) / len(rows) for k in ("forcing", "relevance", "harmonic")}
            summary[method]["languages"] = len(rows)
    base_rows = [c for c in conditions if c["method"] == "none"]
    summary["none"] = {k: sum(c[k] for c in base_rows) / len(base_rows) for k in ("forcing", "relevance")}
    return summary


def best_samples(samples: list[dict], best_rows: list[dict]) -> list[dict]:
    """The generations of the unsteered model and of each best setting."""
    best_keys = {tuple(r[k] for k in SETTING) for r in best_rows}
    return [s for s in samples if tuple(s[k] for k in SETTING) in best_keys or s["method"] == "none"]
