"""Which weights a region covers, read from the unmodified model through the architecture table.

Zhang et al. (2024, §2) score the weights inside the decoder layers; embeddings, the final norm and the LM head
are left out (an untied head, as Qwen2.5 0.5B's, is outside the blocks too). Here the scored set is every
parameter of the blocks (:func:`babelscope.models.families.block_list`), the attention's query/key/value biases
included where the family has them (Qwen2, GPT-2, BERT), named ``<blocks>.<layer>.<sub-name>`` (e.g.
``model.layers.3.mlp.up_proj.weight``), optionally filtered by regular expressions. The *norm vectors* are the
table's norms of each block (Gemma 3: input, post-attention, pre-/post-feed-forward, q and k norms; Gemma 2: four;
Llama, Mistral, Qwen2: two; Qwen3: four).

The effective scale of a norm is ``γ = offset + w``: Gemma's RMSNorm multiplies by ``(1 + w)``, Llama's by ``w``.
The table gives the offset; :func:`measured_gamma_offset` measures it (run the norm with ``w = 0`` and see
whether the input comes through), which the tests check against the table for every family.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.models.families import block_list, family_of, norm_names, require_family

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
    """``{weight name: norm module}`` for every norm inside the blocks (the table's, see :func:`norm_names`)."""
    return {name: model.get_submodule(name.removesuffix(".weight")) for name in norm_names(model)}


def gamma_offset(norm: nn.Module, model: nn.Module | None = None) -> float:
    """1.0 when the norm scales by ``(1 + w)`` (Gemma), 0.0 when by ``w`` (Llama, Qwen, LayerNorm): the table's
    value for ``model``'s family, else measured (:func:`measured_gamma_offset`)."""
    family = family_of(model) if model is not None else None
    return family.norm_offset if family is not None else measured_gamma_offset(norm)


@torch.no_grad()
def measured_gamma_offset(norm: nn.Module) -> float:
    """1.0 when the norm passes its input through with ``w = 0`` (scale ``1 + w``), else 0.0 (scale ``w``)."""
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
    """The norm called ``norm`` (a sub-name such as ``post_attention_layernorm``) in block ``layer``; a family
    with no table entry is refused (the scan needs the table's norms and their scale)."""
    require_family(model, "norms and their scale (w or 1 + w)", "regions scan")
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
