"""Checkpoints of the training loop: resumable runs and their fingerprint.

Every ``checkpoint_every`` steps the loop saves ``accelerator.save_state`` into ``out_dir/checkpoints/step-N`` and
then ``position.json`` (step, samples, tokens, fingerprint), written last so that its presence marks a complete
checkpoint (:func:`_save_checkpoint`). A run resumes from its last complete checkpoint (:func:`last_checkpoint`)
only when its fingerprint (:func:`resume_key`: the loop settings that change the weights, the number of examples
and processes, and the caller's parts) is the same; otherwise :func:`check_resumable` refuses with one line
naming the options that differ, or discards the checkpoints on ``restart``. ``metrics.jsonl`` is cut back to the
resumed step (:func:`_truncate_metrics`) and read with :func:`read_metrics`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from babelscope.errors import BabelscopeError


class _LoopSettings(Protocol):
    def fingerprint(self) -> dict[str, Any]: ...  # a LoopConfig's: the settings that change the weights


def resume_key(cfg: _LoopSettings, n_examples: int, processes: int, parts: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """The fingerprint of a run (:func:`babelscope.caches.fingerprint`): the loop settings that change the weights,
    the number of examples and of processes, and the caller's ``parts`` (model and tokenizer checksums, data,
    adapter options, freezing mask: each by the name of its option). A checkpoint of another key is refused."""
    from babelscope.caches import fingerprint

    return fingerprint({**cfg.fingerprint(), "examples": n_examples, "processes": processes, **(parts or {})})


def last_checkpoint(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint (one whose ``position.json`` exists) and its position."""
    best = None
    for path in (out_dir / "checkpoints").glob("step-*"):
        pos = path / "position.json"
        if path.is_dir() and pos.exists():
            state = json.loads(pos.read_text())
            if best is None or state["step"] > best[1]["step"]:
                best = (path, state)
    return best


def check_resumable(out_dir: Path, key: dict[str, Any], restart: bool = False) -> dict[str, Any] | None:
    """The position to resume from, or ``None``. A checkpoint of another key (:func:`resume_key`) is refused with
    one line naming the options that differ; ``restart`` removes the checkpoints instead (every process calls
    this at the same point: they all read before the main process deletes)."""
    from babelscope.caches import fingerprint_changes
    from babelscope.processes import barrier, is_main

    found = last_checkpoint(out_dir)
    if restart:
        barrier()
        if found is not None and is_main():
            remove_checkpoints(out_dir)
        barrier()
        return None
    if found is None:
        return None
    path, state = found
    changes = fingerprint_changes(state.get("fingerprint"), key)
    if changes:
        raise BabelscopeError(
            f"{path}: a checkpoint of another training configuration ({'; '.join(changes)}); re-run with its "
            "options to resume it, or add --restart to discard it and start over"
        )
    return state


def remove_checkpoints(out_dir: Path) -> None:
    """Delete the run's checkpoints (a finished run keeps none, whatever it saved)."""
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)


def _save_checkpoint(accelerator, out_dir: Path, step: int, samples: int, tokens: int, fp: dict[str, Any],
                     keep: int) -> None:
    """``save_state`` into ``step-N``; ``position.json`` last marks it complete; older ones beyond ``keep`` go."""
    from babelscope.runs import write_json

    path = out_dir / "checkpoints" / f"step-{step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(path / "position.json", {"step": step, "samples": samples, "tokens": tokens, "fingerprint": fp})
        done = sorted(
            (p for p in (out_dir / "checkpoints").glob("step-*") if (p / "position.json").exists()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in done[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (a resumed run rewrites them); a torn last line is dropped too."""
    from babelscope.runs import write_text

    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    write_text(path, "".join(line + "\n" for line in keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    path = Path(path)
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows
