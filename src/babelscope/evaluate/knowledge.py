"""Knowledge benchmarks (Zhao et al. 2024, Sec. 4: C-Eval, MMLU, AGIEval, GAOKAO-Bench; plus XCOPA, XWinograd
and MGSM), scored as lm-evaluation-harness scores them.

Multiple choice, for item ``q`` with choices ``c_1..c_K`` and context ``x`` (prompt + k solved examples):

* ``ll_k = log P(delim + c_k | x)`` summed over the continuation's tokens;
* accuracy ``acc = mean_q [argmax_k ll_k = gold_q]``;
* length-normalised accuracy ``acc_norm = mean_q [argmax_k ll_k / len(c_k) = gold_q]`` (characters of the
  choice, as the harness);
* standard error ``sqrt(acc (1 - acc) / (n - 1))`` per subset; the benchmark score is the mean over subsets
  (macro), the item mean is reported too (micro).

MGSM is generation: greedy answer until a new line, the last number of the answer compared with the gold number
(exact match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.evaluate.benchmarks import GenItem, MCItem, build_items, load_task, parse_number, subsets
from babelscope.fields import count, opt
from babelscope.runs import text_sha256

KIND = "knowledge"


@dataclass
class BenchConfig:
    model: str = "gemma-3-270m"
    benchmark: str = opt("xcopa", "xcopa, xwinograd, mmlu, ceval, agieval, gaokao, mgsm, or a task YAML path.")
    subsets: str = opt("all", "Languages or subjects, comma-separated, or 'all'.")
    shots: int | None = count(None, "Solved examples in each prompt (default: the task's: 5 for MMLU/C-Eval, 4 for "
                              "MGSM, else 0).", minimum=0)
    limit: int | None = count(None, "First N items per subset.")
    path: str | None = opt(None, "Override the task's data path pattern ({lang}, {subject}, {split}); "
                           "'embedded/xcopa-sample.jsonl' is the embedded sample.")
    max_new_tokens: int | None = count(None, "Generation tasks: answer length cap.")
    batch_size: int = count(8, "Sequences per forward pass.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


def score_mc(engine, items: list[MCItem]) -> list[dict[str, Any]]:
    """Per-item rows: log-likelihood of each choice, predictions with and without length normalisation."""
    flat = [req for item in items for req in item.requests]
    scored = engine.loglikelihood(flat, desc="choices")
    rows, start = [], 0
    for item in items:
        mine = scored[start : start + len(item.requests)]
        lls = [s.logprob for s in mine]
        start += len(item.requests)
        pred = max(range(len(lls)), key=lambda k: lls[k])
        norm = [ll / max(n, 1) for ll, n in zip(lls, item.choice_lengths, strict=True)]
        pred_norm = max(range(len(norm)), key=lambda k: norm[k])
        rows.append({"id": item.id, "subset": item.subset, "lang": item.lang, "gold": item.gold, "pred": pred,
                     "pred_norm": pred_norm, "acc": float(pred == item.gold),
                     "acc_norm": float(pred_norm == item.gold), "loglikelihoods": lls,
                     "greedy": [bool(s.greedy) for s in mine], "source": item.source})
    return rows


def score_generation(engine, items: list[GenItem], max_new_tokens: int) -> list[dict[str, Any]]:
    """Per-item rows: the greedy answer, the number extracted from it, exact match with the gold number."""
    by_stop: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        by_stop.setdefault(tuple(item.stop), []).append(i)
    answers: list[str] = [""] * len(items)
    for stop, idx in by_stop.items():
        for i, text in zip(idx, engine.generate([items[i].prompt for i in idx], max_new_tokens, list(stop),
                                                desc="answers"), strict=True):
            answers[i] = text
    rows = []
    for item, text in zip(items, answers, strict=True):
        got, gold = parse_number(text), parse_number(item.answer)
        rows.append({"id": item.id, "subset": item.subset, "lang": item.lang, "answer": item.answer,
                     "response": text, "extracted": got,
                     "exact_match": float(got is not None and gold is not None and abs(got - gold) < 1e-9),
                     "source": item.source})
    return rows


def stderr(p: float, n: int) -> float | None:
    """Standard error of a mean of n Bernoulli outcomes (the harness's sample estimate)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def subset_rows(item_rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Accuracy per subset (language or subject), in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in item_rows:
        groups.setdefault(row["subset"], []).append(row)
    out = []
    for subset, rows in groups.items():
        entry: dict[str, Any] = {"subset": subset, "lang": rows[0]["lang"], "items": len(rows)}
        for m in metrics:
            value = sum(r[m] for r in rows) / len(rows)
            entry[m] = value
            entry[f"{m}_stderr"] = stderr(value, len(rows))
        out.append(entry)
    return out


def collect_items(task: dict[str, Any], cfg: BenchConfig) -> list[MCItem | GenItem]:
    """The items of every selected subset (read and checked before any model is loaded)."""
    if cfg.path:
        task = {**task, "path": cfg.path}
    names = subsets(task, cfg.subsets)
    items = [it for name in names for it in build_items(task, name, cfg.shots, cfg.limit)]
    if not items:
        raise BabelscopeError(f"{task.get('name')}: no items for subsets {names}; check --subsets and --path")
    return items


def evaluate(engine, task: dict[str, Any], cfg: BenchConfig,
             items: list[MCItem | GenItem] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Score the items of every selected subset; returns (per-subset, per-item, summary)."""
    items = items if items is not None else collect_items(task, cfg)
    if isinstance(items[0], GenItem):
        metrics = ["exact_match"]
        item_rows = score_generation(engine, items, cfg.max_new_tokens or task.get("max_new_tokens", 32))
    else:
        metrics = ["acc", "acc_norm"]
        item_rows = score_mc(engine, items)
    rows = subset_rows(item_rows, metrics)
    summary: dict[str, Any] = {"subsets": len(rows), "items": len(item_rows), "prompts_sha256": text_sha256(
        repr(it.requests if isinstance(it, MCItem) else it.prompt) for it in items)}
    for m in metrics:
        summary[m] = sum(r[m] for r in rows) / len(rows)  # macro: mean over subsets
        summary[f"{m}_micro"] = sum(r[m] for r in item_rows) / len(item_rows)
    return rows, item_rows, summary


def step_items(doc: dict[str, Any]) -> list[Any]:
    """The step's items rebuilt from its config (their prompts' checksum must equal the one it scored)."""
    cfg = BenchConfig(**doc["config"])
    items = collect_items(load_task(cfg.benchmark), cfg)
    sha = text_sha256(repr(it.requests if isinstance(it, MCItem) else it.prompt) for it in items)
    if sha != doc["results"]["summary"]["prompts_sha256"]:
        raise BabelscopeError(f"{doc['step']}: the benchmark data changed since the step ran (prompts checksum "
                              "differs); re-run the step, then export")
    return items


def run(cfg: BenchConfig, run_dir, step: str = "bench", loaded=None) -> dict[str, Any]:
    """The ``babelscope eval bench`` step: score one benchmark, write per-subset and per-item tables."""
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    task = load_task(cfg.benchmark)
    items = collect_items(task, cfg)
    prompts = text_sha256(repr(it.requests if isinstance(it, MCItem) else it.prompt) for it in items)
    if (doc := sr.done(inputs={"prompts": prompts})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "benchmarks")
    engine = sr.engine(batch_size=cfg.batch_size)
    rows, item_rows, summary = evaluate(engine, task, cfg, items)
    if not engine.is_main:
        return sr.wait()
    shots = task.get("shots", 0) if cfg.shots is None else cfg.shots
    results = {"model": info.name, "benchmark": task.get("name", cfg.benchmark), "shots": shots,
               "generation": "exact_match" in summary, "summary": summary}
    for row in item_rows:  # a list cell becomes one readable CSV cell (full precision: lm-eval's files read it)
        if "loglikelihoods" in row:
            row["loglikelihoods"] = " ".join(repr(float(v)) for v in row["loglikelihoods"])
            row["greedy"] = " ".join(str(int(g)) for g in row["greedy"])
    prov = provenance(model=info.to_dict(), data={"benchmark": task.get("name"), "path": cfg.path or task["path"],
                                                  "prompts_sha256": summary["prompts_sha256"]})
    doc = sr.write(KIND, results, {"per_subset": rows, "per_item": item_rows}, prov)
    if doc:  # the writing rank: lm-evaluation-harness's files beside ours (babelscope export lm-eval redoes them)
        from babelscope.evaluate.lm_eval_files import write_lm_eval_files

        write_lm_eval_files(sr.path, doc, items)
    return doc
