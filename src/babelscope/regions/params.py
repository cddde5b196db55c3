"""Which weights a region covers, read from the unmodified model (no hard-coded names).

Zhang et al. (2024, §2) score the weights inside the decoder layers; embeddings, the final norm and the LM head
are left out. Here the scored set is every parameter of the blocks found by :func:`block_list`, named
``<blocks>.<layer>.<sub-name>`` (e.g. ``model.layers.3.mlp.up_proj.weight``), optionally filtered by regular
expressions. A parameter is a *norm vector* when it is the 1-D weight of a module whose class name contains
"Norm" (Gemma 3: input, post-attention, pre-/post-feed-forward, q and k norms; Llama: two).

The effective scale of a norm is ``γ = offset + w``: Gemma's RMSNorm multiplies by ``(1 + w)``, Llama's by ``w``.
The offset is measured, not assumed: run the norm with ``w = 0`` and see whether the input comes through.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.models.arch import block_list

_LAYER = re.compile(r"\.(\d+)\.")


def scored_parameters(model: nn.Module, include: str = "", exclude: str = "") -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the weights inside the transformer blocks, filtered by regexes on the name."""
    prefix, blocks = block_list(model)
    out: dict[str, nn.Parameter] = {}
    for i, block in enumerate(blocks):
        for sub, param in block.named_parameters():
            name = f"{prefix}.{i}.{sub}"
            if include and not re.search(include, name):
                continue
            if exclude and re.search(exclude, name):
                continue
            out[name] = param
    if not out:
        raise BabelscopeError(
            f"no parameter of {type(model).__name__}'s blocks matches include={include!r} exclude={exclude!r}; "
            "loosen the filters"
        )
    return out


def layer_and_kind(name: str) -> tuple[int, str]:
    """``model.layers.3.mlp.up_proj.weight`` -> ``(3, "mlp.up_proj.weight")`` (the matrix type)."""
    match = _LAYER.search(name)
    if not match:
        return -1, name
    return int(match.group(1)), name[match.end() :]


def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: norm module}`` for every norm inside the blocks (1-D weight, class name with "Norm")."""
    prefix, blocks = block_list(model)
    out = {}
    for i, block in enumerate(blocks):
        for sub, module in block.named_modules():
            weight = getattr(module, "weight", None)
            if (
                "norm" in type(module).__name__.lower()
                and isinstance(weight, torch.Tensor)
                and weight.ndim == 1
            ):
                out[f"{prefix}.{i}.{sub}.weight"] = module
    return out


@torch.no_grad()
def gamma_offset(norm: nn.Module) -> float:
    """1.0 when the norm scales by ``(1 + w)`` (Gemma), 0.0 when by ``w`` (Llama, LayerNorm): probed with w = 0."""
    weight = norm.weight
    if weight.device.type == "meta":  # offloaded by a device map: probe a copy with resident zero weights
        import copy

        norm = copy.deepcopy(norm)
        for key, t in list(norm.named_parameters(recurse=False)):
            setattr(norm, key, nn.Parameter(torch.zeros(t.shape, dtype=t.dtype), requires_grad=False))
        weight = norm.weight
    x = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
    saved = weight.detach().clone()
    try:
        weight.zero_()
        y = norm(x)
    finally:
        weight.copy_(saved)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        y = y - bias
    return 0.0 if float(y.abs().max()) == 0.0 else 1.0


def find_norm(model: nn.Module, layer: int, norm: str) -> tuple[str, nn.Module]:
    """The norm called ``norm`` (a sub-name such as ``post_attention_layernorm``) in block ``layer``."""
    norms = norm_modules(model)
    hits = [
        (n, m)
        for n, m in norms.items()
        if layer_and_kind(n)[0] == layer and layer_and_kind(n)[1].removesuffix(".weight").endswith(norm)
    ]
    if len(hits) != 1:
        kinds = sorted({layer_and_kind(n)[1].removesuffix(".weight") for n in norms})
        n_layers = len(block_list(model)[1])
        raise BabelscopeError(
            f"--layer {layer} --norm {norm!r}: no single norm matches (layers 0..{n_layers - 1}, norms: "
            f"{', '.join(kinds)})"
        )
    return hits[0]
