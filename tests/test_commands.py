"""The command table: every experiment command is a Command object (name, config class, step function) that
the command line mounts too, and the older "module:ConfigClass:function" strings still read as the same command."""

from __future__ import annotations

import dataclasses

import pytest

from babelscope import registry
from babelscope.commands import Command, StepFunction, command_table


def test_every_command_is_an_object_whose_step_loads():
    commands = registry.all_commands()
    assert {"ppl", "tokens", "regions-importance", "syntax-extract", "transfer-pretrain", "lens-translate"} <= set(
        commands)
    for name, cmd in commands.items():
        assert isinstance(cmd, Command) and cmd.name == name
        assert dataclasses.is_dataclass(cmd.config)
        assert callable(cmd.run.load()), name
        cls, fn = registry.command(name, commands)
        assert cls is cmd.config and fn is cmd.run.load()


def test_the_older_string_form_reads_as_the_same_command():
    old = Command.parse("regions-importance", "babelscope.regions.steps:ImportanceConfig:run_importance")
    assert old == registry.all_commands()["regions-importance"]
    assert StepFunction.parse("babelscope.syntax.steps:run_otdd") == StepFunction("babelscope.syntax.steps",
                                                                                   "run_otdd")
    with pytest.raises(ValueError, match="twice"):
        command_table(registry.PPL, registry.PPL)
