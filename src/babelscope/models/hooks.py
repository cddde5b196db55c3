"""Forward hooks that capture only the blocks asked for, stop the forward after the last one, and are removed
on every exit path (the TransformerLens / nnsight pattern, on the unmodified model).

Layer numbering follows ``output_hidden_states``: layer 0 is the input to the first block (the embeddings,
after any architecture-specific scaling), layer ``i`` is the output of block ``i`` (before the final norm).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from babelscope.models.arch import block_list


class StopForward(Exception):
    """Raised by a hook after the last needed block; caught by :func:`capture_layers`."""


def _hidden(output):
    return output[0] if isinstance(output, tuple | list) else output


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers: list[int], stop: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward fills the yielded dict ``{layer: hidden (B, T, H)}`` for ``layers``.

    With ``stop=True`` the forward is cut after the deepest requested block (wrap the call in
    :func:`run_until_stopped`). Hooks are removed however the block exits.
    """
    _, blocks = block_list(model)
    n = len(blocks)
    bad = [layer for layer in layers if not 0 <= layer <= n]
    if bad:
        from babelscope.errors import BabelscopeError

        raise BabelscopeError(f"layer(s) {bad} out of range: this model has layers 0..{n}")
    wanted = sorted(set(layers))
    last = max(wanted) if wanted else 0
    store: dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        store[0] = hidden.detach()
        if stop and last == 0:
            raise StopForward

    def make_hook(index: int):
        def hook(module, args, output):
            if index in wanted:
                store[index] = _hidden(output).detach()
            if stop and index == last:
                raise StopForward

        return hook

    try:
        if 0 in wanted:
            handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for index in range(1, last + 1):
            handles.append(blocks[index - 1].register_forward_hook(make_hook(index)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(fn, *args, **kwargs):
    """Call ``fn``; a :class:`StopForward` from a capture hook ends it early (returns ``None``)."""
    try:
        return fn(*args, **kwargs)
    except StopForward:
        return None
