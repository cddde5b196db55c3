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

from collections.abc import Callable
from typing import Any, TypeVar

from babelscope.caches import file_sha256
from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.evaluate.intervention import PROMPTS, condition_checksum, perplexities  # noqa: F401  (re-exported)
from babelscope.numeric import median
from babelscope.regions.configs import AblateConfig  # noqa: F401  (re-exported: the older import path)

KIND = "regions-ablation"
T = TypeVar("T")


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


def ablated(model, params: dict, mask, mode: str, factor: float, initial: dict | None, include_norms: bool,
            norms: set, measure: Callable[[], T]) -> tuple[T, Any]:
    """``measure()`` of the model with the region ``mask`` of ``params`` changed (:func:`~babelscope.regions.apply.
    applied_region`: ``mode`` zero, reset to ``initial``, scale by or add noise of ``factor``; norm vectors only
    with ``include_norms``), the weights restored afterwards; and the change's counts (selected, norm entries,
    changed values)."""
    from babelscope.regions.apply import applied_region

    with applied_region(params, mask, mode, factor, initial, include_norms, norms, model=model) as counts:
        out = measure()
    return out, counts


def condition_rows(region: str, k: float | None, scope: str | None, codes: list[str], after: dict[str, dict],
                   base: dict[str, dict], in_importance: set[str], counts=None) -> list[dict[str, Any]]:
    """One row per language (``after``, ``base``: ``{lang: perplexity row}``): the perplexity under one condition
    over the unchanged model's, and ``counts`` (:func:`ablated`)."""
    return [_row(region, k, scope, code, after[code], base[code], code in in_importance, counts) for code in codes]


def generation_rows(region: str, k: float | None, scope: str | None, codes: list[str], outs: list[str]
                    ) -> list[dict[str, Any]]:
    """The generation of each language's probe prompt (:data:`PROMPTS`) under one condition."""
    return [{"region": region, "k": k, "scope": scope, "lang": c, "prompt": PROMPTS[c], "output": o}
            for c, o in zip(codes, outs, strict=True)]


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


#: the step moved to :func:`babelscope.regions.steps.run_ablate`; this name still runs it
run = StepFunction("babelscope.regions.steps", "run_ablate")
