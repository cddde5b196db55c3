"""Results other tools read: lm-evaluation-harness's files checked with the harness itself (its table printer
reads ours; its own samples file for the same items equals ours), and the export's bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from babelscope.evaluate.knowledge import BenchConfig, run
from conftest import build_tiny
from numerics import TINY_FORWARD, f32_bound


@pytest.fixture(scope="module")
def tiny():
    from babelscope.models.loader import describe

    model, tok = build_tiny("gemma3")
    return model, tok, describe(model, tok, "tiny", "memory")


def harness_samples(model, tok, workdir: Path, subset: str, limit: int,
                    softmax_dtype: str | None = None) -> tuple[dict, list[dict]]:
    """The harness's own results and samples files (its EvaluationTracker) for its XCOPA task on our data."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    from babelscope.evaluate.harness import harness_model, harness_task

    task = harness_task("xcopa", subset, workdir / "task")
    lm = harness_model(model, tok, softmax_dtype=softmax_dtype)
    res = simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=True)
    tracker = EvaluationTracker(output_path=str(workdir / "out"))
    samples = res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=samples)
    for name in res["configs"]:
        tracker.save_results_samples(task_name=name, samples=samples[name])
    (path,) = (workdir / "out").rglob("samples_*.jsonl")
    return res, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lm_eval_files_read_by_the_harness_and_equal_its_samples(tiny, tmp_path):
    check_against_harness(*tiny, tmp_path, "it", 5, TINY_FORWARD)  # both float32 forwards of the same model


@pytest.mark.slow
def test_real_model_lm_eval_samples_equal_the_harness(default_model, tmp_path):
    """Gemma 3 270M: our samples file against the harness's on the same XCOPA items (harness in float64)."""
    # Both use the same float32 logits; ours reduces them in float32 (a log-sum-exp over V = 2^18 entries, γ_18,
    # and a few roundings per token), the harness in float64.
    check_against_harness(*default_model, tmp_path, "zh", 8, f32_bound(18, 8), softmax_dtype="float64")


def check_against_harness(model, tok, info, tmp_path: Path, subset: str, limit: int, rel: float,
                          softmax_dtype: str | None = None) -> None:
    from lm_eval.utils import make_table

    run(BenchConfig(benchmark="xcopa", subsets=subset, limit=limit), tmp_path, "bench-xcopa",
        loaded=lambda: (model, tok, info))
    folder = tmp_path / "bench-xcopa" / "lm-eval"
    (results_path,) = folder.glob("results_*.json")
    (samples_path,) = folder.glob(f"samples_xcopa_{subset}_*.jsonl")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for key in ("results", "configs", "versions", "n-shot", "n-samples", "config"):
        assert key in results
    table = make_table(results)  # the harness's own printer
    print(table)
    assert f"xcopa_{subset}" in table and "acc" in table and "acc_norm" in table
    ours = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines()]
    theirs_results, theirs = harness_samples(model, tok, tmp_path / "harness", subset, limit, softmax_dtype)
    assert len(ours) == len(theirs) == limit
    for a, b in zip(ours, theirs, strict=True):
        for key in ("doc_id", "doc", "target", "arguments", "filter", "doc_hash", "prompt_hash", "target_hash", "acc"):
            assert a[key] == b[key], key
        lls_a = [float(r[0][0]) for r in a["resps"]]
        lls_b = [float(r[0][0]) for r in b["resps"]]
        print("per-item log-likelihoods, ours vs the harness's:", lls_a, lls_b)
        assert lls_a == pytest.approx(lls_b, rel=rel)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]  # is_greedy
        assert [float(r[0]) for r in a["filtered_resps"]] == pytest.approx(lls_b, rel=rel)
    name = f"babelscope_xcopa_{subset}"  # the harness task over the same local data
    assert results["results"][f"xcopa_{subset}"]["acc,none"] == theirs_results["results"][name]["acc,none"]
    assert results["results"][f"xcopa_{subset}"]["acc_stderr,none"] == pytest.approx(
        theirs_results["results"][name]["acc_stderr,none"], rel=1e-12)  # the same float64 formula


def test_export_refuses_a_step_that_is_not_a_benchmark(tmp_path):
    from babelscope.runs import Step

    Step(tmp_path, "ppl").write_results("perplexity", {"model": "x"}, {"r": 1}, {}, {"created": "now"})
    proc = subprocess.run([sys.executable, "-m", "babelscope.cli", "export", "lm-eval", str(tmp_path / "ppl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a benchmark" in proc.stderr
    assert not (tmp_path / "ppl" / "lm-eval").exists()


SCHEMAS = Path(__file__).parent / "data" / "every_eval_ever"


def validate_eee(paths: list[Path]) -> tuple[dict, list[dict]]:
    """Validate a record and its sidecar against Every Eval Ever 0.3.0's own JSON schemas."""
    import jsonschema

    record = json.loads(paths[0].read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(json.loads((SCHEMAS / "eval.schema.json").read_text())).validate(record)
    instances = []
    if len(paths) > 1:
        schema = jsonschema.Draft7Validator(json.loads((SCHEMAS / "instance_level_eval.schema.json").read_text()))
        text = paths[1].read_text(encoding="utf-8")
        instances = [json.loads(line) for line in text.splitlines()]
        for inst in instances:
            schema.validate(inst)
            assert inst["evaluation_id"] == record["evaluation_id"]
        detail = record["detailed_evaluation_results"]
        assert detail["total_rows"] == len(instances)
        import hashlib

        assert detail["checksum"] == hashlib.sha256(text.encode()).hexdigest()
        assert paths[1].as_posix().endswith(detail["file_path"])
    return record, instances


def test_eee_records_validate_for_a_benchmark_and_a_perplexity_step(tiny, tmp_path):
    from babelscope.evaluate.perplexity import PplConfig
    from babelscope.evaluate.perplexity import run as run_ppl
    from babelscope.export.eee import write_eee

    model, tok, info = tiny
    doc = run(BenchConfig(benchmark="xcopa", subsets="it,zh", path="embedded/xcopa-sample.jsonl", limit=4),
              tmp_path, "bench", loaded=lambda: (model, tok, info))
    record, instances = validate_eee(write_eee(tmp_path / "bench"))
    accs = {r["evaluation_name"]: r["score_details"]["score"] for r in record["evaluation_results"]
            if r["metric_config"]["metric_id"] == "accuracy"}
    assert accs == {r["subset"]: r["acc"] for r in doc["tables"]["per_subset"]["rows"]}
    assert len(instances) == 8 and {i["evaluation"]["score"] for i in instances} <= {0.0, 1.0}
    assert [i["evaluation"]["score"] for i in instances] == [r["acc"] for r in doc["tables"]["per_item"]["rows"]]
    run_ppl(PplConfig(corpus="udhr-sample", langs="en,fr", window=64), tmp_path, "ppl",
            loaded=lambda: (model, tok, info))
    record, instances = validate_eee(write_eee(tmp_path / "ppl"))
    assert not instances and {r["metric_config"]["metric_id"] for r in record["evaluation_results"]} >= {
        "perplexity", "bits_per_byte"}


def test_eee_export_refuses_a_parameter_map(tmp_path):
    from babelscope.runs import Step

    Step(tmp_path, "imp").write_results("regions-importance", {"model": "x"}, {"r": 1}, {}, {"created": "now"})
    proc = subprocess.run([sys.executable, "-m", "babelscope.cli", "export", "eee", str(tmp_path / "imp")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "safetensors" in proc.stderr
    assert not (tmp_path / "imp" / "eee").exists()


def test_parameter_maps_load_with_plain_safetensors_as_documented(tiny, tmp_path):
    """docs/formats.md: importance scores, region masks and neuron sets open with ``safetensors`` alone, keyed by
    the Hugging Face parameter names, with the documented JSON metadata."""
    from safetensors import safe_open

    from babelscope.neurons.configs import NeuronsConfig
    from babelscope.neurons.lape import run as find_neurons
    from babelscope.regions import importance, select

    model, tok, info = tiny
    loaded = lambda: (model, tok, info)  # noqa: E731
    importance.run(importance.ImportanceConfig(langs="eng,fra", max_tokens=32, window=32), tmp_path,
                   "regions-importance", loaded)
    select.run(select.SelectConfig(k="0.05", scope="global"), tmp_path, "regions-select")
    find_neurons(NeuronsConfig(langs="eng,fra,deu", max_tokens=64, window=32, top_rate=0.05), tmp_path, "neurons",
                 loaded)
    names = dict(model.named_parameters())
    files = {"regions-importance/importance.safetensors": "babelscope.importance/1",
             "regions-select/masks/top-k0.05-global.safetensors": "babelscope.region-mask/1",
             "neurons/neurons.safetensors": "babelscope.neurons/1"}
    for rel, fmt in files.items():
        with safe_open(tmp_path / rel, framework="pt") as fh:
            meta = {k: json.loads(v) for k, v in fh.metadata().items()}
            assert meta["format"] == fmt and meta["model"] == info.checksum and meta["dtype"] == "float32"
            assert meta["languages"] and set(meta["tokens"]) == set(meta["languages"])
            assert all(isinstance(n, int) and n > 0 for n in meta["tokens"].values())
            if fmt == "babelscope.neurons/1":
                layers, width = fh.get_tensor("probs").shape[:2]
                assert len(meta["weights"]) == layers  # per layer: neuron j = row j of "in", column j of "down"
                for ws in meta["weights"]:
                    assert all(names[w].shape[0] == width for w in ws["in"])
                    assert all(names[w].shape[1] == width for w in ws["down"])
                assert fh.get_tensor(f"mask/{meta['languages'][0]}").shape == (layers, width)
                continue
            for key in fh.keys():  # noqa: SIM118 - keyed by the parameter names, with their shapes
                assert key in names and tuple(fh.get_slice(key).get_shape()) == tuple(names[key].shape)
            if fmt == "babelscope.region-mask/1":
                assert meta["k"] == 0.05 and meta["region"] == "top"
