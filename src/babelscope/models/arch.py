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


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the LM head and any logit post-processing the architecture does (softcapping, scaling).

    ``out`` (inference only): a reusable float32 buffer of at least ``hidden.shape[0]`` rows that receives the
    logits of a bias-free float32 head, so scoring loops do not fault in a fresh B x V block per chunk.

    The post-processing is the one the model's *own* config names, as its forward reads it: a multimodal
    ``Gemma3ForConditionalGeneration`` does not apply its text config's ``final_logit_softcapping`` (transformers
    5), ``Gemma3ForCausalLM`` does. :func:`babelscope.models.loader.check_logits` verifies this at load time."""
    config = model.config
    head = lm_head(model)
    weight = getattr(head, "weight", None)
    # a head that Accelerate placed elsewhere or offloaded (its weight on another device, or on "meta") runs
    # through its own forward, whose hook brings the weight and the input together
    plain = isinstance(head, nn.Linear) and head.bias is None and not head._forward_hooks \
        and weight.device == hidden.device
    if out is not None and plain and weight.dtype == hidden.dtype == out.dtype == torch.float32:
        logits = torch.matmul(hidden, weight.t(), out=out[: hidden.shape[0]])
    else:
        logits = head(hidden).float()
    inplace = not logits.requires_grad  # autograd keeps tanh's output: post-process out of place then
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = logits.div_(cap).tanh_().mul_(cap) if inplace else torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None) and isinstance(config.logit_scale, float):  # Cohere
        logits = logits.mul_(config.logit_scale) if inplace else logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits.div_(config.logits_scaling) if inplace else logits / config.logits_scaling
    return logits


def logsumexp_(logits: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
    """``logsumexp`` over the last dimension, overwriting ``logits`` (one pass fewer than ``torch.logsumexp``
    and no second B x V block): max + log Σ exp(x - max). ``peak``: the rows' maxima, when already known."""
    peak = logits.amax(dim=-1) if peak is None else peak
    return logits.sub_(peak[..., None]).exp_().sum(dim=-1).log_().add_(peak)


def prefix_token_id(tokenizer) -> int:
    """The token that starts every scored window: BOS, else EOS (as GPT-2 and lm-evaluation-harness do)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise BabelscopeError(f"{tokenizer.name_or_path}: tokenizer has neither BOS nor EOS to start a window with")
