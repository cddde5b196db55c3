"""Experiments: a YAML list of steps (each a command with its options) run into one run directory.

Example (``examples/demo.yaml``)::

    run_dir: runs/demo
    defaults: {model: gemma-3-270m}      # merged into every step's options
    steps:
      - command: ppl                     # the CLI command of the same name
        step: ppl                        # folder inside the run directory (default: the command)
        corpus: udhr-sample
        langs: all

Finished steps (results written with the same config) are skipped, so re-running resumes; a model is loaded
once and shared by the steps that use it; the report is rendered at the end.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import yaml

from babelscope.errors import BabelscopeError

#: command name -> "module:ConfigClass:run function"; later capabilities add their commands here.
COMMANDS: dict[str, str] = {
    "ppl": "babelscope.evaluate.perplexity:PplConfig:run",
    "tokens": "babelscope.evaluate.tokens:TokensConfig:run",
}


def all_commands() -> dict[str, str]:
    """The built-in commands plus each capability's ``EXPERIMENT_COMMANDS`` (from ``babelscope.<cap>.cli``)."""
    import importlib.util

    from babelscope.cli import CAPABILITIES

    commands = dict(COMMANDS)
    for package in CAPABILITIES:
        module = f"babelscope.{package}.cli"
        if importlib.util.find_spec(f"babelscope.{package}") and importlib.util.find_spec(module):
            commands.update(getattr(importlib.import_module(module), "EXPERIMENT_COMMANDS", {}))
    return commands


def _command(name: str):
    commands = all_commands()
    try:
        module, cfg_cls, fn = commands[name].split(":")
    except KeyError:
        raise BabelscopeError(f"unknown command {name!r} in experiment; use one of {', '.join(commands)}") from None
    mod = importlib.import_module(module)
    return getattr(mod, cfg_cls), getattr(mod, fn)


def load_experiment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise BabelscopeError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise BabelscopeError(f"{path}: an experiment needs a non-empty 'steps' list")
    return doc


def run_file(path: str | Path, run_dir: str | Path | None = None) -> Path:
    """Run every step of the experiment file; return the rendered report's path."""
    from babelscope.report import render_report

    doc = load_experiment(path)
    out = Path(run_dir or doc.get("run_dir") or Path("runs") / Path(path).stem)
    defaults = doc.get("defaults") or {}
    models: dict[tuple, Any] = {}
    for i, raw in enumerate(doc["steps"], 1):
        if not isinstance(raw, dict) or "command" not in raw:
            raise BabelscopeError(f"{path}: step {i} needs a 'command' (one of {', '.join(all_commands())})")
        options = dict(raw)
        name = options.pop("command")
        step = options.pop("step", name)
        cfg_cls, fn = _command(name)
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        # defaults apply to the steps that have such an option (a model-free analysis step ignores `model`)
        options = {**{k: v for k, v in defaults.items() if k in fields}, **options}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise BabelscopeError(f"{path}: step {i} ({name}): unknown option(s) {unknown}; known: {sorted(fields)}")
        cfg = cfg_cls(**{k: v for k, v in options.items() if k in fields})
        key = (getattr(cfg, "model", None), getattr(cfg, "dtype", "float32"), getattr(cfg, "device", None))

        def loaded(key=key):  # lazy: a finished step never loads its model
            if key not in models:
                from babelscope.models import load_model

                models[key] = load_model(key[0], dtype=key[1], device=key[2])
            return models[key]

        print(f"[{i}/{len(doc['steps'])}] {name} -> {out / step}", flush=True)
        fn(cfg, out, step=step, loaded=loaded)
    return render_report(out)
