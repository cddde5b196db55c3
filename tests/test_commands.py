"""The command table: every experiment command is a Command object (name, config class, step function, the
results it writes with their report sections) that the command line mounts and the report reads, and the older
"module:ConfigClass:function" strings still read as the same command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from babelscope import registry
from babelscope.commands import GENERIC_SECTION, Command, Results, StepFunction, command_table


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
        assert cmd.check is None or callable(cmd.check.load()), name
    # the steps with checks that need no model name them in the table (what the planner calls)
    assert {name for name, cmd in commands.items() if cmd.check} == {
        "regions-importance", "regions-ablate", "neurons", "neurons-overlap", "transfer-vocab", "transfer-pretrain",
        "transfer-sft"}


def test_the_older_string_form_reads_as_the_same_command():
    old = Command.parse("regions-importance", "babelscope.regions.steps:ImportanceConfig:run_importance")
    new = registry.all_commands()["regions-importance"]
    assert (old.name, old.config, old.run) == (new.name, new.config, new.run)
    assert old.results == () and new.kinds == ("regions-importance",)  # the string form names no report section
    assert StepFunction.parse("babelscope.syntax.steps:run_otdd") == StepFunction("babelscope.syntax.steps",
                                                                                   "run_otdd")
    with pytest.raises(ValueError, match="twice"):
        command_table(registry.PPL, registry.PPL)


#: commands whose results the report draws with the generic view (summary and every table), on purpose
GENERIC = {"compare"}


def test_every_command_names_its_results_and_their_report_section():
    from babelscope.report import base
    from babelscope.report.sections._generic import generic_section

    commands = registry.all_commands()
    sections: dict[str, str] = {}
    for name, cmd in commands.items():
        assert cmd.results and all(isinstance(r, Results) for r in cmd.results), f"{name} names no results kind"
        for res in cmd.results:
            assert sections.setdefault(res.kind, res.section) == res.section, f"{res.kind}: two sections"
            assert (res.section == GENERIC_SECTION) == (name in GENERIC), (name, res.section)
            fn = res.load_section()
            assert callable(fn) and fn.__module__ == res.module, res.section
            want = generic_section if res.section == GENERIC_SECTION else fn
            assert base.section_for(res.kind) is want, res.kind
    assert commands["regions"].kinds == ("regions-importance", "regions-select", "regions-ablation", "regions-scan")
    assert sections["perplexity"] == "perplexity:perplexity_section"
    assert sections["transfer_table"] == "transfer_sft:table_section"
    # every section function in the package is named by the table (none is left unreachable)
    import importlib
    import pkgutil

    from babelscope.report import sections as package

    named = {(r.module, r.section.partition(":")[2]) for c in commands.values() for r in c.results}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr, value in vars(module).items():
            if attr.endswith("_section") and callable(value) and value.__module__ == module.__name__ \
                    and not info.name.startswith("_"):
                assert (module.__name__, attr) in named, f"{module.__name__}.{attr} is in no command's results"


def test_reading_the_table_loads_no_torch_and_no_matplotlib():
    code = ("import sys; from babelscope.registry import all_commands; "
            "c = all_commands(); assert all(cmd.results for cmd in c.values()); "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_registered_section_serves_a_kind_outside_the_table(tmp_path):
    from babelscope.report import register_section, section_for
    from babelscope.report.base import _SECTIONS

    @register_section("test-outside-table")
    def outside(doc):
        raise NotImplementedError

    try:
        assert section_for("test-outside-table") is outside
        assert section_for("perplexity").__name__ == "perplexity_section"
    finally:
        _SECTIONS.pop("test-outside-table", None)
