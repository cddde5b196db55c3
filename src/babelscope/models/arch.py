"""Canonical names for the parts of an unmodified Hugging Face model.

No architecture is re-implemented: the blocks, norms, FFN and final norm come from the architecture table
(:mod:`babelscope.models.families`, re-exported here), the LM head is ``get_output_embeddings()``, and the
decoder is the model's ``base_model``.
"""

from __future__ import annotations

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.models.families import block_list, scoring_prefix, text_config

__all__ = ["base_model", "block_list", "lm_head", "logits_from_hidden", "logsumexp_", "scoring_prefix", "text_config"]


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
