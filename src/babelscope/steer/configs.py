"""The config of the steer step: the single source of its command-line options and experiment-file keys.
Import-light (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from babelscope.fields import count, languages, opt


@dataclass
class SteerConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("pud-sample", "Parallel corpus: pud-sample (embedded), pud, udhr, or a .conllu/.txt/.jsonl "
                      "path.")
    langs: str = languages("eng,deu,fra,rus,jpn,tur", "Languages of the means (the others of each DiffMean), "
                           "comma-separated, at least two.")
    targets: str = opt("", "Languages to steer into (default: every language but --source).")
    source: str = opt("eng", "Language of the prompts.")
    layers: str = opt("", "Steering layers, comma-separated (0 = embeddings, i = output of block i; default: the "
                      "layers at 1/4, 1/2 and 3/4 of the depth).")
    alphas: str = opt("1,2,4", "DiffMean steering strengths α (multiples of the direction; with --normalise, "
                      "fractions of the layer's mean residual norm).")
    normalise: bool = opt(False, "Unit directions scaled to the layer's mean residual norm.")
    neurons_step: str = opt("neurons", "LAPE neurons step for the head-to-head (none: DiffMean only).")
    lape_alphas: str = opt("1,2,4", "LAPE steering: neurons set to α times their mean in the target language.")
    max_tokens: int = count(2048, "Tokens per language for the means.")
    window: int = count(256, "Tokens per window of the means; each starts with BOS.")
    batch_size: int = count(8, "Windows or prompts per forward.")
    prompts: int = opt(16, "Prompts (held-out parallel units) per condition.")
    max_new_tokens: int = count(24, "Tokens generated per prompt.")
    ppl_max_tokens: int = count(256, "Tokens per language for the perplexity cost at the best setting.")
    test_fraction: float = opt(0.5, "Fraction of unit ids held out for prompts and perplexity.")
    seed: int = opt(0, "Seed of the id-based split.")
    dtype: str = "float32"
    device: str | None = None
