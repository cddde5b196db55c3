"""The texts a regions step reads: importance text and evaluation text are disjoint by unit id.

Units are split once by :func:`babelscope.data.base.split_units` (a hash of seed and unit id, so a parallel unit
falls on the same side in every language): the *train* side feeds importance, the *test* side evaluates removal.
"""

from __future__ import annotations

from collections.abc import Sequence

from babelscope.data.base import Corpus, Unit, split_units
from babelscope.errors import BabelscopeError


def open_text_corpus(spec: str) -> Corpus:
    """The corpus named by ``spec`` (:func:`babelscope.data.open_corpus`)."""
    from babelscope.data import open_corpus

    return open_corpus(spec)


def language_codes(corpus: Corpus, langs: str) -> list[str]:
    """The corpus's codes for a comma-separated list (or 'all')."""
    if langs in ("all", "", None):
        return corpus.languages()
    from babelscope.data.languages import parse_languages

    return list(dict.fromkeys(corpus.match_language(lang) for lang in parse_languages(langs)))


def split_side(corpus: Corpus, code: str, side: str, test_fraction: float, seed: int) -> list[Unit]:
    """The ``train`` (importance) or ``test`` (evaluation) units of one language; an error if it has no text."""
    train, test = split_units(corpus.units(code), test_fraction, seed)
    units = [u for u in (train if side == "train" else test) if u.text.strip()]
    if not units:
        raise BabelscopeError(
            f"corpus {corpus.name!r} has no {'importance' if side == 'train' else 'evaluation'} text for "
            f"language {code} (test_fraction={test_fraction}, seed={seed}); drop it or change --test-fraction"
        )
    return units


class SplitView(Corpus):
    """One side of the split of ``corpus`` as a corpus (what :mod:`babelscope.evaluate.perplexity` scores)."""

    def __init__(self, corpus: Corpus, side: str, test_fraction: float, seed: int):
        super().__init__()
        self.inner, self.side, self.test_fraction, self.seed = corpus, side, test_fraction, seed
        self.name = f"{corpus.name}[{side}]"
        self.parallel = corpus.parallel

    def languages(self) -> list[str]:
        return self.inner.languages()

    def _load(self, code: str) -> list[Unit]:
        return split_side(self.inner, code, self.side, self.test_fraction, self.seed)


def token_windows(
    engine, texts: Sequence[str], window: int, max_tokens: int | None
) -> list[tuple[list[int], int]]:
    """BOS-prefixed disjoint windows over each text, cut so that at most ``max_tokens`` tokens are scored."""
    seqs: list[tuple[list[int], int]] = []
    left = max_tokens if max_tokens is not None else float("inf")
    for ids in engine.encode(list(texts)):
        for seq, n in engine.windows(ids, window):
            if left <= 0:
                return seqs
            take = int(min(n, left))
            seqs.append((seq[: 1 + take], take))
            left -= take
    return seqs
