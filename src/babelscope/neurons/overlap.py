"""Language-specific neurons against the linguistic regions (Tang et al. 2024 vs Zhang et al. 2024).

A region ``M`` (a boolean mask over the weights inside the blocks, from ``babelscope regions select``) touches
neuron ``j`` of layer ``l`` through row ``j`` of the FFN's input matrices (gate and up projections: the weights
that make the neuron's activation) and column ``j`` of the down projection (the weights that read it). Per neuron,

    c_{l,j} = Σ_{W ∈ {gate, up}} Σ_k M_W[j, k] + Σ_k M_down[k, j]

counts the region's weights there. For language ``a``'s LAPE neurons ``S_a`` and its region ``M_a``:

* touched share ``t(S_a) = |{(l, j) ∈ S_a : c_{l,j} > 0}| / |S_a|``;
* weight share ``w(S_a) = Σ_{S_a} c / Σ c``: how much of the region's FFN weights sit on those neurons.

The baselines are random neuron sets of the same size: drawn uniformly over all neurons, with the same number
per layer (both the LAPE neurons and the regions concentrate in some layers), and drawn from the *active*
neurons only (the LAPE filter's candidates that were not selected: often active, not language-specific), since
a neuron that fires often gets large gradients and so large importance whatever its language. The expectations are
exact; ``draws`` seeded samples give a 95% interval and the share of draws at least as large as the observed
value (an empirical p-value), and for the uniform touched share the hypergeometric tail is exact.

Regions per language ``a``: ``lang`` (``Top-k`` of ``|S_a|`` from the importance scores the select step read,
the language's own Top-k region), ``mono`` (the select step's monolingual mask ``mono-a``) and ``core`` (the
Top-k of ``Imp``, the same region for every language).
"""

from __future__ import annotations

from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.neurons.configs import OverlapConfig  # noqa: F401  (re-exported: the older import path)

KIND = "neurons-overlap"
REGIONS = ("lang", "mono", "core")


def neuron_region_counts(mask: dict[str, torch.Tensor], weights: list[dict[str, list[str]]], width: int
                         ) -> torch.Tensor:
    """``c`` (layers, neurons): the region's weights in each neuron's input rows and down-projection column."""
    out = torch.zeros(len(weights), width, dtype=torch.int64)
    for layer, names in enumerate(weights):
        for name in names["in"]:
            if name in mask:
                out[layer] += mask[name].sum(dim=1).to(torch.int64)
        for name in names["down"]:
            if name in mask:
                out[layer] += mask[name].sum(dim=0).to(torch.int64)
    return out


def overlap_stats(neurons: torch.Tensor, counts: torch.Tensor, draws: int = 1000, seed: int = 0,
                  pool: torch.Tensor | None = None) -> dict[str, Any]:
    """Observed touched / weight shares of the neuron set ``neurons`` (layers, width bool) against random sets;
    with ``pool`` (layers, width bool) also against sets of the same size drawn from the pool only."""
    from scipy.stats import hypergeom

    n = int(neurons.sum())
    total = int(counts.sum())
    touched = counts > 0
    row: dict[str, Any] = {"neurons": n, "region_ffn_weights": total,
                           "neurons_touched_overall": float(touched.double().mean())}
    if n == 0 or total == 0:
        return row
    obs_t = float(touched[neurons].double().mean())
    obs_w = float(counts[neurons].sum()) / total
    per_layer = neurons.sum(dim=1)
    width = counts.shape[1]
    exp_t_layer = float((per_layer.double() * touched.double().mean(dim=1)).sum()) / n
    exp_w_layer = float((per_layer.double() * counts.double().sum(dim=1) / width).sum()) / total
    gen = torch.Generator().manual_seed(seed)
    flat_c, flat_t = counts.flatten(), touched.flatten()
    uni_t, uni_w, lay_t, lay_w = [], [], [], []
    for _ in range(draws):
        pick = torch.randperm(flat_c.numel(), generator=gen)[:n]
        uni_t.append(float(flat_t[pick].double().mean()))
        uni_w.append(float(flat_c[pick].sum()) / total)
        sel_c = torch.cat([counts[layer, torch.randperm(width, generator=gen)[: int(k)]]
                           for layer, k in enumerate(per_layer) if k])
        lay_t.append(float((sel_c > 0).double().mean()))
        lay_w.append(float(sel_c.sum()) / total)
    if pool is not None and int(pool.sum()) >= n:
        flat_pool = torch.nonzero(pool.flatten()).flatten()
        pool_w = []
        for _ in range(draws):
            pick = flat_pool[torch.randperm(flat_pool.numel(), generator=gen)[:n]]
            pool_w.append(float(flat_c[pick].sum()) / total)
        row.update(weight_random_active=float(flat_c[flat_pool].double().mean()) * n / total,
                   weight_random_active_ci=_ci(pool_w), weight_p_active=_p(pool_w, obs_w))
    row.update(
        touched_share=obs_t,
        touched_random=float(flat_t.double().mean()),
        touched_random_layer_matched=exp_t_layer,
        touched_p_hypergeom=float(hypergeom.sf(round(obs_t * n) - 1, flat_t.numel(), int(flat_t.sum()), n)),
        touched_p_layer_matched=_p(lay_t, obs_t),
        weight_share=obs_w,
        weight_random=n / flat_c.numel(),
        weight_random_layer_matched=exp_w_layer,
        weight_random_ci=_ci(uni_w),
        weight_random_layer_matched_ci=_ci(lay_w),
        weight_enrichment=obs_w / (n / flat_c.numel()),
        weight_enrichment_layer_matched=obs_w / exp_w_layer if exp_w_layer else None,
        weight_p_uniform=_p(uni_w, obs_w),
        weight_p_layer_matched=_p(lay_w, obs_w),
    )
    return row


def _ci(values: list[float]) -> list[float] | None:
    if not values:
        return None
    t = torch.tensor(values, dtype=torch.float64)
    return [float(t.quantile(0.025)), float(t.quantile(0.975))]


def _p(values: list[float], observed: float) -> float | None:
    """(1 + #draws ≥ observed) / (1 + draws)."""
    if not values:
        return None
    return (1 + sum(v >= observed - 1e-12 for v in values)) / (1 + len(values))


def plan_check(cfg, run_dir=None, earlier=()) -> list[str]:
    """The option checks (regions, scope, k, draws), run when an experiment is planned and again by the step
    (:func:`babelscope.neurons.steps.run_overlap`); returns the region kinds."""
    from babelscope.regions.select import SCOPES, parse_choice

    kinds = parse_choice(cfg.regions, REGIONS, "--regions")
    if cfg.scope not in SCOPES:
        raise BabelscopeError(f"--scope {cfg.scope!r}: use one of {', '.join(SCOPES)}")
    if not 0 < cfg.k < 1 or cfg.draws < 0:
        raise BabelscopeError(f"--k {cfg.k} / --draws {cfg.draws}: k in (0, 1), draws >= 0")
    return kinds


def often_active(probs: torch.Tensor, masks: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
    """The control for "language-specific" against merely "often active": the candidates of the LAPE filter (an
    activation probability above its ``threshold`` in some language) that were not selected, ``(layers, W)``."""
    selected = torch.stack(list(masks.values())).any(dim=0)
    return (probs > threshold).any(dim=-1) & ~selected


def layer_rows(lang: str, kind: str, mask: torch.Tensor, counts: torch.Tensor) -> list[dict[str, Any]]:
    """Per layer: a language's neurons, the region's FFN weights, and those of them on the neurons."""
    return [{"lang": lang, "region": kind, "layer": layer, "neurons": int(mask[layer].sum()),
             "region_weights": int(counts[layer].sum()),
             "region_weights_on_neurons": int(counts[layer][mask[layer]].sum())}
            for layer in range(counts.shape[0])]


#: the step moved to :func:`babelscope.neurons.steps.run_overlap`; this name still runs it
run = StepFunction("babelscope.neurons.steps", "run_overlap")
