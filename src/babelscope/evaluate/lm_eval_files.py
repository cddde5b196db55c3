"""lm-evaluation-harness's own files for an ``eval bench`` step: ``results_<time>.json`` and
``samples_<task>_<time>.jsonl``, in the layout its ``EvaluationTracker`` writes (lm-eval 0.4), so that its table
printer (``lm_eval.utils.make_table``), its Hugging Face dataset loaders and converters that read lm-eval output
(Every Eval Ever's) take Babelscope's scores as they are.

Each subset (language or subject) is one harness task, named as the harness names it (``xcopa_it``,
``mmlu_anatomy``, ``ceval-valid_law``, ``mgsm_direct_de``; else ``<benchmark>_<subset>``), grouped under the
benchmark. A multiple-choice sample holds the item's data row (``doc``), its requests (``arguments``: context and
continuation per choice), each choice's ``[log-likelihood, is_greedy]`` (``resps``, as strings, as the harness
writes them), the gold index as ``target``, and ``acc`` / ``acc_norm``. A task's ``acc,none`` is the mean over its
items and ``acc_stderr,none`` the harness's sample standard error ``sqrt(p (1 - p) / (n - 1))``; the group's value
is the mean over all items (the harness's ``weight_by_size``), with the pooled standard error of its tasks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from babelscope.caches import digest
from babelscope.errors import BabelscopeError
from babelscope.runs import atomic_open, load_results, to_jsonable, write_json

#: the harness's task name for a subset of each benchmark
TASK_NAMES = {"xcopa": "xcopa_{s}", "xwinograd": "xwinograd_{s}", "mmlu": "mmlu_{s}", "ceval": "ceval-valid_{s}",
              "mgsm": "mgsm_direct_{s}", "agieval": "agieval_{s}", "gaokao": "gaokao_{s}"}
GROUP_NAMES = {"ceval": "ceval-valid", "mgsm": "mgsm_direct"}
FOLDER = "lm-eval"


def _hash(text: str) -> str:
    """lm-eval's ``hash_string``: SHA-256 of the UTF-8 text."""
    return digest([text])


def task_name(benchmark: str, subset: str) -> str:
    return TASK_NAMES.get(benchmark, "{b}_{s}").format(b=benchmark, s=subset)


def _date_id(created: str) -> str:
    """The file-name time of lm-eval (``datetime.isoformat()`` with ``-`` for ``:``), from the step's time."""
    return created.split("+")[0].replace(":", "-")


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """lm-eval's ``pooled_sample_stderr``: the standard error of the mean of all items from the per-task ones."""
    n = sum(sizes)
    variance = sum((size - 1) * se**2 * size for se, size in zip(stderrs, sizes, strict=True)) / (n - len(sizes))
    return math.sqrt(variance / n)


def check_bench_step(step_dir: str | Path) -> dict[str, Any]:
    """The results of an ``eval bench`` step; a one-line error for any other step."""
    doc = load_results(Path(step_dir))
    if doc.get("kind") != "knowledge":
        raise BabelscopeError(f"{step_dir}: a {doc.get('kind')!r} step, not a benchmark; lm-eval files exist only "
                              "for `babelscope eval bench` steps (kind 'knowledge')")
    return doc


def lm_eval_documents(doc: dict[str, Any], items: list[Any]) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """``(results, samples by task)`` in lm-eval's layout, from a bench step's results and its items."""
    from babelscope.evaluate.benchmarks import MCItem

    res = doc["results"]
    bench = Path(res["benchmark"]).stem
    rows = doc["tables"]["per_item"]["rows"]
    if len(rows) != len(items):
        raise BabelscopeError(f"{doc['step']}: {len(rows)} per-item rows for {len(items)} items; re-run the step")
    generation = bool(res.get("generation"))
    metrics = ["exact_match"] if generation else ["acc", "acc_norm"]
    samples: dict[str, list[dict]] = {}
    for item, row in zip(items, rows, strict=True):
        name = task_name(bench, item.subset)
        out = samples.setdefault(name, [])
        if isinstance(item, MCItem):
            lls = [float(v) for v in str(row["loglikelihoods"]).split()]
            greedy = [bool(int(g)) for g in str(row.get("greedy", "")).split()] or [False] * len(lls)
            target = str(item.gold)
            sample = {"doc_id": len(out), "doc": item.doc, "target": target,
                      "arguments": {f"gen_args_{k}": {"arg_0": c, "arg_1": x}
                                    for k, (c, x) in enumerate(item.requests)},
                      "resps": [[[str(ll), str(g)]] for ll, g in zip(lls, greedy, strict=True)],
                      "filtered_resps": [[str(ll), str(g)] for ll, g in zip(lls, greedy, strict=True)],
                      "filter": "none", "metrics": metrics,
                      "doc_hash": _hash(json.dumps(item.doc, indent=2, default=str, ensure_ascii=False)),
                      "prompt_hash": _hash(item.requests[0][0]), "target_hash": _hash(target)}
        else:
            gen_kwargs = {"until": list(item.stop), "do_sample": False,
                          "max_gen_toks": doc["config"].get("max_new_tokens")}
            target = str(item.answer)
            sample = {"doc_id": len(out), "doc": item.doc, "target": target,
                      "arguments": {"gen_args_0": {"arg_0": item.prompt, "arg_1": gen_kwargs}},
                      "resps": [[str(row["response"])]], "filtered_resps": [str(row["response"])],
                      "filter": "none", "metrics": metrics,
                      "doc_hash": _hash(json.dumps(item.doc, indent=2, default=str, ensure_ascii=False)),
                      "prompt_hash": _hash(item.prompt), "target_hash": _hash(target)}
        sample.update({m: float(row[m]) for m in metrics})
        out.append(sample)
    group = GROUP_NAMES.get(bench, bench)
    shots = res.get("shots", 0)
    results: dict[str, Any] = {}
    for name, task_samples in samples.items():
        n = len(task_samples)
        entry: dict[str, Any] = {"alias": name, "sample_len": n}  # make_table indents a group's tasks itself
        for m in metrics:
            p = sum(s[m] for s in task_samples) / n
            entry[f"{m},none"] = p
            entry[f"{m}_stderr,none"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else "N/A"
        results[name] = entry
    total = sum(len(s) for s in samples.values())
    group_entry: dict[str, Any] = {"alias": group, "sample_len": total}
    for m in metrics:
        group_entry[f"{m},none"] = sum(s[m] for ts in samples.values() for s in ts) / total
        ses = [results[t][f"{m}_stderr,none"] for t in samples]
        group_entry[f"{m}_stderr,none"] = (pooled_stderr(ses, [len(s) for s in samples.values()])
                                           if all(isinstance(x, float) for x in ses) and total > len(ses) else "N/A")
    prov = doc.get("provenance", {})
    model = prov.get("model", {}) if isinstance(prov.get("model"), dict) else {}
    cfg = doc["config"]
    configs = {name: {"task": name, "tag": [group], "dataset_path": "json",
                      "dataset_kwargs": {"data_files": prov.get("data", {}).get("path")},
                      "output_type": "generate_until" if generation else "multiple_choice",
                      "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": shots,
                      "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
                      "metadata": {"version": 1.0, "producer": "babelscope", "babelscope_step": doc["step"]}}
               for name in samples}
    model_name = res.get("model") or cfg.get("model")
    out = {
        "results": {group: group_entry, **results},
        "groups": {group: group_entry},
        "group_subtasks": {group: list(samples)},
        "configs": configs,
        "versions": {group: 1.0, **{name: 1.0 for name in samples}},
        "n-shot": {group: shots, **{name: shots for name in samples}},
        "higher_is_better": {name: {m: True for m in metrics} for name in [group, *samples]},
        "n-samples": {name: {"original": len(s), "effective": len(s)} for name, s in samples.items()},
        "config": {"model": model_name, "model_args": None, "model_num_parameters": model.get("parameters"),
                   "model_dtype": f"torch.{cfg.get('dtype', 'float32')}", "model_sha": model.get("checksum"),
                   "batch_size": cfg.get("batch_size"), "batch_sizes": [], "device": None, "use_cache": None,
                   "limit": cfg.get("limit"), "bootstrap_iters": 0, "gen_kwargs": None},
        "git_hash": None,
        "date": prov.get("created"),
        "transformers_version": prov.get("versions", {}).get("transformers"),
        "babelscope_version": prov.get("versions", {}).get("babelscope"),
        "task_hashes": {name: _hash("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in ts))
                        for name, ts in samples.items()},
        "model_source": "babelscope",
        "model_name": model_name,
        "model_name_sanitized": re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(model_name)),
        "total_evaluation_time_seconds": str(prov.get("seconds", "")),
    }
    return out, samples


def write_lm_eval_files(step_dir: str | Path, doc: dict[str, Any], items: list[Any]) -> list[Path]:
    """Write ``STEP/lm-eval/results_<time>.json`` and one ``samples_<task>_<time>.jsonl`` per task (each
    atomically; older exports of the step are replaced) from a bench step's results and its items (see
    :func:`babelscope.evaluate.knowledge.step_items`). Returns the paths, results file first."""
    step_dir = Path(step_dir)
    results, samples = lm_eval_documents(doc, items)
    folder = step_dir / FOLDER
    date_id = _date_id(doc.get("provenance", {}).get("created", "unknown"))
    stale = set(folder.glob("results_*.json")) | set(folder.glob("samples_*.jsonl")) if folder.is_dir() else set()
    paths = [folder / f"results_{date_id}.json"]
    write_json(paths[0], results)
    for name, task_samples in samples.items():
        path = folder / f"samples_{name}_{date_id}.jsonl"
        with atomic_open(path) as fh:
            for s in task_samples:
                fh.write(json.dumps(to_jsonable(s), ensure_ascii=False) + "\n")
        paths.append(path)
    for path in stale - set(paths):
        path.unlink(missing_ok=True)
    return paths
