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

from babelscope.errors import BabelscopeError
from babelscope.neurons.configs import OverlapConfig

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
    """The option checks (regions, scope, k, draws), run when an experiment is planned and again by :func:`run`;
    returns the region kinds."""
    from babelscope.regions.select import SCOPES, parse_choice

    kinds = parse_choice(cfg.regions, REGIONS, "--regions")
    if cfg.scope not in SCOPES:
        raise BabelscopeError(f"--scope {cfg.scope!r}: use one of {', '.join(SCOPES)}")
    if not 0 < cfg.k < 1 or cfg.draws < 0:
        raise BabelscopeError(f"--k {cfg.k} / --draws {cfg.draws}: k in (0, 1), draws >= 0")
    return kinds


def run(cfg: OverlapConfig, run_dir, step: str = "neurons-overlap", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons overlap`` step (reads two steps' files; no model needed)."""
    from babelscope.neurons.lape import load_neurons
    from babelscope.regions.select import mask_file, region_mask
    from babelscope.regions.shards import open_scores, scores_metadata
    from babelscope.runs import Step, is_main_process, load_results, provenance
    from babelscope.steps import StepRun, results_sha256
    from babelscope.tensorfiles import load_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    kinds = plan_check(cfg)
    nsrc = Step(sr.run_dir, cfg.neurons_step)
    ndoc = load_results(nsrc.results_path)
    ssrc = Step(sr.run_dir, cfg.select_step)
    sdoc = load_results(ssrc.results_path)
    isrc = Step(sr.run_dir, sdoc["results"]["importance_step"])
    idoc = load_results(isrc.results_path)
    reads = (cfg.neurons_step, cfg.select_step, isrc.name)  # their results files name the tensors they wrote
    if (doc := sr.done(inputs={name: results_sha256(sr.run_dir, name) for name in reads})) is not None:
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    masks, meta = load_neurons(nsrc.path / ndoc["results"]["neurons_file"])
    imp_meta = scores_metadata(isrc.path / idoc["results"]["importance_file"])
    if imp_meta.get("model") != meta.get("model"):
        raise BabelscopeError(
            f"{ssrc.path}: regions of another model than the neurons of {nsrc.path}; run both on the same model"
        )
    langs = [c for c in masks if c in sdoc["results"]["languages"]]
    if not langs:
        raise BabelscopeError(
            f"the neurons' languages ({', '.join(masks)}) and the regions' ({', '.join(sdoc['results']['languages'])})"
            " share none; run regions importance on some of the neuron languages"
        )
    weights = meta["weights"]
    # the control for "language-specific" vs merely "often active": the candidates of the LAPE filter (some
    # probability above its threshold) that were not selected
    from babelscope.tensorfiles import load_tensors as _load

    probs = _load(nsrc.path / ndoc["results"]["neurons_file"])["probs"]
    selected = torch.stack(list(masks.values())).any(dim=0)
    active = (probs > ndoc["results"]["thresholds"]["filter"]).any(dim=-1) & ~selected
    width = next(iter(masks.values())).shape[1]

    def mask_at(region: str) -> dict[str, torch.Tensor]:
        path = ssrc.path / mask_file(region, cfg.k, cfg.scope)
        if not path.exists():
            raise BabelscopeError(
                f"{path}: no such region; run `babelscope regions select` with --k {cfg.k:g} --scope {cfg.scope}"
            )
        return load_tensors(path)

    rows, per_layer = [], []
    core = neuron_region_counts(mask_at("top"), weights, width) if "core" in kinds else None
    for lang in langs:
        for kind in kinds:
            if kind == "core":
                counts = core
            elif kind == "mono":
                counts = neuron_region_counts(mask_at(f"mono-{lang}"), weights, width)
            else:
                scores = open_scores(isrc.path / idoc["results"]["score_files"][lang])
                counts = neuron_region_counts(
                    region_mask({n: s.abs() for n, s in scores.items()}, cfg.k, "top", cfg.scope), weights, width
                )
                del scores
            stats = overlap_stats(masks[lang], counts, cfg.draws, cfg.seed, pool=active)
            rows.append({"lang": lang, "region": kind, "k": cfg.k, "scope": cfg.scope, **stats})
            for layer in range(counts.shape[0]):
                per_layer.append({"lang": lang, "region": kind, "layer": layer,
                                  "neurons": int(masks[lang][layer].sum()),
                                  "region_weights": int(counts[layer].sum()),
                                  "region_weights_on_neurons": int(counts[layer][masks[lang][layer]].sum())})
    results = {"languages": langs, "k": cfg.k, "scope": cfg.scope, "regions": kinds,
               "neurons_step": cfg.neurons_step, "select_step": cfg.select_step, "model": ndoc["results"]["model"]}
    prov = provenance(model={"checksum": meta.get("model")}, importance=str(isrc.path))
    return sr.write(KIND, results, {"overlap": rows, "per_layer": per_layer}, prov)
