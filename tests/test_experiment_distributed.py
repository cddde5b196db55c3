"""A whole multi-step experiment (the demo's steps at tiny sizes on the tiny model) under 2 CPU processes gives
the results of one process: every step's tables agree, number by number."""

from __future__ import annotations

import math
import os

from conftest import launch_two_processes

#: the demo's steps (examples/demo.yaml) at tiny sizes
EXPERIMENT = """\
defaults: {{model: {model}}}
steps:
  - {{command: ppl, step: ppl, corpus: udhr-sample, langs: "en,fr,de", window: 16, batch_size: 3, max_units: 2}}
  - {{command: bench, step: bench-xcopa, benchmark: xcopa, subsets: "it,sw", path: embedded/xcopa-sample.jsonl,
     limit: 3, batch_size: 2}}
  - {{command: respond, step: respond, instructions: embedded, limit: 3, max_new_tokens: 3, judge: local,
     judge_max_tokens: 3, batch_size: 2, pipeline_check: true}}
  - {{command: codeswitch, step: codeswitch, responses: respond}}
  - {{command: pos, step: pos, langs: de, treebanks: embedded, shots: 1, runs: 2, queries: 1, max_words: 10,
     batch_size: 2}}
  - {{command: syntax-extract, step: syntax-extract, treebank: pud-sample, langs: "en,de,ja", layers: "1",
     max_sentences: 12, batch_size: 4}}
  - {{command: syntax-otdd, step: syntax-otdd, store: syntax-extract, samples: 40, draws: 2, max_per_label: 10,
     mantel_perm: 99}}
  - {{command: syntax-rsa, step: syntax-rsa, store: syntax-extract, min_count: 5, n_perm: 20}}
  - {{command: regions, step: regions, langs: "eng,fra", max_tokens: 24, eval_langs: "eng,fra,deu",
     eval_max_tokens: 16, k: "0.05", scope: "tensor,global", gen_langs: eng, max_new_tokens: 3, scan_langs: eng,
     scan_top_n: 2, scan_max_tokens: 16, window: 16, batch_size: 2}}
"""

STEPS = ["ppl", "bench-xcopa", "respond", "codeswitch", "pos", "syntax-extract", "syntax-otdd", "syntax-rsa",
         "regions-importance", "regions-select", "regions-ablate", "regions-scan"]


READ_OTHER_STEPS = {"syntax-otdd", "syntax-rsa", "regions-select", "regions-ablate"}


def _worker():
    from babelscope.experiment import run_file

    run_file(os.environ["BABELSCOPE_TEST_EXP"], os.environ["BABELSCOPE_TEST_OUT"])


def _numbers(value):
    """A cell as a list of floats (CSV-style "1.5 2.0" cells included), or None when it is text."""
    if isinstance(value, bool):
        return [float(value)]
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, str):
        try:
            return [float(x) for x in value.split()] or None
        except ValueError:
            return None
    return None


def compare_tables(a: dict, b: dict) -> tuple[int, float]:
    """Assert two results documents have the same tables; return (numbers compared, max relative difference).

    Tolerance: the numbers are sums of float32 log-probabilities (NLL, perplexity, ratios, importance sums) whose
    batches differ between 1 and 2 processes (other padding, other reduction blocking): each term carries a
    relative error of a few float32 ulps (1.2e-7) times the reduction length (hidden size 32, vocabulary ~400), so
    1e-4 of the column's largest magnitude is a bound with a wide margin; texts (generations, labels) are equal."""
    assert a["tables"].keys() == b["tables"].keys()
    count, worst = 0, 0.0
    for name, table in a["tables"].items():
        rows_a, rows_b = table["rows"], b["tables"][name]["rows"]
        assert len(rows_a) == len(rows_b), name
        columns = {k for r in rows_a for k in r}
        for col in columns:
            cells = [(ra.get(col), rb.get(col)) for ra, rb in zip(rows_a, rows_b, strict=True)]
            nums = [(_numbers(x), _numbers(y)) for x, y in cells]
            scale = max((abs(v) for na, _ in nums if na for v in na if math.isfinite(v)), default=0.0)
            for (x, y), (na, nb) in zip(cells, nums, strict=True):
                if na is None or nb is None:
                    assert x == y, (name, col, x, y)
                    continue
                assert len(na) == len(nb), (name, col)
                for u, v in zip(na, nb, strict=True):
                    if not (math.isfinite(u) and math.isfinite(v)):
                        assert (math.isnan(u) and math.isnan(v)) or u == v, (name, col, u, v)
                        continue
                    diff = abs(u - v) / scale if scale else abs(u - v)
                    assert diff <= 1e-4, (name, col, u, v)
                    worst = max(worst, diff)
                    count += 1
    return count, worst


def test_demo_experiment_two_processes_match_one(tiny_dir, tmp_path):

    from babelscope.experiment import run_file
    from babelscope.runs import load_results
    from babelscope.tensorfiles import load_tensors

    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.format(model=tiny_dir))
    launch_two_processes("test_experiment_distributed", "_worker",
                         {"BABELSCOPE_TEST_EXP": str(exp), "BABELSCOPE_TEST_OUT": str(tmp_path / "two")})
    run_file(exp, tmp_path / "one")
    total, worst = 0, 0.0
    for step in STEPS:
        one, two = load_results(tmp_path / "one" / step), load_results(tmp_path / "two" / step)
        assert one["config"] == two["config"], step
        if step not in READ_OTHER_STEPS:  # (those checksum the other step's results file, timestamps included)
            assert one["inputs"] == two["inputs"], step  # the same texts, responses and prompts
        n, w = compare_tables(one, two)
        total, worst = total + n, max(worst, w)
    for name in ("importance.safetensors", "scores/eng.safetensors"):
        a = load_tensors(tmp_path / "one" / "regions-importance" / name)
        b = load_tensors(tmp_path / "two" / "regions-importance" / name)
        for key, want in a.items():  # float32 gradient sums: 1e-5 of the tensor's norm (see compare_tables)
            assert float((b[key] - want).norm()) <= 1e-5 * float(want.norm()) + 1e-30
    assert (tmp_path / "two" / "report.html").exists()
    print(f"2 processes vs 1: {total} numbers in {len(STEPS)} steps' tables, max relative difference {worst:.2e}")
