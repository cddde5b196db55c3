"""Difference-of-means (DiffMean) language directions in the residual stream (CLaS-Bench, Gurgurov et al. 2026).

For layer ``i`` (numbered as ``output_hidden_states``: 0 is the input of the first block, ``i`` the output of
block ``i``) and language ``l`` with tokens ``T_l`` of parallel text,

    μ^i_l = (1 / |T_l|) Σ_{t ∈ T_l} h^i_t                                                         (mean)
    d^i_l = μ^i_l - (Σ_{k ≠ l} Σ_{t ∈ T_k} h^i_t) / (Σ_{k ≠ l} |T_k|)                            (DiffMean)

the mean of the language's tokens minus the mean of all other languages' tokens. Normalised, the direction is
``d / ‖d‖ · r̄^i`` with ``r̄^i`` the mean residual norm of layer ``i`` over all tokens, so that a steering strength
α is a fraction of the typical residual norm whatever the layer.

The sums are reduced inside the forward hooks (one ``(H,)`` float64 row per layer and batch; nothing of the
residual stream is kept), over every real token after the BOS each window starts with. The same pass adds up the
FFN down projections' inputs, whose means per language are what LAPE-neuron steering sets its neurons to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Sums:
    """Token sums of one language: residual ``(layers + 1, H)``, residual norms ``(layers + 1,)``, FFN down
    inputs ``(layers, W)`` (float64) over ``tokens`` tokens."""

    residual: torch.Tensor
    norms: torch.Tensor
    ffn: torch.Tensor | None
    tokens: int = 0
    extra: dict = field(default_factory=dict)


@contextlib.contextmanager
def summing(model: nn.Module, ffns: Sequence | None, weights: list[torch.Tensor]) -> Iterator[Sums]:
    """Within the block, each forward adds into the yielded :class:`Sums` the residual stream of every layer and the
    FFN down-projection inputs, weighted per position by ``weights[0]`` ((B, T): 1 on counted tokens, 0 elsewhere;
    set it before each forward). Hooks are removed however the block exits."""
    from babelscope.models.arch import block_list

    _, blocks = block_list(model)
    n = len(blocks)
    hidden = model.get_input_embeddings().weight.shape[1]
    width = ffns[0].width if ffns else 0
    sums = Sums(torch.zeros(n + 1, hidden, dtype=torch.float64), torch.zeros(n + 1, dtype=torch.float64),
                torch.zeros(n, width, dtype=torch.float64) if ffns else None)
    handles = []

    def add(layer: int, h: torch.Tensor) -> None:
        w = weights[0].to(h.device, torch.float32)
        sums.residual[layer] += torch.einsum("bt,bth->h", w, h.float()).double().cpu()
        sums.norms[layer] += float((h.float().norm(dim=-1) * w.float()).sum())

    def pre(module, args, kwargs):
        add(0, args[0] if args else kwargs["hidden_states"])

    def post(index: int):
        def hook(module, args, output):
            add(index, output[0] if isinstance(output, tuple | list) else output)

        return hook

    def down(layer: int):
        def hook(module, args):
            x = args[0]
            w = weights[0].to(x.device, torch.float32)
            sums.ffn[layer] += torch.einsum("bt,btw->w", w, x.float()).double().cpu()

        return hook

    try:
        handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(post(i + 1)))
        for f in ffns or ():
            handles.append(f.down.register_forward_pre_hook(down(f.layer)))
        yield sums
    finally:
        for h in handles:
            h.remove()


def language_sums(model: nn.Module, seqs: list[list[int]], batch_size: int, pad_id: int, ffns=None,
                  on_batch=None) -> Sums:
    """Token sums (:class:`Sums`) over the BOS-prefixed windows ``seqs`` (position 0 and padding not counted), in
    length-sorted right-padded batches through the decoder without its LM head."""
    from babelscope.models.arch import base_model
    from babelscope.models.batches import length_sorted_batches, right_padded
    from babelscope.models.placement import input_device

    device = input_device(model)
    weights: list[torch.Tensor] = [torch.zeros(0)]
    body = base_model(model)
    with torch.inference_mode(), summing(model, ffns, weights) as sums:
        for batch in length_sorted_batches(seqs, batch_size):
            ids, mask = right_padded([seqs[i] for i in batch], pad_id)
            w = mask.double().clone()
            w[:, 0] = 0  # the BOS every window starts with is not the language's
            weights[0] = w
            sums.tokens += int(w.sum())
            body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            if on_batch:
                on_batch(len(batch))
    return sums


def diffmean(residual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """DiffMean directions ``(languages, layers + 1, H)`` from per-language sums ``(languages, layers + 1, H)`` and
    token counts ``(languages,)``: each language's mean minus the pooled mean of the others' tokens."""
    residual, tokens = residual.double(), tokens.double()
    total, count = residual.sum(dim=0), tokens.sum()
    mine = residual / tokens[:, None, None]
    others = (total[None] - residual) / (count - tokens)[:, None, None]
    return mine - others


def normalise(directions: torch.Tensor, mean_norms: torch.Tensor) -> torch.Tensor:
    """``d / ‖d‖ · r̄`` per language and layer (``mean_norms``: (layers + 1,) mean residual norm)."""
    length = directions.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return directions / length * mean_norms[None, :, None].to(directions)


def language_directions(residual: torch.Tensor, norms: torch.Tensor, tokens: torch.Tensor, unit: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffMean directions (float32) from per-language residual sums ``(languages, layers + 1, H)``, residual-norm
    sums ``(languages, layers + 1)`` and token counts ``(languages,)`` (:func:`language_sums` of each language),
    :func:`normalise`\\ d when ``unit``; and the pooled mean residual norm per layer ``(layers + 1,)``."""
    mean_norms = norms.sum(0) / tokens.sum()
    raw = diffmean(residual, tokens)
    return (normalise(raw, mean_norms) if unit else raw).float(), mean_norms
