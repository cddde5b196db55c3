"""The evaluation steps that wrap a method of this package: ``ppl`` (:mod:`.perplexity`), ``pos`` (:mod:`.pos`),
``codeswitch`` (:mod:`.codeswitch`) and ``eval respond`` (:mod:`.respond`, judged by :mod:`.judge`).

Each step declares its inputs (the texts or responses it reads, checked before any model loads), calls the
method and returns its tables; :class:`babelscope.steps.StepRun` does the rest (the done check, the shared
model, the request cache, provenance, atomic writes, barriers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.evaluate import codeswitch, perplexity, pos, respond
from babelscope.evaluate.codeswitch import CodeSwitchConfig
from babelscope.evaluate.perplexity import PplConfig
from babelscope.evaluate.pos import PosConfig
from babelscope.evaluate.respond import RespondConfig


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


def respond_inputs(cfg: RespondConfig) -> tuple[str, list[dict[str, Any]]]:
    """The kind of judge (``local``, ``openai``, ``none``) and the instructions to answer, after checking the judge
    options, the items and an endpoint (before any loading), each with a one-line error."""
    from babelscope.evaluate.judge import make_judge
    from babelscope.models.named import NAMED_MODELS

    kind = "local" if cfg.judge in NAMED_MODELS else cfg.judge  # `judge: qwen2.5-coder-1.5b`: that model, locally
    if kind not in ("local", "openai", "none"):
        raise BabelscopeError(f"--judge {cfg.judge!r}: use local, openai, none or a named model "
                              f"({', '.join(NAMED_MODELS)})")
    if cfg.judge in NAMED_MODELS and cfg.judge_model not in (None, cfg.judge):
        raise BabelscopeError(f"--judge {cfg.judge} and --judge-model {cfg.judge_model}: give one judge model")
    if cfg.judge_scoring not in ("generate", "choice", "each") or (cfg.judge_scoring != "generate"
                                                                     and kind != "local"):
        raise BabelscopeError(f"--judge-scoring {cfg.judge_scoring!r}: use generate, or choice / each with --judge "
                              "local")
    if cfg.retries < 0 or cfg.timeout <= 0:
        raise BabelscopeError(f"--retries {cfg.retries} / --timeout {cfg.timeout}: need retries >= 0, timeout > 0")
    items = respond.select_items(respond.read_instructions(cfg.instructions), cfg.langs, cfg.limit)
    if not items:
        raise BabelscopeError(f"--instructions {cfg.instructions}: no items for --langs {cfg.langs}")
    if cfg.judge == "openai":
        make_judge("openai", url=cfg.judge_url, api_model=cfg.judge_api_model, api_key_env=cfg.api_key_env,
                   timeout=cfg.timeout, retries=cfg.retries)  # raises the one-line error before any loading
    return kind, items


def respond_judge(cfg: RespondConfig, kind: str, loaded: tuple) -> tuple[Any, str]:
    """The judge of a respond step and its name: a local model (the step's own ``loaded`` model, or one loaded
    when first asked), or an endpoint."""
    from babelscope.evaluate.judge import make_judge
    from babelscope.models.engine import Engine
    from babelscope.models.named import NAMED_MODELS

    model, tokenizer, info = loaded
    factory = None
    if kind == "local":
        spec = cfg.judge if cfg.judge in NAMED_MODELS else cfg.judge_model or cfg.model

        def factory():
            if spec == cfg.model:
                judge_engine = Engine(model, tokenizer, batch_size=1, progress=False, checksum=info.checksum)
            else:
                from babelscope.models import load_model

                m, t, judge_info = load_model(spec, dtype=cfg.dtype, device=cfg.device)
                judge_engine = Engine(m, t, batch_size=1, progress=False, checksum=judge_info.checksum)
            judge_engine.state = None  # rank 0 judges alone: no work split over (or gathered from) other ranks
            return judge_engine

        from babelscope.models.loader import model_name

        judge_name = f"{info.name if spec == cfg.model else model_name(spec)} (local" + (
            f", {cfg.judge_scoring} scoring)" if cfg.judge_scoring != "generate" else ")")
    else:
        judge_name = f"{cfg.judge_api_model} @ {cfg.judge_url}"
    judge = make_judge(kind, url=cfg.judge_url, api_model=cfg.judge_api_model, api_key_env=cfg.api_key_env,
                       timeout=cfg.timeout, retries=cfg.retries, engine_factory=factory, scoring=cfg.judge_scoring)
    judge.max_tokens = cfg.judge_max_tokens
    return judge, judge_name


def judged_items(sr, judge, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``items`` judged, each judgment cached in the step's ``cache/judgments.jsonl`` (a re-run judges only what
    is missing); a server that does not answer: every response is kept, none is judged."""
    from babelscope.evaluate.judge import JudgeError, judge_all, judgment_key
    from babelscope.runs import RequestCache

    cache = RequestCache(sr.cache_dir / "judgments.jsonl")
    fatal = None
    if hasattr(judge, "check"):
        try:
            judge.check()
        except JudgeError as exc:
            fatal = exc
    return judge_all(items, judge, cache, lambda it: judgment_key(judge, it), fatal=fatal)


def run_respond(cfg: RespondConfig, run_dir, step: str = "respond", loaded=None) -> dict[str, Any]:
    """The ``babelscope eval respond`` step: generate, judge, write per-item judgments and per-language means."""
    import json

    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    kind, items = respond_inputs(cfg)

    def judged_all(doc: dict) -> bool:  # a run with failed judgments is not finished: retry them
        return not any(str(r.get("status", "ok")).startswith("failed") for r in doc["tables"]["per_item"]["rows"])

    inputs = text_sha256(json.dumps(it, sort_keys=True, ensure_ascii=False) for it in items)
    if (doc := sr.done(inputs=inputs, when=judged_all, write_config=False)) is not None:
        return doc
    model, tokenizer, info = sr.model()  # a model refused here (an adapter for another base) leaves no step folder
    sr.write_config()
    engine = sr.engine(batch_size=cfg.batch_size)
    respond.generate_responses(engine, tokenizer, items, cfg.max_new_tokens)
    if not engine.is_main:
        return sr.wait()
    judge_name = "none"
    if kind != "none":
        judge, judge_name = respond_judge(cfg, kind, (model, tokenizer, info))
        items = judged_items(sr, judge, items)
    rows = respond.response_rows(items)
    results = {"model": info.name, "judge": judge_name, "instructions": cfg.instructions,
               "pipeline_check": cfg.pipeline_check, "summary": respond.summarize(rows)}
    doc = sr.write(respond.KIND, results, {"per_language": respond.language_means(rows), "per_item": rows},
                   provenance(model=info.to_dict(), judge=judge_name))
    failed = [r for r in rows if str(r["status"]).startswith("failed")]
    if failed:
        raise BabelscopeError(
            f"{len(failed)}/{len(rows)} judgments failed ({failed[0]['status'][len('failed: '):]}); the responses "
            f"are kept in {sr.path}: fix the judge and re-run the same command to judge them"
        )
    return doc
