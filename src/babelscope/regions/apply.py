"""Apply a region or perturb one norm dimension, reversibly (Zhang et al. 2024, §3-§4).

Both are context managers: the affected values are copied before the change and written back in ``finally``,
so the model leaves the block bit-identical whatever happens inside.

Region modes, for the masked weights ``θ_M``:

* ``zero``: ``θ_M = 0`` (removal, the paper's default; norm vectors are skipped unless ``include_norms``, as
  zeroing a norm vector rescales the whole hidden dimension);
* ``reset``: ``θ_M = θ⁰_M`` from ``initial`` (e.g. the weights before further pre-training);
* ``scale``: ``θ_M = factor · θ_M``;
* ``noise``: ``θ_M = θ_M + σ ε`` with ``ε ~ N(0, 1)`` (seeded) and ``σ = factor · std(θ)`` of each tensor.

Dimension modes on a norm's effective scale ``γ = offset + w`` (``offset`` = 1 for Gemma, 0 for Llama), at one
dimension ``d``: ``one`` (γ_d = 1), ``scale`` (γ_d = factor · γ_d), ``zero`` (γ_d = 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from babelscope.errors import BabelscopeError

REGION_MODES = ("zero", "reset", "scale", "noise")
DIM_MODES = ("one", "scale", "zero")


@dataclass
class RegionChange:
    """What applying a mask did: ``selected`` mask entries, of which ``norm_entries`` lie in norm vectors (left
    unchanged by ``zero`` unless ``include_norms``), and ``changed`` values that actually differ afterwards (a
    weight already 0 does not change when zeroed)."""

    selected: int = 0
    norm_entries: int = 0
    changed: int = 0


@contextlib.contextmanager
def applied_region(
    params: Mapping[str, nn.Parameter],
    masks: Mapping[str, torch.Tensor],
    mode: str = "zero",
    factor: float = 0.0,
    initial: Mapping[str, torch.Tensor] | None = None,
    include_norms: bool = False,
    norm_names: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    model: nn.Module | None = None,
) -> Iterator[RegionChange]:
    """Change the masked weights within the block (yields a :class:`RegionChange` with the counts); restore them
    exactly after. ``model`` (whose parameters ``params`` are): needed when Accelerate offloaded part of it
    (``--device-map``); its offloaded weights change through
    :func:`~babelscope.models.placement.writable_weights`."""
    if mode not in REGION_MODES:
        raise BabelscopeError(f"--mode {mode!r}: use one of {', '.join(REGION_MODES)}")
    if mode == "reset" and initial is None:
        raise BabelscopeError(
            "--mode reset needs --initial (a safetensors file or model directory of initial weights)"
        )
    gen = torch.Generator().manual_seed(seed)
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    offloaded = model is not None and any(p.device.type == "meta" for p in params.values())
    with contextlib.ExitStack() as stack:
        data = {n: p.data for n, p in params.items()}
        if offloaded:
            from babelscope.models.placement import writable_weights

            data.update(stack.enter_context(writable_weights(model, [n for n in masks if n in params])))
        with _restored(saved):
            yield _apply(data, masks, mode, factor, initial, include_norms, norm_names, gen, saved)


@contextlib.contextmanager
def _restored(saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Write the saved values back however the block exits."""
    try:
        yield
    finally:
        with torch.no_grad():
            for p, m, values in reversed(saved):
                p[m] = values


def _apply(data, masks, mode, factor, initial, include_norms, norm_names, gen, saved) -> RegionChange:
    """Change the masked entries of the tensors ``data`` (saving the old values in ``saved``); the counts."""
    params, counts = data, RegionChange()
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise BabelscopeError(
                    f"mask names {name!r}, which the model does not have; use a mask of this model"
                )
            selected = int(mask.sum())
            counts.selected += selected
            if name in norm_names:
                counts.norm_entries += selected
            if mode == "zero" and name in norm_names and not include_norms:
                continue
            p = params[name]
            m = mask.to(p.device)
            if not selected:
                continue
            old = p[m].clone()
            saved.append((p, m, old))
            if mode == "zero":
                p[m] = 0
            elif mode == "scale":
                p[m] *= factor
            elif mode == "noise":
                noise = torch.randn(int(m.sum()), generator=gen).to(p)
                p[m] += factor * p.float().std().to(p.dtype) * noise
            else:
                if initial is None or name not in initial:
                    raise BabelscopeError(
                        f"--initial has no tensor {name!r}; give the initial weights of this model"
                    )
                p[m] = initial[name].to(p)[m]
            counts.changed += int((p[m] != old).sum())
    return counts


@contextlib.contextmanager
def perturbed_dimension(
    norm: nn.Module, dim: int, mode: str = "zero", factor: float = 0.0, offset: float | None = None,
    weight: torch.Tensor | None = None,
) -> Iterator[float]:
    """Set one dimension of a norm's effective scale γ = offset + w (yields the new γ_d); restore after.
    ``weight``: the tensor to change instead of ``norm.weight`` (an offloaded norm's writable copy, see
    :func:`~babelscope.models.placement.writable_weights`)."""
    from babelscope.models.params import gamma_offset

    if mode not in DIM_MODES:
        raise BabelscopeError(f"--mode {mode!r}: use one of {', '.join(DIM_MODES)}")
    weight = norm.weight if weight is None else weight
    if not 0 <= dim < weight.shape[0]:
        raise BabelscopeError(f"--dim {dim}: this norm has dimensions 0..{weight.shape[0] - 1}")
    offset = gamma_offset(norm) if offset is None else offset
    old = weight.data[dim].clone()
    gamma = float(old) + offset
    new_gamma = {"one": 1.0, "zero": 0.0, "scale": gamma * factor}[mode]
    try:
        weight.data[dim] = new_gamma - offset
        yield new_gamma
    finally:
        weight.data[dim] = old
