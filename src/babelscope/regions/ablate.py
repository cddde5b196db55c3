"""Perplexity before and after removing a region (Zhang et al. 2024, §3, Tables 1-2 and Figure 2).

For every evaluation language ``l`` and region ``R`` (Top-k, Bottom-k or Random-k of ``Imp``, per tensor or
global) the step reports ``PPL_l(θ with θ_R changed) / PPL_l(θ)``, on text held out (by unit id) from the text
the importance was computed on, and on languages that were not used for importance at all. Perplexity is that of
:mod:`babelscope.evaluate.perplexity` (disjoint BOS-prefixed windows, exp of the mean token NLL), scored by the
shared engine with a per-request cache keyed by the model *and* the change, so an interrupted run resumes.
Greedy generations of "Fudan University is located in" (and its translations) show the damage side by side.

Each condition records ``selected`` (mask entries), ``norm_entries`` (those in norm vectors, which ``--mode
zero`` leaves alone unless ``--include-norms``) and ``changed``: the values that actually differ after the
change (zeroing a weight that is already 0 changes nothing), so conditions can be compared by what they did.
"""

from __future__ import annotations

from typing import Any

from babelscope.caches import file_sha256
from babelscope.errors import BabelscopeError
from babelscope.evaluate.intervention import PROMPTS, condition_checksum, perplexities  # noqa: F401  (re-exported)
from babelscope.numeric import median
from babelscope.regions.configs import AblateConfig

KIND = "regions-ablation"

def ratio_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median PPL ratio per condition over all, held-out and importance languages."""
    out = []
    conditions = list(dict.fromkeys((r["region"], r["k"], r["scope"]) for r in rows if r["region"] != "base"))
    for region, k, scope in conditions:
        mine = [r for r in rows if (r["region"], r["k"], r["scope"]) == (region, k, scope)]
        ratios = [r["ratio"] for r in mine if r["ratio"] is not None]
        held = [r["ratio"] for r in mine if r["ratio"] is not None and not r["in_importance"]]
        seen = [r["ratio"] for r in mine if r["ratio"] is not None and r["in_importance"]]
        out.append(
            {
                "region": region,
                "k": k,
                "scope": scope,
                "languages": len(ratios),
                "median_ratio": median(ratios),
                "median_ratio_heldout_langs": median(held),
                "median_ratio_importance_langs": median(seen),
                "selected": mine[0]["selected"],
                "norm_entries": mine[0]["norm_entries"],
                "changed": mine[0]["changed"],
            }
        )
    return out


def load_initial(path: str) -> dict:
    """Initial weights for ``--mode reset``: a safetensors file or a directory of them."""
    from pathlib import Path

    from babelscope.tensorfiles import load_tensors

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise BabelscopeError(
            f"--initial {path}: no safetensors weights there; give a .safetensors file or a model directory"
        )
    out = {}
    for f in files:
        out.update(load_tensors(f))
    return out


def run(cfg: AblateConfig, run_dir, step: str = "regions-ablate", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions ablate`` step."""
    from babelscope.data.views import SplitView, language_codes, open_text_corpus
    from babelscope.models.engine import Engine
    from babelscope.models.params import norm_modules, scored_parameters
    from babelscope.regions.apply import REGION_MODES, applied_region
    from babelscope.regions.select import SCOPES, WHICH, load_mask, mask_file, parse_choice, parse_fractions
    from babelscope.runs import Step, load_results, provenance, text_sha256
    from babelscope.steps import StepRun, results_sha256

    sr = StepRun(cfg, run_dir, step, loaded)
    ks = parse_fractions(cfg.k)
    scopes = parse_choice(cfg.scope, SCOPES, "--scope")
    which = parse_choice(cfg.regions, WHICH, "--regions")
    if cfg.mode not in REGION_MODES:
        raise BabelscopeError(f"--mode {cfg.mode!r}: use one of {', '.join(REGION_MODES)}")
    sel_doc = load_results(Step(sr.run_dir, cfg.select_step).results_path)
    imp_doc = load_results(Step(sr.run_dir, sel_doc["results"]["importance_step"]).results_path)
    imp_cfg = imp_doc["config"]
    imp_langs = set(imp_doc["results"]["languages"])
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    view = SplitView(corpus, "test", imp_cfg["test_fraction"], imp_cfg["seed"])
    texts = {code: text_sha256(u.text for u in view.units(code)) for code in codes}  # none: fails here
    inputs = {"select": results_sha256(run_dir, cfg.select_step), "texts": texts,
              "importance": results_sha256(run_dir, sel_doc["results"]["importance_step"])}
    if (doc := sr.done(inputs=inputs)) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "ablate")
    params = scored_parameters(model, imp_cfg.get("include", ""), imp_cfg.get("exclude", ""))
    norms = set(norm_modules(model))
    initial = load_initial(cfg.initial) if cfg.mode == "reset" and cfg.initial else None
    gen_codes = [c for c in language_codes(corpus, cfg.gen_langs) if c in PROMPTS] if cfg.generate else []

    def engine_for(*change: Any) -> Engine:
        checksum = condition_checksum(info.checksum, *change) if change else info.checksum
        return sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)

    base_engine = engine_for()
    base = perplexities(base_engine, view, codes, cfg.window, cfg.max_tokens)
    rows = [_row("base", None, None, code, base[code], base[code], code in imp_langs) for code in codes]
    generations = []
    if gen_codes:
        outs = base_engine.generate([PROMPTS[c] for c in gen_codes], cfg.max_new_tokens, desc="generate")
        generations += [
            {"region": "base", "k": None, "scope": None, "lang": c, "prompt": PROMPTS[c], "output": o}
            for c, o in zip(gen_codes, outs, strict=True)
        ]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(scopes) * len(ks) * len(which),
        desc="ablate",
        unit="region",
        leave=False,
        disable=not base_engine.is_main,
    )
    with bar:
        for scope in scopes:
            for k in ks:
                for region in which:
                    path = sr.run_dir / cfg.select_step / mask_file(region, k, scope)
                    if not path.exists():
                        raise BabelscopeError(
                            f"{path}: no such region; run `babelscope regions select` with "
                            f"--k {k} --scope {scope}"
                        )
                    mask, meta = load_mask(path, params, info.checksum)
                    change = (
                        region,
                        k,
                        scope,
                        cfg.mode,
                        cfg.factor,
                        cfg.include_norms,
                        cfg.initial,
                        meta.get("size"),
                        meta.get("importance"),
                        file_digest(path),  # the selection itself (e.g. with or without --skip-zeros)
                    )
                    engine = engine_for(*change)
                    with applied_region(
                        params, mask, cfg.mode, cfg.factor, initial, cfg.include_norms, norms, model=model
                    ) as counts:
                        after = perplexities(engine, view, codes, cfg.window, cfg.max_tokens)
                        if gen_codes and k == ks[0] and scope == scopes[0]:
                            outs = engine.generate([PROMPTS[c] for c in gen_codes], cfg.max_new_tokens)
                            generations += [
                                {
                                    "region": region,
                                    "k": k,
                                    "scope": scope,
                                    "lang": c,
                                    "prompt": PROMPTS[c],
                                    "output": o,
                                }
                                for c, o in zip(gen_codes, outs, strict=True)
                            ]
                    rows += [
                        _row(region, k, scope, code, after[code], base[code], code in imp_langs, counts)
                        for code in codes
                    ]
                    del mask
                    bar.update(1)
    if not base_engine.is_main:
        return sr.wait()
    summary = ratio_summary(rows)
    results = {
        "model": info.name,
        "corpus": view.name,
        "mode": cfg.mode,
        "factor": cfg.factor,
        "importance_languages": sorted(imp_langs),
        "evaluation_languages": codes,
        "heldout_languages": [c for c in codes if c not in imp_langs],
        "summary": summary,
    }
    prov = provenance(
        model=info.to_dict(),
        data={"corpus": view.name, "units": {code: [u.id for u in view.units(code)] for code in codes}},
    )
    return sr.write(KIND, results, {"per_language": rows, "summary": summary, "generations": generations}, prov)


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (a mask file: about 0.1 s per 100 MB)."""
    return file_sha256(path, 1 << 22)


def _row(region, k, scope, code, row, base_row, in_importance, counts=None) -> dict[str, Any]:
    """One language under one condition; ``counts`` (a :class:`~babelscope.regions.apply.RegionChange`): mask
    entries, those in norm vectors, and values that actually changed."""
    ratio = row["ppl"] / base_row["ppl"] if row["ppl"] and base_row["ppl"] else None
    return {
        "region": region,
        "k": k,
        "scope": scope,
        "lang": code,
        "name": row["name"],
        "in_importance": in_importance,
        "tokens": row["tokens"],
        "ppl": row["ppl"],
        "base_ppl": base_row["ppl"],
        "ratio": ratio,
        "selected": counts.selected if counts else 0,
        "norm_entries": counts.norm_entries if counts else 0,
        "changed": counts.changed if counts else 0,
    }

