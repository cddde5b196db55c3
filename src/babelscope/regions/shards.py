"""Importance on a sharded model (FSDP 2) and the score files it writes, one per process.

``regions importance --fsdp`` shards every transformer block with ``torch.distributed.fsdp.fully_shard`` over the
processes of ``torchrun`` / ``accelerate launch`` (no optimizer; the embedding, final norm and head, frozen, stay
whole on every process). FSDP 2 cuts each parameter on dim 0 into ``torch.chunk`` pieces of ``ceil(rows / world)``
rows; the backward reduce-scatters the gradient (FSDP 2's mean, multiplied back into the sum: the loss is
already divided by the language's token count), so each process holds the gradient rows of its own piece and
computes θ ⊙ ∇ there in float32. A score file ``X.safetensors`` is then written as
``X.rank{r}-of-{W}.safetensors``, one per process, each with its rows and the full shapes in its metadata.

:func:`open_scores` reads a score file or its pieces as one mapping whose values are assembled one matrix at a
time (``regions select`` ranks per tensor without ever holding the whole model's scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.errors import BabelscopeError


def check_fsdp() -> tuple[int, int]:
    """``(rank, world)`` of the processes FSDP 2 shards over; a one-line error in a single process."""
    from babelscope.processes import state as _dist_state

    state = _dist_state()
    if state is None:
        raise BabelscopeError("--fsdp: this is a single process, so there is nothing to shard over; launch it with "
                              "torchrun --nproc-per-node N -m babelscope.cli regions importance --fsdp ... (or "
                              "accelerate launch), or leave --fsdp out")
    return state.process_index, state.num_processes


def shard_blocks(model: nn.Module) -> None:
    """``fully_shard`` every transformer block over all processes (gradients summed, not averaged)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from babelscope.models.arch import block_list
    from babelscope.models.placement import input_device

    _, world = check_fsdp()
    device = input_device(model)
    mesh = init_device_mesh(device.type, (world,))
    _, blocks = block_list(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)


def gradient_scale() -> float:
    """What FSDP 2's reduce-scatter divided the summed gradient by: the number of processes (its default mean;
    a divide factor of 1 needs the PREMUL_SUM reduction, which gloo lacks). Multiplying back is exact for a
    power-of-two world and one rounding otherwise."""
    return float(check_fsdp()[1])


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local piece (a view of its storage); any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def shard_rows(p: torch.Tensor) -> tuple[int, int]:
    """The dim-0 rows ``[start, stop)`` of ``p`` this process holds (all of them for a plain tensor)."""
    placements = getattr(p, "placements", None)
    rows = p.shape[0]
    if placements is None:
        return 0, rows
    if len(placements) != 1 or type(placements[0]).__name__ != "Shard" or placements[0].dim != 0:
        raise BabelscopeError(f"parameter sharded as {placements}; importance supports FSDP 2's dim-0 sharding")
    mesh = p.device_mesh
    per = math.ceil(rows / mesh.size())
    start = min(mesh.get_local_rank() * per, rows)
    return start, min(start + per, rows)


def shard_path(path: Path, rank: int, world: int) -> Path:
    """``X.safetensors`` -> ``X.rank{rank}-of-{world}.safetensors``."""
    return path.with_name(f"{path.name.removesuffix('.safetensors')}.rank{rank}-of-{world}.safetensors")


def shard_files(path: Path) -> list[Path]:
    """The pieces of ``path`` in rank order (empty when it was not written sharded)."""
    stem = path.name.removesuffix(".safetensors")
    found = sorted(path.parent.glob(f"{stem}.rank*-of-*.safetensors"))
    if not found:
        return []
    world = int(found[0].name.rsplit("-of-", 1)[1].removesuffix(".safetensors"))
    files = [shard_path(path, r, world) for r in range(world)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BabelscopeError(f"{path}: written by {world} processes but {', '.join(missing)} is missing; re-run "
                              "the importance step")
    return files


class ShardedScores(Mapping):
    """The tensors of a score file written in pieces, each assembled from its rows when asked for."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.files = files
        with safe_open(str(files[0]), framework="pt") as fh:  # in file order, as ``load_file`` gives a whole file
            self._names = list(fh.offset_keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._names:
            raise KeyError(name)
        parts = []
        for f in self.files:
            with safe_open(str(f), framework="pt") as fh:
                parts.append(fh.get_tensor(name))
        return torch.cat(parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def open_scores(path: str | Path) -> Mapping[str, torch.Tensor]:
    """A score file's tensors: the whole file, or for one written by several processes the lazily assembled
    pieces (:class:`ShardedScores`)."""
    from babelscope.tensorfiles import load_tensors

    path = Path(path)
    if not path.exists() and (files := shard_files(path)):
        return ShardedScores(files)
    return load_tensors(path)


def scores_metadata(path: str | Path) -> dict[str, Any]:
    """A score file's metadata (for one written in pieces, the first piece's)."""
    from babelscope.tensorfiles import read_metadata

    path = Path(path)
    if not path.exists() and (files := shard_files(path)):
        return read_metadata(files[0])
    return read_metadata(path)
