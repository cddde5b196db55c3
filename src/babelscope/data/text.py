"""Plain-text corpora: a .txt file (one unit per line), a .jsonl file, a folder of ``<lang>.txt`` files, and
Hugging Face datasets (``hf:NAME[:CONFIG]``, needs the optional ``datasets`` package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from babelscope.data.base import Corpus, Unit, check_unique_ids
from babelscope.data.languages import Language, resolve_language
from babelscope.errors import BabelscopeError

__all__ = ["HfCorpus", "JsonlCorpus", "TextDirCorpus", "TextFileCorpus"]


def _read_text(path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark (Windows editors write one) is not part of it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BabelscopeError(f"{path} not found: give an existing file") from None
    except UnicodeDecodeError as exc:
        raise BabelscopeError(f"{path}: not UTF-8 ({exc}); convert the file to UTF-8") from None


def _line_units(path: Path, code: str) -> list[Unit]:
    """One unit per non-empty line, id ``L<line number>`` (1-based, counting empty lines too)."""
    units = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        text = line.strip()
        if text:
            units.append(Unit(f"L{number}", code, text, {"source": f"{path}:{number}"}))
    return units


def _language_of_file(path: Path, lang: str | None, spec: str) -> Language:
    if lang:
        return resolve_language(lang)
    stem = path.name.split(".")[0]
    for candidate in (stem, path.stem.rsplit(".", 1)[-1], stem.split("_")[0]):
        try:
            return resolve_language(candidate)
        except BabelscopeError:
            continue
    raise BabelscopeError(
        f"{path}: cannot tell the language of this file from its name; add it to the spec: {spec}#lang=CODE"
    )


class TextFileCorpus(Corpus):
    """One language, one unit per non-empty line of a UTF-8 text file."""

    def __init__(self, path: str | Path, lang: str | None = None, name: str | None = None,
                 parallel: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise BabelscopeError(f"{self.path} not found: give an existing .txt file")
        self.name = name or str(self.path)
        self.parallel = parallel
        self.language = _language_of_file(self.path, lang, self.name)

    def languages(self) -> list[str]:
        return [self.language.code]

    def _load(self, code: str) -> list[Unit]:
        return _line_units(self.path, code)


class TextDirCorpus(Corpus):
    """A folder of ``<lang>.txt`` files (one unit per line, id ``L<line>``).

    Parallel by default when every file has the same number of lines (line-aligned translations, as in
    FLORES); say ``#parallel=no`` / ``yes`` to override.
    """

    def __init__(self, root: str | Path, name: str | None = None, parallel: bool | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.name = name or str(self.root)
        self.files: dict[str, Path] = {}
        for path in sorted(self.root.glob("*.txt")):
            language = _language_of_file(path, None, str(path))
            if language.code in self.files:
                raise BabelscopeError(
                    f"{path}: {self.files[language.code].name} is also {language.code}; "
                    "keep one file per language"
                )
            self.files[language.code] = path
        if not self.files:
            raise BabelscopeError(f"{self.root}: no <lang>.txt files found; add files like eng.txt, fra.txt")
        if parallel is None:  # line counts without trailing blank lines (an editor's final newline or two)
            counts = {len(_read_text(p).rstrip().splitlines()) for p in self.files.values()}
            parallel = len(counts) == 1 and len(self.files) > 1
        self.parallel = parallel

    def languages(self) -> list[str]:
        return sorted(self.files)

    def _load(self, code: str) -> list[Unit]:
        return _line_units(self.files[code], code)


class JsonlCorpus(Corpus):
    """JSON lines with ``text``, ``lang`` (or a default language) and an optional ``id`` (else ``L<line>``).

    Other fields go to the unit meta. Parallel by default when every record has an id and there is more than
    one language.
    """

    def __init__(self, path: str | Path, lang: str | None = None, name: str | None = None,
                 parallel: bool | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = name or str(self.path)
        default = resolve_language(lang) if lang else None
        self.by_lang: dict[str, list[Unit]] = {}
        explicit_ids = True
        for number, line in enumerate(_read_text(self.path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise BabelscopeError(
                    f"{self.path}:{number}: not valid JSON ({exc}); write one object per line"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise BabelscopeError(f"{self.path}:{number}: expected an object with a string 'text' field")
            if record.get("lang"):
                try:
                    language = resolve_language(str(record["lang"]))
                except BabelscopeError as exc:
                    raise BabelscopeError(f"{self.path}:{number}: {exc}") from None
            elif default is not None:
                language = default
            else:
                raise BabelscopeError(
                    f"{self.path}:{number}: no 'lang' field; add one or give a default: {self.name}#lang=CODE"
                )
            explicit_ids &= "id" in record
            unit_id = str(record["id"]) if "id" in record else f"L{number}"
            meta: dict[str, Any] = {k: v for k, v in record.items() if k not in ("id", "lang", "text")}
            meta["source"] = f"{self.path}:{number}"
            unit = Unit(unit_id, language.code, record["text"], meta)
            self.by_lang.setdefault(language.code, []).append(unit)
        if not self.by_lang:
            raise BabelscopeError(f"{self.path}: no records; add JSON lines with 'lang' and 'text'")
        for units in self.by_lang.values():
            check_unique_ids(units, str(self.path))
        self.parallel = parallel if parallel is not None else explicit_ids and len(self.by_lang) > 1

    def languages(self) -> list[str]:
        return sorted(self.by_lang)

    def _load(self, code: str) -> list[Unit]:
        return list(self.by_lang[code])


class HfCorpus(Corpus):
    """A Hugging Face dataset split (``hf:NAME[:CONFIG]``, options ``split``, ``text``, ``lang``, ``id``).

    The language comes from the ``lang`` option, a ``lang``/``language`` column, or the config name
    (``fra_Latn``). Needs ``pip install babelscope[hf]`` and network access or a local datasets cache.
    """

    def __init__(
        self, dataset: str, config: str | None = None, options: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        options = dict(options or {})
        self.dataset, self.config = dataset, config
        self.name = f"hf:{dataset}" + (f":{config}" if config else "")
        try:
            import datasets
        except ImportError:
            raise BabelscopeError(
                f"corpus {self.name!r} needs the Hugging Face datasets package: pip install babelscope[hf] "
                "(or pass a local .txt/.jsonl file instead)"
            ) from None
        split = options.get("split", "test")
        try:
            table = datasets.load_dataset(dataset, config, split=split)
        except Exception as exc:  # network, missing dataset/config/split: all user-facing
            raise BabelscopeError(
                f"cannot load {self.name!r} split {split!r} "
                f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                "check the name and network access, or pass a local .txt/.jsonl file"
            ) from None
        columns = list(table.column_names)
        guess = next((c for c in ("text", "sentence", "content") if c in columns), None)
        text_col = options.get("text") or guess
        if text_col not in columns:
            raise BabelscopeError(
                f"{self.name}: no text column {text_col!r}; "
                f"choose one of {columns} with {self.name}#text=COLUMN"
            )
        id_col = options.get("id") or ("id" if "id" in columns else None)
        lang_col = next((c for c in ("lang", "language") if c in columns), None)
        fixed = options.get("lang") or (config if lang_col is None else None)
        default = None
        if fixed:
            try:
                default = resolve_language(fixed)
            except BabelscopeError:
                raise BabelscopeError(
                    f"{self.name}: cannot tell the language from {fixed!r}; add {self.name}#lang=CODE"
                ) from None
        elif lang_col is None:
            raise BabelscopeError(f"{self.name}: no language column; add {self.name}#lang=CODE")
        self.by_lang: dict[str, list[Unit]] = {}
        for i, row in enumerate(table):
            language = default or resolve_language(str(row[lang_col]))
            unit_id = str(row[id_col]) if id_col else f"r{i}"
            unit = Unit(unit_id, language.code, str(row[text_col]), {"split": split, "row": i})
            self.by_lang.setdefault(language.code, []).append(unit)
        self.parallel = options.get("parallel", "no").lower() in ("1", "yes", "true")

    def languages(self) -> list[str]:
        return sorted(self.by_lang)

    def _load(self, code: str) -> list[Unit]:
        return list(self.by_lang[code])
