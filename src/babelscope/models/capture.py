"""Hidden states of chosen layers, captured with hooks on the unmodified model.

Only the requested layers are captured (:func:`babelscope.models.hooks.capture_layers`, copied to the CPU as each
batch finishes) and the forward stops after the deepest one (:func:`babelscope.models.hooks.run_until_stopped`),
so later blocks and the LM head never run (TransformerLens's ``names_filter`` and ``stop_at_layer``). Texts run
longest first, right-padded; every hook is removed on every exit path.

No vector comes from the attention sink: a model whose tokenizer adds no BOS (Qwen, SmolLM2) makes its first
token the sink, with massive activations (SmolLM2 layer 15: the first word's norm 6,000-25,000 against a median
of 164, and OTDD's Sinkhorn could not converge on such vectors), so its document separator is put in front and
dropped from the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from babelscope.models.arch import base_model
from babelscope.models.hooks import capture_layers, run_until_stopped
from babelscope.models.placement import input_device
from babelscope.models.prefixes import batch_inputs


def hidden_states(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    add_special_tokens: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Per text ``{"hidden": float32 (len(layers), T, H), "offsets": (T, 2), "ids": (T,)}``, in the order of
    ``texts``; ``on_batch(rows)`` after each batch (progress)."""
    from babelscope.models.families import document_separator, scoring_prefix

    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    sink = None
    if add_special_tokens and scoring_prefix(model, tokenizer) is None:
        sink = document_separator(tokenizer)
    if sink is not None:
        enc = {"input_ids": [[sink, *x] for x in enc["input_ids"]],
               "offset_mapping": [[(0, 0), *x] for x in enc["offset_mapping"]]}
    skip = int(sink is not None)
    order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
    out: list[dict[str, Any] | None] = [None] * len(texts)
    layers = list(layers)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        seqs = [(list(enc["input_ids"][i]) + [pad_id], 0) for i in batch]
        ids, mask = batch_inputs(seqs, pad_id, input_device(model))
        with torch.inference_mode(), capture_layers(model, layers) as store:
            run_until_stopped(base_model(model), input_ids=ids, attention_mask=mask, use_cache=False)
            # each layer to the CPU first: consecutive blocks may sit on different devices
            stacked = torch.stack([store[layer].float().cpu() for layer in layers], dim=1)
        for row, i in enumerate(batch):
            n = len(enc["input_ids"][i])
            out[i] = {
                "hidden": stacked[row, :, skip:n].numpy(),
                "offsets": np.asarray(enc["offset_mapping"][i][skip:], dtype=np.int64).reshape(-1, 2),
                "ids": np.asarray(enc["input_ids"][i][skip:], dtype=np.int64),
            }
        if on_batch:
            on_batch(len(batch))
    return out  # type: ignore[return-value]
