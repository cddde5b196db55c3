"""Run directories: atomic writes, self-describing results, the per-request cache, cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from babelscope.errors import BabelscopeError
from babelscope.runs import RequestCache, Step, atomic_open, load_results, to_jsonable, write_json


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"half": ')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_step_results_describe_themselves(tmp_path):
    step = Step(tmp_path, "ppl")
    assert not step.is_done()
    step.write_results("perplexity", {"window": 8}, {"x": float("nan")}, {"rows": [{"a": 1}, {"a": 2, "b": 3}]})
    doc = load_results(step.path)
    assert doc["schema_version"] == 1 and doc["kind"] == "perplexity" and doc["results"]["x"] is None
    assert doc["provenance"]["versions"]["torch"] and doc["provenance"]["created"]
    assert (step.path / "rows.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]
    assert step.is_done({"window": 8}) and not step.is_done({"window": 16})


def test_load_results_errors(tmp_path):
    with pytest.raises(BabelscopeError, match="no results file"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"schema_version": 1,\n oops}')
    with pytest.raises(BabelscopeError, match=r"results.json:2: not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"schema_version": 99}')
    with pytest.raises(BabelscopeError, match="schema version"):
        load_results(tmp_path)


def test_request_cache_survives_a_truncated_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = RequestCache(path)
    cache.put_many({"k1": [1.5, True, 3], "k2": "text"})
    with open(path, "a") as fh:
        fh.write('{"k": "k3", "v": [0.')  # a crash mid-line
    again = RequestCache(path)
    assert again["k1"] == [1.5, True, 3] and again["k2"] == "text" and "k3" not in again and len(again) == 2
    assert RequestCache.key("a", [1, 2]) == RequestCache.key("a", [1, 2]) != RequestCache.key("a", [2, 1])


def test_to_jsonable_handles_numpy():
    import numpy as np

    got = to_jsonable({"a": np.float32(1.5), "b": np.arange(3), "c": (1, 2)})
    assert got == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2]}


def test_import_is_cheap():
    code = "import sys, babelscope, babelscope.runs, babelscope.data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "babelscope.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("ppl", "model", "langs", "report", "run"):
        assert command in out.stdout
