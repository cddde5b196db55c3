"""Which script the logit lens predicts while the model reads a non-Latin-script text (Wendler et al. 2024's
question without a word list).

For a text in language ``l`` (parallel text: UDHR, PUD) and each position ``t``, layer ``ℓ`` and script group
``g`` of the vocabulary,

    share_ℓ(g, t) = Σ_{v ∈ V_g} P_ℓ(v | x_≤t)

with the groups: ``Latn`` (tokens whose letters are mostly Latin), ``own`` (the language's script: Han for
Chinese, kana and Han for Japanese, Hangul and Han for Korean ...), ``other`` (any other script) and ``none``
(no letters: digits, punctuation, whitespace, bytes, special tokens). Each token's script is the majority
script of its decoded text (:func:`babelscope.data.languages.script_of_text`). Curves are the mean over
positions with a 95% interval. Does the Latin-script (English) mass peak in the middle layers?
"""

from __future__ import annotations

from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.lens.configs import LensScriptConfig  # noqa: F401 - importable here as before

KIND = "lens-script"
GROUPS = ("Latn", "own", "other", "none")
#: Scripts a language's own tokens may carry (a Japanese token can be kana or Han, a Korean one Hangul or Han).
OWN = {"Hans": {"Hans", "Hant", "Hani"}, "Hant": {"Hans", "Hant", "Hani"}, "Hani": {"Hans", "Hant", "Hani"},
       "Jpan": {"Kana", "Hira", "Hani", "Hans", "Hant", "Jpan"}, "Kore": {"Hang", "Hani", "Hans", "Hant", "Kore"}}


def vocab_scripts(tokenizer, size: int) -> list[str]:
    """The script of every token id below ``size`` ("" for tokens without letters)."""
    from babelscope.data.languages import script_of_text

    texts = tokenizer.batch_decode([[i] for i in range(size)])
    return [s if (s := script_of_text(t)) != "Zyyy" else "" for t in texts]


def script_groups(scripts: list[str], own: str) -> torch.Tensor:
    """Group index (into :data:`GROUPS`) of every token for a language written in script ``own``."""
    mine = OWN.get(own, {own})

    def group(script: str) -> int:
        if script == "Latn":
            return 0
        if script in mine:
            return 1
        return 2 if script else 3

    return torch.tensor([group(s) for s in scripts], dtype=torch.long)


def lens_scripts(model, seqs: list[list[int]], groups: torch.Tensor, layers: list[int], batch_size: int = 8,
                 pad_id: int = 0) -> torch.Tensor:
    """``(len(layers), positions, len(GROUPS))``: at every position after BOS of ``seqs`` and each layer, the
    lens probability mass on each script group (``groups``: :func:`script_groups`, one group per vocabulary id)."""
    from babelscope.lens.logit_lens import lens_pass

    positions = [list(range(1, len(s))) for s in seqs]  # every position after BOS

    def reduce(probs, owner):
        g = groups.to(probs.device)
        return torch.zeros(probs.shape[0], len(GROUPS), device=probs.device).index_add_(1, g, probs)

    return lens_pass(model, seqs, positions, layers, reduce, batch_size, pad_id)


def script_tables(code: str, name: str, own: str, values: torch.Tensor, layers: list[int]
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-layer mean shares with 95% intervals and the language's summary row (the Latin peak over the inner
    layers, the first and final layers) from :func:`lens_scripts`'s values."""
    from babelscope.lens.logit_lens import mean_ci

    per_layer = []
    for li, layer in enumerate(layers):
        row = {"lang": code, "script": own, "layer": layer, "positions": values.shape[1]}
        for gi, g in enumerate(GROUPS):
            mean, lo, hi = mean_ci(values[li, :, gi], 0)
            row.update({f"{g}": float(mean), f"{g}_lo": float(lo), f"{g}_hi": float(hi)})
        per_layer.append(row)
    peak = max(per_layer[1:-1] or per_layer, key=lambda r: r["Latn"])
    summary = {"lang": code, "name": name, "script": own, "positions": values.shape[1],
               "latin_peak_layer": peak["layer"], "latin_peak_share": peak["Latn"],
               "latin_final": per_layer[-1]["Latn"], "own_final": per_layer[-1]["own"],
               "latin_first": per_layer[0]["Latn"]}
    return per_layer, summary


#: The ``babelscope lens script`` step, importable here as before; it lives in :mod:`babelscope.lens.steps`.
run = StepFunction("babelscope.lens.steps", "run_script")
