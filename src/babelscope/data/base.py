"""Units, the corpus interface and the id-based train/test split shared by every corpus reader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from babelscope.caches import unit_fraction
from babelscope.data.languages import Language, default_language, resolve_language
from babelscope.errors import BabelscopeError

__all__ = ["Corpus", "CorpusView", "Unit", "split_units"]


@dataclass(frozen=True)
class Unit:
    """One text of a corpus: a sentence, an article, a line.

    ``id`` is stable across runs (and across languages in a parallel corpus); ``meta`` (split, source file
    and line, ...) takes no part in equality or hashing.
    """

    id: str
    lang: str  # Language.code
    text: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class Corpus:
    """Texts in one or more languages. Subclasses set ``name``/``parallel`` and implement ``languages`` and
    ``_load``; units are loaded once per language and cached."""

    name: str = "corpus"
    #: True when the same unit id means the same content in every language.
    parallel: bool = False

    def __init__(self) -> None:
        self._cache: dict[str, list[Unit]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.languages())} languages>"

    def languages(self) -> list[str]:
        """Language codes (``Language.code``) this corpus has texts for."""
        raise NotImplementedError

    def _load(self, code: str) -> list[Unit]:
        raise NotImplementedError

    def match_language(self, lang: str | Language) -> str:
        """The corpus's code for ``lang``, or a BabelscopeError naming the corpus and what it has.

        When the exact form is missing but the corpus has exactly one form of the same ISO 639-3 language,
        that form is used if the request did not name a script or variant: ``zh`` (cmn-Hans) on PUD gives the
        traditional-character treebank ``cmn-Hant``; ``zh-Hans`` does not. A :class:`Language` counts as
        naming its script/variant unless it is the default form of its ISO 639-3 code.
        """
        available = self.languages()
        if isinstance(lang, str) and lang in available:
            return lang
        language = resolve_language(lang)
        if language.code in available:
            return language.code
        if isinstance(lang, str):
            explicit = any(sep in lang.strip() for sep in "-_")
        else:
            explicit = language != default_language(language.iso639_3)
        if not explicit:
            same = [code for code in available if code.split("-")[0] == language.iso639_3]
            if len(same) == 1:
                return same[0]
        few = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
        raise BabelscopeError(
            f"language {language.code} ({language.name}) is not in corpus {self.name!r}; "
            f"it has {len(available)} languages: {few}"
        )

    def units(self, lang: str | Language) -> list[Unit]:
        """The units of one language, in corpus order."""
        code = self.match_language(lang)
        if code not in self._cache:
            self._cache[code] = self._load(code)
        return list(self._cache[code])

    def checksum(self, lang: str | Language) -> str:
        """``text_sha256`` of the unit texts of one language (what a step actually read)."""
        from babelscope.runs import text_sha256

        return text_sha256(u.text for u in self.units(lang))

    def unit_ids(self, lang: str | Language) -> list[str]:
        return [u.id for u in self.units(lang)]


class CorpusView(Corpus):
    """Another corpus seen through :meth:`select` (languages and parallelism unchanged)."""

    def __init__(self, inner: Corpus, name: str) -> None:
        super().__init__()
        self.inner, self.name, self.parallel = inner, name, inner.parallel

    def languages(self) -> list[str]:
        return self.inner.languages()

    def _load(self, code: str) -> list[Unit]:
        return self.select(code)

    def select(self, code: str) -> list[Unit]:
        raise NotImplementedError


def _split_key(seed: int, unit_id: str) -> float:
    return unit_fraction(f"{seed}\0{unit_id}")


def split_units(
    units: Iterable[Unit], test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Unit], list[Unit]]:
    """Split units into (train, test) by a hash of (seed, unit id), keeping their order.

    The decision depends on the id only, so a unit id lands on the same side in every language and parallel
    units never straddle the split.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise BabelscopeError(f"test_fraction {test_fraction} is out of range: give a number from 0 to 1")
    train: list[Unit] = []
    test: list[Unit] = []
    for unit in units:
        (test if _split_key(seed, unit.id) < test_fraction else train).append(unit)
    return train, test


def check_unique_ids(units: Sequence[Unit], where: str) -> None:
    """BabelscopeError when two units of one language share an id."""
    seen: dict[tuple[str, str], Unit] = {}
    for unit in units:
        key = (unit.lang, unit.id)
        if key in seen:
            raise BabelscopeError(
                f"{where}: unit id {unit.id!r} appears twice for language {unit.lang}; "
                "give every unit of a language its own id"
            )
        seen[key] = unit
