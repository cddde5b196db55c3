"""Perplexity of a changed model (intervention perplexity): what the regions, neurons and steering steps measure
after they remove, perturb or deactivate part of a model.

Perplexity is that of :mod:`babelscope.evaluate.perplexity` (disjoint BOS-prefixed windows, exp of the mean token
NLL). A changed model is scored under :func:`condition_checksum` (the weights' checksum plus the change), so the
engine's per-request cache never mixes the base model's answers with a changed model's. ``PROMPTS``: the probe
prompt of Zhang et al. (2024) and its translations, whose greedy continuations show the damage side by side.
"""

from __future__ import annotations

from typing import Any

from babelscope.caches import digest

#: The paper's probe prompt and translations (inputs, keyed by corpus language code).
PROMPTS = {
    "eng": "Fudan University is located in",
    "cmn-Hans": "复旦大学位于",
    "fra": "L'université Fudan est située à",
    "deu": "Die Fudan-Universität befindet sich in",
    "spa": "La Universidad Fudan está ubicada en",
    "rus": "Университет Фудань находится в",
    "jpn": "復旦大学の所在地は",
    "arb": "تقع جامعة فودان في",
    "ita": "L'Università Fudan si trova a",
    "por-BR": "A Universidade Fudan está localizada em",
}


def condition_checksum(model_checksum: str, *parts: Any) -> str:
    """Cache key of the changed model: the weights' checksum plus what was changed and how."""
    return digest(["\0".join([model_checksum, *map(str, parts)])])


def perplexities(engine, corpus, codes: list[str], window: int, max_tokens: int | None) -> dict[str, dict]:
    """``{lang: perplexity row}`` from :func:`babelscope.evaluate.perplexity.language_rows`."""
    from babelscope.evaluate.perplexity import PplConfig, language_rows

    rows, _, _ = language_rows(engine, corpus, codes, PplConfig(window=window, max_tokens=max_tokens))
    return {r["lang"]: r for r in rows}
