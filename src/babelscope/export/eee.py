"""A step's results as an Every Eval Ever record (schema 0.3.0): one aggregate JSON plus, for benchmark and judged
steps, an instance-level samples sidecar, laid out as the EEE datastore wants them
(``data/<evaluation>/<developer>/<model>/<uuid>.json`` and ``<uuid>_samples.jsonl``).

Which measurements map (:data:`MAPPINGS`): scores a reader compares across models, per language or subject —
benchmark accuracy (with its standard error and items), perplexity / bits per byte / bits per parallel unit,
judged response quality (0-3, with the judge as ``llm_scoring``), code-switching rate, in-context POS accuracy,
tokenizer premium and fertility, and the perplexity of each language after further pretraining, region ablation
or neuron deactivation. Which do not: maps over the model's parameters or neurons (importance scores, region
masks, neuron sets, steering directions: they stay safetensors, see ``docs/formats.md``), representation
geometry (syntax distances, probes), and training curves other than the evaluated perplexity. For those steps
the export says so in one line.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelscope.caches import digest
from babelscope.errors import BabelscopeError
from babelscope.runs import atomic_open, load_results, to_jsonable, write_json

SCHEMA_VERSION = "0.3.0"
FOLDER = "eee"

#: model names Babelscope knows -> their Hugging Face ids (the EEE identity; others file under ``local/``)
HF_IDS = {"gemma-3-270m": "google/gemma-3-270m", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
          "qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
          "qwen2.5-coder-1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}
QUANTIZED = {"gemma-3-270m": "Q4_K_M GGUF, dequantized to float32",
             "smollm2-135m": "Q4_1 GGUF, dequantized to float32",
             "qwen2.5-coder-0.5b": "AWQ 4-bit then GGUF, dequantized to float32",
             "qwen2.5-coder-1.5b": "GGUF, dequantized to float32"}


@dataclass(frozen=True)
class Metric:
    """One column of a results table as an EEE metric."""

    column: str
    metric_id: str
    name: str
    lower_is_better: bool
    unit: str
    min_score: float | str = 0
    max_score: float | str = "Infinity"
    stderr: str | None = None  # the column holding its standard error
    count: str | None = None  # the column holding the number of items


@dataclass(frozen=True)
class Mapping:
    """Which table of a step kind maps, which columns name a row, which columns are metrics."""

    table: str
    keys: tuple[str, ...]
    metrics: tuple[Metric, ...]
    where: tuple[tuple[str, Any], ...] = ()  # keep rows with these values only


ACC = Metric("acc", "accuracy", "Accuracy", False, "proportion", 0, 1, "acc_stderr", "items")
PPL = (Metric("ppl", "perplexity", "Token perplexity", True, "perplexity", 1),
       Metric("bits_per_byte", "bits_per_byte", "Bits per UTF-8 byte", True, "bits"),
       Metric("bits_per_unit", "babelscope.bits_per_parallel_unit", "Bits per parallel unit", True, "bits"))
JUDGED = tuple(Metric(c, f"babelscope.judged_{c.lower()}", f"Judged {c} (0-3)", False, "points", 0, 3, None,
                      "judged") for c in ("ACC", "F", "INFO", "LC", "H", "AVG"))
MAPPINGS: dict[str, Mapping] = {
    "knowledge": Mapping("per_subset", ("subset",), (
        ACC, Metric("acc_norm", "babelscope.acc_norm", "Length-normalised accuracy", False, "proportion", 0, 1,
                    "acc_norm_stderr", "items"),
        Metric("exact_match", "exact_match", "Exact match", False, "proportion", 0, 1, "exact_match_stderr",
               "items"))),
    "perplexity": Mapping("per_language", ("lang",), PPL),
    "responses": Mapping("per_language", ("lang",), JUDGED),
    "codeswitch": Mapping("per_language", ("lang",), (
        Metric("rate", "babelscope.code_switching_rate", "Code-switching rate", True, "proportion", 0, 1, None,
               "responses"),)),
    "pos": Mapping("per_language", ("lang",), tuple(
        Metric(f"{s}_mean", f"babelscope.pos_accuracy_{s.lower()}", f"POS accuracy ({s} demonstrations)", False,
               "proportion", 0, 1) for s in ("MONO", "EN"))),
    "tokens": Mapping("per_language", ("tokenizer", "lang"), (
        Metric("premium", "babelscope.tokenizer_premium", "Tokenizer premium vs English", True, "ratio"),
        Metric("tokens_per_byte", "babelscope.tokens_per_byte", "Tokens per UTF-8 byte", True, "tokens"))),
    "transfer-pretrain": Mapping("curve", ("samples", "lang", "text"), PPL[:1]),
    "regions-ablation": Mapping("per_language", ("region", "k", "scope", "lang"), (
        Metric("ppl", "perplexity", "Perplexity with the region removed", True, "perplexity", 1),)),
    "neurons-deactivation": Mapping("per_language", ("off", "neurons", "lang"), (
        Metric("ppl", "perplexity", "Perplexity with the neurons deactivated", True, "perplexity", 1),)),
}
NOT_MAPPED = {
    "regions-importance": "importance scores are a map over parameters (safetensors; docs/formats.md)",
    "regions-select": "a region is a mask over parameters (safetensors; docs/formats.md)",
    "regions-scan": "outlier dimensions are a structure of the model, not a score",
    "neurons": "language-specific neurons are a set of neurons (safetensors; docs/formats.md)",
    "neurons-overlap": "neuron overlaps describe neuron sets, not scores",
}


def _sha(text: str) -> str:
    return digest([text])


def _uuid4(seed: str) -> str:
    """A UUID (version 4 layout, as the datastore's file names need) derived from ``seed``: the same results file
    always exports to the same record."""
    return str(uuid.UUID(hex=digest([seed], 32), version=4))


def _component(text: str) -> str:
    """A portable datastore path component."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "unnamed"


def model_identity(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """EEE ``model_info`` for a Babelscope model name (the embedded and named models get their hub ids)."""
    hf_id = HF_IDS.get(name)
    model_id = hf_id or f"local/{_component(Path(str(name)).name)}"
    details = {"deployment_type": "self_deployed", "model_availability": "open_weights" if hf_id else "unknown",
               "babelscope_spec": str(name), "weights_sha256": str(info.get("checksum", "")),
               "dtype": str(info.get("dtype", "")), "parameters": str(info.get("parameters", ""))}
    if name in QUANTIZED:
        details["weights"] = QUANTIZED[name]
    return {"name": str(name), "id": model_id, "developer": model_id.split("/")[0],
            "inference_platform": "local", "inference_engine": {"name": "transformers"},
            "additional_details": details}


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _step_doc(step_dir: Path) -> dict[str, Any]:
    doc = load_results(step_dir)
    kind = doc.get("kind")
    if kind not in MAPPINGS:
        why = NOT_MAPPED.get(kind, "its results are not scores a reader compares across models")
        raise BabelscopeError(f"{step_dir}: a {kind!r} step has no Every Eval Ever mapping ({why}); export a "
                              f"step of kind {', '.join(MAPPINGS)}")
    return doc


def eee_record(step_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """``(aggregate record, instance records, datastore path of the record)`` for a finished step."""
    step_dir = Path(step_dir)
    doc = _step_doc(step_dir)
    kind, res, prov = doc["kind"], doc.get("results", {}), doc.get("provenance", {})
    mapping = MAPPINGS[kind]
    model_name = res.get("model") or doc["config"].get("model", "unknown")
    info = prov.get("model") if isinstance(prov.get("model"), dict) else {}
    model_info = model_identity(model_name, info)
    collection = _component(Path(str(res.get("benchmark") or kind)).stem)
    eval_id = _uuid4(json.dumps(to_jsonable([doc["step"], doc.get("inputs"), prov.get("created"), res]),
                                sort_keys=True))
    created = prov.get("created", "")
    source = {"dataset_name": str(res.get("benchmark") or res.get("corpus") or prov.get("data", {}).get("path")
                                  or kind), "source_type": "other",
              "additional_details": {"babelscope_step": doc["step"], "babelscope_kind": kind,
                                     **({"data_sha256": str(prov["data"].get("prompts_sha256") or
                                                            prov["data"].get("sha256"))}
                                        if isinstance(prov.get("data"), dict) else {})}}
    results = []
    rows = [r for r in ((doc.get("tables") or {}).get(mapping.table) or {}).get("rows") or []
            if all(r.get(k) == v for k, v in mapping.where)]
    judge = res.get("judge")
    for row in rows:
        key = "/".join(str(row.get(k)) for k in mapping.keys)
        for metric in mapping.metrics:
            score = _number(row.get(metric.column))
            if score is None:
                continue
            config: dict[str, Any] = {"evaluation_description": f"{kind}: {metric.name}, {key}",
                                      "metric_id": metric.metric_id, "metric_name": metric.name,
                                      "metric_kind": metric.metric_id.split(".")[-1], "metric_unit": metric.unit,
                                      "lower_is_better": metric.lower_is_better, "score_type": "continuous",
                                      "min_score": metric.min_score, "max_score": metric.max_score}
            if kind == "responses" and judge:
                config["llm_scoring"] = {"judges": [{"model_info": model_identity(str(judge), {})}],
                                         "input_prompt": str(res.get("judge_prompt", "see babelscope's judge.py"))}
            details: dict[str, Any] = {"score": score}
            n = row.get(metric.count) if metric.count else None
            se = _number(row.get(metric.stderr)) if metric.stderr else None
            if se is not None or isinstance(n, int):
                details["uncertainty"] = {**({"standard_error": {"value": se, "method": "analytic"}}
                                             if se is not None else {}),
                                          **({"num_samples": n} if isinstance(n, int) else {})}
            details["details"] = {k: str(row.get(k)) for k in mapping.keys}
            results.append({"evaluation_result_id": f"{key}/{metric.column}", "evaluation_name": key,
                            "source_data": source, "evaluation_timestamp": created, "metric_config": config,
                            "score_details": details})
    if not results:
        raise BabelscopeError(f"{step_dir}: no finite scores in table {mapping.table!r}; re-run the step")
    path = f"data/{collection}/{_component(model_info['developer'])}/{_component(model_info['id'].split('/', 1)[-1])}"
    versions = prov.get("versions", {})
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "evaluation_id": f"{collection}/{model_info['id']}/{eval_id}",
        "evaluation_timestamp": created,
        "retrieved_timestamp": str(int(time.time())),
        "source_metadata": {"source_name": "Babelscope", "source_type": "evaluation_run",
                            "source_organization_name": "Babelscope user", "evaluator_relationship": "third_party"},
        "eval_library": {"name": "babelscope", "version": str(versions.get("babelscope", "unknown")),
                         "additional_details": {"transformers": str(versions.get("transformers", "unknown")),
                                                "torch": str(versions.get("torch", "unknown"))}},
        "model_info": model_info,
        "evaluation_results": results,
    }
    instances = instance_records(doc, record, model_info["id"])
    if instances:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in instances)
        record["detailed_evaluation_results"] = {"format": "jsonl", "file_path": f"{path}/{eval_id}_samples.jsonl",
                                                 "hash_algorithm": "sha256", "checksum": _sha(text),
                                                 "total_rows": len(instances)}
    return record, instances, f"{path}/{eval_id}.json"


def instance_records(doc: dict[str, Any], record: dict[str, Any], model_id: str) -> list[dict[str, Any]]:
    """The samples sidecar: one record per benchmark item (its accuracy result) or judged response (its AVG)."""
    kind = doc["kind"]
    rows = ((doc.get("tables") or {}).get("per_item") or {}).get("rows") or []
    out = []
    if kind == "knowledge" and rows:
        from babelscope.evaluate.knowledge import step_items

        generation = bool(doc["results"].get("generation"))
        for item, row in zip(step_items(doc), rows, strict=True):
            if generation:
                raw, choices, reference = item.prompt, None, [str(item.answer)]
                output, extracted, method, metric = [str(row.get("response", ""))], str(row.get("extracted")), \
                    "regex", "exact_match"
            else:
                raw = item.requests[0][0]
                choices = [c.strip() for _, c in item.requests]
                reference = [choices[item.gold]]
                output, extracted, method, metric = [choices[int(row["pred"])]], choices[int(row["pred"])], \
                    "loglikelihood_argmax", "acc"
            score = float(row[metric])
            out.append({"schema_version": SCHEMA_VERSION, "evaluation_id": record["evaluation_id"],
                        "model_id": model_id, "evaluation_name": item.subset,
                        "evaluation_result_id": f"{item.subset}/{metric}", "sample_id": item.id,
                        "sample_hash": _sha(raw + "\0" + "\0".join(reference)), "interaction_type": "single_turn",
                        "input": {"raw": raw, "reference": reference, "choices": choices},
                        "output": {"raw": output},
                        "answer_attribution": [{"turn_idx": 0, "source": "output.raw", "extracted_value": extracted,
                                                "extraction_method": method, "is_terminal": True}],
                        "evaluation": {"score": score, "is_correct": score == 1.0}})
    elif kind == "responses":
        for row in rows:
            if _number(row.get("AVG")) is None:
                continue
            reference = [str(row.get("reference") or "")]
            out.append({"schema_version": SCHEMA_VERSION, "evaluation_id": record["evaluation_id"],
                        "model_id": model_id, "evaluation_name": str(row["lang"]),
                        "evaluation_result_id": f"{row['lang']}/AVG", "sample_id": str(row["id"]),
                        "sample_hash": _sha(str(row["instruction"]) + "\0" + reference[0]),
                        "interaction_type": "single_turn",
                        "input": {"raw": str(row["instruction"]), "reference": reference},
                        "output": {"raw": [str(row["response"])]},
                        "answer_attribution": [{"turn_idx": 0, "source": "output.raw",
                                                "extracted_value": str(row["response"]),
                                                "extraction_method": "llm_judge", "is_terminal": True}],
                        "evaluation": {"score": float(row["AVG"]), "is_correct": float(row["AVG"]) >= 2.0}})
    return out


def write_eee(step_dir: str | Path) -> list[Path]:
    """Write the record (and its samples sidecar) under ``STEP/eee/``; returns the written paths."""
    step_dir = Path(step_dir)
    record, instances, repo_path = eee_record(step_dir)
    root = step_dir / FOLDER
    paths = [root / repo_path]
    if instances:
        sidecar = root / record["detailed_evaluation_results"]["file_path"]
        with atomic_open(sidecar) as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in instances))
        paths.append(sidecar)
    write_json(paths[0], record)
    return paths
