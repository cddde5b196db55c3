"""Region freezing for the training loop (Zhang et al. 2024, "Unveiling linguistic regions in large language
models", §5): masked entries of parameters stay bit-identical while the rest trains.

Masks, not ``requires_grad`` (which FSDP refuses within one flat parameter): :class:`RegionFreeze` zeroes the
masked gradients before clipping, keeps the masked entries out of weight decay (:func:`param_groups` gives a partly
frozen tensor no decay, and :meth:`RegionFreeze.decay` applies it to the other entries) and restores them after
every optimizer step, so Adam's moments never move them. On one device, under DDP, and under FSDP 2, where each
process masks the rows of its dim-0 shard (:func:`local_mask`); :func:`unsharded` gathers the FSDP 2 root's own
parameters for an evaluation outside its forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from babelscope.errors import BabelscopeError


class _DecaySettings(Protocol):
    weight_decay: float  # a LoopConfig's


class RegionFreeze:
    """Keep masked entries of parameters fixed: zero their gradients, exclude them from weight decay, restore
    them after the optimizer step (Zhang et al. 2024, §5, with the moments and decay masked as well).

    Under FSDP 2 a parameter is a DTensor sharded on dim 0: each process applies the rows of the mask that its
    shard holds (:func:`local_mask`) to its local tensors, so nothing is gathered."""

    def __init__(self, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor], norms: set[str]):
        self.items: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, mask in masks.items():
            if name in norms or name not in params:
                continue
            p = params[name]
            idx = local_mask(p, mask, name).reshape(-1).nonzero()[:, 0].to(_local(p).device)
            if idx.numel():
                self.items.append((p, idx))
        self.ids = {id(p) for p, _ in self.items}
        self.saved: list[torch.Tensor] = []
        self.count = sum(int(i.numel()) for _, i in self.items)

    def snapshot(self) -> None:
        self.saved = [_local(p).detach().reshape(-1).index_select(0, idx) for p, idx in self.items]

    def zero_grads(self) -> None:
        for p, idx in self.items:
            if p.grad is not None:
                _local(p.grad).view(-1).index_fill_(0, idx, 0.0)

    @torch.no_grad()
    def decay(self, lr: float, weight_decay: float) -> None:
        """AdamW's decoupled decay ``θ -= lr λ θ`` on the entries that are not frozen (their param group has
        ``weight_decay=0``)."""
        if not weight_decay:
            return
        for (p, idx), saved in zip(self.items, self.saved, strict=True):
            if p.ndim >= 2:
                local = _local(p)
                local.mul_(1 - lr * weight_decay)
                local.view(-1).index_copy_(0, idx, saved)

    @torch.no_grad()
    def restore(self) -> None:
        for (p, idx), saved in zip(self.items, self.saved, strict=True):
            _local(p).view(-1).index_copy_(0, idx, saved)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view of its storage); any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def local_mask(p: torch.Tensor, mask: torch.Tensor, name: str = "") -> torch.Tensor:
    """The rows of a full-shape ``mask`` that this process holds of ``p``: all of it for a plain or replicated
    tensor; for FSDP 2's ``Shard(0)`` the ``torch.chunk`` piece of this rank (ceil(rows / world) rows each)."""
    placements = getattr(p, "placements", None)
    if placements is None or all(type(x).__name__ == "Replicate" for x in placements):
        return mask
    if len(placements) != 1 or type(placements[0]).__name__ != "Shard" or placements[0].dim != 0:
        raise BabelscopeError(f"{name}: parameter sharded as {placements}; region freezing supports FSDP 2's "
                              "dim-0 sharding only (launch with examples/accelerate/fsdp.yaml or ddp.yaml)")
    mesh = p.device_mesh
    rows, world, rank = mask.shape[0], mesh.size(), mesh.get_local_rank()
    per = math.ceil(rows / world)
    piece = mask[min(rank * per, rows) : min((rank + 1) * per, rows)]
    if tuple(piece.shape) != tuple(_local(p).shape):
        raise BabelscopeError(f"{name}: local shard {tuple(_local(p).shape)} does not match mask rows "
                              f"{tuple(piece.shape)}; freezing needs even dim-0 sharding (FSDP 2)")
    return piece


@contextlib.contextmanager
def unsharded(module: nn.Module):
    """Under FSDP 2, the root's own parameters (embedding, final norm) gathered for the duration, so the
    evaluation can call the decoder and the head outside the root's forward; the blocks gather themselves."""
    if not hasattr(module, "unshard") or not hasattr(module, "reshard"):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def param_groups(model: nn.Module, cfg: _DecaySettings, frozen_ids: set[int]) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on 1-D tensors (norms, biases) and on partly frozen tensors (whose
    decay :class:`RegionFreeze` applies itself)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in frozen_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
