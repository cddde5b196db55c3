"""Experiments: a YAML list of steps (each a command with its options) run into one run directory.

Example (``examples/demo.yaml``)::

    run_dir: runs/demo
    defaults: {model: gemma-3-270m}      # merged into every step's options
    steps:
      - command: ppl                     # the CLI command of the same name
        step: ppl                        # folder inside the run directory (default: the command)
        corpus: udhr-sample
        langs: all

A string value may say ``{run_dir}``: it stands for the run directory of this run (the file's ``run_dir``, or
``babelscope run FILE --run-dir X``), so a step that reads what an earlier step wrote names it independently of
where the run goes (``model: "{run_dir}/sft/model"``, ``instructions: "{run_dir}/sft/heldout.jsonl"``). Options
that name another step (``responses: respond``, ``store: syntax-extract``) need no prefix: they are read from the
run directory already.

The whole file is checked before any step runs (unknown commands, options or ``defaults:`` keys, values of the
wrong type, repeated step names: one line naming the file and step), and so is every step's own check
(its command's ``check(cfg, run_dir, earlier_commands)`` in the command table: the checks that need no model,
such as budgets, mask files and sequence lengths against the model's config.json). Finished steps
(results written with the same config from the same inputs) are skipped, so re-running resumes; a model is
loaded once and shared by the steps that use it; the report is rendered at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from babelscope.errors import BabelscopeError
from babelscope.registry import COMMANDS, all_commands, find  # noqa: F401  (COMMANDS: the built-in table)

#: the keys an experiment file may have at its top level
KEYS = ("run_dir", "defaults", "steps", "description")
#: stands for the run directory in any string value of a step or of ``defaults:``
RUN_DIR = "{run_dir}"


@dataclasses.dataclass
class PlannedStep:
    """One checked step of an experiment: its command, folder and config."""

    index: int
    command: str
    step: str
    cfg: Any
    fn: Any


class _Loader(yaml.SafeLoader):
    """YAML whose mapping keys stay the words written: YAML 1.1 reads ``off:``, ``on:``, ``yes:`` and ``no:``
    keys as booleans, and ``off`` is an option (`neurons deactivate --off`). Values keep YAML's types."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:bool":
                    key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


def load_experiment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such experiment file") from None
    except UnicodeDecodeError as exc:
        raise BabelscopeError(f"{path}: not UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        line = path.read_text(encoding="utf-8-sig").splitlines()[mark.line] if mark else ""
        fix = f'quote a value that starts with {RUN_DIR} ("{RUN_DIR}/...")' if RUN_DIR in line else "fix the file"
        raise BabelscopeError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)}); {fix}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise BabelscopeError(f"{path}: an experiment needs a non-empty 'steps' list")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise BabelscopeError(f"{path}: unknown key(s) {unknown} at the top level; known: {', '.join(KEYS)}")
    if not isinstance(doc.get("defaults") or {}, dict):
        raise BabelscopeError(f"{path}: 'defaults' must be a mapping of option: value")
    return doc


def apply_overrides(path: str | Path, doc: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """``doc`` with ``KEY=VALUE`` overrides (VALUE read as YAML, so ``k=0.01`` is a number) merged into its
    ``defaults:`` and set in every step that gives that option itself: the command line wins over the file, so
    ``--set samples=256`` scales every training step and ``--set model=qwen2.5-coder-0.5b -o runs/other`` runs the
    same experiment on another model. A step without the option is left alone (the defaults' spelling check still
    names a key that no step has)."""
    if not overrides:
        return doc
    defaults = dict(doc.get("defaults") or {})
    given: dict[str, Any] = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise BabelscopeError(f"--set {item!r}: give KEY=VALUE, e.g. --set model=qwen2.5-coder-0.5b")
        if key in ("command", "step"):
            raise BabelscopeError(f"--set {item!r}: a step's {key} is not an option; edit {path}")
        try:
            given[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise BabelscopeError(f"--set {item!r}: the value is not valid YAML; quote it") from None
    steps = doc.get("steps")
    if isinstance(steps, list):
        steps = [{**raw, **{k: v for k, v in given.items() if k in raw}} if isinstance(raw, dict) else raw
                 for raw in steps]
    return {**doc, "defaults": {**defaults, **given}, "steps": steps}


def experiment_run_dir(path: str | Path, doc: dict[str, Any], run_dir: str | Path | None = None) -> Path:
    """The run directory: ``run_dir`` (``--run-dir``), else the file's ``run_dir:``, else ``runs/<file stem>``."""
    given = run_dir or doc.get("run_dir") or Path("runs") / Path(path).stem
    if not isinstance(given, str | Path) or not str(given).strip():
        raise BabelscopeError(f"{path}: run_dir {given!r} is not a directory name; give a path")
    if RUN_DIR in str(given):
        raise BabelscopeError(f"{path}: run_dir {given!r} cannot refer to {RUN_DIR}; give a path")
    return Path(given)


def substitute_run_dir(value: Any, run_dir: Path) -> Any:
    """``value`` with every ``{run_dir}`` of a string replaced by the run directory (lists and mappings too)."""
    if isinstance(value, str):
        return value.replace(RUN_DIR, str(run_dir))
    if isinstance(value, list):
        return [substitute_run_dir(v, run_dir) for v in value]
    if isinstance(value, dict):
        if value == {"run_dir": None}:  # `model: {run_dir}` unquoted is a YAML mapping
            raise BabelscopeError(f'a value {RUN_DIR} must be quoted in YAML ("{RUN_DIR}/...")')
        return {k: substitute_run_dir(v, run_dir) for k, v in value.items()}
    return value


def plan(path: str | Path, doc: dict[str, Any] | None = None, run_dir: str | Path | None = None) -> list[PlannedStep]:
    """Every step of the experiment checked and configured, before anything runs or is written; ``{run_dir}``
    in string values stands for ``run_dir`` (default: the file's, see :func:`experiment_run_dir`)."""
    from babelscope.runs import check_step_name
    from babelscope.steps import check_config

    doc = doc or load_experiment(path)
    out = experiment_run_dir(path, doc, run_dir)
    try:
        defaults = substitute_run_dir(doc.get("defaults") or {}, out)
    except BabelscopeError as exc:
        raise BabelscopeError(f"{path}: defaults: {exc}") from None
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
            options = substitute_run_dir(options, out)
            cmd = find(name, commands)
            cfg_cls, fn = cmd.config, cmd.run.load()
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
            if cmd.check is not None:  # the step's checks that need no model (budgets, masks, lengths)
                cmd.check(cfg, out, [s.command for s in steps])
        except BabelscopeError as exc:
            raise BabelscopeError(f"{where}: {exc}") from None
        steps.append(PlannedStep(i, name, step, cfg, fn))
    from babelscope.memory import release_freed_memory

    release_freed_memory()  # what the step checks read (a tokenizer, the data) goes back before step 1 runs
    unused = sorted(set(defaults) - used_defaults)
    if unused:
        raise BabelscopeError(f"{path}: defaults {unused} are an option of no step; check the spelling")
    return steps


def run_file(path: str | Path, run_dir: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """Run every step of the experiment file (``overrides``: ``KEY=VALUE`` over its defaults and steps' own options, see
    :func:`apply_overrides`); return the rendered report's path."""
    from babelscope.report import render_report
    from babelscope.runs import barrier, check_run_dir, is_main_process

    doc = apply_overrides(path, load_experiment(path), overrides)
    out = experiment_run_dir(path, doc, run_dir)
    steps = plan(path, doc, out)
    out = check_run_dir(out)
    models: dict[tuple, Any] = {}
    for planned in steps:
        cfg = planned.cfg
        from babelscope.steps import placement_of

        placement = placement_of(cfg)
        key = (getattr(cfg, "model", None), getattr(cfg, "dtype", "float32"), getattr(cfg, "device", None),
               tuple(sorted(placement.items())))

        def loaded(key=key, placement=placement):  # lazy: a finished step never loads its model
            if key not in models:
                from babelscope.models import load_model

                models[key] = load_model(key[0], dtype=key[1], device=key[2], **placement)
            return models[key]

        if is_main_process():
            print(f"[{planned.index}/{len(steps)}] {planned.command} -> {out / planned.step}", flush=True)
        planned.fn(cfg, out, step=planned.step, loaded=loaded)
    report = out / "report.html"
    if is_main_process():
        report = render_report(out)
    barrier()
    return report
