"""Knowledge benchmarks as data: task YAML files, readers for each file format, prompts and items.

A task (``tasks/<name>.yaml``) names its file format, a path pattern, the evaluation and few-shot splits, the
default number of shots and its prompt words. Every item becomes either

* an :class:`MCItem`: one ``(context, continuation)`` request per choice, scored by log-likelihood
  (lm-evaluation-harness's ``multiple_choice``: context = description + k solved examples + the question;
  continuation = target delimiter + choice), or
* a :class:`GenItem`: a prompt answered by greedy generation (MGSM).

Prompt words are the data's own language (XCOPA connectors, MGSM question/answer words), never English words
around foreign text. Malformed rows raise a BabelscopeError naming the file and row.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from babelscope.errors import BabelscopeError

TASKS_DIR = Path(__file__).parent / "tasks"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass
class MCItem:
    """One multiple-choice item: a request per choice, the gold index and each choice's length (acc_norm)."""

    id: str
    subset: str  # language or subject
    lang: str
    requests: list[tuple[str, str]]
    gold: int
    choice_lengths: list[int]
    source: str = ""  # file:row
    doc: dict[str, Any] = field(default_factory=dict)  # the data row (exported as lm-eval's sample ``doc``)


@dataclass
class GenItem:
    """One generation item: the prompt and the reference answer."""

    id: str
    subset: str
    lang: str
    prompt: str
    answer: str
    stop: list[str] = field(default_factory=lambda: ["\n"])
    source: str = ""
    doc: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- tasks
def task_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


@cache
def _load_task_file(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise BabelscopeError(f"{path}: invalid YAML ({exc}); fix the task file") from None
    if not isinstance(doc, dict) or "format" not in doc or "path" not in doc:
        raise BabelscopeError(f"{path}: a task file needs at least 'format' and 'path'")
    return doc


def load_task(name: str) -> dict[str, Any]:
    """A task by name (``xcopa``, ``mmlu``, ...) or by the path of a task YAML."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise BabelscopeError(f"{name}: no such task file")
        return dict(_load_task_file(str(path.resolve())))
    if not (TASKS_DIR / f"{name}.yaml").is_file():
        raise BabelscopeError(f"unknown benchmark {name!r}; use one of {', '.join(task_names())} or a task YAML")
    return dict(_load_task_file(str(TASKS_DIR / f"{name}.yaml")))


def data_path(pattern: str, **fields: str) -> Path:
    """A task path: ``embedded/...`` inside the package, absolute as is, else under the shared data folder."""
    from babelscope.settings import data_dir

    text = pattern.format(**fields)
    if text.startswith("embedded/"):
        return Path(__file__).resolve().parents[1] / "data" / text
    path = Path(text).expanduser()
    return path if path.is_absolute() else data_dir() / path


def subsets(task: dict[str, Any], selection: str | None = "all") -> list[str]:
    """The languages or subjects of a task (``selection``: comma-separated names, or ``all``)."""
    available = task.get("languages") or task.get("subjects") or _subjects_on_disk(task)
    if selection in (None, "", "all"):
        return list(available)
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in available]
    if unknown and ("{lang}" in task["path"] or "{subject}" in task["path"]):
        raise BabelscopeError(f"{task.get('name')}: unknown subset(s) {unknown}; available: {', '.join(available)}")
    return wanted


def _subjects_on_disk(task: dict[str, Any]) -> list[str]:
    if task.get("subjects_file"):
        mapping = json.loads(data_path(task["subjects_file"]).read_text(encoding="utf-8"))
        return sorted(mapping)
    pattern = task["path"]
    if "{subject}" not in pattern:
        return [task.get("language", "all")]
    split = task.get("split", "test")
    folder = data_path(pattern.split("{subject}")[0].format(split=split))
    suffix = pattern.split("{subject}")[1].format(split=split)
    if not folder.is_dir():
        raise BabelscopeError(f"{folder}: benchmark folder not found; set BABELSCOPE_DATA or give a task 'path'")
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


# ----------------------------------------------------------------------------------------------- readers
def _rows_error(path: Path, row: int, message: str) -> BabelscopeError:
    return BabelscopeError(f"{path}:{row}: {message}; fix or remove the row")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines with ``_source`` = file:line on each row."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: benchmark file not found; check the task path or BABELSCOPE_DATA") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _rows_error(path, i, f"not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise _rows_error(path, i, "expected a JSON object")
        row["_source"] = f"{path}:{i}"
        rows.append(row)
    return rows


def _need(row: dict[str, Any], keys: list[str], path: Path, line: int | str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise BabelscopeError(f"{path}:{line}: missing field(s) {missing}; fix or remove the row")


def read_csv_rows(path: Path, columns: list[str], header_first: str) -> list[dict[str, Any]]:
    """CSV rows as dicts over ``columns``; a first row starting with ``header_first`` is a header."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            raw = list(csv.reader(fh))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: benchmark file not found; check the task path or BABELSCOPE_DATA") from None
    rows = []
    header = None
    for i, values in enumerate(raw, 1):
        if i == 1 and values and values[0].strip().lower() == header_first:
            header = values
            continue
        if not values:
            continue
        if header is not None:
            if len(values) != len(header):
                raise _rows_error(path, i, f"{len(values)} columns, the header has {len(header)}")
            row = dict(zip(header, values, strict=True))
        else:
            if len(values) < len(columns):
                raise _rows_error(path, i, f"{len(values)} columns, expected {len(columns)} ({','.join(columns)})")
            row = dict(zip(columns, values[: len(columns)], strict=True))
        row["_source"] = f"{path}:{i}"
        rows.append(row)
    return rows


def _letter_index(value: str, n: int, where: str) -> int:
    """A gold answer as 0-based index: a letter A.. or a 0-based digit (the shared MMLU copy)."""
    value = str(value).strip()
    if len(value) == 1 and value.isalpha() and 0 <= ord(value.upper()) - 65 < n:
        return ord(value.upper()) - 65
    if value.isdigit() and int(value) < n:
        return int(value)
    raise BabelscopeError(f"{where}: answer {value!r} is neither a letter A-{chr(64 + n)} nor an index 0-{n - 1}; "
                          "fix the row")


# ----------------------------------------------------------------------------------------------- prompts
def fewshot_context(description: str, solved: list[tuple[str, str]], question: str) -> str:
    """lm-evaluation-harness's context: description, each solved example (text, delimiter, answer, blank
    line), then the question."""
    shots = "".join(text + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER for text, answer in solved)
    return description + shots + question


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    """A data row without our bookkeeping (``_source``, the parsed ``gold``)."""
    return {k: v for k, v in doc.items() if k not in ("_source", "gold")}


def _mc(item_id: str, subset: str, lang: str, context: str, choices: list[str], gold: int, source: str,
        description: str = "", solved: list[tuple[str, str]] = (), doc: dict[str, Any] | None = None) -> MCItem:
    ctx = fewshot_context(description, list(solved), context)
    return MCItem(item_id, subset, lang, [(ctx, TARGET_DELIMITER + c) for c in choices], gold,
                  [len(c) for c in choices], source, _row(doc or {}))


def xcopa_items(task: dict[str, Any], lang: str, shots: int, split: str) -> list[MCItem]:
    """XCOPA: ``premise[:-1] + " " + connector`` then each choice with its first letter lower-cased."""
    connectors = task["connectors"].get(lang)
    if connectors is None:
        raise BabelscopeError(f"xcopa: no connector words for language {lang!r}; add them to the task YAML")

    def load(which: str) -> list[dict[str, Any]]:
        rows = read_jsonl(data_path(task["path"], lang=lang, split=which))
        rows = [r for r in rows if r.get("lang", lang) == lang]
        for r in rows:
            _need(r, ["premise", "choice1", "choice2", "question"], Path(r["_source"].rsplit(":", 1)[0]),
                  r["_source"].rsplit(":", 1)[1])
            if r["question"] not in ("cause", "effect") or r.get("label") not in (0, 1):
                raise BabelscopeError(f"{r['_source']}: question must be cause/effect and label 0/1; fix the row")
        return rows

    def text(doc: dict[str, Any]) -> str:
        return doc["premise"].strip()[:-1] + f" {connectors[doc['question']]}"

    def choices(doc: dict[str, Any]) -> list[str]:
        return [c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]

    solved = [(text(d), choices(d)[d["label"]]) for d in load(task["fewshot_split"])[:shots]] if shots else []
    return [_mc(f"{lang}/{d.get('idx', i)}", lang, lang, text(d), choices(d), d["label"], d["_source"], "",
                solved, d) for i, d in enumerate(load(split))]


def _winograd_sentence(row: list[str], where: str) -> dict[str, Any]:
    """Upstream XWinograd row -> ``sentence`` with ``_`` for the pronoun, ``option1/2`` and ``answer``."""
    try:
        sentence, tokens = row[3], json.loads(row[4])
        pronoun, candidates = json.loads(row[5]), json.loads(row[6])
    except (IndexError, json.JSONDecodeError) as exc:
        raise BabelscopeError(f"{where}: not an XWinograd row (lang, type, ?, sentence, tokens, pronoun, "
                              f"candidates as JSON): {exc}; fix the row") from None
    starts, pos = [], 0
    for tok in tokens:  # character offset of every token in the sentence
        found = sentence.find(tok, pos)
        starts.append(found if found >= 0 else pos)
        pos = found + len(tok) if found >= 0 else pos
    first, last = pronoun[1]
    start = starts[first]
    end = starts[last - 1] + len(tokens[last - 1])
    gold = [i for i, c in enumerate(candidates) if c[3]]
    if len(candidates) != 2 or len(gold) != 1:
        raise BabelscopeError(f"{where}: needs two candidates, exactly one correct; fix the row")
    return {"sentence": sentence[:start] + "_" + sentence[end:], "option1": candidates[0][0],
            "option2": candidates[1][0], "answer": str(gold[0] + 1)}


def xwinograd_items(task: dict[str, Any], lang: str, shots: int, split: str) -> list[MCItem]:
    """XWinograd, partial scoring: context = sentence up to the blank + candidate, continuation = the rest."""
    path = data_path(task["path"], lang=lang, split=split)
    if path.suffix == ".jsonl":  # the Hugging Face layout: sentence with "_", option1, option2, answer
        docs = [r for r in read_jsonl(path) if r.get("lang", lang) == lang]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise BabelscopeError(f"{path}: benchmark file not found; check BABELSCOPE_DATA") from None
        docs = []
        for i, line in enumerate(lines, 1):
            row = line.split("\t")
            if row[0] == lang:
                docs.append({**_winograd_sentence(row, f"{path}:{i}"), "_source": f"{path}:{i}"})
    items = []
    for i, d in enumerate(docs):
        if d["sentence"].count("_") < 1 or d["answer"] not in ("1", "2"):
            raise BabelscopeError(f"{d['_source']}: needs a '_' blank and answer 1 or 2; fix the row")
        cut = d["sentence"].index("_")
        contexts = [d["sentence"][:cut] + d[o] for o in ("option1", "option2")]
        target = TARGET_DELIMITER + d["sentence"][cut + 1 :].strip()
        items.append(MCItem(f"{lang}/{i}", lang, {"jp": "ja"}.get(lang, lang), [(c, target) for c in contexts],
                            int(d["answer"]) - 1, [len(c) for c in contexts], d["_source"], _row(d)))
    return items


def _letters_template(task: dict[str, Any], doc: dict[str, Any]) -> str:
    return task["template"].format(**{k: (v.strip() if k == "question" else v) for k, v in doc.items()})


def mmlu_items(task: dict[str, Any], subject: str, shots: int, split: str) -> list[MCItem]:
    """MMLU and C-Eval: description, first-n solved dev questions, the question; answers are letters."""
    letters = task["choices"]
    if task["format"] == "ceval":
        mapping = json.loads(data_path(task["subjects_file"]).read_text(encoding="utf-8"))
        name = mapping.get(subject, [subject, subject])[1]
        columns, header_first = ["id", "question", "A", "B", "C", "D", "answer"], "id"
    else:
        name = subject.replace("_", " ")
        columns, header_first = ["question", "A", "B", "C", "D", "answer"], "question"

    def load(which: str) -> list[dict[str, Any]]:
        rows = read_csv_rows(data_path(task["path"], subject=subject, split=which), columns, header_first)
        out = []
        for r in rows:
            if "choice0" in r:  # the shared MMLU copy: choice0..choice3, 0-based answers
                r.update({letters[i]: r.pop(f"choice{i}") for i in range(len(letters))})
            path, line = r["_source"].rsplit(":", 1)
            _need(r, ["question", *letters, "answer"], Path(path), line)
            r["gold"] = _letter_index(r["answer"], len(letters), r["_source"])
            out.append(r)
        return out

    description = task.get("description", "").format(subject_name=name)
    solved = [(_letters_template(task, d), letters[d["gold"]]) for d in load(task["fewshot_split"])[:shots]
              ] if shots else []
    lang = task.get("language", "und")
    return [_mc(f"{subject}/{i}", subject, lang, _letters_template(task, d), list(letters), d["gold"],
                d["_source"], description, solved, d) for i, d in enumerate(load(split))]


def agieval_items(task: dict[str, Any], subject: str, shots: int, split: str) -> list[MCItem]:
    """AGIEval multiple-choice tasks with AGIEval's zero-shot prompt; the choices are "(A)", "(B)", ..."""
    chinese = subject in task.get("chinese", [])
    template = task["template_zh" if chinese else "template_en"]
    items = []
    for i, d in enumerate(read_jsonl(data_path(task["path"], subject=subject, split=split))):
        options, label = d.get("options"), d.get("label")
        if isinstance(label, list) and len(label) == 1:
            label = label[0]
        if not options or not isinstance(label, str):
            continue  # cloze or multi-answer questions are not multiple choice with one answer
        letters = [chr(65 + k) for k in range(len(options))]
        if label not in letters:
            raise BabelscopeError(f"{d['_source']}: label {label!r} is not one of {letters}; fix the row")
        prompt = template.format(passage=d.get("passage") or "", question=d.get("question", ""),
                                 options=" ".join(options), last=letters[-1])
        items.append(_mc(f"{subject}/{i}", subject, "zh" if chinese else "en", prompt,
                         [f"({x})" for x in letters], letters.index(label), d["_source"], doc=d))
    return items


def gaokao_items(task: dict[str, Any], subject: str, shots: int, split: str) -> list[MCItem]:
    """GAOKAO-Bench objective questions with one answer among A-D (multi-answer questions are skipped)."""
    path = data_path(task["path"], subject=subject, split=split)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: benchmark file not found; check BABELSCOPE_DATA") from None
    except json.JSONDecodeError as exc:
        raise BabelscopeError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    items = []
    for i, d in enumerate(doc.get("example", [])):
        answer = d.get("answer")
        if not isinstance(answer, list) or len(answer) != 1 or answer[0] not in task["choices"]:
            continue
        if not d.get("question"):
            raise BabelscopeError(f"{path}: example {i} has no question; fix the file")
        items.append(_mc(f"{subject}/{d.get('index', i)}", subject, task.get("language", "zh"),
                         task["template"].format(question=d["question"].strip()), list(task["choices"]),
                         task["choices"].index(answer[0]), f"{path}#example{i}", doc=d))
    return items


def mgsm_items(task: dict[str, Any], lang: str, shots: int, split: str) -> list[GenItem]:
    """MGSM: k native exemplars with their final numbers, then the question; the answer is a number."""
    words = task["words"].get(lang)
    if words is None:
        raise BabelscopeError(f"mgsm: no question/answer words for {lang!r}; add them to the task YAML")
    path = data_path(task["path"], lang=lang, split=split)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: benchmark file not found; check BABELSCOPE_DATA") from None
    solved = []
    if shots:
        ex = json.loads(data_path(task["exemplars"]).read_text(encoding="utf-8"))
        for k in range(1, shots + 1):
            q = ex["MGSM_EXEMPLARS"][lang][str(k)]["q"]
            q = q.split(":", 1)[1].strip() if ":" in q[:20] else q.split("：", 1)[-1].strip()
            solved.append(_mgsm_prompt(words, q) + _space(words) + str(ex["EXEMPLAR_NUMBER_ANSWERS"][k - 1]))
    items = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or parse_number(parts[1]) is None:
            raise _rows_error(path, i, "expected 'question<TAB>number'")
        prompt = "".join(s + FEWSHOT_DELIMITER for s in solved) + _mgsm_prompt(words, parts[0].strip())
        items.append(GenItem(f"{lang}/{i - 1}", lang, lang, prompt, parts[1].strip(), ["\n"], f"{path}:{i}",
                             {"question": parts[0].strip(), "answer_number": parts[1].strip()}))
    return items


def _mgsm_prompt(words: dict[str, str], question: str) -> str:
    return f"{words['question']}{question}\n{words['answer']}"


def _space(words: dict[str, str]) -> str:
    return "" if words["answer"].endswith("：") else " "


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (any Unicode digits; thousands commas dropped), else None."""
    import unicodedata

    ascii_text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    found = _NUMBER.findall(ascii_text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


READERS = {"xcopa": xcopa_items, "xwinograd": xwinograd_items, "mmlu": mmlu_items, "ceval": mmlu_items,
           "agieval": agieval_items, "gaokao": gaokao_items, "mgsm": mgsm_items}


def build_items(task: dict[str, Any], subset: str, shots: int | None = None, limit: int | None = None,
                split: str | None = None) -> list[MCItem | GenItem]:
    """Items of one language or subject, with ``shots`` solved examples (default: the task's)."""
    reader = READERS.get(task["format"])
    if reader is None:
        raise BabelscopeError(f"task {task.get('name')}: unknown format {task['format']!r}; use one of {list(READERS)}")
    shots = task.get("shots", 0) if shots is None else shots
    items = reader(task, subset, shots, split or task.get("split", "test"))
    return items[:limit] if limit else items
