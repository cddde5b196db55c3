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

from babelscope.errors import BabelscopeError
from babelscope.lens.configs import LensScriptConfig

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


def run(cfg: LensScriptConfig, run_dir, step: str = "lens-script", loaded=None) -> dict[str, Any]:
    """The ``babelscope lens script`` step."""
    from babelscope.data.languages import resolve_language, script_of_text
    from babelscope.data.views import language_codes, open_text_corpus, token_windows
    from babelscope.layers import parse_layers
    from babelscope.lens.logit_lens import lens_pass, mean_ci
    from babelscope.models.arch import block_list, lm_head
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    if cfg.window < 2 or cfg.max_tokens < 1 or cfg.batch_size < 1:
        raise BabelscopeError(f"--window {cfg.window} / --max-tokens {cfg.max_tokens}: window >= 2, tokens >= 1")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    for code in codes:
        if not any(u.text.strip() for u in corpus.units(code)):
            raise BabelscopeError(f"corpus {corpus.name!r} has no text for {code}; drop it from --langs")
    inputs = {code: text_sha256(u.text for u in corpus.units(code)) for code in codes}
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: once the layers passed
        return doc
    model, tokenizer, info = sr.model("causal", "the logit lens")
    layers = parse_layers(cfg.layers, len(block_list(model)[1]))
    if not is_main_process():  # one process reads the lens (nothing here is split over ranks)
        return sr.wait()
    sr.st.write_config(sr.config)
    engine = sr.engine(cache=False, progress=False)
    scripts = vocab_scripts(tokenizer, lm_head(model).weight.shape[0])
    per_layer, summary, shas = [], [], {}
    for code in codes:
        units = corpus.units(code)
        language = resolve_language(code)
        own = language.script or script_of_text(" ".join(u.text for u in units[:3]))
        groups = script_groups(scripts, own)
        seqs = [seq for seq, _ in token_windows(engine, [u.text for u in units], cfg.window, cfg.max_tokens)]
        positions = [list(range(1, len(s))) for s in seqs]  # every position after BOS

        def reduce(probs, owner, groups=groups):
            g = groups.to(probs.device)
            return torch.zeros(probs.shape[0], len(GROUPS), device=probs.device).index_add_(1, g, probs)

        values = lens_pass(model, seqs, positions, layers, reduce, cfg.batch_size, engine.pad_id)
        shas[code] = text_sha256(u.text for u in units)
        for li, layer in enumerate(layers):
            row = {"lang": code, "script": own, "layer": layer, "positions": values.shape[1]}
            for gi, g in enumerate(GROUPS):
                mean, lo, hi = mean_ci(values[li, :, gi], 0)
                row.update({f"{g}": float(mean), f"{g}_lo": float(lo), f"{g}_hi": float(hi)})
            per_layer.append(row)
        mine = [r for r in per_layer if r["lang"] == code]
        peak = max(mine[1:-1] or mine, key=lambda r: r["Latn"])
        summary.append({"lang": code, "name": language.name, "script": own, "positions": values.shape[1],
                        "latin_peak_layer": peak["layer"], "latin_peak_share": peak["Latn"],
                        "latin_final": mine[-1]["Latn"], "own_final": mine[-1]["own"],
                        "latin_first": mine[0]["Latn"]})
    results = {"model": info.name, "corpus": corpus.name, "layers": layers, "languages": codes, "summary": summary}
    prov = provenance(model=info.to_dict(), data={"corpus": corpus.name, "sha256": shas})
    return sr.write(KIND, results, {"summary": summary, "per_layer": per_layer}, prov)
