"""The evaluation steps that wrap a method of this package: ``ppl`` (:mod:`.perplexity`), ``pos`` (:mod:`.pos`)
and ``codeswitch`` (:mod:`.codeswitch`).

Each step declares its inputs (the texts or responses it reads, checked before any model loads), calls the
method and returns its tables; :class:`babelscope.steps.StepRun` does the rest (the done check, the shared
model, the request cache, provenance, atomic writes, barriers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.evaluate import codeswitch, perplexity, pos
from babelscope.evaluate.codeswitch import CodeSwitchConfig
from babelscope.evaluate.perplexity import PplConfig
from babelscope.evaluate.pos import PosConfig


# ------------------------------------------------------------------------------------------------- ppl
def run_ppl(cfg: PplConfig, run_dir, step: str = "ppl", loaded=None) -> dict[str, Any]:
    """The ``babelscope ppl`` step: score, write results (resumable through the request cache), return the doc.

    ``loaded`` is an optional zero-argument callable returning ``(model, tokenizer, info)`` (shared models).
    """
    from babelscope.data import open_corpus, parse_languages
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    if cfg.window < 2:
        raise BabelscopeError(f"--window {cfg.window}: a window needs at least 2 tokens (BOS + one scored)")
    corpus = open_corpus(cfg.corpus)
    languages = corpus.languages() if cfg.langs == "all" else [lang.code for lang in parse_languages(cfg.langs)]
    units = perplexity.select_units(corpus, [corpus.match_language(lang) for lang in languages], cfg.max_units)
    if (doc := sr.done(inputs={code: text_sha256(u.text for u in us) for code, us in units.items()})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "perplexity")
    engine = sr.engine(batch_size=cfg.batch_size)
    rows, unit_rows, checksums = perplexity.language_rows(engine, corpus, languages, cfg)
    if not engine.is_main:
        return sr.wait()
    results = {"model": info.name, "corpus": corpus.name, "window": cfg.window, "parallel": corpus.parallel,
               "summary": perplexity.summarize(rows)}
    prov = provenance(model=info.to_dict(), data={"corpus": corpus.name, "sha256": checksums})
    return sr.write(perplexity.KIND, results, {"per_language": rows, "per_unit": unit_rows}, prov)


# ------------------------------------------------------------------------------------------------- pos
def run_pos(cfg: PosConfig, run_dir, step: str = "pos", loaded=None) -> dict[str, Any]:
    """The ``babelscope eval pos`` step: prompts from the treebanks, the model's continuations, tag accuracy."""
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    settings = pos.parse_settings(cfg.settings)
    langs = [x.strip() for x in cfg.langs.split(",") if x.strip()]
    data = {lang: pos.treebank_split(lang, cfg.treebanks) for lang in langs}
    english = pos.treebank_split("en", cfg.treebanks)[0] if "EN" in settings else []
    english = pos.short_sentences(english, cfg.max_words)
    jobs = pos.build_jobs(data, english, settings, shots=cfg.shots, runs=cfg.runs, queries=cfg.queries,
                          max_words=cfg.max_words, seed=cfg.seed)
    if (doc := sr.done(inputs=text_sha256(f"{job.prompt}\0{job.gold}" for job in jobs))) is not None:
        return doc
    model, tokenizer, info = sr.model()
    engine = sr.engine(batch_size=cfg.batch_size)
    outputs = pos.continuations(engine, jobs)
    if not engine.is_main:
        return sr.wait()
    per_query, per_run, per_language, summary = pos.accuracies(jobs, outputs, langs, settings)
    results = {"model": info.name, "shots": cfg.shots, "runs": cfg.runs, "settings": settings, "summary": summary}
    return sr.write(pos.KIND, results, {"per_language": per_language, "per_run": per_run, "per_query": per_query},
                    provenance(model=info.to_dict()))


# ------------------------------------------------------------------------------------------------- codeswitch
def read_responses(spec: str, run_dir) -> list[dict[str, Any]]:
    """Responses from a step of the run directory (its ``per_item`` table) or from a JSONL file."""
    from babelscope.evaluate.benchmarks import read_jsonl
    from babelscope.runs import load_results

    step = Path(run_dir) / spec
    if (step / "results.json").is_file():
        rows = load_results(step)["tables"]["per_item"]["rows"]
    elif Path(spec).suffix == ".jsonl":
        rows = read_jsonl(Path(spec))
    else:
        raise BabelscopeError(f"--responses {spec!r}: neither a finished step in {run_dir} nor a .jsonl file")
    for i, r in enumerate(rows):
        if not isinstance(r.get("response"), str) or not r.get("lang"):
            raise BabelscopeError(f"{r.get('_source', spec)}: row {i + 1} needs 'lang' and 'response'; fix it")
        r.setdefault("id", str(i))
    return rows


def responses_model(cfg: CodeSwitchConfig, run_dir) -> str:
    """The name of the model that wrote the responses: the responses step's own, else ``cfg.model``."""
    from babelscope.runs import load_results

    step = Path(run_dir) / cfg.responses
    if (step / "results.json").is_file():
        name = (load_results(step).get("results") or {}).get("model")
        if isinstance(name, str) and name:
            return name
    return cfg.model


def run_codeswitch(cfg: CodeSwitchConfig, run_dir, step: str = "codeswitch", loaded=None) -> dict[str, Any]:
    """The ``babelscope eval codeswitch`` step (no model needed: it reads responses)."""
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    responses = read_responses(cfg.responses, run_dir)
    sha = text_sha256(r["response"] for r in responses)
    if (doc := sr.done(inputs={"responses": sha})) is not None:
        return doc
    if not is_main_process():
        return sr.wait()
    per_language, per_response = codeswitch.codeswitch_rows(responses, cfg)
    results = {"model": responses_model(cfg, run_dir), "responses": cfg.responses, "responses_sha256": sha,
               "summary": codeswitch.summarize(per_response)}
    return sr.write(codeswitch.KIND, results, {"per_language": per_language, "per_response": per_response},
                    provenance(detector="py3langid"))
