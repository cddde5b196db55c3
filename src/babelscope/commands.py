"""Commands as objects: a step's name, its config class, its run function and the results it writes with the
report section that draws them, in one table that the command line (:func:`babelscope.options.step_command`),
experiment files (:mod:`babelscope.experiment`, through :mod:`babelscope.registry`), the report
(:func:`babelscope.report.base.section_for`) and the tools that describe the code read.

A run function and a section are named by their module and imported when first needed, so reading the table loads
no torch and no matplotlib::

    IMPORTANCE = Command("regions-importance", ImportanceConfig,
                         StepFunction("babelscope.regions.steps", "run_importance"),
                         (Results("regions-importance", "regions:importance_section"),))
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
        step it names."""
        fn = getattr(importlib.import_module(self.module), self.name)
        return fn.load() if isinstance(fn, StepFunction) else fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    @classmethod
    def parse(cls, spec: str) -> StepFunction:
        """From the older ``"module:function"`` form."""
        module, _, name = spec.partition(":")
        return cls(module, name or "run")


#: the report's section for results that have no view of their own: the summary and every table
GENERIC_SECTION = "_generic:generic_section"
#: the package of the built-in report sections (a section named without a dotted module is one of its modules)
SECTIONS = "babelscope.report.sections"


@dataclass(frozen=True)
class Results:
    """A results ``kind`` a command writes (``results.json``'s ``kind``) and the report section that draws it:
    ``"module:function"`` of a ``(doc) -> Section`` function, imported when the report needs it; a module without
    a dot is one of :data:`SECTIONS` (``"regions:importance_section"``), :data:`GENERIC_SECTION` is the generic
    view, chosen on purpose."""

    kind: str
    section: str

    @property
    def module(self) -> str:
        """The section's module, in full."""
        module = self.section.partition(":")[0]
        return module if "." in module else f"{SECTIONS}.{module}"

    def load_section(self) -> Callable[..., Any]:
        """The section function (imports its module)."""
        return getattr(importlib.import_module(self.module), self.section.partition(":")[2])


@dataclass(frozen=True)
class Command:
    """One command: ``name`` (what an experiment file's ``command:`` says), the config dataclass whose fields are
    its options, the step function that runs it, the results it writes (each with its report section) and its
    ``check``: ``check(cfg, run_dir, earlier_commands)``, the checks that need no model (budgets, masks, lengths),
    which ``babelscope run`` calls for every step while it plans, before step 1 runs."""

    name: str
    config: type
    run: StepFunction
    results: tuple[Results, ...] = ()
    check: StepFunction | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The results kinds the command writes."""
        return tuple(r.kind for r in self.results)

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
