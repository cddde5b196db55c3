"""Languages and corpora: the language registry, corpus specs, UD and UDHR readers (no torch import).

``resolve_language``/``parse_languages``/``all_languages``/``script_of_text`` name languages;
``open_corpus(spec)`` gives a :class:`Corpus` of :class:`Unit` texts with stable ids; ``split_units`` splits
units by id; ``read_conllu`` reads a checked CoNLL-U file into :class:`Sentence` objects.
"""

from __future__ import annotations

from typing import Any

from babelscope.data.base import Corpus, Unit, split_units
from babelscope.data.corpora import open_corpus
from babelscope.data.languages import (
    DEFAULTS,
    Language,
    all_languages,
    parse_languages,
    resolve_language,
    script_of_text,
)

__all__ = [
    "DEFAULTS",
    "Corpus",
    "Language",
    "Sentence",
    "Token",
    "Unit",
    "all_languages",
    "open_corpus",
    "parse_languages",
    "read_conllu",
    "resolve_language",
    "script_of_text",
    "split_units",
]

_LAZY = {"Sentence": "ud", "Token": "ud", "read_conllu": "ud"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"babelscope.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'babelscope.data' has no attribute {name!r}")
