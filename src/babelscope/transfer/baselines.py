"""Freezing baselines beside the core region: which weights of the blocks' matrices stay fixed during further
pretraining. Each returns ``{parameter name: bool mask}`` (True = frozen) for the 2-D weights inside the blocks
(:func:`babelscope.models.params.scored_parameters`; norm vectors, embeddings and the LM head train), and the
loop freezes them exactly as it freezes a region (gradients masked, no weight decay, restored after each step).

* ``ssu`` (Source-Shielded Updates, Yamaguchi et al. 2025): column ``j`` of a linear map ``W`` (out x in) is scored
  on source-language text by ``s_j = ‖W[:, j]‖_2 · E[x_j²]`` (``x`` the map's input over the source tokens); the
  ``fraction`` of columns with the highest score is frozen, per matrix.
* ``half`` (half fine-tuning, Hui et al. 2024): a random ``fraction`` of the matrices frozen whole.
* ``magnitude``: per matrix, the ``fraction`` of entries with the largest ``|W|`` frozen.
* ``random``: per matrix, a random ``fraction`` of entries frozen (the same size as magnitude, and as SSU up to
  whole columns).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from babelscope.errors import BabelscopeError

BASELINES = ("ssu", "half", "magnitude", "random")


def matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The 2-D weights inside the blocks, by qualified name."""
    from babelscope.models.params import scored_parameters

    return {n: p for n, p in scored_parameters(model).items() if p.ndim == 2}


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """``{weight name: nn.Linear}`` for the linear maps inside the blocks."""
    from babelscope.models.arch import block_list

    prefix, blocks = block_list(model)
    return {f"{prefix}.{i}.{sub}.weight": m for i, block in enumerate(blocks) for sub, m in block.named_modules()
            if isinstance(m, nn.Linear)}


@contextlib.contextmanager
def input_energy(model: nn.Module, weights: list[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward adds ``Σ_t w_t x_{t,j}²`` per linear map of the blocks (its input ``x``,
    ``weights[0]`` (B, T) the counted positions) into the yielded ``{weight name: (in,) float64}``."""
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(module, args):
            x = args[0]
            w = weights[0].to(x.device, torch.float32)
            add = torch.einsum("bt,btj->j", w, x.float().pow(2)).double().cpu()
            sums[name] = sums[name] + add if name in sums else add

        return hook

    try:
        for name, module in linear_modules(model).items():
            handles.append(module.register_forward_pre_hook(make(name)))
        yield sums
    finally:
        for h in handles:
            h.remove()


def ssu_scores(model: nn.Module, seqs: list[list[int]], batch_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``{weight name: s (in,)}`` with ``s_j = ‖W[:, j]‖_2 · E[x_j²]`` over the real tokens after BOS of ``seqs``."""
    from babelscope.models.arch import base_model
    from babelscope.models.batches import length_sorted_batches, right_padded
    from babelscope.models.placement import input_device

    device = input_device(model)
    weights: list[torch.Tensor] = [torch.zeros(0)]
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), input_energy(model, weights) as sums:
            for batch in length_sorted_batches(seqs, batch_size):
                ids, mask = right_padded([seqs[i] for i in batch], pad_id)
                w = mask.float().clone()
                w[:, 0] = 0
                weights[0] = w
                tokens += int(w.sum())
                base_model(model)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        model.train(was_training)
    if tokens == 0:
        raise BabelscopeError("SSU: no source-language tokens to score columns on; raise --ssu-max-tokens")
    mods = linear_modules(model)
    return {name: mods[name].weight.detach().float().norm(dim=0).cpu().double() * (e / tokens)
            for name, e in sums.items()}


def _top(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``round(fraction · n)`` largest values (ties broken by position)."""
    flat = values.flatten()
    k = round(fraction * flat.numel())
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        out[torch.topk(flat.double(), k).indices] = True
    return out.view(values.shape)


def baseline_masks(model: nn.Module, baseline: str, fraction: float, seed: int = 0,
                   scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{weight name: bool mask}`` of the frozen entries of each block matrix under ``baseline``."""
    if baseline not in BASELINES:
        raise BabelscopeError(f"--freeze-baseline {baseline!r}: use one of {', '.join(BASELINES)}")
    if not 0 < fraction < 1:
        raise BabelscopeError(f"--freeze-fraction {fraction}: must lie strictly between 0 and 1")
    mats = matrices(model)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    if baseline == "half":
        names = list(mats)
        chosen = set(torch.randperm(len(names), generator=gen)[: round(fraction * len(names))].tolist())
        return {n: torch.full(p.shape, i in chosen, dtype=torch.bool) for i, (n, p) in enumerate(mats.items())}
    for name, p in mats.items():
        if baseline == "ssu":
            if scores is None or name not in scores:
                raise BabelscopeError(f"SSU: no column scores for {name} (not a linear map's weight)")
            cols = _top(scores[name], fraction)
            out[name] = cols[None, :].expand(p.shape).clone()
        elif baseline == "magnitude":
            out[name] = _top(p.detach().abs().cpu(), fraction)
        else:
            out[name] = _top(torch.rand(p.shape, generator=gen), fraction)
    return out


def masks_sha256(masks: dict[str, torch.Tensor]) -> str:
    """Checksum of a set of masks (names and bits), part of the training fingerprint."""
    from babelscope.caches import digest

    return digest(part for name in sorted(masks) for part in (name, masks[name].numpy().tobytes()))
