"""Which commands an experiment file may use: one table of :class:`~babelscope.commands.Command` objects.

The built-in table below (``ppl``, ``tokens``, ``steer``, ``locate``, ``compare``) plus each capability's
``EXPERIMENT_COMMANDS`` (in ``babelscope.<package>.cli``, the same objects its command line mounts), so that
:mod:`babelscope.experiment` finds every step without importing the command line (``babelscope.cli``).
"""

from __future__ import annotations

import importlib
import importlib.util

from babelscope.commands import GENERIC_SECTION, Command, Results, StepFunction, command_table
from babelscope.compare import CompareConfig
from babelscope.errors import BabelscopeError
from babelscope.evaluate.perplexity import PplConfig
from babelscope.evaluate.tokens import TokensConfig
from babelscope.locate import LocateConfig
from babelscope.steer.configs import SteerConfig

PPL = Command("ppl", PplConfig, StepFunction("babelscope.evaluate.steps", "run_ppl"),
              (Results("perplexity", "perplexity:perplexity_section"),))
TOKENS = Command("tokens", TokensConfig, StepFunction("babelscope.evaluate.tokens"),
                 (Results("tokens", "tokens:tokens_section"),))
STEER = Command("steer", SteerConfig, StepFunction("babelscope.steer.steps"),
                (Results("steer", "steer:steer_section"),))
LOCATE = Command("locate", LocateConfig, StepFunction("babelscope.locate"),
                 (Results("locate", "locate:locate_section"),))
COMPARE = Command("compare", CompareConfig, StepFunction("babelscope.compare"),
                  (Results("compare", GENERIC_SECTION),))  # its tables are the view
#: the built-in commands (mounted at the top of the command line; compare has its own, for several run folders)
COMMANDS: dict[str, Command] = command_table(PPL, TOKENS, STEER, LOCATE, COMPARE)

#: Capability packages whose ``cli.py`` holds a Typer ``app`` (mounted under the second name) and
#: ``EXPERIMENT_COMMANDS``.
CAPABILITIES = {
    "regions": "regions",
    "evaluate": "eval",
    "syntax": "syntax",
    "transfer": "transfer",
    "neurons": "neurons",
    "lens": "lens",
    "export": "export",
}


def all_commands() -> dict[str, Command]:
    """The built-in commands plus each installed capability's ``EXPERIMENT_COMMANDS`` (a value in the older
    ``"module:ConfigClass:function"`` form is read as a :class:`Command` too)."""
    commands = dict(COMMANDS)
    for package in CAPABILITIES:
        module = f"babelscope.{package}.cli"
        if importlib.util.find_spec(f"babelscope.{package}") and importlib.util.find_spec(module):
            for name, cmd in getattr(importlib.import_module(module), "EXPERIMENT_COMMANDS", {}).items():
                commands[name] = cmd if isinstance(cmd, Command) else Command.parse(name, cmd)
    return commands


def find(name: str, commands: dict[str, Command] | None = None) -> Command:
    """The experiment command ``name``; a one-line error naming the known ones."""
    commands = commands or all_commands()
    try:
        return commands[name]
    except KeyError:
        raise BabelscopeError(f"unknown command {name!r}; use one of {', '.join(sorted(commands))}") from None


def command(name: str, commands: dict[str, Command] | None = None) -> tuple[type, object]:
    """``(ConfigClass, run function)`` of an experiment command; a one-line error naming the known ones."""
    cmd = find(name, commands)
    return cmd.config, cmd.run.load()
