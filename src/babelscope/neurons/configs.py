"""The configs of the neurons steps: one dataclass per step, the single source of its command-line options
(:func:`babelscope.options.step_command`) and experiment-file keys. Import-light (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass

from babelscope.fields import count, languages, opt


@dataclass
class NeuronsConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", "udhr-sample (embedded), udhr, pud or a .conllu/.txt/.jsonl path.")
    langs: str = languages("eng,fra,deu,spa,rus,cmn-Hans,jpn,arb", "Comma-separated languages (at least two).")
    max_tokens: int = count(2048, "Token budget per language (the counting text).")
    window: int = count(512, "Tokens per window; each starts with BOS.")
    batch_size: int = count(4, "Windows per forward pass.")
    site: str = opt("act", "act: act(gate) > 0, the paper's; down-input: the down projection's input > 0.")
    filter_rate: float = opt(0.95, "Candidates: probability in some language above this quantile of all.")
    top_rate: float = opt(0.01, "Keep this share of all neurons (lowest LAPE).")
    bar_rate: float = opt(0.95, "Assign a kept neuron to each language above this quantile.")
    test_fraction: float = opt(0.5, "Fraction of unit ids held out for deactivation.")
    seed: int = opt(0, "Seed of the id-based split.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class DeactivateConfig:
    model: str = "gemma-3-270m"
    neurons_step: str = opt("neurons", "The neurons step folder to read.")
    corpus: str | None = opt(None, "Evaluation corpus (default: the neurons step's).")
    langs: str | None = languages(None, "Evaluation languages (default: the neurons step's).")
    off: str | None = opt(None, "Languages whose neurons are switched off, one row each (default: all).")
    max_tokens: int | None = count(512, "Per-language cap on evaluation tokens.")
    window: int = count(512, "Tokens per window; each starts with BOS.")
    batch_size: int = count(8, "Windows per forward pass.")
    random: bool = opt(True, "Also random neurons, same count per layer (control).")
    seed: int = opt(0, "Seed of the random neurons.")
    generate: bool = opt(True, "Greedy generations with each language's neurons off.")
    max_new_tokens: int = count(16, "Tokens generated per prompt.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class OverlapConfig:
    neurons_step: str = opt("neurons", "The neurons step folder.")
    select_step: str = opt("regions-select", "The regions select step folder.")
    k: float = opt(0.01, "Region fraction (a k the select step saved, e.g. 0.01).")
    scope: str = opt("tensor", "tensor or global (as saved by select).")
    regions: str = opt("lang,mono,core", "lang (the language's own Top-k of |S|), mono (monolingual), core (Top-k "
                       "of Imp).")
    draws: int = count(1000, "Random neuron sets drawn for the baselines.", minimum=0)  # 0 = no random control
    seed: int = opt(0, "Seed of the random sets.")


@dataclass
class PlndConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", "udhr-sample (embedded), udhr, pud or a .conllu/.txt/.jsonl path.")
    langs: str = languages("eng,fra,deu,spa,rus,cmn-Hans,jpn,arb", "Comma-separated languages (at least two).")
    max_tokens: int = count(2048, "Token budget per language; each window is one document.")
    window: int = count(256, "Tokens per window (document); each starts with BOS.")
    batch_size: int = count(4, "Windows per forward pass.")
    top_rate: float = opt(0.01, "A neuron is important for a document when its importance is in this top share of "
                          "all FFN neurons'.")
    consistency: float = opt(1.0, "A language's neuron: important in at least this share of its documents.")
    test_fraction: float = opt(0.5, "Fraction of unit ids held out (for `neurons deactivate`).")
    seed: int = opt(0, "Seed of the id-based split and the random sets.")
    neurons_step: str = opt("neurons", "LAPE neurons step to overlap with (skipped when absent; none: off).")
    select_step: str = opt("regions-select", "Regions select step to overlap with (skipped when absent; none: off).")
    k: float = opt(0.01, "Region fraction (a k the select step saved).")
    scope: str = opt("tensor", "tensor or global (as saved by select).")
    draws: int = count(200, "Random neuron sets drawn for the region baselines.")
    dtype: str = "float32"
    device: str | None = None
