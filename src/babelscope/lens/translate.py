"""Word translation through the logit lens (Wendler et al. 2024, §3.1 "Translation task", Figure 2).

Prompts follow the paper: a few demonstrations from the word list, then the query,

    Français: "fleur" - 中文: "花"
    Français: "montagne" - 中文: "山"
    Français: "eau" - 中文: "

and at the last position, for every layer ``ℓ``, the lens probability of the answer in the target language and
of the English word for the same concept,

    P_ℓ(target) = Σ_{v ∈ T(y)} P_ℓ(v),      P_ℓ(English) = Σ_{v ∈ T(y_en)} P_ℓ(v),

where ``T(w)`` holds every token that spells a prefix of ``w`` (with and without the word-start marker: the
single-token encodings of each character prefix of ``w`` and of ``" " + w``, plus the first token of each).
Items whose two token sets overlap are dropped (their probabilities cannot be told apart). The paper's finding
on Llama-2: the English word's probability peaks in the middle layers before the target takes over.

The word list is a TSV file: a header ``concept<TAB>lang<TAB>lang...`` (language codes the registry knows), an
optional ``@name`` row with each language's name as written in the prompt, then one concept per row.

The method: :func:`read_word_list`, :func:`make_items` (prompts and token sets), :func:`lens_translation` (the
lens probabilities) and :func:`translation_tables`; the step (``babelscope lens translate``) is
:func:`babelscope.lens.steps.run_translate`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.lens.configs import LensTranslateConfig  # noqa: F401 - importable here as before

KIND = "lens-translation"


@dataclass
class WordList:
    path: str
    langs: list[str]  # registry codes, in column order
    names: dict[str, str]  # code -> name used in the prompt
    concepts: list[str]
    words: dict[str, list[str]]  # code -> word per concept ("" when missing)


def embedded_words() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "embedded" / "lens_words.tsv"


def read_word_list(spec: str) -> WordList:
    """Read a word list; unknown language columns or ragged rows fail with the file and line."""
    from babelscope.data.languages import resolve_language

    path = embedded_words() if spec in ("embedded", "", None) else Path(spec).expanduser()
    if not path.is_file():
        raise BabelscopeError(f"--words {spec}: no such file; give a TSV word list or 'embedded'")
    with open(path, encoding="utf-8", newline="") as fh:
        lines = [(i, row) for i, row in enumerate(csv.reader(fh, delimiter="\t"), 1)
                 if row and not row[0].startswith("#")]
    if not lines:
        raise BabelscopeError(f"{path}: empty word list; see docs/neurons-lens.md for the format")
    header_line, header = lines[0]
    if len(header) < 3:
        raise BabelscopeError(f"{path}:{header_line}: the header needs 'concept' and at least two language columns")
    langs = []
    for col in header[1:]:
        try:
            langs.append(resolve_language(col.strip()).code)
        except BabelscopeError:
            raise BabelscopeError(
                f"{path}:{header_line}: column {col!r} is not a known language; use codes like eng, fra, "
                "cmn-Hans (see `babelscope langs`)"
            ) from None
    names = {code: resolve_language(code).name for code in langs}
    concepts, words = [], {code: [] for code in langs}
    for line, row in lines[1:]:
        if len(row) != len(header):
            raise BabelscopeError(f"{path}:{line}: {len(row)} cells, the header has {len(header)}; fix the row")
        if row[0] == "@name":
            names.update({code: cell.strip() for code, cell in zip(langs, row[1:], strict=True) if cell.strip()})
            continue
        concepts.append(row[0].strip())
        for code, cell in zip(langs, row[1:], strict=True):
            words[code].append(cell.strip())
    return WordList(str(path), langs, names, concepts, words)


def token_set(tokenizer, word: str) -> set[int]:
    """Ids of the tokens that spell a prefix of ``word``, with and without the word-start marker."""
    ids: set[int] = set()
    for text in (word, " " + word):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if enc:
            ids.add(int(enc[0]))
        for end in range(1, len(text) + 1):
            prefix = text[:end]
            if not prefix.strip():
                continue
            enc = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(int(enc[0]))
    # a bare word-start marker (when " w" is no token) spells no letter of the word
    return {i for i in ids if tokenizer.decode([i]).strip()}


def build_prompt(wl: WordList, source: str, target: str, item: int, demos: list[int]) -> str:
    """Demonstrations ``S: "x" - T: "y"`` (one per line), then the query ``S: "x" - T: "``."""
    s, t = wl.names[source], wl.names[target]
    lines = [f'{s}: "{wl.words[source][d]}" - {t}: "{wl.words[target][d]}"' for d in demos]
    lines.append(f'{s}: "{wl.words[source][item]}" - {t}: "')
    return "\n".join(lines)


def make_items(wl: WordList, tokenizer, source: str, target: str, shots: int, seed: int,
               max_items: int | None) -> tuple[list[dict[str, Any]], int]:
    """Prompts and token sets for every usable concept (both words and English present, sets disjoint); also
    how many were dropped for overlapping sets."""
    import random

    eng = "eng"
    usable = [i for i in range(len(wl.concepts))
              if wl.words[source][i] and wl.words[target][i] and wl.words[eng][i]]
    rng = random.Random(f"{seed}:{source}:{target}")
    items, dropped = [], 0
    for i in usable:
        t_ids, e_ids = token_set(tokenizer, wl.words[target][i]), token_set(tokenizer, wl.words[eng][i])
        if t_ids & e_ids:
            dropped += 1
            continue
        others = [j for j in usable if j != i]
        demos = rng.sample(others, min(shots, len(others)))
        items.append({"concept": wl.concepts[i], "source_word": wl.words[source][i],
                      "target_word": wl.words[target][i], "english_word": wl.words[eng][i],
                      "prompt": build_prompt(wl, source, target, i, demos),
                      "target_ids": sorted(t_ids), "english_ids": sorted(e_ids)})
        if max_items is not None and len(items) >= max_items:
            break
    return items, dropped


def lens_translation(model, tokenizer, items: list[dict[str, Any]], layers: list[int], batch_size: int = 8
                     ) -> torch.Tensor:
    """``(len(layers), len(items), 3)``: at each item's last prompt position and each layer, ``P_ℓ(target)``,
    ``P_ℓ(English)`` and whether the top token is one of the target's (the logit lens on the unmodified model)."""
    from babelscope.lens.logit_lens import lens_pass

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [list(tokenizer(it["prompt"])["input_ids"]) for it in items]
    sets = [(torch.tensor(it["target_ids"]), torch.tensor(it["english_ids"])) for it in items]

    def reduce(probs, owner):
        out = torch.empty(len(owner), 3)
        for r, o in enumerate(owner.tolist()):
            t_ids, e_ids = sets[o]
            out[r, 0] = probs[r, t_ids.to(probs.device)].sum()
            out[r, 1] = probs[r, e_ids.to(probs.device)].sum()
            out[r, 2] = float(bool((probs[r].argmax() == t_ids.to(probs.device)).any()))
        return out

    return lens_pass(model, seqs, [[len(s) - 1] for s in seqs], layers, reduce, batch_size, pad)


def translation_tables(target: str, items: list[dict[str, Any]], dropped: int, values: torch.Tensor,
                       layers: list[int]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Per-layer means with 95% intervals, per-item probabilities and the target's summary row (the English
    peak, the final layer) from :func:`lens_translation`'s values."""
    from babelscope.data.languages import resolve_language
    from babelscope.lens.logit_lens import mean_ci

    per_layer = []
    for li, layer in enumerate(layers):
        pt, lo_t, hi_t = mean_ci(values[li, :, 0], 0)
        pe, lo_e, hi_e = mean_ci(values[li, :, 1], 0)
        per_layer.append({"lang": target, "layer": layer, "items": len(items),
                          "p_target": float(pt), "p_target_lo": float(lo_t), "p_target_hi": float(hi_t),
                          "p_english": float(pe), "p_english_lo": float(lo_e), "p_english_hi": float(hi_e),
                          "target_top1": float(values[li, :, 2].mean())})
    per_item = [{"lang": target, "concept": it["concept"], "source_word": it["source_word"],
                 "target_word": it["target_word"], "english_word": it["english_word"],
                 **{f"p_target_L{layer}": float(values[li, k, 0]) for li, layer in enumerate(layers)},
                 **{f"p_english_L{layer}": float(values[li, k, 1]) for li, layer in enumerate(layers)}}
                for k, it in enumerate(items)]
    peak = max(per_layer, key=lambda r: r["p_english"])
    summary = {"lang": target, "name": resolve_language(target).name, "items": len(items),
               "dropped_overlap": dropped, "final_p_target": per_layer[-1]["p_target"],
               "final_p_english": per_layer[-1]["p_english"], "final_top1": per_layer[-1]["target_top1"],
               "english_peak_layer": peak["layer"], "english_peak_p": peak["p_english"],
               "layers_english_above_target": sum(r["p_english"] > r["p_target"] for r in per_layer)}
    return per_layer, per_item, summary


#: The ``babelscope lens translate`` step, importable here as before; it lives in :mod:`babelscope.lens.steps`.
run = StepFunction("babelscope.lens.steps", "run_translate")
