"""The configs of the lens steps: one dataclass per step, the single source of its command-line options
(:func:`babelscope.options.step_command`) and experiment-file keys. Import-light (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass

from babelscope.fields import count, languages, opt


@dataclass
class LensTranslateConfig:
    model: str = "gemma-3-270m"
    words: str = opt("embedded", "TSV word list (concept + one column per language), or 'embedded' (52 nouns).")
    source: str = opt("fra", "Language of the words in the prompt.")
    targets: str = opt("cmn-Hans,jpn,kor,rus,arb,hin", "Comma-separated target languages (columns of the word list).")
    shots: int = count(4, "Demonstrations before the query.", minimum=0)
    layers: str = opt("all", "all, middle, or layers like 3,6,9, 4-8 and -1 (0 = embeddings, i = output of block i, "
                            "-1 = the last).")
    max_items: int | None = count(None, "At most this many concepts per target.")
    seed: int = opt(0, "Seed of the demonstrations' choice.")
    batch_size: int = count(16, "Sequences per forward pass.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class LensScriptConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", "udhr-sample (embedded), udhr, pud or a text file.")
    langs: str = languages("cmn-Hans,jpn,kor,rus,arb,hin", "Comma-separated (non-Latin-script) languages to read.")
    max_tokens: int = count(256, "Positions decoded per language.")
    window: int = count(256, "Tokens per window; each starts with BOS.")
    layers: str = opt("all", "all, middle, or layers like 3,6,9, 4-8 and -1 (0 = embeddings, i = output of block i, "
                            "-1 = the last).")
    batch_size: int = count(4, "Sequences per forward pass.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None
