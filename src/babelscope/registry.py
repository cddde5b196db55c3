"""Which commands an experiment file may use: ``name -> "module:ConfigClass:run function"``.

The built-in table below plus each capability's ``EXPERIMENT_COMMANDS`` (in ``babelscope.<package>.cli``), so that
:mod:`babelscope.experiment` finds every step without importing the command line (``babelscope.cli``).
"""

from __future__ import annotations

import importlib
import importlib.util

from babelscope.errors import BabelscopeError

#: command name -> "module:ConfigClass:run"
COMMANDS: dict[str, str] = {
    "ppl": "babelscope.evaluate.perplexity:PplConfig:run",
    "tokens": "babelscope.evaluate.tokens:TokensConfig:run",
}

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


def all_commands() -> dict[str, str]:
    """The built-in commands plus each installed capability's ``EXPERIMENT_COMMANDS``."""
    commands = dict(COMMANDS)
    for package in CAPABILITIES:
        module = f"babelscope.{package}.cli"
        if importlib.util.find_spec(f"babelscope.{package}") and importlib.util.find_spec(module):
            commands.update(getattr(importlib.import_module(module), "EXPERIMENT_COMMANDS", {}))
    return commands


def command(name: str, commands: dict[str, str] | None = None) -> tuple[type, object]:
    """``(ConfigClass, run function)`` of an experiment command; a one-line error naming the known ones."""
    commands = commands or all_commands()
    try:
        module, cfg_cls, fn = commands[name].split(":")
    except KeyError:
        raise BabelscopeError(f"unknown command {name!r}; use one of {', '.join(sorted(commands))}") from None
    mod = importlib.import_module(module)
    return getattr(mod, cfg_cls), getattr(mod, fn)
