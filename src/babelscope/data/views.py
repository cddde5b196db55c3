"""Views of a corpus: the same languages, ids and parallelism, fewer or normalized units.

One family (:class:`babelscope.data.base.CorpusView`) for the three ways a step narrows a corpus: a filter on UD
splits and a Unicode normal form (``split=`` / ``normalize=`` in a corpus spec:
:class:`babelscope.data.corpora.FilteredCorpus`), one side of the id split (:class:`SplitView`, by
:func:`babelscope.data.base.split_units`: the *train* side feeds importance and counts, the *test* side
evaluates), and a kept set of unit ids (:class:`SubsetView`: held-out text of further pretraining). Also the
language and side helpers the steps share, and the token windows they score.
"""

from __future__ import annotations

from collections.abc import Sequence

from babelscope.data.base import Corpus, CorpusView, Unit, split_units
from babelscope.errors import BabelscopeError


class SplitView(CorpusView):
    """One side of the split of ``corpus`` as a corpus (what :mod:`babelscope.evaluate.perplexity` scores)."""

    def __init__(self, corpus: Corpus, side: str, test_fraction: float, seed: int):
        super().__init__(corpus, f"{corpus.name}[{side}]")
        self.side, self.test_fraction, self.seed = side, test_fraction, seed

    def select(self, code: str) -> list[Unit]:
        return split_side(self.inner, code, self.side, self.test_fraction, self.seed)


class SubsetView(CorpusView):
    """A corpus restricted to some unit ids per language (the held-out or the training side of an id split);
    it keeps the corpus's name."""

    def __init__(self, corpus: Corpus, keep: dict[str, set[str]]):
        super().__init__(corpus, corpus.name)
        self.keep = keep

    def select(self, code: str) -> list[Unit]:
        return [u for u in self.inner.units(code) if u.id in self.keep.get(code, set())]


def open_text_corpus(spec: str) -> Corpus:
    """The corpus named by ``spec`` (:func:`babelscope.data.open_corpus`)."""
    from babelscope.data.corpora import open_corpus

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


def token_windows(
    engine, texts: Sequence[str], window: int, max_tokens: int | None
) -> list[tuple[list[int], int]]:
    """BOS-prefixed disjoint windows over each text, cut so that at most ``max_tokens`` tokens are scored
    (``engine``: anything with the engine's ``encode`` and ``windows``)."""
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


def language_windows(engine, texts: list[str], window: int, max_tokens: int) -> list[list[int]]:
    """BOS-prefixed windows of at most ``window`` tokens over the texts, ``max_tokens`` text tokens in all."""
    return [seq for seq, _ in token_windows(engine, texts, window, max_tokens)]
