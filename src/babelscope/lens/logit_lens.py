"""The logit lens (nostalgebraist 2020; Wendler et al. 2024, §3): every layer's residual stream decoded by the
model's own final norm and unembedding,

    P_ℓ(· | x_<t) = softmax( cap( U · norm(h^ℓ_t) ) )

where ``h^ℓ_t`` is the input of block ``ℓ`` (ℓ = 0: the embeddings) or the output of block ``ℓ`` (numbering of
:mod:`babelscope.models.hooks`), ``norm`` the final norm module of the model (recomputed on each layer's vector),
``U`` the LM head and ``cap`` any logit post-processing of the architecture (Gemma's
``final_logit_softcapping``: ``c · tanh(z / c)``; :func:`babelscope.models.arch.logits_from_hidden`). At the
last layer this is exactly the model's own next-token distribution.

Hidden states are captured by hooks on the unmodified model (removed in ``finally``) for the chosen layers only,
and decoded at the chosen positions only, ``chunk`` positions at a time, so no layers x positions x vocabulary
block is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.layers import parse_layers  # noqa: F401  (re-exported: the one --layers grammar)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm the model applies after its last block, from the architecture table (a family with no entry is
    refused in one line naming the missing final norm)."""
    from babelscope.models.families import final_norm as table_final_norm

    return table_final_norm(model, "the logit lens")


def layer_logits(model: nn.Module, hidden: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
    """Float32 logits of hidden vectors ``(..., H)`` through the final norm and the LM head (with softcapping)."""
    from babelscope.models.arch import logits_from_hidden

    norm = norm if norm is not None else final_norm(model)
    return logits_from_hidden(model, norm(hidden))


@torch.inference_mode()
def lens_pass(
    model: nn.Module,
    seqs: Sequence[list[int]],
    positions: Sequence[list[int]],
    layers: Sequence[int],
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int = 8,
    pad_id: int = 0,
    chunk: int = 128,
) -> torch.Tensor:
    """``out[layer index, position k, ...] = reduce(probs, owner)`` over every requested position.

    ``seqs`` are token id lists, ``positions[i]`` the positions of ``seqs[i]`` to decode; ``reduce`` gets the
    lens distributions ``probs`` (P, V) of up to ``chunk`` positions and ``owner`` (P,) (the index of each
    position in the flat list of all requested positions) and returns one row per position. Rows come back in
    the order of the flat list (sequence by sequence, position by position)."""
    from babelscope.models.arch import base_model
    from babelscope.models.batches import length_sorted_batches, right_padded
    from babelscope.models.hooks import capture_layers, run_until_stopped
    from babelscope.models.placement import input_device

    norm = final_norm(model)
    device = input_device(model)
    flat_start = [0]
    for pos in positions:
        flat_start.append(flat_start[-1] + len(pos))
    results: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}
    for batch in length_sorted_batches(seqs, batch_size):
        ids, mask = right_padded([seqs[i] for i in batch], pad_id)
        rows, cols, owners = [], [], []
        for row, i in enumerate(batch):
            for k, p in enumerate(positions[i]):
                if not 0 <= p < len(seqs[i]):
                    raise BabelscopeError(f"position {p} outside a sequence of {len(seqs[i])} tokens")
                rows.append(row)
                cols.append(p)
                owners.append(flat_start[i] + k)
        with capture_layers(model, list(layers)) as store:
            run_until_stopped(base_model(model), input_ids=ids.to(device), attention_mask=mask.to(device),
                              use_cache=False)
            r, c = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
            # every layer's rows in one table, decoded ``chunk`` rows at a time: the head's weight (V x H) is read
            # once per chunk, not once per layer (it dominates when few positions are decoded)
            h = torch.cat([store[layer][r.to(store[layer].device), c.to(store[layer].device)].to(device)
                           for layer in layers])  # blocks may sit on several devices
            owner = torch.tensor(owners).repeat(len(layers))
            which = torch.arange(len(layers)).repeat_interleave(len(owners))
            for s in range(0, h.shape[0], chunk):
                probs = layer_logits(model, h[s : s + chunk], norm).softmax(dim=-1)
                values = reduce(probs, owner[s : s + chunk]).float().cpu()
                for li in which[s : s + chunk].unique().tolist():
                    sel = which[s : s + chunk] == li
                    results[layers[li]].append((owner[s : s + chunk][sel], values[sel]))
    out = []
    for layer in layers:
        owners_all = torch.cat([o for o, _ in results[layer]])
        values = torch.cat([v for _, v in results[layer]])
        arranged = torch.empty_like(values)
        arranged[owners_all] = values
        out.append(arranged)
    return torch.stack(out)


def mean_ci(values: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and its 95% normal interval (mean ± 1.96 · standard error) along ``dim``, as Wendler et al. plot."""
    n = values.shape[dim]
    mean = values.double().mean(dim=dim)
    se = values.double().std(dim=dim) / n**0.5 if n > 1 else torch.zeros_like(mean)
    return mean, mean - 1.96 * se, mean + 1.96 * se
