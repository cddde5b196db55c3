"""Config fields: a step's config dataclass declares each option here, with no command-line library imported.

:func:`opt` gives a field its help text, its flags, and its constraints: ``minimum`` (counts: 1, or 0 where 0
means "none"), ``may_be_empty`` (a language list where "" means "none besides"), ``choices`` (the values allowed).
:func:`count` is :func:`opt` with ``minimum=1``, :func:`languages` with ``may_be_empty=False``.
:func:`babelscope.steps.check_config` checks them before anything is read or loaded, and
:func:`babelscope.options.step_command` turns the same fields into command-line options::

    @dataclass
    class ExampleConfig:
        langs: str = languages("eng,fra", "Languages, comma-separated.")                  # not empty
        window: int = count(512, "Tokens per window.")                                    # 1 or more
        draws: int = count(1000, "Random neuron sets drawn for the baselines.", minimum=0)  # 0 = no control

A field checks what it declares and nothing else: its name gives it no constraint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: the options every model step shares: flags and help, used where a config field gives no help of its own
COMMON = {
    "model": (("--model", "-m"), "Model spec: gemma-3-270m, a directory, a .gguf or a hub id."),
    "dtype": ((), "float32, bfloat16 or float16."),
    "device": ((), "cpu, cuda, cuda:1 ... (default: where it loads)."),
    "device_map": ((), "Spread the model block by block over the GPUs, the CPU and the disk (Accelerate's big-model "
                       "inference): auto, balanced or sequential; replaces --device."),
    "max_memory": ((), "Cap per device for --device-map, e.g. 0=20GiB,1=20GiB,cpu=60GiB (GPU numbers within this "
                       "process's GPUs); what does not fit goes to --offload-dir."),
    "offload_dir": ((), "Folder for the weights that do not fit --max-memory (disk offload; one subfolder per "
                        "process)."),
}
#: the config fields of a forward-only command that may spread its model over devices (``--device-map``)
PLACEMENT_FIELDS = ("device_map", "max_memory", "offload_dir")


def opt(default: Any, help: str, *flags: str, cli: bool = True, minimum: float | None = None,
        may_be_empty: bool = True, choices: tuple[Any, ...] | None = None) -> Any:
    """A config field with its command-line help; ``flags`` replace ``--field-name`` (``"--C"``), ``cli=False``
    keeps a field that only experiment files set off the command line; ``minimum`` (``None``: no minimum),
    ``may_be_empty`` (``False``: a language list that must name one) and ``choices`` (``None``: any value) are
    checked by :func:`babelscope.steps.check_config`."""
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, "cli": cli,
                                                        "minimum": minimum, "may_be_empty": may_be_empty,
                                                        "choices": choices})


def count(default: Any, help: str, *flags: str, minimum: float = 1, **kwargs: Any) -> Any:
    """A count of things (tokens, units, items, batches, permutations): :func:`opt` with ``minimum=1``, or the
    ``minimum`` given (0 where 0 means "none": zero-shot prompts, no retries, no random control)."""
    return opt(default, help, *flags, minimum=minimum, **kwargs)


def languages(default: Any, help: str, *flags: str, **kwargs: Any) -> Any:
    """A language list (``eng,fra`` or ``all``): :func:`opt` with ``may_be_empty=False``."""
    return opt(default, help, *flags, may_be_empty=False, **kwargs)


def variant(owner: type, name: str, help: str | None = None, default: Any = dataclasses.MISSING) -> Any:
    """The field ``name`` of the dataclass ``owner`` (a block of options that several configs include), with
    its flags and constraints, and this config's own ``help`` text or ``default``."""
    f = owner.__dataclass_fields__[name]
    meta = f.metadata
    return opt(f.default if default is dataclasses.MISSING else default, meta["help"] if help is None else help,
               *meta["flags"], cli=meta["cli"], minimum=meta["minimum"], may_be_empty=meta["may_be_empty"],
               choices=meta["choices"])


@dataclass(frozen=True)
class Limits:
    """What :func:`babelscope.steps.check_config` allows in one field."""

    minimum: float | None  # None: no minimum
    may_be_empty: bool  # False: a language list that must name one
    choices: tuple[Any, ...] | None


def limits(f: dataclasses.Field) -> Limits:
    """A field's constraints, as it declares them through :func:`opt` (a plain dataclass field has none)."""
    meta = f.metadata
    return Limits(meta.get("minimum"), meta.get("may_be_empty", True), meta.get("choices"))


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def field_help(f: dataclasses.Field) -> tuple[tuple[str, ...], str]:
    """``(flags, help)`` of a config field: its own (:func:`opt`), else the shared one of model/dtype/device."""
    flags, shared = COMMON.get(f.name, ((), ""))
    return tuple(f.metadata.get("flags") or flags), f.metadata.get("help", shared)
