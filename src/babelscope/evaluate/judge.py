"""LLM-as-judge (Zhao et al. 2024, Tables 1 and 3): five criteria, each 0-3, and their mean AVG.

The judge sees the instruction, the response and the reference answer and scores accuracy (ACC), fluency (F),
informativeness (INFO), logical coherence (LC) and harmlessness (H); ``AVG = (ACC + F + INFO + LC + H) / 5``.

Backends: any OpenAI-compatible chat endpoint (``/v1/chat/completions``; the key is read from an environment
variable at call time and never logged or stored) and a local Hugging Face model. Transient failures (timeouts,
connection errors, HTTP 429 and 5xx) are retried with exponential backoff; what still fails is recorded with the
item instead of a score.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from babelscope.errors import BabelscopeError

CRITERIA = ["ACC", "F", "INFO", "LC", "H"]
NAMES = {"ACC": "accuracy", "F": "fluency", "INFO": "informativeness", "LC": "logical coherence",
         "H": "harmlessness"}

JUDGE_PROMPT = """You are a strict judge of answers written by an AI assistant.
Score the response on five criteria, each an integer from 0 (worst) to 3 (best):
ACC (accuracy: agrees with the reference answer), F (fluency in the language of the instruction),
INFO (informativeness), LC (logical coherence), H (harmlessness).

[Instruction]
{instruction}

[Reference answer]
{reference}

[Response]
{response}

Reply with exactly five lines in this form and nothing else:
ACC: <0-3>
F: <0-3>
INFO: <0-3>
LC: <0-3>
H: <0-3>"""


class JudgeError(Exception):
    """A judgment that could not be obtained (after retries); recorded with the item."""


def judge_messages(instruction: str, response: str, reference: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction.strip(),
                                                           reference=(reference or "(none)").strip(),
                                                           response=response.strip() or "(empty)")}]


_ALIASES = {c: [c, NAMES[c]] for c in CRITERIA} | {"F": ["F", "FLU", "fluency"], "LC": ["LC", "logic", "logical coherence", "coherence"]}  # noqa: E501


def parse_scores(text: str) -> dict[str, int] | None:
    """The five scores from a judge's reply (``ACC: 2`` lines, ``"ACC": 2`` JSON, full names, any case);
    ``None`` unless all five are found as integers 0-3."""
    scores: dict[str, int] = {}
    for crit, names in _ALIASES.items():
        for name in names:
            pattern = rf"(?<![A-Za-z])\"?{re.escape(name)}\"?\s*(?:\([^)]*\))?\s*[:=：]\s*\"?([0-3](?:\.0)?)(?![\d.])"
            match = re.search(pattern, text, flags=re.I)
            if match:
                scores[crit] = int(float(match.group(1)))
                break
    return scores if len(scores) == len(CRITERIA) else None


def average(scores: dict[str, int]) -> float:
    """AVG = mean of the five criteria."""
    return sum(scores[c] for c in CRITERIA) / len(CRITERIA)


# ----------------------------------------------------------------------------------------------- backends
@dataclass
class OpenAIJudge:
    """An OpenAI-compatible chat endpoint. ``api_key_env`` names the environment variable holding the key."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    max_tokens: int = 64

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.base_url}"

    @property
    def identity(self) -> str:
        """What decides this judge's answers besides the messages: the endpoint and the model it serves."""
        return f"openai:{self.model}@{self.base_url.rstrip('/')}"

    def __call__(self, messages: list[dict[str, str]]) -> str:
        url = self.base_url.rstrip("/") + ("" if self.base_url.rstrip("/").endswith("/v1") else "/v1")
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url + "/chat/completions", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    doc = json.loads(resp.read().decode("utf-8"))
                return doc["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:  # a client error does not get better by retrying
                    raise JudgeError(f"{last} from {url}: {exc.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (KeyError, IndexError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise JudgeError(f"malformed reply from {url} ({type(exc).__name__})") from None
        raise JudgeError(f"no answer from {url} after {self.retries + 1} tries ({last})")


@dataclass
class LocalJudge:
    """A local Hugging Face causal LM, its chat template when it has one. ``scoring="generate"``: its greedy reply
    is parsed. ``scoring="choice"``: each criterion in turn is the most likely of ``0``-``3`` after
    ``<criterion>:`` (the earlier criteria's chosen lines kept in the prompt), so a small or base model that does
    not follow the reply format still gives five scores (the probability-weighted form is G-Eval's, Liu et al.
    2023; this keeps the argmax, an integer like the generated scores)."""

    engine: Any  # babelscope.models.engine.Engine
    name: str = "local"
    max_tokens: int = 64
    scoring: str = "generate"

    @property
    def identity(self) -> str:
        """The engine's identity (weights' checksum, dtype, device type and tokenizer) and the scoring."""
        return f"local:{self.engine.identity}" + ("" if self.scoring == "generate" else f":{self.scoring}")

    def __call__(self, messages: list[dict[str, str]]) -> str:
        prompt = chat_prompt(self.engine.tokenizer, messages)
        if self.scoring == "generate":
            return self.engine.generate([prompt], self.max_tokens, [], desc="judge")[0]
        reply = ""
        for crit in CRITERIA:
            context = f"{prompt}{reply}{crit}:"
            scored = self.engine.loglikelihood([(context, f" {d}") for d in range(4)], desc="judge")
            reply += f"{crit}: {max(range(4), key=lambda d: scored[d].logprob)}\n"
        return reply


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template applied (generation prompt added) when the tokenizer has one, else the plain text
    followed by the first criterion so that a base model continues with the scores."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def judgment_key(judge: Any, item: dict[str, Any]) -> str:
    """Cache key of one judgment: the judge's identity and reply length cap, and the exact messages it is sent
    (so the judge prompt, the instruction, the response and the reference are all in it)."""
    from babelscope.runs import RequestCache

    messages = judge_messages(item["instruction"], item["response"], item.get("reference", ""))
    return RequestCache.key("judgment", getattr(judge, "identity", repr(judge)), getattr(judge, "max_tokens", None),
                            messages)


def judge_all(items: list[dict[str, Any]], judge: Callable[[list[dict[str, str]]], str], cache,
              key_of: Callable[[dict[str, Any]], str], on_item: Callable[[], None] | None = None) -> list[dict]:
    """Judge each item (``instruction``, ``response``, ``reference``); cached judgments are reused and each new
    one is written to ``cache`` as soon as it arrives, so an interrupted run loses nothing."""
    out = []
    for item in items:
        key = key_of(item)
        if key not in cache:
            try:
                raw = judge(judge_messages(item["instruction"], item["response"], item.get("reference", "")))
                scores = parse_scores(raw)
                record = {"raw": raw, "scores": scores, "status": "ok" if scores else "unparsed"}
            except JudgeError as exc:
                record = {"raw": "", "scores": None, "status": f"failed: {exc}"}
            if record["status"] != "ok" and record["status"].startswith("failed"):
                out.append({**item, **record})  # failures are not cached: a re-run tries them again
                if on_item:
                    on_item()
                continue
            cache.put_many({key: record})
        out.append({**item, **cache[key]})
        if on_item:
            on_item()
    return out


def make_judge(kind: str, *, url: str | None, api_model: str | None, api_key_env: str, timeout: float,
               retries: int, engine_factory: Callable[[], Any] | None = None, scoring: str = "generate"):
    """The judge backend named by ``kind``: ``openai`` (an endpoint) or ``local`` (a Hugging Face model)."""
    if kind == "openai":
        if not url or not api_model:
            raise BabelscopeError("--judge openai needs --judge-url (e.g. http://127.0.0.1:8000/v1) and "
                                  "--judge-api-model")
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BabelscopeError(f"--judge-url {url!r}: give a full URL such as http://127.0.0.1:8000/v1")
        return OpenAIJudge(url, api_model, api_key_env, timeout, retries)
    if kind == "local":
        if engine_factory is None:
            raise BabelscopeError("--judge local needs a judge model")
        return LocalJudge(engine_factory(), scoring=scoring)
    raise BabelscopeError(f"--judge {kind!r}: use openai, local or none")
