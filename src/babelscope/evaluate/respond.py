"""Response quality: generate answers to an instruction set and have them judged (Zhao et al. 2024, Tables 1, 3).

Instructions come from a JSONL file (``instruction``/``question``, ``reference``/``std_answer``, ``lang``; BELLE's
``eval_set.json`` reads as is, as Chinese) or from ``embedded`` (a few of our own, for the demo). Prompts use the
model's chat template when it has one; a base model gets the language's own question and answer words.
Judgments are cached per item (instruction, response, reference, judge), so a re-run judges only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, opt

KIND = "responses"


@dataclass
class RespondConfig:
    model: str = "gemma-3-270m"
    instructions: str = opt("embedded", "'embedded' (a few of ours), 'belle' (BELLE eval set, research-only) or a "
                            "JSONL of instruction/reference/lang.")
    langs: str = languages("all", "Only these languages (comma-separated) or 'all'.")
    limit: int | None = count(None, "First N instructions.")
    max_new_tokens: int = count(64, "Response length cap in tokens.")
    judge: str = opt("local", "local (a Hugging Face model, --judge-model), a named model run locally (e.g. "
                     "qwen2.5-coder-1.5b), openai (an OpenAI-compatible server) or none.")
    judge_model: str | None = opt(None, "Local judge model spec (default: --model).")
    judge_url: str | None = opt(None, "Endpoint base URL, e.g. http://127.0.0.1:8000/v1.")
    judge_api_model: str | None = opt(None, "Model name at the endpoint.")
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable with the endpoint's API key (the key itself is "
                           "never stored).")
    timeout: float = opt(60.0, "Seconds per judge request.")
    retries: int = count(4, "Retries on timeouts, connection errors, 429 and 5xx.", minimum=0)
    judge_max_tokens: int = count(64, "Judge reply length cap in tokens.")
    judge_scoring: str = opt("generate", "Local judge: generate (parse its reply) or choice (each criterion the "
                             "most likely of 0-3; for small or base judges that ignore the reply format).")
    pipeline_check: bool = opt(False, "Label results as a pipeline check.")
    batch_size: int = count(4, "Prompts per generation batch.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


def read_instructions(spec: str) -> list[dict[str, Any]]:
    """Items ``{id, lang, instruction, reference}`` from ``embedded``, ``belle`` or a JSONL file."""
    import yaml

    from babelscope.evaluate.benchmarks import TASKS_DIR, data_path, read_jsonl

    if spec == "embedded":
        return [dict(x) for x in yaml.safe_load((TASKS_DIR / "instructions.yaml").read_text("utf-8"))["items"]]
    path = data_path("bench/belle/eval_set.json") if spec == "belle" else Path(spec)
    items = []
    for i, row in enumerate(read_jsonl(path)):
        instruction = row.get("instruction") or row.get("question")
        if not isinstance(instruction, str) or not instruction.strip():
            raise BabelscopeError(f"{row['_source']}: no 'instruction' (or 'question'); fix or remove the row")
        items.append({"id": str(row.get("id", i)), "lang": row.get("lang") or ("zh" if spec == "belle" else "und"),
                      "instruction": instruction,
                      "reference": row.get("reference") or row.get("std_answer") or row.get("output") or "",
                      "category": row.get("class", "")})
    return items


def response_prompt(tokenizer, instruction: str, lang: str) -> str:
    """The chat template when the tokenizer has one, else the language's own question/answer words."""
    from babelscope.evaluate.benchmarks import load_task

    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    words = load_task("mgsm")["words"].get(lang.split("-")[0])
    if words is None:
        return instruction.strip() + "\n"
    return f"{words['question']}{instruction.strip()}\n{words['answer']}"


def _language_key(lang: str) -> str:
    from babelscope.data.languages import resolve_language

    try:
        return resolve_language(lang).iso639_1 or lang
    except BabelscopeError:
        return lang


def run(cfg: RespondConfig, run_dir, step: str = "respond", loaded=None) -> dict[str, Any]:
    """The ``babelscope eval respond`` step: generate, judge, write per-item judgments and per-language means."""
    import json

    from babelscope.evaluate.judge import CRITERIA, JudgeError, average, judge_all, judgment_key, make_judge
    from babelscope.models.engine import Engine
    from babelscope.runs import RequestCache, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    from babelscope.models.named import NAMED_MODELS

    kind = "local" if cfg.judge in NAMED_MODELS else cfg.judge  # `judge: qwen2.5-coder-1.5b`: that model, locally
    if kind not in ("local", "openai", "none"):
        raise BabelscopeError(f"--judge {cfg.judge!r}: use local, openai, none or a named model "
                              f"({', '.join(NAMED_MODELS)})")
    if cfg.judge in NAMED_MODELS and cfg.judge_model not in (None, cfg.judge):
        raise BabelscopeError(f"--judge {cfg.judge} and --judge-model {cfg.judge_model}: give one judge model")
    if cfg.judge_scoring not in ("generate", "choice") or (cfg.judge_scoring == "choice" and kind != "local"):
        raise BabelscopeError(f"--judge-scoring {cfg.judge_scoring!r}: use generate, or choice with --judge local")
    if cfg.retries < 0 or cfg.timeout <= 0:
        raise BabelscopeError(f"--retries {cfg.retries} / --timeout {cfg.timeout}: need retries >= 0, timeout > 0")
    items = read_instructions(cfg.instructions)
    if cfg.langs != "all":
        wanted = {_language_key(x.strip()) for x in cfg.langs.split(",") if x.strip()}
        items = [it for it in items if _language_key(it["lang"]) in wanted]
    items = items[: cfg.limit] if cfg.limit else items
    if not items:
        raise BabelscopeError(f"--instructions {cfg.instructions}: no items for --langs {cfg.langs}")
    if cfg.judge == "openai":
        make_judge("openai", url=cfg.judge_url, api_model=cfg.judge_api_model, api_key_env=cfg.api_key_env,
                   timeout=cfg.timeout, retries=cfg.retries)  # raises the one-line error before any loading

    def judged_all(doc: dict) -> bool:  # a run with failed judgments is not finished: retry them
        return not any(str(r.get("status", "ok")).startswith("failed") for r in doc["tables"]["per_item"]["rows"])

    inputs = text_sha256(json.dumps(it, sort_keys=True, ensure_ascii=False) for it in items)
    if (doc := sr.done(inputs=inputs, when=judged_all, write_config=False)) is not None:
        return doc
    model, tokenizer, info = sr.model()  # a model refused here (an adapter for another base) leaves no step folder
    sr.write_config()
    engine = sr.engine(batch_size=cfg.batch_size)
    prompts = [response_prompt(tokenizer, it["instruction"], it["lang"]) for it in items]
    stop = ["\n"] if not getattr(tokenizer, "chat_template", None) else []  # a base model goes on with Q/A
    for it, text in zip(items, engine.generate(prompts, cfg.max_new_tokens, stop, desc="responses"), strict=True):
        it["response"] = text.strip()
    if not engine.is_main:
        return sr.wait()
    judge_name = "none"
    if kind != "none":
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
                ", choice scoring)" if cfg.judge_scoring == "choice" else ")")
        else:
            factory = None
            judge_name = f"{cfg.judge_api_model} @ {cfg.judge_url}"
        judge = make_judge(kind, url=cfg.judge_url, api_model=cfg.judge_api_model, api_key_env=cfg.api_key_env,
                           timeout=cfg.timeout, retries=cfg.retries, engine_factory=factory,
                           scoring=cfg.judge_scoring)
        judge.max_tokens = cfg.judge_max_tokens
        cache = RequestCache(sr.cache_dir / "judgments.jsonl")
        fatal = None
        if hasattr(judge, "check"):  # a server that does not answer: every response is kept, none is judged
            try:
                judge.check()
            except JudgeError as exc:
                fatal = exc
        items = judge_all(items, judge, cache, lambda it: judgment_key(judge, it), fatal=fatal)
    rows = []
    for it in items:
        scores = it.get("scores") or {}
        rows.append({"id": it["id"], "lang": it["lang"], "instruction": it["instruction"], "response": it["response"],
                     "reference": it.get("reference", ""), **{c: scores.get(c) for c in CRITERIA},
                     "AVG": average(scores) if scores else None, "status": it.get("status", "not judged"),
                     "judge_raw": it.get("raw", "")})
    per_language = []
    for lang in dict.fromkeys(r["lang"] for r in rows):
        scored = [r for r in rows if r["lang"] == lang and r["AVG"] is not None]
        entry: dict[str, Any] = {"lang": lang, "responses": sum(r["lang"] == lang for r in rows),
                                 "judged": len(scored)}
        for c in [*CRITERIA, "AVG"]:
            entry[c] = sum(r[c] for r in scored) / len(scored) if scored else None
        per_language.append(entry)
    judged = [r for r in rows if r["AVG"] is not None]
    summary = {"responses": len(rows), "judged": len(judged),
               "failed": sum(str(r["status"]).startswith("failed") for r in rows),
               "unparsed": sum(r["status"] == "unparsed" for r in rows),
               "AVG": sum(r["AVG"] for r in judged) / len(judged) if judged else None}
    results = {"model": info.name, "judge": judge_name, "instructions": cfg.instructions,
               "pipeline_check": cfg.pipeline_check, "summary": summary}
    doc = sr.write(KIND, results, {"per_language": per_language, "per_item": rows},
                   provenance(model=info.to_dict(), judge=judge_name))
    failed = [r for r in rows if str(r["status"]).startswith("failed")]
    if failed:
        raise BabelscopeError(
            f"{len(failed)}/{len(rows)} judgments failed ({failed[0]['status'][len('failed: '):]}); the responses "
            f"are kept in {sr.path}: fix the judge and re-run the same command to judge them"
        )
    return doc
