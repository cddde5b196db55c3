"""The configs of the syntax steps: one dataclass per step, the single source of its command-line options
(:func:`babelscope.options.step_command`) and experiment-file keys. Import-light (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass

from babelscope.fields import count, languages, opt


@dataclass
class ExtractConfig:
    model: str = "gemma-3-270m"
    treebank: str = opt("pud-sample", "pud (21 PUD treebanks), pud-sample (embedded) or a .conllu file / treebank "
                        "folder.")
    langs: str = languages("all", "Comma-separated languages, or 'all'.")
    layers: str = opt("all", "all, middle, or layers like 3,6,9, 4-8 and -1 (0 = embeddings, i = output of block i, "
                            "-1 = the last).")
    pooling: str = opt("auto", "Subword pooling: auto (first for encoders, last for decoders), first, last, mean.")
    max_sentences: int | None = count(None, "First N sentences (the same sent_ids on PUD).")
    batch_size: int = count(16, "Sentences per forward pass.")
    random_init: bool = opt(False, "Use a randomly initialised copy of the model (control).")
    seed: int = opt(0, "Seed of every subsample, split and permutation.")
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_dir: str | None = None


@dataclass
class OtddConfig:
    # unused (the store says which model); accepted so that an experiment's defaults apply
    model: str = opt("", "Unused.", cli=False)
    store: str = opt("syntax-extract", "Step folder (in the run directory) of the extract step to read.")
    langs: str = languages("all", "Comma-separated languages, or 'all' (every language in the store).")
    layer: str = opt("middle", "Layer of the store, or middle.")
    samples: int = count(1000, "Relation vectors per language per draw.")
    draws: int = count(3, "Seeded subsamples (mean and standard deviation).")
    reg: float = opt(0.05, "Outer entropic regularisation, times the median cost (0.01-10).")
    inner: str = opt("emd", "Label-to-label OT: emd (exact) or sinkhorn (the paper's).")
    inner_reg: float = opt(0.1, "Entropic regularisation of --inner sinkhorn, times the median cost of each block.")
    max_per_label: int = count(50, "Vectors per label in the label-to-label OT.")
    typology: str = opt("knn", "URIEL syntax features: knn (imputed) or wals.")
    mantel_perm: int = count(9999, "Permutations of the Mantel tests.")
    seed: int = opt(0, "Seed of every subsample, split and permutation.")


@dataclass
class RsaConfig:
    # unused (the store says which model); accepted so that an experiment's defaults apply
    model: str = opt("", "Unused.", cli=False)
    store: str = opt("syntax-extract", "Step folder (in the run directory) of the extract step to read.")
    control: str = opt("", "Extract step of the randomly initialised model ('' = none).")
    langs: str = languages("all", "Comma-separated languages, or 'all' (every language in the store).")
    layers: str = opt("all", "Layers of the per-layer curves (all = every stored layer).")
    layer: str = opt("middle", "Layer of the language-by-language heatmap, or middle.")
    concepts: str = opt("relation", "relation or pos.")
    min_count: int = count(20, "Instances a concept needs in both languages.")
    metric: str = opt("euclidean", "RDM distance: euclidean, cosine or correlation.")
    n_perm: int = count(1000, "Permutations for the heatmap layer's p-values.")
    typology: str = opt("knn", "URIEL syntax features of the Mantel test: knn (imputed) or wals.")
    seed: int = opt(0, "Seed of every subsample, split and permutation.")


@dataclass
class ProbeConfig:
    # unused (the store says which model); accepted so that an experiment's defaults apply
    model: str = opt("", "Unused.", cli=False)
    store: str = opt("syntax-extract", "Step folder (in the run directory) of the extract step to read.")
    control: str = opt("", "Extract step of the randomly initialised model ('' = none).")
    langs: str = languages("all", "Comma-separated languages, or 'all' (every language in the store).")
    layers: str = opt("all", "Layers to probe (all = every stored layer).")
    concepts: str = opt("relation,pos", "relation, pos or both (comma-separated).")
    transfer_layer: str = opt("middle", "Layer of the transfer matrix, or middle.")
    test_fraction: float = opt(0.5, "Share of sent_ids held out for testing.")
    max_train: int = count(3000, "Training instances per language (subsample).")
    C: float = opt(1.0, "Inverse L2 strength of the logistic-regression probes.", "--C")
    max_iter: int = count(200, "Solver iterations of each probe.")
    otdd: str = opt("", "OTDD step to correlate transfer with ('' = none).")
    seed: int = opt(0, "Seed of every subsample, split and permutation.")


@dataclass
class MetaConfig:
    model: str = opt("", "Check the stores were made with this model ('' = no check).")
    store: str = opt("syntax-extract", "Step folder (in the run directory) of the extract step to read.")
    test_store: str = opt("", "Extract step of the held-out languages with UD splits ('' = the same store; then "
                          "name --test-langs).")
    source: str = opt("en", "Source language of the prototypes.")
    meta_langs: str = languages("all", "Meta-training languages ('all' = the store's, less the source and the test "
                                "languages).")
    test_langs: str = languages("all", "Held-out languages ('all' = every language of --test-store).")
    test_treebank: str = opt("", "Treebank giving the held-out sentences' UD splits ('' = the one the store records).")
    concepts: str = opt("pos,relation", "pos, relation or both (comma-separated).")
    layer: str = opt("middle", "A stored layer, middle, or auto (best English probe dev accuracy).")
    shots: str = opt("0,1,5,10,20", "Labelled target sentences N (0 = zero-shot), comma-separated.")
    runs: int = count(10, "Seeded runs per setting (mean and standard deviation).")
    min_count: int = count(10, "Instances a concept needs in English and in the language.")
    dev_fraction: float = opt(0.2, "Share of PUD sent_ids held out as dev.")
    proj_dim: int = opt(64, "Dimension of the prototype space (P, phi and the adaptor).")
    width: int = opt(384, "Hidden width of phi, the target-vector network.")
    dropout: float = opt(0.33, "Dropout inside phi.")
    probe_epochs: int = opt(20, "Epochs of the prototype probes (best on dev).")
    probe_lr: float = opt(1e-4, "Adam learning rate of the prototype probes.")
    probe_weight_decay: float = opt(1e-6, "Adam weight decay of the prototype probes.")
    probe_batch: int = opt(64, "Instances per prototype-probe step.")
    meta_epochs: int = opt(5, "Meta-training epochs (best zero-shot dev accuracy kept).")
    episodes_per_lang: int = opt(50, "Episodes per meta-training language and epoch.")
    support: int = opt(20, "Support sentences per meta-training episode.")
    query: int = opt(30, "Query sentences per meta-training episode.")
    # the paper: 5e-5 over ~50 x 50m episodes; we run far fewer on a CPU
    meta_lr: float = opt(1e-3, "Adam learning rate of meta-training.")
    meta_weight_decay: float = opt(1e-4, "Adam weight decay of meta-training.")
    pos_step: str = opt("pos", "In-context POS step of the run dir for MONO / EN ('' = none).")
    seed: int = opt(0, "Seed of every subsample, split and permutation.")
