"""The step runner: what every step does around its own computation, in one place.

Every step (``babelscope ppl``, ``regions importance``, ... and each step of an experiment) is a config dataclass
plus ``run(cfg, run_dir, step="x", loaded=None) -> dict`` whose body reads::

    def run(cfg, run_dir, step="ppl", loaded=None):
        sr = StepRun(cfg, run_dir, step, loaded)       # checks the config: types, counts, languages, device, dirs
        units = ...                                    # read and check the data (still no model)
        if (doc := sr.done(inputs=checksums)) is not None:
            return doc                                 # same config and same inputs: the finished results
        model, tokenizer, info = sr.model("causal")    # the shared model of an experiment, or loaded here
        engine = sr.engine(batch_size=cfg.batch_size)  # cache keyed by weights, dtype, device and tokenizer
        ...
        if not engine.is_main:
            return sr.wait()                           # ranks that write nothing wait for the writer
        return sr.write(KIND, results, tables, provenance(...))  # rank 0 writes atomically; every rank waits

Under several processes every rank passes the same barriers: one after the done check (so no rank sees a
results file that another wrote in this run) and one after the writing (so the next step reads it).
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.fields import limits
from babelscope.runs import Step, barrier, check_run_dir, check_step_name, file_sha256, is_main_process, load_results

#: config fields that never change a result (left out of the config a finished step is compared with)
NOT_RESULT = ("device", "device_map", "max_memory", "offload_dir")
DTYPES = ("float32", "bfloat16", "float16")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _accepts(hint: Any) -> tuple[tuple[type, ...], bool]:
    """The plain types a field annotation allows, and whether ``None`` is allowed."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    members = args or (hint,)
    plain = tuple(t for t in members if isinstance(t, type) and t is not type(None))
    return plain, type(None) in members or hint is Any


def check_config(cfg: Any) -> Any:
    """Check (and normalise in place) a step config before anything is read or loaded: every value has its
    field's type (``window: big`` is refused; ``layers: 9`` becomes ``"9"``), counts are positive (a config
    field may declare another minimum, :func:`babelscope.fields.opt`), language lists are not empty (unless the field
    may be), values are among a field's choices, the dtype is known and the device exists. Returns ``cfg``."""
    try:
        hints = typing.get_type_hints(type(cfg))
    except Exception:  # pragma: no cover - an annotation that does not resolve: check nothing by type
        hints = {}
    for field in dataclasses.fields(cfg):
        name, value = field.name, getattr(cfg, field.name)
        allowed = limits(field)
        plain, optional = _accepts(hints.get(name, Any))
        if value is None:
            continue
        if plain and not isinstance(value, plain) or (isinstance(value, bool) and bool not in plain):
            if str in plain and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)  # YAML reads `layers: 9` as a number
            elif float in plain and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                want = " or ".join(t.__name__ for t in plain)
                raise BabelscopeError(f"{_option(name)} {value!r}: expected {want}")
            setattr(cfg, name, value)
        low = allowed.minimum
        if low is not None and isinstance(value, int | float) and not isinstance(value, bool) and value < low:
            hint = " (leave it out for no limit)" if optional else ""
            want = "0 or more" if low == 0 else "a positive number" if low == 1 else f"{low:g} or more"
            raise BabelscopeError(f"{_option(name)} {value}: must be {want}{hint}")
        if not allowed.may_be_empty and isinstance(value, str) and not value.replace(",", "").strip():
            raise BabelscopeError(f"{_option(name)} {value!r}: no language given; list some (eng,fra) or say all")
        if allowed.choices is not None and value not in allowed.choices:
            raise BabelscopeError(f"{_option(name)} {value!r}: use one of {', '.join(map(str, allowed.choices))}")
    dtype = getattr(cfg, "dtype", None)
    if dtype is not None and dtype not in DTYPES:
        raise BabelscopeError(f"--dtype {dtype!r}: use {', '.join(DTYPES)}")
    check_device(getattr(cfg, "device", None))
    check_placement(cfg)
    return cfg


def check_placement(cfg: Any) -> None:
    """A forward-only command's ``--device-map`` / ``--max-memory`` / ``--offload-dir``, checked from the model's
    ``config.json`` before any weight is read or file written (:func:`~babelscope.models.placement.plan_device_map`):
    the map, the caps (each device able to hold one block), the offload folder."""
    device_map = getattr(cfg, "device_map", None)
    if not device_map:
        for name in ("max_memory", "offload_dir"):
            if getattr(cfg, name, None):
                raise BabelscopeError(f"{_option(name)} {getattr(cfg, name)}: only with --device-map (auto, balanced "
                                      "or sequential)")
        return
    if getattr(cfg, "device", None) not in (None, "", "auto"):
        raise BabelscopeError(f"--device {cfg.device} with --device-map {device_map}: the map places the model; "
                              "give one of the two")
    from babelscope.models.placement import plan_device_map

    plan_device_map(cfg.model, device_map, cfg.max_memory, cfg.offload_dir, getattr(cfg, "dtype", "float32"))


def check_device(device: str | None) -> None:
    """Refuse a device this torch cannot use (``--device cuda`` on a CPU-only build) before any loading."""
    if not device or device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BabelscopeError(f"--device {device!r}: not a device; use cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BabelscopeError(f"--device {device}: this torch has no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BabelscopeError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise BabelscopeError(f"--device {device}: MPS is not available here; use --device cpu")


def placement_of(cfg: Any) -> dict[str, Any]:
    """The ``load_model`` arguments of a config's ``--device-map`` / ``--max-memory`` / ``--offload-dir``."""
    from babelscope.fields import PLACEMENT_FIELDS

    return {name: getattr(cfg, name) for name in PLACEMENT_FIELDS if getattr(cfg, name, None)}


def device_type(device: str | None) -> str:
    """The kind of device (``cpu``, ``cuda``, ``mps``) a step with this ``--device`` runs on, the default
    resolved as the loader does; part of a finished step's inputs, since kernels differ between devices."""
    import torch

    from babelscope.models.loader import resolve_device

    return torch.device(resolve_device(device)).type


def results_sha256(run_dir: str | Path, step: str) -> str:
    """Checksum of another step's results file (an input of the steps that read it); its error when missing."""
    path = Step(Path(run_dir), step).results_path
    load_results(path)  # the one-line error ("no results file; run the step first") when it is not there
    return file_sha256(path)


def model_files_stamp(spec: Any) -> list | None:
    """Name, size and modification time of each file of a model given as a local path (a directory or a
    ``.gguf``), so that weights rewritten at the same path (a further-trained model) make its steps recompute;
    ``None`` for the embedded default and hub ids (identified by their name). Cheap: nothing is read."""
    if not isinstance(spec, str) or not spec:
        return None
    path = Path(spec)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(f.name if f == path else str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
            for f in files]


class StepRun:
    """One run of one step: its folder, config, shared model, engine and results (see the module docstring)."""

    def __init__(self, cfg: Any, run_dir: str | Path, step: str, loaded: Callable[[], tuple] | None = None,
                 not_result: tuple[str, ...] = NOT_RESULT):
        self.cfg = check_config(cfg)
        self.step = check_step_name(step)
        self.run_dir = check_run_dir(run_dir)
        self.st = Step(self.run_dir, step)
        self.loaded = loaded
        self.config = {k: v for k, v in vars(cfg).items() if k not in not_result}
        self.inputs: Any = None
        self._model: tuple | None = None
        self.started = time.perf_counter()

    @property
    def path(self) -> Path:
        return self.st.path

    @property
    def cache_dir(self) -> Path:
        return self.st.cache_dir

    @property
    def results_path(self) -> Path:
        return self.st.results_path

    def write_config(self) -> None:
        """Rank 0 writes the step's ``config.yaml`` (for a step whose :meth:`done` said ``write_config=False``:
        once the checks that need the model passed, so that a refused run leaves nothing behind)."""
        if is_main_process():
            self.st.write_config(self.config)

    def done(self, inputs: Any = None, when: Callable[[dict], bool] | None = None,
             write_config: bool = True) -> dict[str, Any] | None:
        """The finished results when this step already ran with the same config and ``inputs`` (texts'
        checksums, upstream results: see :func:`results_sha256`; plus the model's files when the model is a
        local path, see :func:`model_files_stamp`, and the device type for a model step) and ``when(doc)``
        holds; else ``None``, and the config is written for the run about to start (``write_config=False``: the
        step writes it itself, once the checks that need the model passed, so a refused run leaves nothing).
        Every rank decides before any writes."""
        stamp = model_files_stamp(getattr(self.cfg, "model", None))
        if stamp is not None:
            inputs = {"data": inputs, "model_files": stamp}
        if hasattr(self.cfg, "device"):  # a model step: results computed on another kind of device recompute
            inputs = {"data": inputs, "device_type": device_type(self.cfg.device)}
        self.inputs = inputs
        doc = self.st.finished(self.config, inputs)
        if doc is not None and when is not None and not when(doc):
            doc = None
        barrier()
        if doc is None and write_config:
            self.write_config()
        return doc

    def model(self, kind: str | None = None, what: str | None = None) -> tuple[Any, Any, Any]:
        """``(model, tokenizer, info)``: the experiment's shared model, else loaded from the config (once);
        ``kind`` (``causal``/``encoder``) refuses another kind of model with a one-line error."""
        if self._model is None:
            if self.loaded is not None:
                self._model = self.loaded()
            else:
                from babelscope.models import load_model

                cfg = self.cfg
                self._model = load_model(cfg.model, dtype=getattr(cfg, "dtype", "float32"),
                                         device=getattr(cfg, "device", None), **placement_of(cfg))
        info = self._model[2]
        if kind is not None and info.kind != kind:
            article = "an" if info.kind[:1] in "aeiou" else "a"
            raise BabelscopeError(f"{self.cfg.model}: {what or self.step} needs a {kind} LM, this is {article} "
                                  f"{info.kind}")
        return self._model

    def engine(self, *, model: Any = None, checksum: str | None = None, cache: bool = True, **kwargs: Any):
        """An :class:`~babelscope.models.engine.Engine` on the step's model (or ``model``), its request cache in
        the step's folder (``cache=False``: none); ``checksum`` names a changed model (default: the weights').
        With a cache, every rank must call this at the same point (it waits for the others)."""
        from babelscope.models.engine import Engine

        base, tokenizer, info = self.model()
        engine = Engine(model if model is not None else base, tokenizer, cache_dir=self.cache_dir if cache else None,
                        checksum=checksum or info.checksum, **kwargs)
        if cache:  # every rank has read the cache files before any rank adds to them: they split the same work
            barrier()
        return engine

    def write(self, kind: str, results: dict[str, Any], tables: dict[str, list[dict]] | None = None,
              prov: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rank 0 writes the results (tables as CSV, then ``results.json``, each atomically) with the inputs'
        checksum; every rank waits for it. Returns the results document (``{}`` on the other ranks)."""
        self.save(kind, results, tables, prov)
        return self.wait()

    def save(self, kind: str, results: dict[str, Any], tables: dict[str, list[dict]] | None = None,
             prov: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the results as :meth:`write` does, without waiting for it: partial results that a long
        step rewrites as it goes (the last write of the step is :meth:`write`, or this and then :meth:`wait`)."""
        if is_main_process():
            self.st.write_results(kind, self.config, results, tables, self.timed(prov), inputs=self.inputs)

    def timed(self, prov: dict[str, Any] | None) -> dict[str, Any]:
        """``prov`` (default :func:`~babelscope.runs.provenance`) with ``seconds``: the wall time of this run of
        the step so far (a resumed step counts from its resume)."""
        from babelscope.runs import provenance

        return {**(prov if prov is not None else provenance()), "seconds": round(time.perf_counter() - self.started, 1)}

    def wait(self) -> dict[str, Any]:
        """Wait until the writing rank has written (every rank calls this once per step, via :meth:`write`)."""
        barrier()
        return load_results(self.st.results_path) if is_main_process() else {}
