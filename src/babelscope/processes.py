"""The processes of a run: rank, world size, barrier, gathers and sums across ranks, each rank's share of work.

One module talks to ``torch.distributed``; everything else asks it. Outside a launcher every function is the
single-process answer (rank 0 of 1, barriers and sums are no-ops), and torch is imported only when a process group
can exist, so ``import babelscope`` stays cheap. Under ``accelerate launch``, ``torchrun`` or ``debug_launcher``
(``WORLD_SIZE`` > 1) :func:`state` sets the group up through Accelerate's ``PartialState`` when the launcher did
not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class DistState:
    """Rank and world size of the torch.distributed group this process belongs to."""

    process_index: int
    num_processes: int

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0


def launched_world() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without one), known before any group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1), before any group exists."""
    return launched_world() > 1


def _initialized():
    """``torch.distributed`` when torch is loaded and its group is up, else ``None`` (imports nothing)."""
    torch = sys.modules.get("torch")
    dist = torch.distributed if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def state() -> DistState | None:
    """The process group when launched with several processes (``accelerate launch``, ``debug_launcher``,
    ``torchrun``), else ``None``. Accelerate's ``PartialState`` sets the group up when the launcher did not."""
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched():
            return None
        from accelerate import PartialState

        PartialState()
        if not dist.is_initialized():
            return None
    world = dist.get_world_size()
    return DistState(dist.get_rank(), world) if world > 1 else None


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of an initialized group, ``(0, 1)`` without one (sets nothing up)."""
    dist = _initialized()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def is_main() -> bool:
    """True outside ``accelerate launch`` and on its rank 0 (the only one that writes results)."""
    dist = _initialized()
    if dist is not None:
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process of the group (no-op in a single process): what one rank wrote, the others may
    read after this. Under a launcher (``WORLD_SIZE`` > 1) the process group is set up first if needed."""
    if launched():
        state()
    dist = _initialized()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def _group():
    """``torch.distributed`` when the group has more than one process, else ``None`` (sets nothing up)."""
    dist = _initialized()
    return dist if dist is not None and dist.get_world_size() > 1 else None


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a single process)."""
    dist = _group()
    if dist is None:
        return [obj]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj)
    return everyone


def all_reduce(tensor, op: str = "sum") -> None:
    """Reduce ``tensor`` over processes in place: ``op`` ``sum``, ``max`` or ``min`` (no-op in a single
    process)."""
    dist = _group()
    if dist is not None:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                    "min": dist.ReduceOp.MIN}[op])


def sum_across(value: float) -> float:
    """A float summed over processes (in float64; the value itself in a single process)."""
    if _group() is None:
        return value
    import torch

    t = torch.tensor([value], dtype=torch.float64)
    all_reduce(t)
    return float(t[0])


def all_reduce_grads(params: Sequence[Any]) -> None:
    """Sum ``.grad`` over processes (no-op in a single process)."""
    if state() is None:
        return
    for p in params:
        if p.grad is not None:
            all_reduce(p.grad)


class GradView:
    """Lets :func:`all_reduce_grads` sum a plain tensor in place (it reduces ``.grad``)."""

    def __init__(self, tensor):
        self.grad = tensor


def rank_share(items: Sequence[T], dist_state: DistState | None = None) -> list[T]:
    """This rank's share of a request list: every ``world``-th item from its rank (all of them in a single
    process). ``dist_state`` defaults to the initialized group (none is set up)."""
    rank, world = ((dist_state.process_index, dist_state.num_processes) if dist_state is not None
                   else rank_world())
    return list(items)[rank::world]
