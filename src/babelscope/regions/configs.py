"""The configs of the regions steps: one dataclass per step, the single source of its command-line options
(:func:`babelscope.options.step_command`) and experiment-file keys. Import-light (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass

from babelscope.fields import count, languages, opt

#: the ablation's evaluation languages (held-out text of each)
EVAL_LANGS = (
    "eng,fra,deu,spa,rus,cmn-Hans,ita,por-BR,nld,pol,ces,swe,tur,arb,heb,hin,jpn,kor,vie,ind,ell,fin,hun,ukr"
)
CORPUS = "udhr-sample (embedded), udhr, pud or a .conllu/.txt/.jsonl path."
WINDOW = "Tokens per window; each starts with BOS."


@dataclass
class ImportanceConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", CORPUS)
    langs: str = languages("eng,fra,deu,spa,rus,cmn-Hans", "Comma-separated languages to score.")
    max_tokens: int = count(2048, "Token budget per language (importance text).")
    window: int = count(512, WINDOW)
    batch_size: int = count(4, "Windows per forward (and backward) pass.")
    method: str = opt("taylor", "taylor: θ⊙Σg (the paper's); per-step: Σ|θ⊙g| per batch.")
    test_fraction: float = opt(0.5, "Fraction of unit ids held out for evaluation.")
    seed: int = opt(0, "Seed of the id-based split.")
    include: str = opt("", "Regex: score only block parameters whose name matches.")
    exclude: str = opt("", "Regex: leave out block parameters whose name matches.")
    gradient_checkpointing: bool = opt(False, "Recompute each block's activations in the backward: one block's "
                                       "held instead of every block's, for about a third more compute.")
    fsdp: bool = opt(False, "Shard the blocks with FSDP 2 over the processes of torchrun / accelerate launch "
                     "(fully_shard per block, no optimizer): each process scores and writes its own rows.")
    dtype: str = "float32"
    device: str | None = None


@dataclass
class SelectConfig:
    importance_step: str = opt("regions-importance", "The importance step folder to read.")
    k: str = opt("0.01,0.03", "Fractions whose masks are saved, e.g. 0.01,0.03 (each in (0, 1)).")
    scope: str = opt("tensor,global", "tensor (per matrix, the paper's default), global, or both.")
    table_k: str = opt("0.01,0.03,0.05", "Fractions of the per-matrix table.")
    monolingual: bool = opt(True, "Also save monolingual regions and overlaps.")
    seed: int = opt(0, "Seed of Random-k.")
    skip_zeros: bool = opt(True, "Draw Bottom-k and Random-k among weights whose importance is not 0 (weights "
                           "already 0, e.g. in a quantised model, change nothing when removed); --no-skip-zeros: the "
                           "paper's plain ranking.")


@dataclass
class AblateConfig:
    model: str = "gemma-3-270m"
    select_step: str = opt("regions-select", "The select step folder whose masks are applied.")
    corpus: str = opt("udhr-sample", CORPUS)
    langs: str = languages(EVAL_LANGS, "Evaluation languages (their held-out text).")
    k: str = opt("0.01,0.03", "Fractions to apply (masks saved by select).")
    scope: str = opt("tensor,global", "tensor, global, or both.")
    regions: str = opt("top,bottom,random", "Any of top,bottom,random.")
    mode: str = opt("zero", "zero (remove), reset (to --initial), scale (× factor), noise.")
    factor: float = opt(0.0, "Multiplier (scale) or noise σ in units of the tensor's std.")
    include_norms: bool = opt(False, "Also zero norm weights (off, as in the paper).")
    initial: str | None = opt(None, "Initial weights (safetensors file or dir) for reset.")
    window: int = count(512, WINDOW)
    batch_size: int = count(8, "Windows per forward (and backward) pass.")
    max_tokens: int | None = count(None, "Per-language cap on evaluation tokens.")
    generate: bool = opt(True, "Greedy 'Fudan University is located in' before/after.")
    gen_langs: str = languages("eng,cmn-Hans,fra,deu,spa,rus,jpn,arb", "Languages of the generation prompt.")
    max_new_tokens: int = count(16, "Tokens generated per prompt.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class ScanConfig:
    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", CORPUS)
    langs: str = languages("eng,fra,deu,cmn-Hans,rus", "Languages whose held-out text is scored.")
    layer: int = opt(1, "Block index (0-based).")
    norm: str = opt("post_attention_layernorm", "Norm name inside the block, e.g. input_layernorm, "
                    "post_attention_layernorm.")
    mode: str = opt("zero", "one (γ=1), scale (γ×factor) or zero (γ=0).")
    factor: float = opt(0.0, "Multiplier for --mode scale.")
    dims: str = opt("quick", "quick (top-N by activation + N random), all, or a comma list.")
    top_n: int = count(8, "N of the quick scan.")
    threshold: float = opt(10.0, "Flag a dimension when PPL ≥ threshold × base.")
    max_tokens: int | None = count(128, "Per-language token cap.")
    window: int = count(512, WINDOW)
    batch_size: int = count(8, "Windows per forward (and backward) pass.")
    test_fraction: float = opt(0.5, "Fraction of unit ids held out (the scored side).")
    seed: int = opt(0, "Seed of the split and of the random dimensions.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class RegionsConfig:
    """The whole study as one experiment step (``command: regions``): importance, select, ablate and scan."""

    model: str = "gemma-3-270m"
    corpus: str = opt("udhr-sample", CORPUS)
    langs: str = languages("eng,fra,deu,spa,rus,cmn-Hans", "Importance languages, comma-separated.")
    max_tokens: int = count(2048, "Importance tokens per language.")
    eval_langs: str = languages(EVAL_LANGS, "Evaluation languages of the ablation (their held-out text).")
    eval_max_tokens: int | None = count(None, "Per-language cap on evaluation tokens.")
    k: str = opt("0.01,0.03", "Region fractions, e.g. 0.01,0.03 (each in (0, 1)).")
    scope: str = opt("tensor,global", "tensor (per matrix, the paper's default), global, or both.")
    monolingual: bool = opt(True, "Also save monolingual regions and overlaps.")
    skip_zeros: bool = opt(True, "Draw Bottom-k and Random-k among weights whose importance is not 0 (see "
                           "regions select).")
    generate: bool = opt(True, "Greedy 'Fudan University is located in' before/after.")
    gen_langs: str = languages("eng,cmn-Hans,fra,deu,spa,rus,jpn,arb", "Languages of the generation prompt.")
    max_new_tokens: int = count(16, "Tokens generated per prompt.")
    scan_langs: str = languages("eng,fra,deu,cmn-Hans,rus", "Languages of the dimension scan.")
    scan_layer: int = opt(1, "Block index of the scanned norm (0-based).")
    scan_norm: str = opt("post_attention_layernorm", "Norm name inside the block.")
    scan_mode: str = opt("zero", "one (γ=1), scale (γ×factor) or zero (γ=0).")
    scan_dims: str = opt("quick", "quick (top-N by activation + N random), all, or a comma list.")
    scan_top_n: int = count(8, "N of the quick scan.")
    scan_max_tokens: int | None = count(128, "Per-language token cap of the scan.")
    window: int = count(512, WINDOW)
    batch_size: int = count(4, "Windows per forward (and backward) pass.")
    dtype: str = "float32"
    device: str | None = None
