"""Experiments: a YAML list of steps (each a command with its options) run into one run directory.

Example (``examples/demo.yaml``)::

    run_dir: runs/demo
    defaults: {model: gemma-3-270m}      # merged into every step's options
    steps:
      - command: ppl                     # the CLI command of the same name
        step: ppl                        # folder inside the run directory (default: the command)
        corpus: udhr-sample
        langs: all

The whole file is checked before any step runs (unknown commands, options or ``defaults:`` keys, values of the
wrong type, repeated step names: one line naming the file and step). Finished steps (results written with the
same config from the same inputs) are skipped, so re-running resumes; a model is loaded once and shared by the
steps that use it; the report is rendered at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from babelscope.errors import BabelscopeError
from babelscope.registry import COMMANDS, all_commands, command  # noqa: F401  (COMMANDS: the built-in table)

#: the keys an experiment file may have at its top level
KEYS = ("run_dir", "defaults", "steps", "description")


@dataclasses.dataclass
class PlannedStep:
    """One checked step of an experiment: its command, folder and config."""

    index: int
    command: str
    step: str
    cfg: Any
    fn: Any


def load_experiment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such experiment file") from None
    except UnicodeDecodeError as exc:
        raise BabelscopeError(f"{path}: not UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise BabelscopeError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise BabelscopeError(f"{path}: an experiment needs a non-empty 'steps' list")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise BabelscopeError(f"{path}: unknown key(s) {unknown} at the top level; known: {', '.join(KEYS)}")
    if not isinstance(doc.get("defaults") or {}, dict):
        raise BabelscopeError(f"{path}: 'defaults' must be a mapping of option: value")
    return doc


def plan(path: str | Path, doc: dict[str, Any] | None = None) -> list[PlannedStep]:
    """Every step of the experiment checked and configured, before anything runs or is written."""
    from babelscope.runs import check_step_name
    from babelscope.steps import check_config

    doc = doc or load_experiment(path)
    defaults = doc.get("defaults") or {}
    commands = all_commands()
    steps: list[PlannedStep] = []
    seen: dict[str, int] = {}
    used_defaults: set[str] = set()
    for i, raw in enumerate(doc["steps"], 1):
        if not isinstance(raw, dict) or "command" not in raw:
            raise BabelscopeError(f"{path}: step {i} needs a 'command' (one of {', '.join(sorted(commands))})")
        options = dict(raw)
        name = options.pop("command")
        step = options.pop("step", name)
        where = f"{path}: step {i} ({name})"
        try:
            cfg_cls, fn = command(name, commands)
            check_step_name(step)
        except BabelscopeError as exc:
            raise BabelscopeError(f"{where}: {exc}") from None
        if step in seen:
            raise BabelscopeError(f"{where}: step name {step!r} is also step {seen[step]}'s; give each step its "
                                  "own 'step:' folder")
        seen[step] = i
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        # defaults apply to the steps that have such an option (a model-free analysis step ignores `model`)
        used_defaults |= fields & set(defaults)
        options = {**{k: v for k, v in defaults.items() if k in fields}, **options}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise BabelscopeError(f"{where}: unknown option(s) {unknown}; known: {sorted(fields)}")
        try:
            cfg = check_config(cfg_cls(**options))
        except BabelscopeError as exc:
            raise BabelscopeError(f"{where}: {exc}") from None
        steps.append(PlannedStep(i, name, step, cfg, fn))
    unused = sorted(set(defaults) - used_defaults)
    if unused:
        raise BabelscopeError(f"{path}: defaults {unused} are an option of no step; check the spelling")
    return steps


def run_file(path: str | Path, run_dir: str | Path | None = None) -> Path:
    """Run every step of the experiment file; return the rendered report's path."""
    from babelscope.report import render_report
    from babelscope.runs import barrier, check_run_dir, is_main_process

    doc = load_experiment(path)
    steps = plan(path, doc)
    out = check_run_dir(Path(run_dir or doc.get("run_dir") or Path("runs") / Path(path).stem))
    models: dict[tuple, Any] = {}
    for planned in steps:
        cfg = planned.cfg
        key = (getattr(cfg, "model", None), getattr(cfg, "dtype", "float32"), getattr(cfg, "device", None))

        def loaded(key=key):  # lazy: a finished step never loads its model
            if key not in models:
                from babelscope.models import load_model

                models[key] = load_model(key[0], dtype=key[1], device=key[2])
            return models[key]

        if is_main_process():
            print(f"[{planned.index}/{len(steps)}] {planned.command} -> {out / planned.step}", flush=True)
        planned.fn(cfg, out, step=planned.step, loaded=loaded)
    report = out / "report.html"
    if is_main_process():
        report = render_report(out)
    barrier()
    return report
