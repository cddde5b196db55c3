"""The architecture table: for each model family, where its parts live in the unmodified Hugging Face model.

As TransformerLens keeps ``model_bridge/supported_architectures/<arch>.py``, one entry per family names the
blocks, the attention and its query/key/value projections, the FFN (input projections, activation module, down
projection), the norms inside a block and how they scale, the final norm the logit lens reads, whether the
attention has biases, and how text is started for scoring (BOS). Nothing is re-implemented: every command reads
the model's own modules through these names. Commands that need a part of the table (the dimension scan: the
norms; neurons: the FFN activation; the lens: the final norm) refuse a family with no entry in one line naming
that part; commands that only need the blocks (perplexity, importance) work on any model.

Norm scale: Gemma's RMSNorm multiplies the normalised vector by ``(1 + w)`` (Gemma 2 and 3; a weight of 0 is the
identity), Llama, Mistral, Qwen, GPT-2 and BERT by ``w`` (a weight of 0 silences the dimension).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from babelscope.errors import BabelscopeError


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its parts (names relative to a block unless said otherwise)."""

    name: str
    model_types: tuple[str, ...]  # ``config.model_type`` values of the family
    blocks: str  # name of the ModuleList of blocks (its last path component: layers, h, layer)
    attention: str  # the attention module
    qkv: tuple[str, ...]  # query, key, value projections (one fused c_attn for GPT-2)
    qkv_bias: bool | str  # True / False, or the config attribute that says (Llama: attention_bias)
    ffn_in: tuple[str, ...]  # projections into the FFN's intermediate size (gate, up)
    act: str  # the FFN activation module (LAPE's site, Tang et al. 2024)
    ffn_down: str  # the down projection (neuron j = its input column j)
    norms: tuple[str, ...]  # the norm modules inside a block, in forward order
    norm_offset: float  # γ = offset + w: 1.0 for Gemma's (1 + w), 0.0 for w
    final_norm: str | None  # next to the blocks' ModuleList (in the module that owns it); None for encoders
    bos: str  # "tokenizer": BOS where the tokenizer adds one itself; "never": score from the first token; "eos"
    turn_format: str = ""  # the fallback chat turn format when the tokenizer has no template ("gemma")

    def has_qkv_bias(self, config) -> bool:
        return bool(getattr(config, self.qkv_bias, False)) if isinstance(self.qkv_bias, str) else self.qkv_bias


_LLAMA_LIKE = dict(blocks="layers", attention="self_attn", qkv=("self_attn.q_proj", "self_attn.k_proj",
                   "self_attn.v_proj"), ffn_in=("mlp.gate_proj", "mlp.up_proj"), act="mlp.act_fn",
                   ffn_down="mlp.down_proj", final_norm="norm")  # fmt: skip
_TWO_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA2_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm")  # fmt: skip
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_BERT = dict(blocks="layer", attention="attention", qkv=("attention.self.query", "attention.self.key",
             "attention.self.value"), qkv_bias=True, ffn_in=("intermediate.dense",),
             act="intermediate.intermediate_act_fn", ffn_down="output.dense",
             norms=("attention.output.LayerNorm", "output.LayerNorm"), norm_offset=0.0, final_norm=None,
             bos="tokenizer")  # fmt: skip

FAMILIES: tuple[Family, ...] = (
    Family("gemma3", ("gemma3", "gemma3_text"), **_LLAMA_LIKE, qkv_bias="attention_bias",
           norms=_GEMMA2_NORMS + _QK_NORMS, norm_offset=1.0, bos="tokenizer", turn_format="gemma"),
    Family("gemma2", ("gemma2",), **_LLAMA_LIKE, qkv_bias="attention_bias", norms=_GEMMA2_NORMS, norm_offset=1.0,
           bos="tokenizer", turn_format="gemma"),
    Family("gemma", ("gemma",), **_LLAMA_LIKE, qkv_bias="attention_bias", norms=_TWO_NORMS, norm_offset=1.0,
           bos="tokenizer", turn_format="gemma"),
    Family("llama", ("llama",), **_LLAMA_LIKE, qkv_bias="attention_bias", norms=_TWO_NORMS, norm_offset=0.0,
           bos="tokenizer"),
    Family("mistral", ("mistral",), **_LLAMA_LIKE, qkv_bias=False, norms=_TWO_NORMS, norm_offset=0.0,
           bos="tokenizer"),
    Family("qwen2", ("qwen2",), **_LLAMA_LIKE, qkv_bias=True, norms=_TWO_NORMS, norm_offset=0.0, bos="never"),
    Family("qwen3", ("qwen3",), **_LLAMA_LIKE, qkv_bias="attention_bias", norms=_TWO_NORMS + _QK_NORMS,
           norm_offset=0.0, bos="never"),
    Family("gpt2", ("gpt2",), blocks="h", attention="attn", qkv=("attn.c_attn",), qkv_bias=True,
           ffn_in=("mlp.c_fc",), act="mlp.act", ffn_down="mlp.c_proj", norms=("ln_1", "ln_2"), norm_offset=0.0,
           final_norm="ln_f", bos="eos"),
    Family("bert", ("bert",), **_BERT),
    Family("xlm-roberta", ("xlm-roberta", "roberta"), **_BERT),
)  # fmt: skip
BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family_of(model: nn.Module) -> Family | None:
    """The table's entry for ``model`` (by its config's ``model_type``), or ``None``."""
    config = model.config
    for cfg in (config, text_config(model)):
        family = BY_MODEL_TYPE.get(getattr(cfg, "model_type", ""))
        if family is not None:
            return family
    return None


def require_family(model: nn.Module, part: str, command: str) -> Family:
    """The table's entry, or a one-line refusal naming the ``part`` of the table ``command`` needs."""
    family = family_of(model)
    if family is None:
        model_type = getattr(model.config, "model_type", "?")
        known = ", ".join(f.name for f in FAMILIES)
        raise BabelscopeError(
            f"{type(model).__name__} (model_type {model_type!r}) has no entry in Babelscope's architecture table "
            f"(babelscope.models.families; known: {known}): {command} needs its {part}; add an entry naming it"
        )
    return family


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the transformer blocks: the table's ``blocks`` for a known family,
    else the ``nn.ModuleList`` whose length is the config's number of hidden layers."""
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
    family = family_of(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers
    ]
    if family is not None:
        named = [(n, m) for n, m in candidates if n.rpartition(".")[2] == family.blocks]
        candidates = named or candidates
    if not candidates:
        raise BabelscopeError(
            f"{type(model).__name__}: cannot find its {n_layers} transformer blocks (no ModuleList of that length)"
        )
    return candidates[0]


def block_owner(model: nn.Module) -> nn.Module:
    """The module that holds the blocks (``model.model`` for Llama, ``transformer`` for GPT-2)."""
    prefix, _ = block_list(model)
    return model.get_submodule(prefix.rpartition(".")[0])


def final_norm(model: nn.Module, command: str = "the logit lens") -> nn.Module:
    """The norm the model applies after its last block (the table's ``final_norm``, next to the blocks)."""
    family = require_family(model, "final norm", command)
    if family.final_norm is None:
        raise BabelscopeError(
            f"{type(model).__name__} ({family.name}) is an encoder with no final norm before an LM head: "
            f"{command} needs a decoder"
        )
    return block_owner(model).get_submodule(family.final_norm)


def norm_names(model: nn.Module) -> list[str]:
    """Qualified weight names of the norms inside the blocks: the table's, else (a family with no entry) every
    module with a 1-D weight whose class name says "norm"."""
    prefix, blocks = block_list(model)
    family = family_of(model)
    out = []
    for i, block in enumerate(blocks):
        if family is not None:
            subs = [s for s in family.norms if _has(block, s)]
        else:
            subs = [s for s, m in block.named_modules() if "norm" in type(m).__name__.lower()
                    and getattr(getattr(m, "weight", None), "ndim", 0) == 1]  # fmt: skip
        out += [f"{prefix}.{i}.{s}.weight" for s in subs]
    return out


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def qkv_bias_names(model: nn.Module) -> list[str]:
    """Qualified names of the attention's query/key/value biases (Qwen2, GPT-2, BERT), as the model has them."""
    prefix, blocks = block_list(model)
    family = family_of(model)
    if family is None:
        return [f"{prefix}.{i}.{n}" for i, b in enumerate(blocks) for n, _ in b.named_parameters()
                if n.endswith(".bias") and any(k in n for k in ("q_proj", "k_proj", "v_proj", "query", "key",
                                                                "value", "c_attn", "qkv"))]  # fmt: skip
    return [
        f"{prefix}.{i}.{proj}.bias"
        for i, block in enumerate(blocks)
        for proj in family.qkv
        if getattr(block.get_submodule(proj), "bias", None) is not None
    ]


def head_is_tied(model: nn.Module) -> bool:
    """Whether the LM head shares its weight with the input embedding (Gemma, SmolLM2) or not (Qwen2.5 0.5B)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def describe_architecture(model: nn.Module) -> dict:
    """What a result says about the architecture: family, norms per block and their scale, QKV biases, head."""
    family = family_of(model)
    _, blocks = block_list(model)
    norms = norm_names(model)
    return {
        "family": family.name if family else None,
        "norms_per_block": len(norms) // max(len(blocks), 1),
        "norm_scale": None if family is None else ("1 + w" if family.norm_offset else "w"),
        "qkv_bias": bool(qkv_bias_names(model)),
        "tied_head": head_is_tied(model),
    }


def scoring_prefix(model: nn.Module | None, tokenizer) -> int | None:
    """The token placed before a text to score its first token, or ``None`` to score from its second token.

    The rule is the tokenizer's own: BOS when the tokenizer adds BOS to a text itself (Gemma, Llama 2/3). A
    tokenizer that adds none (instruct models with ``add_bos_token = False``: Qwen, SmolLM2) gets no prefix: its
    text is scored from the first token, which is context only. Qwen is never prefixed with ``<|endoftext|>``
    (an English sentence scores perplexity 2,599 after it and 37.6 without it). GPT-2 (family rule "eos") was
    trained on documents separated by ``<|endoftext|>`` and scores after it, as lm-evaluation-harness does.
    A model with no table entry and a tokenizer without a BOS rule falls back to BOS, else EOS."""
    family = family_of(model) if model is not None else None
    bos = tokenizer.bos_token_id
    if bos is not None and _tokenizer_adds_bos(tokenizer):
        return int(bos)
    if family is not None:
        if family.bos == "eos" and tokenizer.eos_token_id is not None:
            return int(tokenizer.eos_token_id)
        return None
    if getattr(tokenizer, "add_bos_token", None) is False or bos is None and tokenizer.eos_token_id is None:
        return None
    for token_id in (bos, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    try:
        return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    except Exception:  # a tokenizer that cannot encode without more setup: trust its flag
        return bool(getattr(tokenizer, "add_bos_token", False))


def document_separator(tokenizer) -> int | None:
    """The token that ends a document in pretraining text: EOS, unless EOS ends a chat turn (``<|im_end|>``,
    ``<end_of_turn>``), then ``<|endoftext|>`` where the vocabulary has it (Qwen, SmolLM2)."""
    eos = tokenizer.eos_token
    if eos in ("<|im_end|>", "<end_of_turn>"):
        text_end = tokenizer.get_vocab().get("<|endoftext|>")
        if text_end is not None:
            return int(text_end)
    return tokenizer.eos_token_id
