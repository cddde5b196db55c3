"""Regions from importance scores (Zhang et al. 2024, §2.2-§3): Top-k, Bottom-k, Random-k, core, monolingual.

* ``top`` / ``bottom``: the fraction ``k`` of parameters with the highest / lowest importance; ``random``: the
  same count drawn uniformly (seeded). Per tensor (the paper's default: every matrix loses exactly ``k``) or
  global (one ranking over all scored parameters, so some matrices lose far more than others).
* ``skip_zeros`` (the step's default): Bottom-k and Random-k are drawn among the weights whose importance is not
  0. ``Imp = Σ_l |θ ⊙ g_l|`` is 0 wherever ``θ = 0``, and a quantised model has many such weights (4.5% of Gemma
  3 270M's block weights after Q4_K_M): the plain ranking's Bottom-k then "removes" weights that are already 0
  and changes almost nothing, so Top, Bottom and Random would not change the same number of values.
  ``Imp > 0`` implies ``θ ≠ 0``, so every weight drawn changes when zeroed. ``skip_zeros=False`` is the paper's
  plain ranking.
* Core region: Top-k of ``Imp = Σ_l |S_l|``. Monolingual region of ``l``: ``Top-k(|S_l|)`` minus the Top-k of
  every other language.
* Overlap of two languages' regions: Jaccard ``|A ∩ B| / |A ∪ B|``, overall and per layer and matrix type.

Masks are ``{parameter name: bool tensor}`` (True = in the region) saved as safetensors with the model checksum,
``k``, scope and kind in the metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.regions.configs import SelectConfig  # noqa: F401  (re-exported: the older import path)

#: the experiment commands that write region masks (a later step's mask may not exist yet when it is planned)
MASK_WRITERS = frozenset({"regions-select", "regions"})

KIND = "regions-select"
WHICH = ("top", "bottom", "random")
SCOPES = ("tensor", "global")
Masks = dict[str, torch.Tensor]


def parse_fractions(spec: str | float, option: str = "--k") -> list[float]:
    """``"0.01,0.03"`` -> ``[0.01, 0.03]``; every value strictly between 0 and 1."""
    values = []
    for part in str(spec).split(","):
        try:
            k = float(part)
        except ValueError:
            raise BabelscopeError(
                f"{option} {spec!r}: {part!r} is not a number; give fractions like 0.01,0.03"
            ) from None
        if not 0 < k < 1:
            raise BabelscopeError(f"{option} {k}: k must lie strictly between 0 and 1 (0.01 = 1%)")
        values.append(k)
    return values


def parse_choice(spec: str, allowed: tuple[str, ...], option: str) -> list[str]:
    values = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise BabelscopeError(f"{option} {spec!r}: use one or more of {', '.join(allowed)}")
    return values


# ------------------------------------------------------------------------------------------------ masks
def region_mask(
    scores: Mapping[str, torch.Tensor],
    k: float,
    which: str = "top",
    scope: str = "tensor",
    seed: int = 0,
    skip_zeros: bool = False,
) -> Masks:
    """Boolean masks of the fraction ``k`` of parameters ranked by ``scores`` (top, bottom or random).

    The count is ``round(k · n)`` of all ``n`` weights (per tensor or overall) in every case. With
    ``skip_zeros``, Bottom-k and Random-k take it among the weights whose score is not 0 (only if those are too
    few, the rest comes from the zero-score ones: Bottom in score order, Random at random)."""
    if not 0 < k < 1:
        raise BabelscopeError(f"k={k}: k must lie strictly between 0 and 1")
    if which not in WHICH or scope not in SCOPES:
        raise BabelscopeError(f"which={which!r}, scope={scope!r}: use {WHICH} and {SCOPES}")
    gen = torch.Generator().manual_seed(seed)
    names = list(scores)
    if scope == "tensor":
        return {
            name: _mask_flat(scores[name].flatten(), k, which, gen, skip_zeros).view(scores[name].shape)
            for name in names
        }
    flat = torch.cat([scores[n].flatten().float() for n in names])
    mask = _mask_flat(flat, k, which, gen, skip_zeros, owned=True)
    del flat
    out, start = {}, 0
    for name in names:
        n = scores[name].numel()
        out[name] = mask[start : start + n].view(scores[name].shape).clone()
        start += n
    return out


def _mask_flat(
    values: torch.Tensor, k: float, which: str, gen: torch.Generator, skip_zeros: bool = False,
    owned: bool = False,
) -> torch.Tensor:
    """``owned``: ``values`` is a temporary the caller gives away (it may be overwritten)."""
    count = round(k * values.numel())
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if count == 0:
        return mask
    if which == "random":
        if skip_zeros:
            n_nonzero = int(torch.count_nonzero(values))
            if n_nonzero >= 4 * count:  # rejection: uniform draws over all, zeros dropped (no n-sized index list)
                picked = torch.empty(0, dtype=torch.long)
                while picked.numel() < count:
                    draw = torch.randint(values.numel(), (int(1.2 * (count - picked.numel())) + 16,), generator=gen)
                    picked = torch.unique(torch.cat([picked, draw[values[draw] != 0]]))
                mask[picked[torch.randperm(picked.numel(), generator=gen)[:count]]] = True
                return mask
            nonzero = torch.nonzero(values != 0).flatten()
            if n_nonzero >= count:
                mask[nonzero[random_indices(n_nonzero, count, gen)]] = True
                return mask
            mask[nonzero] = True  # every nonzero one, then the rest at random among the zeros
            zeros = torch.nonzero(values == 0).flatten()
            mask[zeros[random_indices(zeros.numel(), count - nonzero.numel(), gen)]] = True
            return mask
        mask[random_indices(values.numel(), count, gen)] = True
    else:
        if which == "bottom" and skip_zeros:  # zeros rank last from the bottom: taken only if needed
            values = values.float()
            values = values.masked_fill_(values == 0, math.inf) if owned else values.masked_fill(values == 0, math.inf)
        mask[extreme_indices(values, count, largest=which == "top")] = True
    return mask


def norm_names(names: Iterable[str], shapes: Mapping[str, Any]) -> set[str]:
    """The norm vectors among the scored names: 1-D tensors whose name says "norm" (what
    :func:`babelscope.models.params.norm_modules` finds from the module classes, read from the names alone)."""
    return {n for n in names if "norm" in n.lower() and len(shapes[n]) == 1}


def region_counts(mask: Masks, scores: Mapping[str, torch.Tensor], norms: set[str]) -> dict[str, int]:
    """Mask entries, how many sit in norm vectors (left unchanged by ``ablate --mode zero`` unless
    ``--include-norms``) and how many have importance 0 (weights already 0: zeroing them changes nothing)."""
    return {
        "parameters": region_size(mask),
        "norm_entries": sum(int(mask[n].sum()) for n in mask if n in norms),
        "zero_importance": sum(int((mask[n] & (scores[n] == 0)).sum()) for n in mask),
    }


def random_indices(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices in ``range(n)``, uniformly at random (no n-sized permutation is built)."""
    if count * 4 >= n:
        return torch.randperm(n, generator=gen)[:count]
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < count:
        draw = torch.randint(n, (int(1.1 * (count - picked.numel())) + 16,), generator=gen)
        picked = torch.unique(torch.cat([picked, draw]))
    return picked[torch.randperm(picked.numel(), generator=gen)[:count]]


def extreme_indices(values: torch.Tensor, count: int, largest: bool = True) -> torch.Tensor:
    """Indices of the ``count`` largest (smallest) values: exactly ``torch.topk``'s set, faster on big tensors.

    A sample of a million values gives a threshold a little beyond the ``count``-th value; ``topk`` then runs
    only over the candidates past it (if they are too few, over everything)."""
    n = values.numel()
    values = values.float()
    if n <= 1 << 22 or count * 4 > n:
        return torch.topk(values, count, largest=largest, sorted=False).indices
    gen = torch.Generator().manual_seed(0)
    sample = values[torch.randint(n, (1 << 20,), generator=gen)]
    q = min(1.0, 1.5 * count / n + 1e-3)
    threshold = torch.quantile(sample, 1 - q if largest else q)
    candidates = torch.nonzero(values >= threshold if largest else values <= threshold).flatten()
    if candidates.numel() < count:
        return torch.topk(values, count, largest=largest, sorted=False).indices
    return candidates[torch.topk(values[candidates], count, largest=largest, sorted=False).indices]


def monolingual_masks(per_language: Mapping[str, Masks]) -> dict[str, Masks]:
    """``{lang: Top_l minus every other language's Top}`` from each language's Top-k masks."""
    langs = list(per_language)
    if not langs:
        return {}
    names = list(per_language[langs[0]])
    count = {n: torch.zeros(per_language[langs[0]][n].shape, dtype=torch.int16) for n in names}
    for masks in per_language.values():
        for n in names:
            count[n] += masks[n]
    return {lang: {n: masks[n] & (count[n] == 1) for n in names} for lang, masks in per_language.items()}


def kept_fraction(mask: Masks) -> dict[str, float]:
    """Per tensor, the fraction of weights left after removing the region (the paper's Table 3 cells)."""
    return {name: 1.0 - float(m.sum()) / m.numel() for name, m in mask.items()}


def jaccard(a: Masks, b: Masks) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else math.nan


def jaccard_by_matrix(a: Masks, b: Masks) -> dict[str, float]:
    out = {}
    for n in a:
        union = int((a[n] | b[n]).sum())
        out[n] = int((a[n] & b[n]).sum()) / union if union else math.nan
    return out


def region_size(mask: Masks) -> int:
    return sum(int(m.sum()) for m in mask.values())


# ------------------------------------------------------------------------------------------------ files
def save_mask(path: str | Path, mask: Masks, meta: dict[str, Any]) -> None:
    from babelscope.tensorfiles import save_tensors

    save_tensors(path, mask, {**meta, "size": region_size(mask)})


def load_mask(
    path: str | Path, params: Mapping[str, torch.Tensor] | None = None, checksum: str | None = None
) -> tuple[Masks, dict[str, Any]]:
    """Read a mask file; with ``params``, refuse one made for another model (names or shapes differ)."""
    from babelscope.tensorfiles import load_tensors, read_metadata

    meta = read_metadata(path)
    mask = load_tensors(path)
    if params is not None:
        missing = sorted(set(params) - set(mask))
        extra = sorted(set(mask) - set(params))
        if extra or (missing and len(missing) == len(params)):
            name = (extra or missing)[0]
            raise BabelscopeError(
                f"{path}: mask for another model (parameter {name!r} is not among this model's scored weights); "
                f"select the region from this model's importance scores"
            )
        for name, m in mask.items():
            if tuple(m.shape) != tuple(params[name].shape) or m.dtype != torch.bool:
                raise BabelscopeError(
                    f"{path}: mask for another model ({name} has shape {tuple(m.shape)} {m.dtype}, the model's "
                    f"is {tuple(params[name].shape)}); select the region from this model's importance scores"
                )
    if checksum and meta.get("model") not in (None, checksum):
        meta["other_model"] = True  # same names and shapes, other weights (e.g. a further-trained model)
    return mask, meta


def mask_file(region: str, k: float, scope: str) -> str:
    return f"masks/{region}-k{k:g}-{scope}.safetensors"


# ------------------------------------------------------------------------------------------------ tables
def kept_rows(region: str, k: float, scope: str, mask: Masks) -> list[dict[str, Any]]:
    """The per-matrix table's rows of one region: the share of each matrix it keeps."""
    from babelscope.models.params import layer_and_kind

    rows = []
    for name, kept in kept_fraction(mask).items():
        layer, kind = layer_and_kind(name)
        rows.append({"region": region, "k": k, "layer": layer, "kind": kind, "kept": kept, "scope": scope})
    return rows


def language_tops(scores_of: Callable[[str], Mapping[str, torch.Tensor]], langs: Iterable[str], k: float,
                  scope: str) -> dict[str, Masks]:
    """Each language's Top-k of ``|S_l|`` (``scores_of(lang)``: its signed scores, read one language at a time)."""
    tops = {}
    for lang in langs:
        scores = scores_of(lang)
        tops[lang] = region_mask({n: s.abs() for n, s in scores.items()}, k, "top", scope)
        del scores
    return tops


def overlap_rows(tops: Mapping[str, Masks], k: float, scope: str) -> tuple[list[dict], list[dict]]:
    """Jaccard overlaps of every pair of languages' regions ``tops``: overall, and per matrix (mean, min, max over
    the pairs)."""
    from babelscope.models.params import layer_and_kind

    langs = list(tops)
    overlap, by_matrix = [], []
    sums: dict[str, list[float]] = {}
    for i, a in enumerate(langs):
        for b in langs[i + 1:]:
            overlap.append({"a": a, "b": b, "k": k, "scope": scope, "jaccard": jaccard(tops[a], tops[b])})
            for name, j in jaccard_by_matrix(tops[a], tops[b]).items():
                sums.setdefault(name, []).append(j)
    for name, js in sums.items():
        layer, kind = layer_and_kind(name)
        by_matrix.append({"layer": layer, "kind": kind, "k": k, "scope": scope, "mean_jaccard": sum(js) / len(js),
                          "min_jaccard": min(js), "max_jaccard": max(js)})
    return overlap, by_matrix


#: the step (:func:`babelscope.regions.steps.run_select`), under its older name
run = StepFunction("babelscope.regions.steps", "run_select")
