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

from babelscope.commands import StepFunction
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
    judge_scoring: str = opt("generate", "Local judge: generate (parse its reply), choice (each criterion in turn "
                             "the most likely of 0-3 after the earlier ones; for small or base judges that ignore the "
                             "reply format) or each (the same, every criterion on its own).")
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


def select_items(items: list[dict[str, Any]], langs: str, limit: int | None) -> list[dict[str, Any]]:
    """The items in ``langs`` (comma-separated, any spelling of a language, or ``all``), the first ``limit``."""
    if langs != "all":
        wanted = {_language_key(x.strip()) for x in langs.split(",") if x.strip()}
        items = [it for it in items if _language_key(it["lang"]) in wanted]
    return items[:limit] if limit else items


def generate_responses(engine, tokenizer, items: list[dict[str, Any]], max_new_tokens: int) -> None:
    """Each item's ``response``: greedy, at most ``max_new_tokens``, from :func:`response_prompt` (a base model
    stops at the end of its line, where it would go on with the next question)."""
    prompts = [response_prompt(tokenizer, it["instruction"], it["lang"]) for it in items]
    stop = ["\n"] if not getattr(tokenizer, "chat_template", None) else []
    for it, text in zip(items, engine.generate(prompts, max_new_tokens, stop, desc="responses"), strict=True):
        it["response"] = text.strip()


def response_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per item: its response, each criterion's score, their average and the judgment's status."""
    from babelscope.evaluate.judge import CRITERIA, average

    rows = []
    for it in items:
        scores = it.get("scores") or {}
        rows.append({"id": it["id"], "lang": it["lang"], "instruction": it["instruction"], "response": it["response"],
                     "reference": it.get("reference", ""), **{c: scores.get(c) for c in CRITERIA},
                     "AVG": average(scores) if scores else None, "status": it.get("status", "not judged"),
                     "judge_raw": it.get("raw", "")})
    return rows


def language_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per language: responses, judged responses and the mean of each criterion and of the average."""
    from babelscope.evaluate.judge import CRITERIA

    per_language = []
    for lang in dict.fromkeys(r["lang"] for r in rows):
        scored = [r for r in rows if r["lang"] == lang and r["AVG"] is not None]
        entry: dict[str, Any] = {"lang": lang, "responses": sum(r["lang"] == lang for r in rows),
                                 "judged": len(scored)}
        for c in [*CRITERIA, "AVG"]:
            entry[c] = sum(r[c] for r in scored) / len(scored) if scored else None
        per_language.append(entry)
    return per_language


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Responses, judged, failed and unparsed judgments, and the mean average score."""
    judged = [r for r in rows if r["AVG"] is not None]
    return {"responses": len(rows), "judged": len(judged),
            "failed": sum(str(r["status"]).startswith("failed") for r in rows),
            "unparsed": sum(r["status"] == "unparsed" for r in rows),
            "AVG": sum(r["AVG"] for r in judged) / len(judged) if judged else None}


#: the step moved to :func:`babelscope.evaluate.steps.run_respond`; this name still runs it
run = StepFunction("babelscope.evaluate.steps", "run_respond")
