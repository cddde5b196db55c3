"""In-context POS tagging (Xu et al. 2023, Fig. 17): k tagged demonstrations, then a sentence to tag.

Each demonstration is a sentence's words on one line and ``=> word/UPOS ...`` on the next (no words of any
language around the data); the demonstrations come from the target language (MONO) or from English (EN). The
model continues the query's ``=>`` line greedily; the i-th ``/TAG`` it writes is compared with the i-th gold
UPOS tag. For language ``l`` and setting ``s``,

    acc_{l,s,r} = correct tags / gold tags over the query sentences, with demonstration sample r = 1..R,

reported as mean and standard deviation over the ``R`` runs (the same queries in every run).

The method: :func:`build_jobs` (prompts), :func:`continuations` (the model's answers), :func:`accuracies`
(tables); the step (``babelscope eval pos``) is :func:`babelscope.evaluate.steps.run_pos`.
"""

from __future__ import annotations

import gzip
import random
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, opt

KIND = "pos"
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"}


@dataclass
class PosConfig:
    model: str = "gemma-3-270m"
    langs: str = languages("de,fr,ru", "Languages with a UD treebank (comma-separated).")
    treebanks: str = opt("ud", "ud (the shared UD folder) or embedded (small PUD samples).")
    settings: str = opt("MONO,EN", "Demonstrations from the target language (MONO), English (EN) or both.")
    shots: int = count(3, "Demonstrations per prompt.", minimum=0)
    runs: int = count(10, "Runs with different demonstration samples (mean and std).")
    queries: int = count(20, "Query sentences per language.")
    max_words: int = count(12, "Only sentences with at most this many words.")
    seed: int = opt(0, "Seed of the demonstration samples.")
    batch_size: int = count(4, "Prompts per generation batch.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


def _read(path: Path) -> list:
    from babelscope.data.ud import read_conllu

    if path.suffix != ".gz":
        return read_conllu(path)
    with tempfile.TemporaryDirectory() as tmp:  # read_conllu names the language from the file name
        plain = Path(tmp) / path.name[:-3]
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return read_conllu(plain)


def treebank_split(lang: str, treebanks: str) -> tuple[list, list]:
    """(demonstration pool, query sentences) of a language: train (else dev) and test of a UD treebank with
    splits; a test-only treebank (PUD) is split by sentence position, the first half being the pool."""
    from babelscope.data.languages import resolve_language
    from babelscope.settings import data_dir

    code = resolve_language(lang).iso639_1 or lang
    root = Path(__file__).resolve().parents[1] / "data" / "embedded" / "syntax" if treebanks == "embedded" \
        else data_dir() / "ud"
    files = sorted(root.glob(f"**/{code}_*-ud-*.conllu*"))
    if not files:
        raise BabelscopeError(f"no UD treebank for {lang!r} under {root}; choose another language")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(f.name.split("-ud-")[1].split(".")[0], []).append(f)
    non_pud = [f for f in files if "_pud-" not in f.name]
    if "test" in by_split and ("train" in by_split or "dev" in by_split) and non_pud:
        pool_file = next((f for f in non_pud if "-ud-train" in f.name), None) or \
            next(f for f in non_pud if "-ud-dev" in f.name)
        test_file = next((f for f in non_pud if "-ud-test" in f.name), by_split["test"][0])
        return _read(pool_file), _read(test_file)
    sentences = _read(by_split["test"][0])
    half = len(sentences) // 2
    return sentences[:half], sentences[half:]


def short_sentences(sentences: list, max_words: int) -> list:
    return [s for s in sentences if 2 <= len(s.tokens) <= max_words]


def demonstration(sentence) -> str:
    words = [t.form for t in sentence.tokens]
    return " ".join(words) + "\n=> " + " ".join(f"{t.form}/{t.upos}" for t in sentence.tokens)


def pos_prompt(demos: list, query) -> str:
    return "".join(demonstration(d) + "\n\n" for d in demos) + " ".join(t.form for t in query.tokens) + "\n=>"


def parse_tags(text: str) -> list[str]:
    """The tags of a ``word/TAG word/TAG`` line (anything after the last '/' of each piece)."""
    tags = []
    for piece in text.strip().split("\n")[0].split():
        if "/" in piece:
            tags.append(piece.rsplit("/", 1)[1].strip(".,;").upper())
    return tags


def tag_accuracy(predicted: list[str], gold: list[str]) -> int:
    """Number of positions where the predicted tag equals the gold one (missing tags are wrong)."""
    return sum(p == g for p, g in zip(predicted, gold, strict=False))


class Job(NamedTuple):
    """One prompt: the query ``query`` of ``lang`` with demonstration sample ``run`` of ``setting``."""

    lang: str
    setting: str
    run: int
    query: int
    prompt: str
    gold: list[str]


def parse_settings(spec: str) -> list[str]:
    """``MONO,EN`` -> ``["MONO", "EN"]``; a one-line error for anything else."""
    settings = [s.strip().upper() for s in spec.split(",") if s.strip()]
    if not settings or set(settings) - {"MONO", "EN"}:
        raise BabelscopeError(f"--settings {spec!r}: use MONO, EN or both")
    return settings


def build_jobs(data: dict[str, tuple[list, list]], english: list, settings: list[str], *, shots: int, runs: int,
               queries: int, max_words: int, seed: int = 0) -> list[Job]:
    """Every prompt: for each language (``data[lang]`` = demonstration pool, query sentences), setting and run,
    ``shots`` demonstrations drawn (seeded) from the pool (MONO) or from ``english`` (EN), then each of the first
    ``queries`` query sentences of at most ``max_words`` words."""
    jobs = []
    for lang, (pool, test) in data.items():
        pool, picked = short_sentences(pool, max_words), short_sentences(test, max_words)[:queries]
        if len(pool) < shots or not picked:
            raise BabelscopeError(f"{lang}: too few sentences of at most {max_words} words; raise --max-words")
        for setting in settings:
            source = pool if setting == "MONO" else english
            for r in range(runs):
                demos = random.Random(f"{seed}-{lang}-{setting}-{r}").sample(source, shots)
                for q, query in enumerate(picked):
                    jobs.append(Job(lang, setting, r, q, pos_prompt(demos, query), [t.upos for t in query.tokens]))
    return jobs


def continuations(engine, jobs: list[Job]) -> list[str]:
    """The model's greedy continuation of each prompt's ``=>`` line (room for 6 tokens a word, stops at the
    line's end)."""
    longest = max(len(job.gold) for job in jobs)
    return engine.generate([job.prompt for job in jobs], max_new_tokens=6 * longest + 4, stop=["\n"], desc="POS")


def accuracies(jobs: list[Job], outputs: list[str], langs: list[str], settings: list[str]
               ) -> tuple[list[dict], list[dict], list[dict], dict[str, float]]:
    """Per-query, per-run and per-language tag accuracy (mean and std over runs) and the mean per setting."""
    per_query = []
    for job, text in zip(jobs, outputs, strict=True):
        tags = parse_tags(text)
        per_query.append({"lang": job.lang, "setting": job.setting, "run": job.run, "query": job.query,
                          "tokens": len(job.gold), "correct": tag_accuracy(tags, job.gold), "predicted": " ".join(tags),
                          "gold": " ".join(job.gold)})
    per_run = []
    for key in dict.fromkeys((row["lang"], row["setting"], row["run"]) for row in per_query):
        rows = [row for row in per_query if (row["lang"], row["setting"], row["run"]) == key]
        per_run.append({"lang": key[0], "setting": key[1], "run": key[2],
                        "accuracy": sum(x["correct"] for x in rows) / sum(x["tokens"] for x in rows)})
    per_language = []
    for lang in langs:
        entry: dict[str, Any] = {"lang": lang}
        for setting in settings:
            accs = [x["accuracy"] for x in per_run if x["lang"] == lang and x["setting"] == setting]
            entry[f"{setting}_mean"] = statistics.fmean(accs)
            entry[f"{setting}_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
        per_language.append(entry)
    summary = {f"{s}_mean": statistics.fmean(e[f"{s}_mean"] for e in per_language) for s in settings}
    return per_query, per_run, per_language, summary


#: The ``babelscope eval pos`` step, importable here as before; it lives in :mod:`babelscope.evaluate.steps`.
run = StepFunction("babelscope.evaluate.steps", "run_pos")
