"""Code-switching rate (Zhao et al. 2024, Fig. 4): how often a response in language T slips into another language.

For response ``r`` in target language ``T``, after removing code (fenced and inline), URLs, e-mail addresses,
numbers and names (capitalised words and acronyms):

* a **script switch** is a run of at least ``min_letters`` letters in a script that ``T`` does not use
  (Latin words inside Chinese, Cyrillic inside Hindi, ...);
* a **same-script switch** is a clause of at least ``min_words`` words in one of ``T``'s scripts that a
  language-identification model (py3langid, restricted to ``T`` and the ``candidates``) gives to another
  language with probability at least ``threshold``.

``switched(r) = 1`` if ``r`` has either; the rate for ``T`` is ``mean_r switched(r)`` over its responses.

The method is :func:`switch_segments` (one text) and :func:`codeswitch_rows` (responses -> tables); the step
(``babelscope eval codeswitch``, which reads a respond step's responses) is
:func:`babelscope.evaluate.steps.run_codeswitch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from babelscope.commands import StepFunction
from babelscope.fields import count, opt

KIND = "codeswitch"

#: ISO 15924 script of a language -> the character scripts (char_script) its text uses.
SCRIPT_SETS = {"Hans": {"Hani"}, "Hant": {"Hani"}, "Hani": {"Hani"}, "Jpan": {"Hani", "Hira", "Kana"},
               "Kore": {"Hang", "Hani"}, "Hang": {"Hang", "Hani"}}
CANDIDATES = "en,zh,es,fr,de,ru,pt,it,ja,ko,ar,hi,id,vi,tr,nl,pl,sv"

_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_URL = re.compile(r"https?://\S+|www\.\S+|\S+@\S+\.\w+")
_NUMBER = re.compile(r"[+-]?\d[\d.,:/%]*")
_NAME = re.compile(r"(?<![\w'])(?:[A-Z][a-z]+|[A-Z]{2,}\w*)(?![\w'])")  # capitalised words and acronyms
_CLAUSE = re.compile(r"[^.!?;:\n。！？；：]+")


@dataclass
class CodeSwitchConfig:
    model: str = "gemma-3-270m"  # only recorded when ``responses`` is a JSONL file (else the responding step's)
    responses: str = opt("respond", "A finished step in the run directory (e.g. respond) or a JSONL of "
                         "id/lang/response.")
    min_letters: int = count(2, "Letters a run in a foreign script needs to count.")
    min_words: int = count(5, "Words a clause needs before language identification.")
    threshold: float = opt(0.95, "Language-identification probability for a switch.")
    candidates: str = opt(CANDIDATES, "Languages the identifier chooses among (ISO 639-1, comma-separated; the "
                          "response's own is added).")


def clean(text: str) -> str:
    """The text without code, URLs, e-mail addresses and numbers (each replaced by a space)."""
    for pattern in (_CODE, _URL, _NUMBER):
        text = pattern.sub(" ", text)
    return text


def target_scripts(lang: str) -> tuple[set[str], str | None]:
    """The character scripts of language ``lang`` and its ISO 639-1 code (for language identification)."""
    from babelscope.data.languages import resolve_language

    language = resolve_language(lang)
    script = language.script or "Latn"
    return SCRIPT_SETS.get(script, {script}), language.iso639_1


def script_runs(text: str) -> list[tuple[str, str]]:
    """Maximal runs of letters of one script: ``[(script, run text)]``; spaces and marks join a run."""
    from babelscope.data.languages import char_script

    runs: list[tuple[str, str]] = []
    current, buf = "", []
    for ch in text:
        s = char_script(ch)
        if not s:
            if buf and (ch.isspace() or ch in "-'’"):
                buf.append(ch)
            elif buf:
                runs.append((current, "".join(buf).strip()))
                current, buf = "", []
            continue
        if s != current and buf:
            runs.append((current, "".join(buf).strip()))
            buf = []
        current = s
        buf.append(ch)
    if buf:
        runs.append((current, "".join(buf).strip()))
    return runs


@cache
def _identifier(candidates: tuple[str, ...]):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(candidates))
    return ident


def switch_segments(text: str, lang: str, *, min_letters: int = 2, min_words: int = 5, threshold: float = 0.95,
                    candidates: str = CANDIDATES) -> list[dict[str, Any]]:
    """Segments of ``text`` in another language than ``lang``: ``[{"text", "by": script|langid, "detected"}]``."""
    scripts, iso1 = target_scripts(lang)
    body = clean(text)
    found = []
    for script, run in script_runs(body):
        if script in scripts:
            continue
        words = _NAME.sub(" ", run) if script == "Latn" else run  # Latin names inside other scripts are names
        letters = sum(c.isalpha() for c in words)
        if letters >= min_letters:
            found.append({"text": run, "by": "script", "detected": script})
    if iso1:
        pool = tuple(sorted({iso1, *[c.strip() for c in candidates.split(",") if c.strip()]}))
        ident = _identifier(pool)
        for clause in _CLAUSE.findall(body):
            kept = "".join(ch if _in_scripts(ch, scripts) or not ch.isalpha() else " " for ch in clause)
            kept = _NAME.sub(" ", kept[:1].lower() + kept[1:])  # the clause's first word is not a name
            if len(kept.split()) < min_words or len(scripts & {"Hani", "Hira", "Kana", "Hang"}) and len(kept) < 8:
                continue
            detected, prob = ident.classify(kept)
            if detected != iso1 and prob >= threshold:
                found.append({"text": clause.strip(), "by": "langid", "detected": detected,
                              "probability": round(float(prob), 4)})
    return found


def _in_scripts(ch: str, scripts: set[str]) -> bool:
    from babelscope.data.languages import char_script

    return char_script(ch) in scripts


def codeswitch_rows(responses: list[dict[str, Any]], cfg: CodeSwitchConfig) -> tuple[list[dict], list[dict]]:
    """Per-response rows (segments found) and per-language rates."""
    per_response = []
    for r in responses:
        segs = switch_segments(r["response"], r["lang"], min_letters=cfg.min_letters, min_words=cfg.min_words,
                               threshold=cfg.threshold, candidates=cfg.candidates)
        per_response.append({"id": r["id"], "lang": r["lang"], "switched": bool(segs),
                             "segments": " | ".join(f"{s['text']} [{s['detected']}]" for s in segs),
                             "response": r["response"]})
    langs: dict[str, list[bool]] = {}
    for row in per_response:
        langs.setdefault(row["lang"], []).append(row["switched"])
    per_language = [{"lang": lang, "responses": len(v), "switched": sum(v), "rate": sum(v) / len(v)}
                    for lang, v in langs.items()]
    return per_language, per_response


def summarize(per_response: list[dict[str, Any]]) -> dict[str, Any]:
    """Responses, switched responses and the overall rate."""
    total = sum(r["switched"] for r in per_response)
    return {"responses": len(per_response), "switched": total,
            "rate": total / len(per_response) if per_response else None}


#: The ``babelscope eval codeswitch`` step, importable here as before; it lives in :mod:`babelscope.evaluate.steps`.
run = StepFunction("babelscope.evaluate.steps", "run_codeswitch")
