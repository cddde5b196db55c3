"""The architecture table on tiny random models of every family it lists, and the refusal for one it does not."""

from __future__ import annotations

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.models.families import (
    block_list,
    describe_architecture,
    family_of,
    final_norm,
    head_is_tied,
    norm_names,
    qkv_bias_names,
    scoring_prefix,
)
from babelscope.models.params import find_norm, gamma_offset, measured_gamma_offset, norm_modules

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
#: family -> (config class, extra config, norms per block, qkv biases per block, tied head)
CASES = {
    "gemma3": ("Gemma3TextConfig", dict(num_key_value_heads=1, head_dim=16, sliding_window=8), 6, 0, True),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=1, head_dim=16), 4, 0, True),
    "llama": ("LlamaConfig", dict(num_key_value_heads=1), 2, 0, False),
    "mistral": ("MistralConfig", dict(num_key_value_heads=1), 2, 0, False),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1), 2, 3, False),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=16), 4, 0, False),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, n_inner=48, bos_token_id=0, eos_token_id=0), 2, 1,
             True),
    "bert": ("BertConfig", {}, 2, 3, None),
    "xlm-roberta": ("XLMRobertaConfig", {}, 2, 3, None),
}  # fmt: skip


def tiny(family: str, seed: int = 0, vocab: int = 64):
    import transformers

    cls, extra, *_ = CASES[family]
    base = {} if family == "gpt2" else dict(SMALL)
    config = getattr(transformers, cls)(**{**base, **extra, "vocab_size": vocab})
    torch.manual_seed(seed)
    auto = transformers.AutoModel if family in ("bert", "xlm-roberta") else transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    with torch.no_grad():  # random norm weights, so that w and 1 + w scale differently
        for norm in norm_modules(model).values():
            norm.weight.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("family", sorted(CASES))
def test_table_finds_every_part(family):
    model = tiny(family)
    entry = family_of(model)
    assert entry is not None and entry.name == family
    _, cls_extra, n_norms, n_bias, tied = CASES[family]
    prefix, blocks = block_list(model)
    assert len(blocks) == 2 and prefix.rpartition(".")[2] == entry.blocks
    names = norm_names(model)
    assert len(names) == 2 * n_norms
    # the table's scale is the measured one: a zero weight passes the input through only under 1 + w
    assert {measured_gamma_offset(m) for m in norm_modules(model).values()} == {entry.norm_offset}
    assert all(gamma_offset(m, model) == entry.norm_offset for m in norm_modules(model).values())
    assert len(qkv_bias_names(model)) == 2 * n_bias
    if tied is not None:
        assert head_is_tied(model) is tied
    arch = describe_architecture(model)
    assert arch["family"] == family and arch["norms_per_block"] == n_norms and arch["qkv_bias"] == bool(n_bias)


@pytest.mark.parametrize("family", [f for f in sorted(CASES) if f not in ("bert", "xlm-roberta")])
def test_final_norm_and_head_give_the_model_logits(family):
    """The logit lens at the last block is the model's own distribution: head(final_norm(last block output))."""
    from babelscope.models.arch import logits_from_hidden

    model = tiny(family)
    _, blocks = block_list(model)
    seen = {}
    handle = blocks[-1].register_forward_hook(lambda m, a, out: seen.setdefault("h", out[0] if isinstance(
        out, tuple) else out))  # fmt: skip
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad():
        ours = logits_from_hidden(model, final_norm(model)(seen["h"]))
    # same float32 products in the same order: only rounding of a 32-wide dot product separates them
    torch.testing.assert_close(ours, logits.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(CASES))
def test_ffn_activation_feeds_the_down_projection(family):
    """LAPE's site: the table's activation module has the intermediate width, and zeroing one of its outputs
    (the neuron deactivation hook on the down projection's input column) changes the block's output."""
    from babelscope.neurons.ffn import deactivated, ffn_modules

    model = tiny(family)
    ffns = ffn_modules(model)
    assert len(ffns) == 2 and all(f.width == 48 for f in ffns)
    outs = {}
    hooks = [f.act.register_forward_hook(lambda m, a, out, i=f.layer: outs.setdefault(i, out)) for f in ffns]
    ids = torch.tensor([[3, 5, 7, 11]])
    try:
        with torch.no_grad():
            base = _last_hidden(model, ids)
    finally:
        for h in hooks:
            h.remove()
    assert all(outs[i].shape[-1] == 48 for i in (0, 1))
    with deactivated(ffns, {1: torch.arange(48)}), torch.no_grad():
        off = _last_hidden(model, ids)
    assert not torch.allclose(base, off)


def _last_hidden(model, ids):
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1]


def test_a_family_without_an_entry_is_refused_by_what_needs_the_table():
    from transformers import OPTConfig, OPTForCausalLM

    from babelscope.neurons.ffn import ffn_modules

    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                                     num_attention_heads=2, word_embed_proj_dim=32)).eval()
    assert family_of(model) is None
    assert len(block_list(model)[1]) == 2 and norm_names(model)  # generic enumeration still works (importance)
    for call, part in [(lambda: final_norm(model), "final norm"), (lambda: ffn_modules(model), "FFN activation"),
                       (lambda: find_norm(model, 0, "self_attn_layer_norm"), "norms and their scale")]:
        with pytest.raises(BabelscopeError, match=f"model_type 'opt'.*needs its {part}") as err:
            call()
        assert "\n" not in str(err.value)


def _tokenizer(adds_bos: bool):
    from tokenizers import processors

    from conftest import build_tokenizer

    tok = build_tokenizer()
    if not adds_bos:
        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def test_scoring_prefix_follows_the_tokenizer_and_the_family():
    with_bos, without = _tokenizer(True), _tokenizer(False)
    assert without("a b")["input_ids"][0] != without.bos_token_id
    assert scoring_prefix(tiny("gemma3"), with_bos) == with_bos.bos_token_id
    assert scoring_prefix(tiny("llama"), with_bos) == with_bos.bos_token_id  # Llama 2/3 tokenizers add BOS
    assert scoring_prefix(tiny("llama"), without) is None  # SmolLM2: add_bos_token False, score from token 1
    assert scoring_prefix(tiny("qwen2"), without) is None  # Qwen: never after <|endoftext|>
    assert scoring_prefix(tiny("gpt2"), without) == without.eos_token_id  # GPT-2: after <|endoftext|>


def test_engine_without_prefix_scores_every_token_after_the_first_once():
    from babelscope.models.engine import Engine

    tok = _tokenizer(False)
    model = tiny("qwen2", vocab=len(tok))
    engine = Engine(model, tok, batch_size=2, progress=False)
    ids = list(range(3, 20))
    wins = engine.windows(ids, 5)
    assert [w[0][0] for w in wins] == [ids[0], ids[4], ids[8], ids[12]]  # the token before each chunk
    assert sum(n for _, n in wins) == len(ids) - 1
    assert [t for seq, n in wins for t in seq[len(seq) - n :]] == ids[1:]
    text = "The quick brown fox jumps over the lazy dog."
    score = engine.rolling_loglikelihood([text], window=6)[0]
    whole = engine.rolling_loglikelihood([text], window=512)[0]
    assert score.tokens == whole.tokens == len(engine.encode([text])[0]) - 1


def test_document_separator_is_not_a_chat_turn_end():
    from babelscope.models.families import document_separator

    tok = _tokenizer(False)
    assert document_separator(tok) == tok.eos_token_id  # a plain EOS ends documents
    tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|endoftext|>"]})
    assert document_separator(tok) == tok.convert_tokens_to_ids("<|endoftext|>")  # ChatML: not <|im_end|>


def test_hidden_states_never_come_from_the_attention_sink():
    """A model whose tokenizer adds no BOS gets its document separator in front for hidden states (the first
    position is the attention sink), dropped from the output; a BOS-adding tokenizer is left as it is."""
    from babelscope.models.engine import Engine

    text = "The quick brown fox"
    for adds_bos in (False, True):
        tok = _tokenizer(adds_bos)
        model = tiny("qwen2", vocab=len(tok))
        engine = Engine(model, tok, batch_size=2, progress=False)
        got = engine.hidden_states([text], [1])[0]
        plain = tok(text, return_offsets_mapping=True)
        assert got["ids"].tolist() == plain["input_ids"]
        assert got["offsets"].tolist() == [list(o) for o in plain["offset_mapping"]]
        prefix = [] if adds_bos else [tok.eos_token_id]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([prefix + plain["input_ids"]]), output_hidden_states=True)
        # the same float32 forward on the same tokens: equal up to summation order (1e-5 of activations ~1)
        torch.testing.assert_close(torch.from_numpy(got["hidden"][0]), ref.hidden_states[1][0, len(prefix):],
                                   atol=1e-5, rtol=1e-5)
