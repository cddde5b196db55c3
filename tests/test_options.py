"""Command-line options come from the steps' config dataclasses (babelscope.options.step_command): every command
accepts exactly its config's fields, with the config's defaults and help, so the command line and an experiment
file (``babelscope run X.yaml``) cannot drift apart."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from babelscope import registry
from babelscope.cli import app
from babelscope.options import cli_fields, field_help, opt, step_command

#: experiment commands that have no command of their own on the command line
EXPERIMENT_ONLY = {"regions"}  # the whole regions study; its four steps are `babelscope regions ...`
HAND_BUILT = {"compare"}  # takes several run folders as arguments: its own command, its config built from them


def _commands(group=None, path=()):
    """``(path, click command)`` of every leaf command of the ``babelscope`` app."""
    group = group or typer.main.get_command(app)
    for name, sub in group.commands.items():
        if hasattr(sub, "commands"):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


STEP_COMMANDS = {path: cmd for path, cmd in _commands() if hasattr(cmd.callback, "config")}


def _words(text: str) -> str:
    """Help output without the boxes and line breaks of rich's layout."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_experiment_command_has_a_cli_command_built_from_its_config():
    by_config = {cmd.callback.config: path for path, cmd in STEP_COMMANDS.items()}
    missing = []
    for name in registry.all_commands():
        cls, _ = registry.command(name)
        if name not in EXPERIMENT_ONLY | HAND_BUILT and cls not in by_config:
            missing.append(name)
    assert not missing, f"experiment commands without a command built from their config: {missing}"
    assert len(STEP_COMMANDS) == len(registry.all_commands()) - len(EXPERIMENT_ONLY | HAND_BUILT)
    # every command that writes results is built from its config (none declares its options by hand)
    others = {" ".join(path) for path, _ in _commands()} - {" ".join(p) for p in STEP_COMMANDS}
    # print only, no results; report and export read finished results (no step, no config)
    assert others == {"langs", "report", "run", "model info", "model plan", "export lm-eval", "export eee", "compare"}


@pytest.mark.parametrize("path", sorted(STEP_COMMANDS), ids=" ".join)
def test_cli_options_equal_the_config_fields(path):
    cmd = STEP_COMMANDS[path]
    cls = cmd.callback.config
    params = {p.name: p for p in cmd.params}
    fields = {f.name: f for f in cli_fields(cls)}
    extra = {"run_dir", "step"} | ({"model"} if "model" not in {f.name for f in dataclasses.fields(cls)}
                                    and params["run_dir"].default is None else set())
    assert set(params) == set(fields) | extra
    for name, f in fields.items():
        p, (flags, text) = params[name], field_help(f)
        assert text, f"{cls.__name__}.{name} has no help text: give it one with opt(default, help)"
        assert p.help == text
        if p.required:  # required on the command line (transfer vocab --lang/--train), checked by the step
            assert f.default == "", name
        else:
            assert p.default == f.default, name
        if p.param_type_name == "option":
            assert p.opts == list(flags or ["--" + name.replace("_", "-")])
            if isinstance(f.default, bool):
                assert p.secondary_opts == ["--no-" + name.replace("_", "-")]
    # a field kept off the command line (cli=False) is one the step ignores (syntax steps' model)
    for f in dataclasses.fields(cls):
        if f.name not in fields:
            assert f.name == "model" and f.default == "", (cls.__name__, f.name)


def test_help_shows_the_fields_help_and_default():
    from babelscope.regions.configs import ImportanceConfig

    field = {f.name: f for f in dataclasses.fields(ImportanceConfig)}["max_tokens"]
    out = CliRunner().invoke(app, ["regions", "importance", "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = _words(out.output)
    assert "--max-tokens" in text and field.metadata["help"] in text and "[default: 2048]" in text
    assert "--no-skip-zeros" in _words(CliRunner().invoke(app, ["regions", "select", "--help"]).output)


@dataclass
class ToyConfig:
    model: str = "gemma-3-270m"
    name: str = opt("", "A required name.")
    count: int = opt(3, "How many.")
    flag: bool = opt(True, "A switch.")
    scale: float | None = opt(None, "An optional number.", "--S")
    hidden: str = opt("x", "Only in experiment files.", cli=False)


def test_step_command_builds_the_config_and_runs_the_step(tmp_path, monkeypatch):
    seen = []
    module = types.ModuleType("toy_steps")
    module.run = lambda cfg, run_dir, step: seen.append((cfg, run_dir, step)) or {"results": {"ok": 1}}
    monkeypatch.setitem(sys.modules, "toy_steps", module)
    shown = []
    toy = typer.Typer()
    step_command(toy, "go", ToyConfig, "toy_steps:run", help="A toy step.", step=lambda cfg: f"toy-{cfg.name}",
                 required=("name",), show=lambda doc, cfg, path: shown.append((doc, path)))
    toy.command("other")(lambda: None)  # two commands: Typer then keeps the command name
    runner = CliRunner()
    out = runner.invoke(toy, ["go", "--name", "a", "--count", "5", "--no-flag", "--S", "0.5", "-m", "x/tiny.gguf"])
    assert out.exit_code == 0, out.output
    cfg, run_dir, step = seen[-1]
    assert cfg == ToyConfig(model="x/tiny.gguf", name="a", count=5, flag=False, scale=0.5)
    assert run_dir == Path("runs/tiny") and step == "toy-a"
    assert shown[-1] == ({"results": {"ok": 1}}, Path("runs/tiny/toy-a/results.json"))
    out = runner.invoke(toy, ["go", "--name", "b", "--run-dir", str(tmp_path), "--step", "mine"])
    assert out.exit_code == 0 and seen[-1][0] == ToyConfig(name="b") and seen[-1][1:] == (tmp_path, "mine")
    out = runner.invoke(toy, ["go"])
    assert out.exit_code == 2 and "--name" in out.output  # required on the command line
    out = runner.invoke(toy, ["go", "--name", "a", "--hidden", "y"])
    assert out.exit_code == 2 and len(seen) == 2  # a cli=False field is not an option


def test_building_the_command_line_stays_import_light():
    """The command line imports every config to build its options: none of them may pull in torch or numpy."""
    code = ("import sys, typer, babelscope.cli as c; typer.main.get_command(c.app); "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
