"""Models larger than one device: Accelerate's big-model inference behind the forward-only commands.

``--device-map auto|balanced|sequential`` splits the unmodified model block by block over the GPUs, the CPU and
the disk (``--max-memory 0=20GiB,1=20GiB,cpu=60GiB`` caps each device, ``--offload-dir`` takes what is left), the
way lm-evaluation-harness's ``parallelize`` does. The map is computed here, from ``config.json`` alone on a
meta-device copy of the model (Accelerate's ``infer_auto_device_map`` through transformers' own
``_get_device_map``), so that every refusal (a model that cannot be split, a cap too small to hold one block, a
map that needs the disk with no writable ``--offload-dir``) comes before a weight is read or a file is written;
the loader then passes the finished map to ``from_pretrained``.

Under ``torchrun`` with a device map each process takes its share of the requests on its own group of GPUs
(``LOCAL_RANK``'s contiguous ``n_gpus / LOCAL_WORLD_SIZE``), GPU numbers in ``--max-memory`` counting within the
group, and offloads into its own ``rank<N>`` subfolder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.errors import BabelscopeError

MAPS = ("auto", "balanced", "sequential")
MiB = 2**20


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


def parse_size(text: str, what: str) -> int:
    """Bytes of ``20GiB``, ``500MB``, ``1.5GiB`` or a plain integer; a one-line error naming ``what``."""
    from accelerate.utils import convert_file_size_to_int

    try:
        size = int(text) if text.strip().isdigit() else convert_file_size_to_int(text.strip())
    except (ValueError, TypeError, AttributeError):
        size = -1
    if size <= 0:
        raise BabelscopeError(f"{what}: {text!r} is not a size; write it like 20GiB, 500MiB or 60GB")
    return size


def parse_max_memory(text: str | None) -> dict[int | str, int] | None:
    """``0=20GiB,1=20GiB,cpu=60GiB`` -> ``{0: bytes, 1: bytes, "cpu": bytes}`` (GPU numbers within this process's
    group of GPUs, see the module docstring)."""
    if not text:
        return None
    out: dict[int | str, int] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BabelscopeError(f"--max-memory {text!r}: write DEVICE=SIZE pairs, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
        if key.isdigit():
            dev: int | str = int(key)
        elif key in ("cpu", "mps"):
            dev = key
        else:
            raise BabelscopeError(f"--max-memory {text!r}: unknown device {key!r}; use GPU numbers (0, 1 ...) and cpu")
        out[dev] = parse_size(value, f"--max-memory {key}")
    return out


def gpu_group() -> list[int]:
    """The CUDA devices this process may use: all of them, or under several processes per machine
    (``LOCAL_WORLD_SIZE``) its own contiguous share."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if count == 0 or local_world <= 1:
        return list(range(count))
    per = count // local_world
    if per == 0:
        raise BabelscopeError(f"--device-map with {local_world} processes per machine but {count} GPU(s): give each "
                              "process at least one GPU (fewer processes), or leave --device-map out")
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    return list(range(rank * per, (rank + 1) * per))


def check_offload_dir(path: str | None) -> Path | None:
    """This process's offload folder (``rank<N>`` inside ``path`` under several processes), refused when it cannot
    be written; nothing is created when it is fine except the folder itself at load time."""
    if not path:
        return None
    folder = Path(path).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BabelscopeError(f"--offload-dir {path}: not a writable folder ({probe} cannot be written); give a "
                              "folder on a disk with room for the offloaded weights")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from babelscope.processes import state

        group = state()
        folder = folder / f"rank{group.process_index if group else os.environ.get('RANK', '0')}"
    return folder


def meta_model(source: Path | str, dtype: str = "float32", trust_remote_code: bool = False) -> nn.Module:
    """The model of ``source``'s ``config.json`` with every tensor on the meta device (no memory, no weights read)."""
    from accelerate import init_empty_weights

    from babelscope.models.specs import _load_config, auto_class, model_kind

    config = _load_config(source, trust_remote_code)
    cls = auto_class(config, model_kind(config))
    with init_empty_weights():
        model = cls.from_config(config, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model


def block_bytes(model: nn.Module, dtype: str = "float32") -> int:
    """Bytes of the largest unit Accelerate will not split (a transformer block, or the embedding when larger)."""
    from accelerate.utils import compute_module_sizes

    from babelscope.models.arch import block_list

    sizes = compute_module_sizes(model, dtype=getattr(torch, dtype))
    name, _ = block_list(model)
    return max(v for k, v in sizes.items() if k.startswith(name + ".") and k.count(".") == name.count(".") + 1)


def plan_device_map(spec: str, device_map: str, max_memory: str | None = None, offload_dir: str | None = None,
                    dtype: str = "float32", trust_remote_code: bool = False) -> dict[str, Any]:
    """The module -> device map (``0``, ``"cpu"``, ``"disk"``) ``spec`` will load with, computed on a meta model;
    every refusal is a one-line :class:`BabelscopeError` raised before any weight is read."""
    from babelscope.models.specs import resolve_spec

    if device_map not in MAPS:
        raise BabelscopeError(f"--device-map {device_map!r}: use {', '.join(MAPS)}")
    memory = parse_max_memory(max_memory)
    folder = check_offload_dir(offload_dir)
    source, _ = resolve_spec(spec)
    model = meta_model(source, dtype, trust_remote_code)
    if not model._no_split_modules:
        raise BabelscopeError(
            f"--device-map {device_map}: {spec} is a {type(model).__name__}, which Accelerate cannot split into "
            "blocks (the class names no _no_split_modules); leave --device-map out and use --device (it needs "
            f"{_mib(_total_bytes(model, dtype))})")
    group = gpu_group()
    caps: dict[int | str, int] = {}
    if memory is None:
        caps = None  # type: ignore[assignment]  # Accelerate's own: what each device has free
    else:
        for dev, size in memory.items():
            if isinstance(dev, int):
                if dev >= len(group):
                    raise BabelscopeError(f"--max-memory {max_memory}: GPU {dev} does not exist here (this process "
                                          f"has {len(group)} GPU(s)); use 0..{len(group) - 1} and cpu")
                caps[group[dev]] = size
            else:
                caps[dev] = size
        if not group and "cpu" not in caps:
            raise BabelscopeError(f"--max-memory {max_memory}: no GPU here, so give the CPU a share (cpu=8GiB)")
        if group and not any(isinstance(d, int) for d in caps):  # only cpu given: the group's GPUs, all they have
            caps.update({g: torch.cuda.mem_get_info(g)[0] for g in group})
        need = block_bytes(model, dtype)
        if max(caps.values()) < need:
            raise BabelscopeError(
                f"--max-memory {max_memory}: no device can hold one block of {spec} ({_mib(need)} in {dtype}), "
                f"which the device running it needs; give one device at least {_mib(need * 1.05)}")
    if memory is None and group and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        caps = {g: torch.cuda.mem_get_info(g)[0] for g in group} | {"cpu": _cpu_bytes()}
    from transformers.integrations.accelerate import _get_device_map

    placed = dict(_get_device_map(model, device_map, caps, None))
    on_disk = [k for k, v in placed.items() if v == "disk"]
    if on_disk and folder is None:
        raise BabelscopeError(
            f"--max-memory {max_memory}: {len(on_disk)} part(s) of {spec} do not fit and go to the disk; give "
            f"--offload-dir DIR, or caps summing to {_mib(_total_bytes(model, dtype) * 1.1)}")
    return placed


def _total_bytes(model: nn.Module, dtype: str) -> int:
    from accelerate.utils import compute_module_sizes

    return compute_module_sizes(model, dtype=getattr(torch, dtype))[""]


def _cpu_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available * 0.9)


def offload_folder(offload_dir: str | None) -> str:
    """The folder ``from_pretrained`` offloads into (created now: the load is about to write)."""
    folder = check_offload_dir(offload_dir) or Path(tempfile.mkdtemp(prefix="babelscope-offload-"))
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


# ------------------------------------------------------------------------------------------- where things run
def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of its Accelerate hook when it has one (its weights may sit
    on the meta device, offloaded), else the device of its first parameter or buffer (the CPU for none)."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or [hook]:  # a SequentialHook holds several
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for t in module.parameters():
        if t.device.type != "meta":
            return t.device
    for t in module.buffers():
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """The device the model's inputs go to: the input embedding's execution device (the first block's side)."""
    if getattr(model, "hf_device_map", None) is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return execution_device(model.get_input_embeddings())


# ------------------------------------------------------------------------------------------- changing weights
def _offload_slot(model: nn.Module, name: str) -> tuple[Any, str] | None:
    """``(offload loader, full key)`` that Accelerate's hook reads parameter ``name`` from when it is offloaded
    (its module's or an ancestor's ``AlignDevicesHook`` with a ``weights_map``), else ``None``."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:cut])
        module = model.get_submodule(prefix) if prefix else model
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or [hook]:
            weights = getattr(h, "weights_map", None)
            if getattr(h, "offload", False) and weights is not None:
                rel = ".".join(parts[cut:])
                return getattr(weights, "dataset", weights), getattr(weights, "prefix", "") + rel
    return None


@contextlib.contextmanager
def writable_weights(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Tensors of the parameters ``names`` that may be changed in place within the block: a resident parameter's
    own data, and for one offloaded to the CPU or the disk (on the meta device) a copy that Accelerate's hook
    loads in place of the offloaded one at every forward. The copies are dropped on every exit path."""
    params = dict(model.named_parameters())
    out, restore = {}, []
    try:
        for name in names:
            p = params[name]
            slot = _offload_slot(model, name) if p.device.type == "meta" else None
            if slot is None:
                out[name] = p.data
                continue
            loader, key = slot
            store = loader.state_dict
            restore.append((store, key, store.get(key, _MISSING)))
            store[key] = out[name] = loader[key].clone()
        yield out
    finally:
        for store, key, old in reversed(restore):
            if old is _MISSING:
                store.pop(key, None)
            else:
                store[key] = old


_MISSING = object()
