"""Gradients of the summed token loss of many sequences, normalised by one global token count.

For sequences ``(tokens, n)`` (the last ``n`` tokens are the targets) and a normaliser ``T`` (the number of
target tokens over every batch and process), :func:`backward` accumulates

    ∇_θ  Σ_s Σ_{t ∈ targets(s)} -log p_θ(x_t | x_<t)  /  T

into ``.grad``, one batch at a time (Accelerate's token-count normalisation,
``examples/by_feature/gradient_accumulation_for_autoregressive_models.py``): dividing by one global count, not a
per-batch mean, makes the accumulated gradient independent of the batch size and of the number of processes.
The LM head and loss are :func:`babelscope.models.loss.head_nll`, so the batch x sequence x vocabulary logits
never exist. Importance scores (``regions importance``) are built on it through
:meth:`babelscope.models.engine.Engine.backward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from babelscope.models.arch import base_model
from babelscope.models.loss import head_nll
from babelscope.models.placement import input_device
from babelscope.models.prefixes import Request, batch_inputs, target_positions
from babelscope.processes import DistState


def backward(
    model: nn.Module,
    seqs: Sequence[Request],
    normalizer: float,
    *,
    batch_size: int = 8,
    logit_chunk: int = 256,
    pad_id: int = 0,
    state: DistState | None = None,
    on_batch: Callable[[int], None] | None = None,
    even: bool = False,
) -> float:
    """Back-propagate ``sum of target-token NLL / normalizer`` into ``.grad`` (no optimizer step); returns this
    process's summed NLL.

    Sequences run longest first, ``batch_size`` a batch, right-padded with ``pad_id``; the head and loss go
    ``logit_chunk`` positions at a time. Under a process group (``state``, :func:`babelscope.processes.state`)
    each rank takes every ``world``-th sequence; call :func:`babelscope.processes.all_reduce_grads` afterwards.
    ``even`` (FSDP 2, whose every forward and backward is a collective): every rank runs as many batches as the
    busiest one, a rank with fewer repeating its first sequence with the loss weighted by 0 (nothing added to
    any gradient). ``on_batch(rows)`` after each real batch (progress)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    pad = 0
    if state is not None:
        world, rank = state.num_processes, state.process_index
        if even:
            most = math.ceil(len(order[0::world]) / batch_size) if order else 0
            pad = most - math.ceil(len(order[rank::world]) / batch_size)
        order = order[rank::world]
    batches = [[seqs[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
    batches = [(b, 1.0) for b in batches] + [([seqs[0]], 0.0)] * pad
    body = base_model(model)
    total = 0.0
    for batch, weight in batches:
        device = input_device(model)
        ids, mask = batch_inputs(batch, pad_id, device)
        hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        rows, cols, targets = (t.to(hidden.device) for t in target_positions(batch, device))
        loss = head_nll(model, hidden[rows, cols], targets, logit_chunk)[0] * weight
        (loss / normalizer).backward()
        total += float(loss.detach())
        if on_batch and weight:
            on_batch(len(batch))
    return total
