"""The loader decides causal vs encoder from transformers' auto-class mappings (multimodal Gemma 3 and
Qwen2.5-VL are causal LMs) and checks once at load time that the engine scores like ``model(...).logits``
(a model with final-logit soft-capping is scored through the softcap)."""

from __future__ import annotations

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.models.loader import check_logits, load_model, model_kind
from conftest import build_tokenizer


def test_kind_from_the_auto_mappings():
    from transformers import BertConfig, Gemma3Config, LlamaConfig, Qwen2_5_VLConfig, XLMRobertaConfig

    assert model_kind(Gemma3Config(architectures=["Gemma3ForConditionalGeneration"])) == "causal"
    assert model_kind(Gemma3Config()) == "causal"
    assert model_kind(Qwen2_5_VLConfig(architectures=["Qwen2_5_VLForConditionalGeneration"])) == "causal"
    assert model_kind(Qwen2_5_VLConfig()) == "causal"
    assert model_kind(LlamaConfig()) == "causal"
    assert model_kind(BertConfig(architectures=["BertForMaskedLM"])) == "encoder"
    assert model_kind(XLMRobertaConfig()) == "encoder"


def _tiny_softcapped_multimodal_gemma(out, multimodal: bool = True):
    """A tiny Gemma3ForConditionalGeneration (text + a tiny SigLIP tower), or a Gemma3ForCausalLM, with
    final-logit soft-capping in its text config."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    tok = build_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                final_logit_softcapping=0.5)  # far below the logits' range: the cap changes every score
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4,
                       image_token_index=len(tok) + 10, boi_token_index=len(tok) + 11,
                       eoi_token_index=len(tok) + 12)
    if multimodal:
        model = Gemma3ForConditionalGeneration(cfg)
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(**text))
    with torch.no_grad():  # logits well beyond the cap (the head is tied to the embedding)
        model.get_output_embeddings().weight.mul_(40.0)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


@pytest.mark.parametrize("multimodal", [True, False])
def test_softcapped_gemma_loads_and_scores_like_its_logits(tmp_path, monkeypatch, multimodal):
    from babelscope.models import arch, engine

    _tiny_softcapped_multimodal_gemma(tmp_path, multimodal)
    model, tok, info = load_model(str(tmp_path))  # the multimodal class was refused as an "encoder" before
    expected = "Gemma3ForConditionalGeneration" if multimodal else "Gemma3ForCausalLM"
    assert info.kind == "causal" and type(model).__name__ == expected
    # The engine scores as model(...).logits does: capped for the text class, not for the multimodal one
    # (transformers' Gemma3ForConditionalGeneration does not apply its text config's cap).
    assert check_logits(model, tok) <= 1e-3
    with torch.no_grad():
        x = torch.tensor([[2, 5, 9, 30, 44]])
        capped = bool(model(input_ids=x).logits.abs().max() <= 0.5)
    assert capped == (not multimodal)

    # An engine path that gets the processing wrong is caught at load time, with a one-line error.
    def other(model, hidden, out=None):
        logits = arch.lm_head(model)(hidden).float()
        return logits if capped else 0.5 * torch.tanh(logits / 0.5)

    monkeypatch.setattr(engine, "logits_from_hidden", other)
    with pytest.raises(BabelscopeError, match="differ from model"):
        load_model(str(tmp_path))
