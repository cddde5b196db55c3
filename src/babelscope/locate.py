"""Where language lives, four ways at once: the localizers of one model side by side (``babelscope locate``).

Reads the steps of one run directory (no model is loaded) and puts together, per language,

* **overlap**: LAPE neurons (Tang et al. 2024), PLND neurons (Zhao et al. 2024), the θ ⊙ ∇ region (Zhang et al.
  2024) and the DiffMean direction (CLaS-Bench): per layer (neurons per layer, the region's weights per layer, the
  direction's norm over the layer's mean residual norm), per matrix (the region's weights by matrix type and the
  share of its FFN weights on each neuron set), and pairwise (PLND ∩ LAPE against the hypergeometric expectation for
  random sets of the same sizes; each neuron set's share of the region's FFN weights against random sets with the
  same count per layer);
* **causal effects**: deactivation (core region: ``regions ablate``; LAPE and PLND neurons: ``neurons
  deactivate``), steering (DiffMean directions and LAPE neurons: ``steer``) and freezing during further pretraining
  (core region, SSU, half, magnitude, random: ``transfer pretrain``), one row each, naming the paper it
  reproduces and its random control.

Steps that are missing are left out (their rows say so in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from babelscope.fields import count, opt

KIND = "locate"

PAPERS = {
    "regions": "Zhang et al., ACL 2024 (Unveiling linguistic regions)",
    "lape": "Tang et al., ACL 2024 (Language-specific neurons)",
    "plnd": "Zhao et al., NeurIPS 2024 (How do LLMs handle multilingualism?)",
    "diffmean": "Gurgurov et al., Findings ACL 2026 (CLaS-Bench)",
    "ssu": "Yamaguchi et al. 2025 (Source-Shielded Updates)",
    "half": "Hui et al. 2024 (HFT: half fine-tuning)",
    "magnitude": "magnitude control (as in SSU's baselines)",
    "random": "random control",
    "none": "Zhao et al. 2024 (further pretraining, Table 2)",
}


@dataclass
class LocateConfig:
    neurons_step: str = opt("neurons", "LAPE neurons step.")
    plnd_step: str = opt("neurons-plnd", "PLND neurons step.")
    select_step: str = opt("regions-select", "Regions select step (with its importance step).")
    k: float = opt(0.01, "Region fraction (a k the select step saved).")
    scope: str = opt("tensor", "tensor or global (as saved by select).")
    steer_step: str = opt("steer", "Steering step.")
    ablate_step: str = opt("regions-ablate", "Core-region removal step.")
    lape_deactivate_step: str = opt("neurons-deactivate", "LAPE deactivation step.")
    plnd_deactivate_step: str = opt("plnd-deactivate", "PLND deactivation step (neurons deactivate "
                                    "--neurons-step neurons-plnd).")
    pretrain_steps: str = opt("all", "Further-pretraining steps to compare (comma-separated; all: every one).")
    draws: int = count(200, "Random neuron sets for the region baselines.")
    seed: int = opt(0, "Seed of the random sets.")


def _doc(run_dir, name: str) -> dict | None:
    from babelscope.runs import Step, load_results

    path = Step(run_dir, name).results_path if name not in ("", "none") else None
    return load_results(path) if path is not None and path.exists() else None


def causal_rows(run_dir, cfg: LocateConfig) -> list[dict[str, Any]]:
    """One row per localizer and causal test found in the run directory."""
    from babelscope.numeric import median
    from babelscope.runs import iter_results

    rows: list[dict[str, Any]] = []
    ablate = _doc(run_dir, cfg.ablate_step)
    if ablate:
        summary = {(r["region"], r["k"], r["scope"]): r for r in ablate["tables"]["summary"]["rows"]}
        for (region, k, scope), r in summary.items():
            if region != "top":
                continue
            rand = summary.get(("random", k, scope), {})
            rows.append({"localizer": "regions (core)", "test": f"deactivate (zero, k={k:g}, {scope})",
                         "effect": "median PPL ratio", "own": r.get("median_ratio"), "others": None,
                         "random": rand.get("median_ratio"), "paper": PAPERS["regions"]})
    for name, key, label in ((cfg.lape_deactivate_step, "lape", "LAPE neurons"),
                             (cfg.plnd_deactivate_step, "plnd", "PLND neurons")):
        doc = _doc(run_dir, name)
        if doc:
            s = doc["results"]["summary"]
            rows.append({"localizer": label, "test": "deactivate (zero)", "effect": "mean PPL ratio",
                         "own": s.get("mean_diagonal_ratio"), "others": s.get("mean_off_diagonal_ratio"),
                         "random": s.get("mean_random_diagonal_ratio"), "paper": PAPERS[key]})
    steer = _doc(run_dir, cfg.steer_step)
    if steer:
        best = steer["tables"]["best"]["rows"]
        base = (steer["results"]["summary"] or {}).get("none") or {}
        for method, label in (("diffmean", "DiffMean directions"), ("lape", "LAPE neurons")):
            mine = [r for r in best if r["method"] == method]
            if mine:
                mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("forcing", "relevance", "harmonic")}
                rows.append({"localizer": label, "test": f"steer ({len(mine)} languages, best layer and α)",
                             "effect": "forcing / relevance / H", "own": mean["harmonic"],
                             "forcing": mean["forcing"], "relevance": mean["relevance"],
                             "others": median([r.get("others_median_ppl_ratio") for r in mine]),
                             "random": base.get("forcing"), "paper": PAPERS[method]})
    wanted = None if cfg.pretrain_steps in ("all", "") else {s.strip() for s in cfg.pretrain_steps.split(",")}
    for doc in iter_results(run_dir):
        if doc.get("kind") != "transfer-pretrain" or (wanted is not None and doc.get("step") not in wanted):
            continue
        res = doc["results"]
        if not res.get("complete"):
            continue
        freeze = res.get("freeze") or {}
        if freeze.get("baseline"):
            key, label = freeze["baseline"], f"{freeze['baseline']} ({freeze.get('k')})"
        elif freeze.get("file"):
            key = "regions" if freeze.get("region") == "top" else "random"
            label = f"region {freeze.get('region')} ({freeze.get('k')})"
        else:
            key, label = "none", "nothing frozen"
        s = res.get("summary") or {}
        rows.append({"localizer": label, "test": f"freeze in further pretraining ({doc['step']}, "
                     f"{res.get('samples')} samples)", "effect": "PPL ratio end/start",
                     "own": s.get("target_ppl_ratio"), "others": s.get("others_median_ppl_ratio"), "random": None,
                     "frozen_share": freeze.get("fraction_of_blocks"), "paper": PAPERS.get(key, "")})
    return rows


# ----------------------------------------------------------------- per-language overlap rows (no files read)
def region_rows(lang: str, region: dict) -> tuple[list[dict], list[dict]]:
    """A language's region (``{matrix name: bool mask}``): its weights by matrix type (count, share) and its
    share per layer."""
    from babelscope.models.params import layer_and_kind

    per_kind: dict[str, int] = {}
    per_layer: dict[int, int] = {}
    for name, m in region.items():
        layer, kind = layer_and_kind(name)
        per_kind[kind] = per_kind.get(kind, 0) + int(m.sum())
        per_layer[layer] = per_layer.get(layer, 0) + int(m.sum())
    total = sum(per_kind.values()) or 1
    by_matrix = [{"lang": lang, "localizer": "region", "matrix": kind.removesuffix(".weight"), "count": n,
                  "share": n / total} for kind, n in sorted(per_kind.items())]
    by_layer = [{"lang": lang, "localizer": "region", "layer": layer, "value": n / total}
                for layer, n in sorted(per_layer.items())]
    return by_matrix, by_layer


def neuron_layer_rows(lang: str, label: str, mask) -> list[dict]:
    """The share of a language's neuron set (``(layers, neurons)`` bool) in each layer."""
    return [{"lang": lang, "localizer": label, "layer": layer, "value": float(mask[layer].sum()) / float(mask.sum())}
            for layer in range(mask.shape[0])]


def direction_layer_rows(lang: str, dmeta: dict, directions) -> list[dict]:
    """A language's DiffMean direction per layer: its norm over the layer's mean residual norm (``None`` for
    normalised directions, whose norm is that by construction)."""
    import torch

    vec = directions[dmeta["languages"].index(lang)]
    norms = torch.tensor(dmeta["mean_residual_norm"])
    return [{"lang": lang, "localizer": "diffmean", "layer": layer,
             "value": float(vec[layer].norm() / norms[layer]) if not dmeta["normalised"] else None}
            for layer in range(vec.shape[0])]


def region_neuron_pairs(lang: str, region: dict, weights, sets: dict[str, dict], draws: int, seed: int
                        ) -> list[dict]:
    """Each neuron set's (``sets``: ``{label: {lang: mask}}``) share of the region's FFN weights against random
    sets with the same count per layer (:func:`~babelscope.neurons.overlap.overlap_stats`)."""
    from babelscope.neurons.overlap import neuron_region_counts, overlap_stats

    width = next(iter(next(s for s in sets.values() if s).values())).shape[1]
    counts = neuron_region_counts(region, weights, width)
    rows = []
    for label, by_lang in sets.items():
        if by_lang and lang in by_lang:
            s = overlap_stats(by_lang[lang], counts, draws, seed)
            rows.append({"lang": lang, "pair": f"{label} ∩ region", "a": s["neurons"],
                         "weight_share": s.get("weight_share"), "expected_random": s.get("weight_random_layer_matched"),
                         "enrichment": s.get("weight_enrichment_layer_matched"),
                         "p_layer_matched": s.get("weight_p_layer_matched")})
    return rows


def core_rows(core: dict) -> list[dict]:
    """The core region's (Top-k shared by the languages) weights by matrix type."""
    from babelscope.models.params import layer_and_kind

    per_kind: dict[str, int] = {}
    for name, m in core.items():
        kind = layer_and_kind(name)[1].removesuffix(".weight")
        per_kind[kind] = per_kind.get(kind, 0) + int(m.sum())
    total = sum(per_kind.values()) or 1
    return [{"lang": "(core)", "localizer": "core region", "matrix": k, "count": n, "share": n / total}
            for k, n in sorted(per_kind.items())]


# ----------------------------------------------------------------------------------------- the step
def found_steps(sr) -> tuple[dict[str, str], dict[str, str]]:
    """The checksums of the localizer steps' results files that are there, and of every further-pretraining
    step's; a one-line error when there is none."""
    from babelscope.errors import BabelscopeError
    from babelscope.runs import Step, file_sha256, iter_results

    cfg = sr.cfg
    names = [cfg.neurons_step, cfg.plnd_step, cfg.select_step, cfg.steer_step, cfg.ablate_step,
             cfg.lape_deactivate_step, cfg.plnd_deactivate_step]
    found = {n: file_sha256(Step(sr.run_dir, n).results_path) for n in names
             if n not in ("", "none") and Step(sr.run_dir, n).results_path.exists()}
    pretrain = {d["step"]: file_sha256(Step(sr.run_dir, d["step"]).results_path)
                for d in iter_results(sr.run_dir)
                if d.get("kind") == "transfer-pretrain"}
    if not found and not pretrain:
        raise BabelscopeError(f"{sr.run_dir}: none of the localizer steps ({', '.join(names)}) or further "
                              "pretraining runs is there; run some of them first")
    return found, pretrain


def neuron_sets(sr, found) -> tuple[dict | None, dict | None, dict[str, Any]]:
    """The LAPE and PLND neuron sets (``{lang: mask}``, ``None`` when that step is missing) and their metadata;
    a one-line error when they are of different models."""
    from babelscope.errors import BabelscopeError
    from babelscope.neurons.lape import load_neurons
    from babelscope.runs import Step

    cfg = sr.cfg
    lape = plnd = None
    meta: dict[str, Any] = {}
    if cfg.neurons_step in found:
        d = _doc(sr.run_dir, cfg.neurons_step)
        lape, meta = load_neurons(Step(sr.run_dir, cfg.neurons_step).path / d["results"]["neurons_file"])
    if cfg.plnd_step in found:
        d = _doc(sr.run_dir, cfg.plnd_step)
        plnd, pmeta = load_neurons(Step(sr.run_dir, cfg.plnd_step).path / d["results"]["neurons_file"])
        if meta and pmeta.get("model") != meta.get("model"):
            raise BabelscopeError(f"{cfg.plnd_step} and {cfg.neurons_step}: neurons of different models")
        meta = meta or pmeta
    return lape, plnd, meta


def region_files(sr, found) -> tuple[dict[str, str], dict | None]:
    """Each language's importance score file (of the select step's importance step) and the core region's mask
    at ``--k`` and ``--scope`` (``None`` when not saved)."""
    from babelscope.regions.select import mask_file
    from babelscope.runs import Step
    from babelscope.tensorfiles import load_tensors

    cfg = sr.cfg
    if cfg.select_step not in found:
        return {}, None
    sdoc = _doc(sr.run_dir, cfg.select_step)
    isrc = Step(sr.run_dir, sdoc["results"]["importance_step"])
    idoc = _doc(sr.run_dir, sdoc["results"]["importance_step"])
    region_scores = {c: str(isrc.path / f) for c, f in idoc["results"]["score_files"].items()}
    core_path = Step(sr.run_dir, cfg.select_step).path / mask_file("top", cfg.k, cfg.scope)
    return region_scores, load_tensors(core_path) if core_path.exists() else None


def steer_directions(sr, found) -> tuple[dict | None, tuple | None]:
    """The steer step's results and its DiffMean directions (metadata, ``(languages, layers, H)``), if it ran."""
    import torch

    from babelscope.runs import Step
    from babelscope.tensorfiles import load_tensors, read_metadata

    cfg = sr.cfg
    steer = _doc(sr.run_dir, cfg.steer_step) if cfg.steer_step in found else None
    if not steer:
        return steer, None
    path = Step(sr.run_dir, cfg.steer_step).path / steer["results"]["directions_file"]
    dmeta = read_metadata(path)
    dt = load_tensors(path)
    return steer, (dmeta, torch.stack([dt[f"layer.{i}"] for i in range(dmeta["layers"])], dim=1))


def run(cfg: LocateConfig, run_dir, step: str = "locate", loaded=None) -> dict[str, Any]:
    """The ``babelscope locate`` step (reads other steps' files; no model needed)."""
    from babelscope.neurons.plnd import set_overlap
    from babelscope.regions.select import region_mask
    from babelscope.runs import is_main_process, provenance
    from babelscope.steps import StepRun
    from babelscope.tensorfiles import load_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    found, pretrain = found_steps(sr)
    if (doc := sr.done(inputs={**found, **pretrain})) is not None:
        return doc
    if not is_main_process():
        return sr.wait()
    lape, plnd, meta = neuron_sets(sr, found)
    region_scores, core = region_files(sr, found)
    steer, directions = steer_directions(sr, found)
    langs = list(dict.fromkeys([*(lape or {}), *(plnd or {}), *region_scores,
                                *(directions[0]["languages"] if directions else [])]))
    by_layer, by_matrix, pairs = [], [], []
    for lang in langs:
        region = None
        if lang in region_scores:
            scores = load_tensors(region_scores[lang])
            region = region_mask({n: s.abs() for n, s in scores.items()}, cfg.k, "top", cfg.scope)
            del scores
            matrix_rows, layer_rows = region_rows(lang, region)
            by_matrix += matrix_rows
            by_layer += layer_rows
        for label, sets in (("lape", lape), ("plnd", plnd)):
            if sets and lang in sets and int(sets[lang].sum()):
                by_layer += neuron_layer_rows(lang, label, sets[lang])
        if directions is not None and lang in directions[0]["languages"]:
            by_layer += direction_layer_rows(lang, *directions)
        if lape and plnd and lang in lape and lang in plnd:
            pairs.append({"lang": lang, "pair": "plnd ∩ lape", **set_overlap(plnd[lang], lape[lang])})
        if region is not None and meta.get("weights"):
            pairs += region_neuron_pairs(lang, region, meta["weights"], {"lape": lape, "plnd": plnd}, cfg.draws,
                                         cfg.seed)
        if core is not None and lang == langs[0]:
            by_matrix += core_rows(core)
    results = {"languages": langs, "steps": sorted(found), "pretrain_steps": sorted(pretrain), "k": cfg.k,
               "scope": cfg.scope, "model": (steer or {}).get("results", {}).get("model") or meta.get("model_name"),
               "papers": PAPERS}
    return sr.write(KIND, results, {"causal": causal_rows(sr.run_dir, cfg), "pairs": pairs, "by_layer": by_layer,
                                    "by_matrix": by_matrix}, provenance(model={"checksum": meta.get("model")}))
