"""Canonical names for the parts of an unmodified Hugging Face model, found from the model itself.

No architecture is re-implemented and no name whitelist is kept: the block list is the ``nn.ModuleList``
whose length is the config's number of hidden layers, the LM head is ``get_output_embeddings()``, and the
decoder is the model's ``base_model``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from babelscope.errors import BabelscopeError


def text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the transformer blocks (decoder or encoder layers)."""
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and n_layers:
            return name, module
    raise BabelscopeError(
        f"{type(model).__name__}: cannot find its {n_layers} transformer blocks (no ModuleList of that length)"
    )


def base_model(model: nn.Module) -> nn.Module:
    """The model without its LM head (``model.model`` for Llama/Gemma, the model itself for an encoder)."""
    return model.base_model


def lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise BabelscopeError(
            f"{type(model).__name__}: no language-model head; this command needs a causal LM "
            "(encoders give hidden states only)"
        )
    return head


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head and any logit post-processing the architecture does (softcapping, scaling)."""
    config = text_config(model)
    logits = lm_head(model)(hidden).float()
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None) and isinstance(config.logit_scale, float):  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits / config.logits_scaling
    return logits


def prefix_token_id(tokenizer) -> int:
    """The token that starts every scored window: BOS, else EOS (as GPT-2 and lm-evaluation-harness do)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise BabelscopeError(f"{tokenizer.name_or_path}: tokenizer has neither BOS nor EOS to start a window with")
