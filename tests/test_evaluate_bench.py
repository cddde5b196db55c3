"""Knowledge benchmarks: readers, prompts and per-item log-likelihoods against lm-evaluation-harness."""

from __future__ import annotations

import json

import pytest

from babelscope.errors import BabelscopeError
from babelscope.evaluate.benchmarks import build_items, load_task, parse_number, subsets
from babelscope.evaluate.knowledge import BenchConfig, evaluate, run
from babelscope.models.engine import Engine
from conftest import build_tiny
from numerics import TINY_FORWARD, f32_bound


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("gemma3")


def test_shared_inputs_score_like_separate_requests(tiny):
    """Requests with the same input tokens (one-token choices) share a forward row; scores do not change."""
    model, tok = tiny
    items = build_items(load_task("mmlu"), "anatomy", shots=1, limit=3)
    reqs = [r for it in items for r in it.requests]
    grouped = Engine(model, tok, batch_size=4, progress=False).loglikelihood(reqs)
    alone = [Engine(model, tok, batch_size=1, progress=False).loglikelihood([r])[0] for r in reqs]
    assert [s.tokens for s in grouped] == [s.tokens for s in alone]
    # the same float32 forward in other batches: relative to the (negative) log-probability sums
    assert [s.logprob for s in grouped] == pytest.approx([s.logprob for s in alone], rel=TINY_FORWARD)
    assert [s.greedy for s in grouped] == [s.greedy for s in alone]


@pytest.mark.parametrize("benchmark,subset,shots", [("xcopa", "it", 0), ("mmlu", "anatomy", 2), ("ceval", "law", 2)])
def test_prompts_and_loglikelihoods_agree_with_lm_eval(tiny, tmp_path, benchmark, subset, shots):
    """Same prompts as the harness's own task files, same per-item log-likelihoods (tiny real architecture)."""
    from babelscope.evaluate.harness import (
        harness_loglikelihoods,
        harness_model,
        harness_requests,
        harness_task,
    )

    model, tok = tiny
    instances = sorted(harness_requests(harness_task(benchmark, subset, tmp_path, shots), limit=4),
                       key=lambda i: (i.doc_id, i.idx))
    ours = [r for it in build_items(load_task(benchmark), subset, shots, 4) for r in it.requests]
    assert ours == [tuple(i.args) for i in instances]
    mine = [s.logprob for s in Engine(model, tok, progress=False).loglikelihood(ours)]
    theirs = harness_loglikelihoods(harness_model(model, tok), instances)
    assert mine == pytest.approx(theirs, rel=TINY_FORWARD)  # both float32 forwards of the same model


def test_mmlu_reads_shared_copy_and_upstream_format(tmp_path):
    """The shared copy (header, 0-based answers) and hendrycks' files (no header, letters) give the same items."""
    from babelscope.settings import data_dir

    task = load_task("mmlu")
    shared = build_items(task, "anatomy", shots=2, limit=5)
    for split in ["dev", "test"]:
        rows = (data_dir() / f"bench/mmlu/{split}/anatomy_{split}.csv").read_text(encoding="utf-8")
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out)
        for i, row in enumerate(csv.reader(io.StringIO(rows))):
            if i:
                writer.writerow(row[:5] + ["ABCD"[int(row[5])]])
        (tmp_path / f"anatomy_{split}.csv").write_text(out.getvalue(), encoding="utf-8")
    upstream = build_items({**task, "path": str(tmp_path / "anatomy_{split}.csv")}, "anatomy", shots=2, limit=5)
    assert [i.requests for i in upstream] == [i.requests for i in shared]
    assert [i.gold for i in upstream] == [i.gold for i in shared]
    assert shared[0].requests[0][0].startswith("The following are multiple choice questions (with answers) about "
                                               "anatomy.\n\n")
    assert [c for _, c in shared[0].requests] == [" A", " B", " C", " D"]


def test_malformed_rows_name_file_and_row(tmp_path):
    bad = tmp_path / "x_test.csv"
    bad.write_text("What?,a,b,c,d,Z\n", encoding="utf-8")
    task = {**load_task("mmlu"), "path": str(tmp_path / "x_{split}.csv")}
    with pytest.raises(BabelscopeError, match=r"x_test\.csv:1: answer 'Z'"):
        build_items(task, "x", shots=0)
    broken = tmp_path / "xc.jsonl"
    broken.write_text('{"premise": "A.", "choice1": "b", "choice2": "c", "question": "effect", "label": 0}\n{oops\n',
                      encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"xc\.jsonl:2: not valid JSON"):
        build_items({**load_task("xcopa"), "path": str(broken)}, "it")


def test_each_benchmark_reads_real_data():
    """Every task file reads its shared data; prompt words are the data's language."""
    xcopa = build_items(load_task("xcopa"), "zh", limit=2)
    assert xcopa[0].requests[0][0].endswith(("因为", "所以"))
    wino = build_items(load_task("xwinograd"), "en", limit=1)[0]
    assert wino.requests[0] == ("The city councilmen refused the demonstrators a permit because The city councilmen",
                                " feared violence.")
    assert wino.gold == 0 and wino.requests[0][1] == wino.requests[1][1]
    assert build_items(load_task("xwinograd"), "jp", limit=1)[0].lang == "ja"
    ag = build_items(load_task("agieval"), "logiqa-zh", limit=1)[0]
    assert ag.requests[0][0].startswith("问题：") and ag.requests[0][1] == " (A)"
    assert build_items(load_task("agieval"), "lsat-ar", limit=1)[0].requests[0][0].startswith("Q: ")
    gk = build_items(load_task("gaokao"), "2010-2022_Biology_MCQs", limit=1)[0]
    assert gk.gold == 3 and gk.requests[0][0].endswith("答案：")
    mgsm = build_items(load_task("mgsm"), "de", limit=1)[0]
    assert mgsm.prompt.count("Frage: ") == 5 and mgsm.prompt.endswith("Antwort:") and "Answer" not in mgsm.prompt
    assert mgsm.answer == "18"
    assert "law" in subsets(load_task("ceval")) and len(subsets(load_task("mmlu"))) == 57


def test_parse_number():
    assert parse_number("Sie verdient 1,234.5 Dollar.") == 1234.5
    assert parse_number("উত্তর: ১৮") == 18
    assert parse_number("答案是 -3，然后 7") == 7
    assert parse_number("no number") is None


def test_step_writes_results_and_resumes(tiny, tmp_path):
    model, tok = tiny
    from babelscope.models.loader import ModelInfo

    info = ModelInfo("tiny", "tiny", "causal", "gemma3_text", 1, 3, 32, len(tok), "abc", "memory", "float32")
    cfg = BenchConfig(benchmark="xcopa", subsets="it,zh", path="embedded/xcopa-sample.jsonl", limit=6)
    doc = run(cfg, tmp_path, "bench", loaded=lambda: (model, tok, info))
    rows = doc["tables"]["per_subset"]["rows"]
    assert [r["subset"] for r in rows] == ["it", "zh"] and all(r["items"] == 6 for r in rows)
    assert 0 <= doc["results"]["summary"]["acc"] <= 1
    items = doc["tables"]["per_item"]["rows"]
    assert len(items) == 12 and all(len(r["loglikelihoods"].split()) == 2 for r in items)
    again = run(cfg, tmp_path, "bench", loaded=lambda: pytest.fail("a finished step must not load its model"))
    assert again["results"] == doc["results"]


@pytest.mark.slow
def test_real_model_xcopa_agrees_with_lm_eval(default_model, tmp_path):
    """On the real default model: XCOPA items from the harness's own task, our scores within 1e-4 of its."""
    from babelscope.evaluate.harness import (
        harness_loglikelihoods,
        harness_model,
        harness_requests,
        harness_task,
    )

    model, tok, _ = default_model
    instances = sorted(harness_requests(harness_task("xcopa", "it", tmp_path), limit=3),
                       key=lambda i: (i.doc_id, i.idx))
    items = build_items(load_task("xcopa"), "it", limit=3)
    ours = [r for it in items for r in it.requests]
    assert ours == [tuple(i.args) for i in instances]
    mine = [s.logprob for s in Engine(model, tok, progress=False).loglikelihood(ours)]
    exact = harness_loglikelihoods(harness_model(model, tok, softmax_dtype="float64"), instances)
    # Both use the same float32 logits; ours reduces them in float32 (a pairwise log-sum-exp over V = 2^18
    # entries, γ_18, and a few roundings per token), the harness in float64.
    assert mine == pytest.approx(exact, rel=f32_bound(18, 8))
    assert all(-80 < v < 0 for v in mine)


@pytest.mark.slow
def test_real_model_mgsm_generation(default_model):
    model, tok, _ = default_model
    engine = Engine(model, tok, progress=False)
    rows, items, summary = evaluate(engine, load_task("mgsm"),
                                    BenchConfig(benchmark="mgsm", subsets="en", shots=2, limit=2, max_new_tokens=6))
    assert len(items) == 2 and all(r["response"].strip() for r in items)
    assert all(r["extracted"] is None or isinstance(r["extracted"], float) for r in items)
    assert json.dumps(summary)
