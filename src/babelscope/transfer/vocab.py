"""Vocabulary extension for a target language (Zhao et al. 2024, "LLaMA Beyond English", Sec. 3; Cui et al. 2023,
Chinese-LLaMA): train a SentencePiece model on target text, merge its new pieces into the base tokenizer
(:mod:`.tokenizers`), resize the embeddings and initialise the new rows, check, save a Hugging Face directory.

New rows, for a new token ``t`` with id ``i`` (``E`` the old input embedding, ``H`` the old LM head if untied):

* ``subword-mean`` (default; Fast Vocabulary Transfer, Gee et al. 2022, Eq. 1): ``E'[i] = mean_{j in T_old(t)} E[j]``
  where ``T_old(t)`` is the old tokenizer's tokenization of the raw piece (the model alone, on the piece as the
  vocabulary writes it, so ``▁`` and byte fallback stay right); the same for ``H``;
* ``mean``: transformers' ``mean_resizing`` (Hewitt 2021), whose samples of ``N(mean(E), 1e-9 * cov(E))`` lie within
  ~3e-5 standard deviations of ``mean(E)``: the mean of the old rows itself;
* ``random``: the model's own initialisation (``_init_weights``: ``N(0, initializer_range)``).

Quality of an initialisation before any training: bits per unit ``NLL / ln 2 / U`` of the extended model on
held-out text (target and other languages), next to the base model's on the same units. The content is the same,
so the numbers are comparable across the two tokenizers; a good init stays close to the base.

Checks (each reported): ``decode(encode(x)) == x`` on held-out text of every language tried; every added token
reachable (the model alone tokenizes it into itself) and seen on target text, unreachable ones counted and
listed; the share of each language's held-out units whose tokenization changed.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.transfer.configs import VocabConfig

KIND = "vocab"
INITS = ("subword-mean", "mean", "random")
RECORD = "babelscope-vocab.json"


# ---------------------------------------------------------------------------------------------- inputs
def target_units(spec: str, lang: str, what: str) -> tuple[Any, list]:
    from babelscope.data import open_corpus

    corpus = open_corpus(spec)  # a ``#split=`` in the spec keeps those UD splits
    units = [u for u in corpus.units(corpus.match_language(lang)) if u.text.strip()]
    if not units:
        raise BabelscopeError(f"--{what} {spec!r}: no {lang} text; check the spec")
    return corpus, units


def plan_check(cfg: VocabConfig, run_dir: Path, earlier=()) -> None:
    """The option checks, run when an experiment is planned (the data and SentencePiece are checked when the
    step runs)."""
    check(cfg)


def check(cfg: VocabConfig) -> None:
    if not cfg.lang or not cfg.train:
        raise BabelscopeError("transfer vocab needs --lang (the target language) and --train (its training text)")
    if cfg.init not in INITS:
        raise BabelscopeError(f"--init {cfg.init!r}: use one of {', '.join(INITS)}")
    if cfg.model_type not in ("auto", "bpe", "unigram"):
        raise BabelscopeError(f"--model-type {cfg.model_type!r}: use auto, bpe or unigram")
    if cfg.vocab_size < 2:
        raise BabelscopeError(f"--vocab-size {cfg.vocab_size}: give the size of the SentencePiece model to train")
    if not 0.0 < cfg.character_coverage <= 1.0:
        raise BabelscopeError(f"--character-coverage {cfg.character_coverage}: give a number in (0, 1]")
    if cfg.window < 2:
        raise BabelscopeError(f"--window {cfg.window}: a window needs at least 2 tokens (BOS + one scored)")


# ---------------------------------------------------------------------------------------------- checks
def round_trip(tokenizer, texts: list[str]) -> list[bool]:
    """Per text: ``decode(encode(x)) == x``."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [t == d for t, d in zip(texts, decoded, strict=True)]


def changed_share(old, new, texts: list[str]) -> float | None:
    """Share of texts whose tokenization (as token strings) changed."""
    if not texts:
        return None
    a = old(texts, add_special_tokens=False)["input_ids"]
    b = new(texts, add_special_tokens=False)["input_ids"]
    strings = [(old.convert_ids_to_tokens(x), new.convert_ids_to_tokens(y)) for x, y in zip(a, b, strict=True)]
    return sum(x != y for x, y in strings) / len(texts)


def reachability(base, new_tok, ids: dict[str, int], target_texts: list[str]) -> list[dict[str, Any]]:
    """Per added token: reachable (the model alone tokenizes it into itself) and occurrences on target text."""
    from collections import Counter

    from babelscope.transfer.tokenizers import model_tokenize, surface

    seen = Counter(i for row in new_tok(target_texts, add_special_tokens=False)["input_ids"] for i in row)
    rows = []
    for piece, i in ids.items():
        rows.append({"id": i, "piece": piece, "text": surface(base, piece),
                     "reachable": model_tokenize(new_tok, piece) == [i], "seen": seen.get(i, 0),
                     "old_tokens": len(model_tokenize(base.tokenizer, piece))})  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------- embeddings
def resize(model, rows: int, seed: int) -> None:
    """Resize input embeddings (and an untied head) to ``rows``; new rows get the model's own init (seeded)."""
    import torch

    torch.manual_seed(seed)
    model.resize_token_embeddings(rows, mean_resizing=False)


def init_rows(model, tokenizer_old, pieces: dict[str, int], old_rows: int, init_ids: list[int], seed: int):
    """The new rows of each init: ``{init: (input rows, head rows or None)}`` for the ids ``init_ids``."""
    import torch

    from babelscope.transfer.tokenizers import model_tokenize

    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != emb.data_ptr()
    index = torch.tensor(init_ids, dtype=torch.long)
    out: dict[str, tuple] = {}
    with torch.no_grad():
        mats = [emb] + ([head.weight] if untied else [])
        out["random"] = tuple(m[index].clone() for m in mats)
        # transformers' mean_resizing draws from N(mean(E), 1e-9 cov(E)): its samples sit within ~3e-5 standard
        # deviations of the mean, so the mean itself is used (and the V x d x d covariance is not computed)
        out["mean"] = tuple(row_mean(m, old_rows).to(m.dtype).expand(len(init_ids), -1).clone() for m in mats)
        by_id = {i: p for p, i in pieces.items()}
        subs = []
        for m in mats:
            rows = []
            for k, i in enumerate(init_ids):
                parts = [j for j in model_tokenize(tokenizer_old, by_id[i]) if j < old_rows] if i in by_id else []
                rows.append(m[parts].mean(0) if parts else out["mean"][len(subs)][k])
            subs.append(torch.stack(rows))
        out["subword-mean"] = tuple(subs)
    return {k: (v[0], v[1] if untied else None) for k, v in out.items()}


def row_mean(matrix, rows: int, chunk: int = 8192):
    """The float64 mean of the first ``rows`` rows, summed chunk by chunk (the same sum as
    ``matrix[:rows].mean(0, dtype=torch.float64)`` to float64 rounding, about 3x faster on CPU for a 262k x 640
    embedding matrix)."""
    import torch

    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for start in range(0, rows, chunk):
        total += matrix[start:min(start + chunk, rows)].sum(0, dtype=torch.float64)
    return total / rows


def set_rows(model, init_ids: list[int], rows) -> None:
    import torch

    index = torch.tensor(init_ids, dtype=torch.long)
    with torch.no_grad():
        model.get_input_embeddings().weight[index] = rows[0]
        if rows[1] is not None:
            model.get_output_embeddings().weight[index] = rows[1]


# ---------------------------------------------------------------------------------------------- scoring
def bits_per_unit(engine, sets: dict[str, list[str]], window: int, desc: str) -> dict[str, tuple[float, int]]:
    """``{set: (bits per unit, tokens)}``, every text of every set scored in one call (full batches)."""
    texts = [t for tx in sets.values() for t in tx]
    scores = iter(engine.rolling_loglikelihood(texts, window=window, desc=desc))
    out = {}
    for name, tx in sets.items():
        mine = [next(scores) for _ in tx]
        out[name] = (sum(s.nll for s in mine) / math.log(2) / len(tx), sum(s.tokens for s in mine))
    return out


def save_extended(model, tokenizer, extra: dict[str, bytes], record: dict, out: Path) -> None:
    """Write the model directory next to ``out`` and rename it into place (never half-written)."""
    from babelscope.runs import write_json
    from babelscope.transfer.tokenizers import temporary_dir

    tmp = temporary_dir(out.parent, f".{out.name}.")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
        write_json(tmp / RECORD, record)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- checks
def tokenization_checks(base_tok, new_tok, sets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Per text set: round-trip failures of the extended and the base tokenizer, those new to the extension, and
    the share of texts whose tokenization changed."""
    trips = []
    for name, tx in sets.items():
        ok_new, ok_old = round_trip(new_tok, tx), round_trip(base_tok, tx)
        broken = [t for t, a, b in zip(tx, ok_new, ok_old, strict=True) if b and not a]
        trips.append({"texts": name, "units": len(tx), "round_trip_failures": ok_new.count(False),
                      "base_failures": ok_old.count(False), "new_failures": len(broken),
                      "changed_share": changed_share(base_tok, new_tok, tx),
                      "first_new_failure": broken[0][:80] if broken else None})  # fmt: skip
    return trips


def efficiency_tables(base_tok, new_tok, lang: str, held: list, held_corpus, par, par_units: dict) -> tuple[list, list]:
    """Tokenizer efficiency of the base and the extended tokenizer (premium over English on the parallel text,
    tokens on the held-out target text; no forward pass), and fertility on held-out UD sentences when the
    held-out text has them."""
    from babelscope.evaluate.tokens import efficiency_rows, fertility_rows

    eff = []
    for model_name, tok in (("base", base_tok), ("extended", new_tok)):
        eff += [{"model": model_name, **r} for r in efficiency_rows(tok, par_units, "eng", par.parallel)]
        eff += [{"model": model_name, "set": "held-out", **r}
                for r in efficiency_rows(tok, {lang: held}, None, False)]  # fmt: skip
    fert = []
    if hasattr(held_corpus, "sentences"):
        sents = [s for s in held_corpus.sentences(lang) if s.id in {u.id for u in held}]
        for model_name, tok in (("base", base_tok), ("extended", new_tok)):
            fert += [{"model": model_name, **r} for r in fertility_rows(tok, {lang: sents})]
    return eff, fert


def extend_and_score(model, base_tok, new_tok, ids: dict[str, int], score_sets: dict[str, list[str]],
                     cfg: VocabConfig) -> tuple[list[dict[str, Any]], int, int]:
    """Score ``score_sets`` with the base model (bits per unit), resize the embeddings for the new ``ids``,
    score each initialisation (``--compare-inits``: all three) and leave ``--init``'s rows in the model. Returns
    the init-quality rows and the embedding rows before and after."""
    from babelscope.models.engine import Engine

    engine = Engine(model, base_tok, batch_size=cfg.batch_size, checksum="base")
    qual = {name: {"texts": name, "units": len(tx)} for name, tx in score_sets.items()}
    for name, (bits, tokens) in bits_per_unit(engine, score_sets, cfg.window, "base").items():
        qual[name]["base"], qual[name]["base_tokens"] = bits, tokens
    old_rows = model.get_input_embeddings().weight.shape[0]
    rows = max(old_rows, max(ids.values()) + 1)
    init_ids = sorted(set(ids.values()) | set(range(old_rows, rows)))  # new tokens, and rows no token had
    resize(model, rows, cfg.seed)
    inits = init_rows(model, base_tok, ids, old_rows, init_ids, cfg.seed)
    for init in (INITS if cfg.compare_inits else (cfg.init,)):
        set_rows(model, init_ids, inits[init])
        engine = Engine(model, new_tok, batch_size=cfg.batch_size, checksum=f"{init}-{cfg.seed}")  # own cache
        for name, (bits, tokens) in bits_per_unit(engine, score_sets, cfg.window, init).items():
            qual[name][init], qual[name][f"{init}_tokens"] = bits, tokens
    set_rows(model, init_ids, inits[cfg.init])
    return list(qual.values()), old_rows, rows


def summarize(ids: dict, dropped: list, added: list[dict], trips: list[dict], eff: list[dict], lang: str) -> dict:
    """The results' summary: tokens added, dropped to keep the old tokenizations, unreachable and seen; round-trip
    failures; the changed share of English; the premium and held-out tokens before and after."""
    return {
        "added": len(ids), "dropped_to_keep_old": len(dropped),
        "unreachable": sum(not r["reachable"] for r in added),
        "seen_on_target": sum(r["seen"] > 0 for r in added),
        "round_trip_failures": sum(t["round_trip_failures"] for t in trips),
        "base_round_trip_failures": sum(t["base_failures"] for t in trips),
        "new_round_trip_failures": sum(t["new_failures"] for t in trips),
        "changed_share_eng": next((t["changed_share"] for t in trips if t["texts"].startswith("eng ")), None),
        "premium_before": _premium(eff, "base", lang), "premium_after": _premium(eff, "extended", lang),
        "held_out_tokens_before": _tokens(eff, "base"), "held_out_tokens_after": _tokens(eff, "extended"),
    }  # fmt: skip


def _premium(rows: list[dict], model: str, lang: str) -> float | None:
    return next((r["premium"] for r in rows if r["model"] == model and r["lang"] == lang and "set" not in r), None)


def _tokens(rows: list[dict], model: str) -> int | None:
    return next((r["tokens"] for r in rows if r["model"] == model and r.get("set") == "held-out"), None)


def print_summary(doc: dict[str, Any]) -> None:
    """The checks and the init-quality table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    res, tables = doc["results"], doc["tables"]
    console = Console()
    console.print({k: v for k, v in res["summary"].items()})
    table = Table("texts", "units", "base", *[i for i in INITS if i in tables["init_quality"]["rows"][0]],
                  title="bits per unit before training")  # fmt: skip
    for r in tables["init_quality"]["rows"]:
        table.add_row(r["texts"], str(r["units"]), *[f"{r[k]:.1f}" for k in ("base", *INITS) if k in r])
    console.print(table)


#: the step (:func:`babelscope.transfer.steps.run_vocab`), under its older name
run = StepFunction("babelscope.transfer.steps", "run_vocab")
