"""Steering hooks on the unmodified model, removed on every exit path.

* DiffMean steering (CLaS-Bench): ``h^i_t ← h^i_t + α · d^i_T`` at every position of the chosen layer(s) ``i``
  (a forward hook on block ``i - 1``; layer 0, the embeddings, through a pre-hook on block 0), during the prompt's
  forward and every generated token's.
* LAPE-neuron steering (Tang et al., ACL 2024, §4.3): the target language's neurons take their mean activation in
  that language, ``a^i_j ← α · ā^i_{j,T}`` for ``j`` in the language's neurons (a pre-hook on each down projection
  setting those input columns; α = 1 is the paper's).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from babelscope.errors import BabelscopeError


def check_alpha(alpha: float, option: str = "--alphas") -> float:
    """A finite steering strength, else a one-line error."""
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise BabelscopeError(f"{option}: {alpha!r} is not a finite number; give strengths like 1,2,4")
    return float(alpha)


@contextlib.contextmanager
def steered(model: nn.Module, directions: Mapping[int, torch.Tensor], alpha: float) -> Iterator[None]:
    """Within the block, ``alpha · directions[i]`` is added to the residual stream at layer ``i`` (``{layer: (H,)}``);
    layers outside ``0..n`` are refused. Hooks removed in ``finally``."""
    from babelscope.models.arch import block_list

    check_alpha(alpha)
    _, blocks = block_list(model)
    n = len(blocks)
    bad = [i for i in directions if not 0 <= i <= n]
    if bad:
        raise BabelscopeError(f"steering layer(s) {bad} out of range: this model has layers 0..{n}")
    handles = []

    def shift(h: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        return h + (alpha * vec).to(h.device, h.dtype)

    def pre(vec):
        def hook(module, args, kwargs):
            if args:
                return (shift(args[0], vec), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": shift(kwargs["hidden_states"], vec)}

        return hook

    def post(vec):
        def hook(module, args, output):
            if isinstance(output, tuple | list):
                return type(output)((shift(output[0], vec), *output[1:]))
            return shift(output, vec)

        return hook

    try:
        for layer, vec in directions.items():
            if layer == 0:
                handles.append(blocks[0].register_forward_pre_hook(pre(vec), with_kwargs=True))
            else:
                handles.append(blocks[layer - 1].register_forward_hook(post(vec)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def neurons_set(ffns, neurons: Mapping[int, torch.Tensor], values: torch.Tensor, alpha: float = 1.0
                ) -> Iterator[int]:
    """Within the block, neuron ``j`` of layer ``i`` (``neurons``: ``{layer: indices}``) feeds the down projection
    ``alpha · values[i, j]`` (``values``: (layers, W), the target language's mean activations) at every position.
    Yields how many neurons are set; hooks removed in ``finally``."""
    check_alpha(alpha, "--lape-alphas")
    handles = []

    def make(index: torch.Tensor, row: torch.Tensor):
        def hook(module, args):
            x = args[0].clone()
            x[..., index.to(x.device)] = (alpha * row).to(x.device, x.dtype)
            return (x, *args[1:])

        return hook

    try:
        count = 0
        for f in ffns:
            index = neurons.get(f.layer)
            if index is None or len(index) == 0:
                continue
            index = torch.as_tensor(index, dtype=torch.long)
            handles.append(f.down.register_forward_pre_hook(make(index, values[f.layer, index].float())))
            count += len(index)
        yield count
    finally:
        for h in handles:
            h.remove()
