"""Perplexity with a language's neurons deactivated (Tang et al., ACL 2024, §3.2, Figure 3) and generations.

For every language ``a`` whose language-specific neurons are set to zero (a pre-hook on the down projections,
:func:`babelscope.neurons.ffn.deactivated`) and every evaluation language ``b``, the matrix entry is

    R_{a,b} = PPL_b(neurons of a off) / PPL_b(base)

on text held out (by unit id) from the text the activations were counted on. Perplexity is that of
:mod:`babelscope.evaluate.perplexity` (disjoint BOS-prefixed windows), scored by the shared engine with a
per-request cache keyed by the model *and* the neurons switched off, so an interrupted run resumes. The paper's
finding: the diagonal rises most. A row of random neurons (the same number per layer as the language's, seeded)
is the control. Greedy generations of a probe prompt in the language (and in English) show what is lost.
"""

from __future__ import annotations

from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.neurons.configs import DeactivateConfig  # noqa: F401  (re-exported: the older import path)

KIND = "neurons-deactivation"


def random_like(mask: torch.Tensor, seed: int) -> dict[int, torch.Tensor]:
    """Random neurons with the same count per layer as ``mask`` (layers, neurons), seeded."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer, row in enumerate(mask):
        n = int(row.sum())
        if n:
            out[layer] = torch.randperm(row.numel(), generator=gen)[:n].sort().values
    return out


def switched_off(mask: torch.Tensor, which: str, seed: int) -> dict[int, torch.Tensor]:
    """The neurons a condition switches off: the language's own (``lape``), or as many random ones per layer."""
    from babelscope.neurons.lape import neuron_indices

    return neuron_indices(mask) if which == "lape" else random_like(mask, seed)


def ratio_rows(lang: str, which: str, count: int, codes: list[str], after: dict[str, dict], base: dict[str, dict]
               ) -> list[dict[str, Any]]:
    """Per evaluation language: the perplexity with ``lang``'s neurons (or random ones) off over the base one."""
    rows = []
    for code in codes:
        ratio = after[code]["ppl"] / base[code]["ppl"] if base[code]["ppl"] else None
        rows.append({"off": lang, "neurons": which, "count": count, "lang": code, "ppl": after[code]["ppl"],
                     "base_ppl": base[code]["ppl"], "ratio": ratio, "tokens": after[code]["tokens"]})
    return rows


def generation_rows(off: str, neurons, codes: list[str], prompts: dict[str, str], outs: list[str]
                    ) -> list[dict[str, Any]]:
    """The generation of each language's probe prompt with ``off``'s neurons switched off (``base``: none)."""
    return [{"off": off, "neurons": neurons, "lang": c, "prompt": prompts[c], "output": o}
            for c, o in zip(codes, outs, strict=True)]


def ratio_matrix(rows: list[dict[str, Any]], langs, codes: list[str]) -> list[dict[str, Any]]:
    """``R_{a,b}``: one row per language ``a`` switched off, one column per evaluation language ``b``."""
    matrix = []
    for lang in langs:
        mine = {r["lang"]: r["ratio"] for r in rows if r["off"] == lang and r["neurons"] == "lape"}
        matrix.append({"off": lang, **{c: mine.get(c) for c in codes}})
    return matrix


def summarize(matrix: list[dict[str, Any]], rows: list[dict[str, Any]], codes: list[str]) -> dict[str, Any]:
    """Mean diagonal, off-diagonal and random-control diagonal ratios, and the rows whose diagonal is their max
    (the paper's finding)."""
    diag = [r[r["off"]] for r in matrix if r["off"] in codes and r.get(r["off"]) is not None]
    offdiag = [r[c] for r in matrix for c in codes if c != r["off"] and r.get(c) is not None]
    rand = [r["ratio"] for r in rows if r["neurons"] == "random" and r["off"] == r["lang"] and r["ratio"]]
    return {
        "mean_diagonal_ratio": sum(diag) / len(diag) if diag else None,
        "mean_off_diagonal_ratio": sum(offdiag) / len(offdiag) if offdiag else None,
        "mean_random_diagonal_ratio": sum(rand) / len(rand) if rand else None,
        "diagonal_is_row_max": sum(
            1 for r in matrix if r["off"] in codes and r[r["off"]] is not None
            and r[r["off"]] >= max(v for c, v in r.items() if c != "off" and v is not None)
        ),
        "rows": len(matrix),
    }


#: the step moved to :func:`babelscope.neurons.steps.run_deactivate`; this name still runs it
run = StepFunction("babelscope.neurons.steps", "run_deactivate")
