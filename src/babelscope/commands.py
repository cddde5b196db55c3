"""Commands as objects: a step's name, its config class and its run function, in one table that the command
line (:func:`babelscope.options.step_command`), experiment files (:mod:`babelscope.experiment`, through
:mod:`babelscope.registry`) and the tools that describe the code read.

A run function is named by its module and imported when first called, so reading the table loads no torch::

    IMPORTANCE = Command("regions-importance", ImportanceConfig, StepFunction("babelscope.regions.steps",
                                                                              "run_importance"))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepFunction:
    """A step's ``run(cfg, run_dir, step=..., loaded=None)``, imported from ``module`` when first needed."""

    module: str
    name: str = "run"

    def load(self) -> Callable[..., Any]:
        """The function; an older name that is itself a ``StepFunction`` (``importance.run``) is followed to the
        step it names, so the planner finds the ``plan_check`` beside it."""
        fn = getattr(importlib.import_module(self.module), self.name)
        return fn.load() if isinstance(fn, StepFunction) else fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    @classmethod
    def parse(cls, spec: str) -> StepFunction:
        """From the older ``"module:function"`` form."""
        module, _, name = spec.partition(":")
        return cls(module, name or "run")


@dataclass(frozen=True)
class Command:
    """One command: ``name`` (what an experiment file's ``command:`` says), the config dataclass whose fields are
    its options, and the step function that runs it."""

    name: str
    config: type
    run: StepFunction

    @classmethod
    def parse(cls, name: str, spec: str) -> Command:
        """From the older ``"module:ConfigClass:function"`` form (the config class is imported here)."""
        module, config, function = spec.split(":")
        return cls(name, getattr(importlib.import_module(module), config), StepFunction(module, function))


def command_table(*commands: Command) -> dict[str, Command]:
    """``{name: command}``; a repeated name is a mistake in the table."""
    out: dict[str, Command] = {}
    for cmd in commands:
        if cmd.name in out:
            raise ValueError(f"command {cmd.name!r} twice in one table")
        out[cmd.name] = cmd
    return out
