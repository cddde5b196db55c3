"""UD sentences per language for the syntax steps.

Treebank specs: ``pud`` (the 21 PUD treebanks of the shared data directory), ``pud-sample`` (60 sentences of
six PUD languages embedded in the package, CC BY-SA 3.0, see ``data/embedded/syntax/NOTICE.md``), or a path:
a ``.conllu`` file, a treebank folder or a folder of treebank folders (``ud:PATH`` also works). Sentences are
read with :func:`babelscope.data.ud.read_conllu`, which rebuilds the text with ``SpaceAfter=No`` and gives each
word the character span of its surface token, and refuses cycles and heads out of range.
"""

from __future__ import annotations

from pathlib import Path

from babelscope.errors import BabelscopeError


def treebank_paths(spec: str) -> list[Path]:
    """The CoNLL-U files a treebank spec names."""
    from babelscope.data.ud import pud_sample_dir, treebank_files
    from babelscope.settings import data_dir

    if spec == "pud-sample":
        root = pud_sample_dir()
    elif spec == "pud":
        root = data_dir() / "ud"
        files = sorted(p for d in root.glob("UD_*-PUD") for p in d.glob("*.conllu"))
        if not files:
            raise BabelscopeError(f"treebank 'pud': no PUD treebanks under {root}; set BABELSCOPE_DATA to the "
                                  "shared data directory or give a treebank path")
        return files
    else:
        root = Path(spec.removeprefix("ud:")).expanduser()
        if not root.exists():
            raise BabelscopeError(f"treebank {spec!r}: no such file or folder; give pud, pud-sample or a path to "
                                  ".conllu files")
    files = treebank_files(root)
    if not files:
        raise BabelscopeError(f"treebank {spec!r}: no .conllu files in {root}")
    return files


def load_treebanks(spec: str, langs: str = "all", max_sentences: int | None = None) -> dict[str, list]:
    """``{language code: [Sentence]}`` for the languages asked for (``all`` or a comma-separated list).

    On a parallel treebank (PUD) only the sentence ids every chosen language has are kept, in sent_id order, so
    ``max_sentences`` picks the same sentences in every language.
    """
    from babelscope.data.languages import parse_languages
    from babelscope.data.ud import UdCorpus

    corpus = UdCorpus(treebank_paths(spec), name=spec)
    codes = corpus.languages() if langs in ("all", "", None) else [
        corpus.match_language(lang) for lang in parse_languages(langs)
    ]
    if not codes:
        raise BabelscopeError(f"treebank {spec!r}: no languages selected")
    sentences = {code: corpus.sentences(code) for code in codes}
    for code, sents in sentences.items():
        if not sents:
            raise BabelscopeError(f"treebank {spec!r}: no sentences for {code}; drop it from --langs")
    if corpus.parallel and len(codes) > 1:
        common = set.intersection(*({s.id for s in sents} for sents in sentences.values()))
        if not common:
            raise BabelscopeError(f"treebank {spec!r}: the languages share no sent_id; use a parallel treebank")
        sentences = {code: sorted((s for s in sents if s.id in common), key=lambda s: s.id)
                     for code, sents in sentences.items()}
    if max_sentences is not None:
        sentences = {code: sents[:max_sentences] for code, sents in sentences.items()}
    return sentences
