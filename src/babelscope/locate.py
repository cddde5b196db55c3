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


def _median(values: list[float]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def causal_rows(run_dir, cfg: LocateConfig) -> list[dict[str, Any]]:
    """One row per localizer and causal test found in the run directory."""
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
                             "others": _median([r.get("others_median_ppl_ratio") for r in mine]),
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


def run(cfg: LocateConfig, run_dir, step: str = "locate", loaded=None) -> dict[str, Any]:
    """The ``babelscope locate`` step (reads other steps' files; no model needed)."""
    import torch

    from babelscope.errors import BabelscopeError
    from babelscope.models.params import layer_and_kind
    from babelscope.neurons.lape import load_neurons
    from babelscope.neurons.overlap import neuron_region_counts, overlap_stats
    from babelscope.neurons.plnd import set_overlap
    from babelscope.runs import Step, file_sha256, is_main_process, iter_results, provenance
    from babelscope.steps import StepRun
    from babelscope.tensorfiles import load_tensors, read_metadata

    sr = StepRun(cfg, run_dir, step, loaded)
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
    if (doc := sr.done(inputs={**found, **pretrain})) is not None:
        return doc
    if not is_main_process():
        return sr.wait()
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
    region_scores: dict[str, str] = {}
    core = None
    if cfg.select_step in found:
        from babelscope.regions.select import mask_file

        sdoc = _doc(sr.run_dir, cfg.select_step)
        isrc = Step(sr.run_dir, sdoc["results"]["importance_step"])
        idoc = _doc(sr.run_dir, sdoc["results"]["importance_step"])
        region_scores = {c: str(isrc.path / f) for c, f in idoc["results"]["score_files"].items()}
        core_path = Step(sr.run_dir, cfg.select_step).path / mask_file("top", cfg.k, cfg.scope)
        core = load_tensors(core_path) if core_path.exists() else None
    langs = list(dict.fromkeys([*(lape or {}), *(plnd or {}), *region_scores]))
    weights = meta.get("weights")
    by_layer, by_matrix, pairs = [], [], []
    directions = None
    steer = _doc(sr.run_dir, cfg.steer_step) if cfg.steer_step in found else None
    if steer:
        path = Step(sr.run_dir, cfg.steer_step).path / steer["results"]["directions_file"]
        dmeta = read_metadata(path)
        dt = load_tensors(path)
        directions = (dmeta, torch.stack([dt[f"layer.{i}"] for i in range(dmeta["layers"])], dim=1))
        langs = list(dict.fromkeys([*langs, *dmeta["languages"]]))
    for lang in langs:
        region = None
        if lang in region_scores:
            from babelscope.regions.select import region_mask

            scores = load_tensors(region_scores[lang])
            region = region_mask({n: s.abs() for n, s in scores.items()}, cfg.k, "top", cfg.scope)
            del scores
            per_kind: dict[str, int] = {}
            per_layer_region: dict[int, int] = {}
            for name, m in region.items():
                layer, kind = layer_and_kind(name)
                per_kind[kind] = per_kind.get(kind, 0) + int(m.sum())
                per_layer_region[layer] = per_layer_region.get(layer, 0) + int(m.sum())
            total = sum(per_kind.values()) or 1
            for kind, n in sorted(per_kind.items()):
                by_matrix.append({"lang": lang, "localizer": "region", "matrix": kind.removesuffix(".weight"),
                                  "count": n, "share": n / total})
            for layer, n in sorted(per_layer_region.items()):
                by_layer.append({"lang": lang, "localizer": "region", "layer": layer, "value": n / total})
        for label, sets in (("lape", lape), ("plnd", plnd)):
            if sets and lang in sets and int(sets[lang].sum()):
                m = sets[lang]
                for layer in range(m.shape[0]):
                    by_layer.append({"lang": lang, "localizer": label, "layer": layer,
                                     "value": float(m[layer].sum()) / float(m.sum())})
        if directions is not None and lang in directions[0]["languages"]:
            dmeta, d = directions
            vec = d[dmeta["languages"].index(lang)]
            norms = torch.tensor(dmeta["mean_residual_norm"])
            for layer in range(vec.shape[0]):
                by_layer.append({"lang": lang, "localizer": "diffmean", "layer": layer,
                                 "value": float(vec[layer].norm() / norms[layer]) if not dmeta["normalised"]
                                 else None})
        if lape and plnd and lang in lape and lang in plnd:
            pairs.append({"lang": lang, "pair": "plnd ∩ lape", **set_overlap(plnd[lang], lape[lang])})
        if region is not None and weights:
            width = next(iter((lape or plnd).values())).shape[1]
            counts = neuron_region_counts(region, weights, width)
            for label, sets in (("lape", lape), ("plnd", plnd)):
                if sets and lang in sets:
                    s = overlap_stats(sets[lang], counts, cfg.draws, cfg.seed)
                    pairs.append({"lang": lang, "pair": f"{label} ∩ region", "a": s["neurons"],
                                  "weight_share": s.get("weight_share"),
                                  "expected_random": s.get("weight_random_layer_matched"),
                                  "enrichment": s.get("weight_enrichment_layer_matched"),
                                  "p_layer_matched": s.get("weight_p_layer_matched")})
        if core is not None and lang == langs[0]:
            per_kind = {}
            for name, m in core.items():
                kind = layer_and_kind(name)[1].removesuffix(".weight")
                per_kind[kind] = per_kind.get(kind, 0) + int(m.sum())
            total = sum(per_kind.values()) or 1
            by_matrix += [{"lang": "(core)", "localizer": "core region", "matrix": k, "count": n, "share": n / total}
                          for k, n in sorted(per_kind.items())]
    causal = causal_rows(sr.run_dir, cfg)
    results = {"languages": langs, "steps": sorted(found), "pretrain_steps": sorted(pretrain), "k": cfg.k,
               "scope": cfg.scope, "model": (steer or {}).get("results", {}).get("model") or meta.get("model_name"),
               "papers": PAPERS}
    return sr.write(KIND, results, {"causal": causal, "pairs": pairs, "by_layer": by_layer, "by_matrix": by_matrix},
                    provenance(model={"checksum": meta.get("model")}))
