"""The FFN neurons of an unmodified Hugging Face model, found from the model, and the two hooks on them.

A block's feed-forward network ends in a *down projection* that maps the intermediate size back to the hidden
size (``mlp.down_proj`` in Llama/Gemma/Qwen, ``mlp.c_proj`` in GPT-2, ``output.dense`` in BERT), as the
architecture table (:mod:`babelscope.models.families`) names it; neuron ``j`` of layer ``l`` is input column
``j`` of that projection. The activation function is the FFN's own activation module from the same table
(``mlp.act_fn``: SiLU for Llama and Qwen, tanh-GELU for Gemma), never assumed.

Tang et al. (2024, §2.1) call neuron ``j`` active on a token when the activation output is positive,
``act(x W_gate)_j > 0`` (for a non-gated FFN, ``act(x W_in)_j``, which is what the down projection reads).
Two sites are offered:

* ``act``: the output of the FFN's activation module (the paper's; a forward hook on that module);
* ``down-input``: the input of the down projection, ``act(x W_gate) ⊙ (x W_up)`` for a gated FFN (a forward
  pre-hook on the projection; works for any FFN with a down projection).

Deactivating a neuron sets its activation to zero: a pre-hook on the down projection zeroes input column ``j``,
which is exactly the paper's ``act(...)_j = 0`` since the up projection only multiplies it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.models.families import block_list, require_family

SITES = ("act", "down-input")
ACT_NAMES = ("act_fn", "act", "activation_fn", "activation", "gelu_impl", "intermediate_act_fn")


@dataclass
class FFN:
    """One block's feed-forward network: the down projection and the activation module that feeds it."""

    layer: int
    prefix: str  # qualified name of the FFN module, e.g. model.layers.3.mlp
    down: nn.Module  # nn.Linear, or Conv1D in GPT-2
    down_name: str  # e.g. mlp.down_proj (relative to the block)
    act: nn.Module | None
    inputs: list[str]  # names (relative to the block) of the linears producing the intermediate size
    block: str  # qualified name of the block, e.g. model.layers.3

    @property
    def width(self) -> int:
        if isinstance(self.down, nn.Linear):
            return self.down.in_features
        return self.down.weight.shape[0]  # GPT-2's Conv1D keeps its weight as (in, out)

    @property
    def weight_names(self) -> dict[str, list[str]]:
        """Qualified weight names: ``{"in": [gate, up ...] (rows = neurons), "down": [down] (columns)}``."""
        return {
            "in": [f"{self.block}.{n}.weight" for n in self.inputs],
            "down": [f"{self.block}.{self.down_name}.weight"],
        }


def ffn_modules(model: nn.Module) -> list[FFN]:
    """Every block's FFN as the architecture table names it (input projections, activation module, down
    projection); a family with no entry is refused in one line naming the missing part."""
    family = require_family(model, "FFN activation module and down projection", "neurons")
    prefix, blocks = block_list(model)
    out = []
    for i, block in enumerate(blocks):
        down = block.get_submodule(family.ffn_down)
        parent, _, attr = family.act.rpartition(".")
        act = getattr(block.get_submodule(parent) if parent else block, attr, None)
        act = act if isinstance(act, nn.Module) else None  # check_site refuses --site act then
        parent_name = family.ffn_down.rpartition(".")[0]
        full = f"{prefix}.{i}" + (f".{parent_name}" if parent_name else "")
        out.append(FFN(i, full, down, family.ffn_down, act, list(family.ffn_in), f"{prefix}.{i}"))
    return out


def check_site(ffns: list[FFN], site: str, model: nn.Module) -> None:
    """A one-line error when ``site`` cannot be hooked on this model (checked before any pass)."""
    if site not in SITES:
        raise BabelscopeError(f"--site {site!r}: use one of {', '.join(SITES)}")
    if site == "act" and any(f.act is None for f in ffns):
        raise BabelscopeError(
            f"{type(model).__name__}: no recognisable FFN activation module (none of {', '.join(ACT_NAMES)} "
            f"next to {ffns[0].prefix}); use --site down-input to count the down projection's input instead"
        )


class ActivationCounter:
    """Counts, per layer and neuron, the tokens on which the activation is positive (``over_zero``) over the
    forwards run inside :meth:`hooked`; only the positions :meth:`set_spans` names count. No activation is kept:
    each hook reduces its batch to one integer row per neuron, on the activations' device (no copy to the host
    and no synchronisation per hook; :attr:`over_zero` is brought to the CPU when read).

    The count is ``(values[b, start:end] > 0).sum(0)`` per batch row: a contiguous slice of real tokens, so
    neither padding nor a mask multiplies the work (one byte per counted activation, summed in int32: a batch
    row holds far fewer than 2^31 tokens). With ``stop_after`` set, the last hook ends the forward
    (:class:`babelscope.models.hooks.StopForward`): what follows the last counted activation never runs."""

    def __init__(self, ffns: list[FFN], site: str = "act", stop_after: bool = False):
        self.ffns, self.site, self.stop_after = ffns, site, stop_after
        self._over_zero: torch.Tensor | None = None  # (layers, neurons) int64 on the activations' device
        self.tokens = 0
        self.spans: list[tuple[int, int]] = []  # per batch row: counted positions start:end, set before a forward

    @property
    def over_zero(self) -> torch.Tensor:
        """``(layers, neurons)`` int64 on the CPU: positive activations counted so far."""
        if self._over_zero is None:
            return torch.zeros(len(self.ffns), self.ffns[0].width, dtype=torch.int64)
        return self._over_zero.cpu()

    def set_spans(self, spans: list[tuple[int, int]]) -> None:
        """The positions ``start:end`` of each batch row that the next forward counts."""
        self.spans = [(a, e) for a, e in spans]
        self.tokens += sum(max(e - a, 0) for a, e in self.spans)

    def _count(self, layer: int, values: torch.Tensor) -> None:
        if self._over_zero is None:
            self._over_zero = torch.zeros(len(self.ffns), values.shape[-1], dtype=torch.int64, device=values.device)
        row = self._over_zero[layer]
        for b, (a, e) in enumerate(self.spans):
            if e > a:
                row += (values[b, a:e] > 0).sum(dim=0, dtype=torch.int32).to(row.device)  # blocks on several devices

    @contextlib.contextmanager
    def hooked(self) -> Iterator[ActivationCounter]:
        from babelscope.models.hooks import StopForward

        handles = []
        last = self.ffns[-1].layer

        def act_hook(layer):
            def hook(module, args, output):
                self._count(layer, output)
                if self.stop_after and layer == last:
                    raise StopForward

            return hook

        def down_hook(layer):
            def hook(module, args):
                self._count(layer, args[0])
                if self.stop_after and layer == last:
                    raise StopForward

            return hook

        try:
            for f in self.ffns:
                if self.site == "act":
                    handles.append(f.act.register_forward_hook(act_hook(f.layer)))
                else:
                    handles.append(f.down.register_forward_pre_hook(down_hook(f.layer)))
            yield self
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def deactivated(ffns: list[FFN], neurons: Mapping[int, torch.Tensor]) -> Iterator[int]:
    """Within the block, the activation of neurons ``{layer: indices}`` is zero (a pre-hook on each down
    projection sets those input columns to 0). Yields how many neurons are off; hooks removed in ``finally``."""
    handles = []

    def make(index: torch.Tensor):
        cache: dict[torch.device, torch.Tensor] = {}

        def hook(module, args):
            x = args[0]
            idx = cache.setdefault(x.device, index.to(x.device))
            return (x.index_fill(-1, idx, 0), *args[1:])

        return hook

    try:
        count = 0
        for f in ffns:
            index = neurons.get(f.layer)
            if index is None or len(index) == 0:
                continue
            index = torch.as_tensor(index, dtype=torch.long)
            if int(index.max()) >= f.width or int(index.min()) < 0:
                raise BabelscopeError(f"neuron index out of range 0..{f.width - 1} in layer {f.layer}")
            handles.append(f.down.register_forward_pre_hook(make(index)))
            count += len(index)
        yield count
    finally:
        for h in handles:
            h.remove()
