"""Per-language perplexity end to end: CLI, results files, resume, bad input, and exactness on the real model."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from babelscope.evaluate.perplexity import PplConfig, run
from babelscope.models.engine import Engine
from conftest import SENTENCES
from numerics import TINY_FORWARD


def babelscope(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "babelscope.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "tiny.jsonl"
    rows = []
    for lang, text in zip(["eng", "fra", "deu", "spa"], SENTENCES[:4], strict=True):
        rows += [{"id": f"u{i}", "lang": lang, "text": (text + " ") * (i + 1)} for i in range(3)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_cli_writes_results_and_resumes(tiny_dir, corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "ppl",
        "--model",
        str(tiny_dir),
        "--corpus",
        f"{corpus}#parallel=true",
        "--langs",
        "en,fr,de",
        "--window",
        "16",
        "--run-dir",
        str(run_dir),
    ]
    proc = babelscope(*args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((run_dir / "ppl" / "results.json").read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "perplexity"
    assert doc["provenance"]["model"]["checksum"] and set(doc["provenance"]["data"]["sha256"]) == {"eng", "fra", "deu"}
    assert doc["config"]["window"] == 16 and (run_dir / "ppl" / "config.yaml").exists()
    rows = {r["lang"]: r for r in doc["tables"]["per_language"]["rows"]}
    assert set(rows) == {"eng", "fra", "deu"}
    for r in rows.values():
        assert r["ppl"] == pytest.approx(math.exp(r["nll"] / r["tokens"]))
        assert r["bits_per_byte"] == pytest.approx(r["nll"] / math.log(2) / r["bytes"])
        assert r["bits_per_unit"] == pytest.approx(r["nll"] / math.log(2) / 3)
    assert (run_dir / "ppl" / "per_language.csv").read_text().startswith("lang,")
    # a finished step is not recomputed; a report renders from the files alone
    mtime = (run_dir / "ppl" / "results.json").stat().st_mtime_ns
    assert babelscope(*args).returncode == 0
    assert (run_dir / "ppl" / "results.json").stat().st_mtime_ns == mtime
    assert babelscope("report", str(run_dir)).returncode == 0 and (run_dir / "report.html").exists()


def test_interrupted_run_resumes_from_request_cache(tiny_dir, corpus, tmp_path, monkeypatch):
    from babelscope.models import load_model
    from babelscope.models.engine import Engine
    from babelscope.runs import RequestCache

    loaded = load_model(str(tiny_dir))
    cfg = PplConfig(model=str(tiny_dir), corpus=str(corpus), langs="en,fr", window=16, batch_size=2)
    model = loaded[0]
    calls, saved = [], []
    put_many = RequestCache.put_many

    def saving(self, items):
        saved.append(len(items))
        return put_many(self, items)

    # scores reach the cache one head chunk (here 8 positions) at a time: crash at the forward after the first
    def crash_after_first_save(*_):
        calls.append(1)
        if saved:
            raise KeyboardInterrupt

    monkeypatch.setattr(RequestCache, "put_many", saving)
    monkeypatch.setattr(Engine, "__init__", functools.partialmethod(Engine.__init__, logit_chunk=8))
    handle = model.base_model.register_forward_hook(crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", loaded=lambda: loaded)
    handle.remove()
    monkeypatch.undo()
    assert not (tmp_path / "run" / "ppl" / "results.json").exists()  # nothing half-written
    cached = len(next((tmp_path / "run" / "ppl" / "cache").glob("*.jsonl")).read_text().splitlines())
    assert cached >= 1  # the first batch was kept (identical windows share one entry)
    calls.clear()
    counter = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    doc = run(cfg, tmp_path / "run", loaded=lambda: loaded)
    counter.remove()
    fresh = run(cfg, tmp_path / "fresh", loaded=lambda: loaded)
    total = sum(r["tokens"] for r in fresh["tables"]["per_language"]["rows"])
    resumed, full = doc["tables"]["per_language"]["rows"], fresh["tables"]["per_language"]["rows"]
    assert [r["tokens"] for r in resumed] == [r["tokens"] for r in full]
    # some windows from the cache, the rest recomputed in other batches: float32 rounding of the same forward
    assert [r["nll"] for r in resumed] == pytest.approx([r["nll"] for r in full], rel=TINY_FORWARD)
    assert len(calls) < math.ceil(total / 15 / 2) + 1  # fewer forwards than a fresh run


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--langs", "xx-nonsense"], "unknown language"),
        (["--langs", "ja"], "not in corpus"),
        (["--window", "1"], "window"),
    ],
)
def test_bad_input_one_line_exit_2(tiny_dir, corpus, tmp_path, extra, message):
    proc = babelscope(
        "ppl", "--model", str(tiny_dir), "--corpus", str(corpus), "--run-dir", str(tmp_path / "r"), *extra
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not list((tmp_path / "r").glob("*/results.json"))


def test_missing_and_empty_corpus(tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for spec in (str(tmp_path / "missing.jsonl"), str(empty)):
        proc = babelscope("ppl", "--model", str(tiny_dir), "--corpus", spec, "--run-dir", str(tmp_path / "r"))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_malformed_conllu_names_file_and_line(tiny_dir, tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("# sent_id = s1\n# text = A b\n1\tA\ta\tDET\t_\t_\t2\tdet\t_\t_\n2\tb\tb\n\n")
    proc = babelscope("ppl", "--model", str(tiny_dir), "--corpus", f"{bad}#lang=eng", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "bad.conllu:4" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_experiment_file_runs_steps_and_report(tiny_dir, corpus, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"run_dir: {tmp_path / 'run'}\ndefaults: {{model: {tiny_dir}}}\nsteps:\n"
        f"  - {{command: ppl, step: ppl-a, corpus: {corpus}, langs: 'en,fr', window: 16}}\n"
        f"  - {{command: ppl, step: ppl-b, corpus: {corpus}, langs: 'de', window: 32}}\n"
    )
    proc = babelscope("run", str(exp))
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "run" / "report.html").read_text()
    assert "ppl-a" in html and "ppl-b" in html
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {command: ppl, bogus: 1}\n")
    proc = babelscope("run", str(bad))
    assert proc.returncode == 2 and "bogus" in proc.stderr


def test_perplexities_from_a_notebook_equal_the_step(tmp_path):
    """``perplexities(model, tokenizer, texts)``: no run directory, the numbers of the step's per-unit rows;
    ``babelscope.evaluate.perplexity.run`` still names the step."""
    from babelscope.data import open_corpus
    from babelscope.evaluate import perplexity, steps
    from babelscope.models.loader import describe
    from conftest import build_tiny

    model, tok = build_tiny("gemma3")
    units = open_corpus("udhr-sample").units("fra")[:2]
    ppl = perplexity.perplexities(model, tok, [u.text for u in units], window=32, batch_size=2)
    doc = steps.run_ppl(PplConfig(langs="fr", max_units=2, window=32), tmp_path,
                        loaded=lambda: (model, tok, describe(model, tok, "tiny", "memory")))
    rows = doc["tables"]["per_unit"]["rows"]
    # the same windows through the same engine code: equal up to float32 summation order (batch composition)
    assert ppl == pytest.approx([math.exp(r["nll"] / r["tokens"]) for r in rows], rel=1e-5)
    assert perplexity.run.load() is steps.run_ppl


def test_real_model_matches_its_own_forward(default_model):
    """Our bits are the model's: equal (1e-5 relative) to the mean token loss of its own forward."""
    from babelscope.data import open_corpus

    model, tok, info = default_model
    corpus = open_corpus("udhr-sample")
    texts = [corpus.units(lang)[0].text for lang in ("eng", "cmn-Hans", "arb", "hin")]
    engine = Engine(model, tok, batch_size=4, progress=False)
    scores = engine.rolling_loglikelihood(texts, window=64)
    for text, score in zip(texts, scores, strict=True):
        windows = engine.windows(engine.encode([text])[0], 64)
        ref_loss, ref_tokens = 0.0, 0
        for seq, n in windows:
            x = torch.tensor([seq])
            with torch.no_grad():
                out = model(input_ids=x)
            ref_loss += F.cross_entropy(out.logits[0, :-1].double(), x[0, 1:], reduction="sum").item()
            ref_tokens += n
        assert score.tokens == ref_tokens
        assert score.nll / score.tokens == pytest.approx(ref_loss / ref_tokens, rel=TINY_FORWARD)  # f32 vs f64


def test_real_model_languages_rank_sensibly(default_model, tmp_path):
    """On parallel UDHR articles the 270M model needs fewer bits for English than for Amharic or Lao."""
    cfg = PplConfig(corpus="udhr-sample", langs="en,fr,am,lo", max_units=1, batch_size=4)
    doc = run(cfg, tmp_path / "run", loaded=lambda: default_model)
    rows = {r["lang"]: r for r in doc["tables"]["per_language"]["rows"]}
    assert rows["eng"]["bits_per_unit"] < rows["fra"]["bits_per_unit"] < rows["amh"]["bits_per_unit"]
    assert rows["eng"]["bits_per_unit"] < rows["lao"]["bits_per_unit"]
    assert all(r["units"] == 1 for r in rows.values())
