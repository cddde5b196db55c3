"""Parallel language-specific neuron detection (PLND; Zhao et al., NeurIPS 2024, "How do Large Language Models
Handle Multilingualism?", §3).

A neuron's importance for a context is the change of its layer's output when it is deactivated. For FFN neuron
``j`` of layer ``i`` with activation ``a^i_j ∈ R^T`` over a document's ``T`` tokens (the input of the down
projection), deactivating it removes the rank-one term ``a^i_j ⊗ W^i_down[:, j]`` from the FFN output, so

    Imp(N^i_j | d) = ‖FFN(x) - FFN_{¬N^i_j}(x)‖_F = ‖a^i_j‖_2 · ‖W^i_down[:, j]‖_2                (parallel FFN)

for every neuron of a layer at once from one forward: a pre-hook on each down projection reduces its input to
``sqrt(Σ_t a_{t,j}²)`` per document and neuron (the paper's parallel formulation, |a_j| · ‖W_down[:, j]‖ per token,
taken over the document). The FFN output is the down projection's (before any post-FFN norm, e.g. Gemma 3's).

Selection (our reading of §3.1, "neurons consistently activated when processing a language"): neuron ``j`` is
important for document ``d`` when its importance is among the ``top_rate`` share of all FFN neurons' importances
for ``d``; it is a neuron of language ``l`` when important in at least a ``consistency`` share of ``l``'s documents
(windows); neurons of *every* language are language-agnostic and left out of each language's set. The masks are
written in the format of ``babelscope neurons find`` (``mask/<lang>``), so ``neurons deactivate --neurons-step
neurons-plnd`` switches them off (the paper's Figure 2 test).

The overlap of a language's PLND neurons ``A`` with its LAPE neurons ``B`` (Tang et al. 2024) among ``N`` neurons:
``|A ∩ B|`` against the hypergeometric expectation ``|A| |B| / N`` of random sets of the same sizes (exact tail
p-value); with its θ ⊙ ∇ region (Zhang et al. 2024), the share of the region's FFN weights on the neurons against
random sets with the same count per layer (:func:`babelscope.neurons.overlap.overlap_stats`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from babelscope.commands import StepFunction
from babelscope.errors import BabelscopeError
from babelscope.neurons.configs import PlndConfig  # noqa: F401  (re-exported: the older import path)

KIND = "neurons-plnd"


# ------------------------------------------------------------------------------------------------ maths
def column_norms(ffns) -> torch.Tensor:
    """``‖W_down[:, j]‖_2`` per layer and neuron, (layers, W) float32."""
    return torch.stack([f.down.weight.detach().float().norm(dim=0).cpu() for f in ffns])


@contextlib.contextmanager
def importance_hooks(ffns, spans: list[list[tuple[int, int]]]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, each forward fills ``{layer: (B, W) float32}`` with ``sqrt(Σ_t a_{t,j}²)`` over the
    positions ``spans[0][b] = (start, end)`` of each batch row (set before the forward); multiply by
    :func:`column_norms` for the importances. Hooks removed in ``finally``."""
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make(layer: int):
        def hook(module, args):
            x = args[0]
            rows = [x[b, a:e].float().pow(2).sum(dim=0) for b, (a, e) in enumerate(spans[0])]
            store[layer] = torch.stack(rows).sqrt().cpu()

        return hook

    try:
        for f in ffns:
            handles.append(f.down.register_forward_pre_hook(make(f.layer)))
        yield store
    finally:
        for h in handles:
            h.remove()


def document_importance(model, ffns, seqs: list[list[int]], batch_size: int, pad_id: int) -> torch.Tensor:
    """``Imp`` (documents, layers, W) float32 for the BOS-prefixed windows ``seqs`` (one document each; BOS and
    padding not counted), in length-sorted right-padded batches, returned in the order of ``seqs``."""
    from babelscope.models.arch import base_model
    from babelscope.models.batches import length_sorted_batches, right_padded
    from babelscope.models.placement import input_device

    norms = column_norms(ffns)
    out = torch.zeros(len(seqs), len(ffns), ffns[0].width)
    device = input_device(model)
    spans: list[list[tuple[int, int]]] = [[]]
    with torch.inference_mode(), importance_hooks(ffns, spans) as store:
        for batch in length_sorted_batches(seqs, batch_size):
            ids, mask = right_padded([seqs[i] for i in batch], pad_id)
            spans[0] = [(1, len(seqs[i])) for i in batch]
            base_model(model)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            imp = torch.stack([store[f.layer] for f in ffns], dim=1) * norms[None]
            out[batch] = imp
    return out


def naive_importance(ffn, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The reference: deactivate the neurons of one FFN ``chunk`` at a time (each copy of the down projection's
    input ``x`` (T, W) with one neuron zeroed) and measure ``‖FFN(x) - FFN_{¬j}(x)‖_F``; (W,)."""
    with torch.inference_mode():
        full = ffn.down(x)
        out = torch.empty(x.shape[-1])
        for start in range(0, x.shape[-1], chunk):
            idx = torch.arange(start, min(start + chunk, x.shape[-1]))
            xs = x.expand(len(idx), *x.shape).clone()
            xs[torch.arange(len(idx)), :, idx] = 0
            out[idx] = (ffn.down(xs) - full).float().flatten(1).norm(dim=1).cpu()
    return out


def select_plnd(important: torch.Tensor, documents: torch.Tensor, consistency: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks (languages, layers, W) bool, agnostic (layers, W) bool)`` from counts of documents in which each
    neuron was important ``important`` (languages, layers, W) and documents per language ``documents``."""
    if not 0 < consistency <= 1:
        raise BabelscopeError(f"--consistency {consistency}: must lie in (0, 1]")
    need = torch.ceil(documents.double() * consistency - 1e-9)
    chosen = important.double() >= need[:, None, None]
    agnostic = chosen.all(dim=0)
    return chosen & ~agnostic[None], agnostic


def important_counts(imp: torch.Tensor, top_rate: float) -> torch.Tensor:
    """Per neuron, the number of documents (rows of ``imp`` (documents, layers, W)) in which its importance is
    among the ``top_rate`` share of that document's importances."""
    if not 0 < top_rate < 1:
        raise BabelscopeError(f"--top-rate {top_rate}: must lie strictly between 0 and 1")
    flat = imp.flatten(1)
    k = max(1, round(top_rate * flat.shape[1]))
    cut = flat.topk(k, dim=1).values[:, -1:]
    return ((flat >= cut) & (flat > 0)).sum(dim=0).view(imp.shape[1:])  # a zero change is never important


def set_overlap(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """``|A ∩ B|`` of two neuron masks against random sets of the same sizes (hypergeometric)."""
    from scipy.stats import hypergeom

    n, na, nb = a.numel(), int(a.sum()), int(b.sum())
    both = int((a & b).sum())
    expected = na * nb / n
    union = int((a | b).sum())
    return {"a": na, "b": nb, "both": both, "expected_random": expected,
            "enrichment": both / expected if expected else None, "jaccard": both / union if union else None,
            "p_hypergeom": float(hypergeom.sf(both - 1, n, na, nb)) if na and nb else None}


def language_plnd(model, ffns, seqs: list[list[int]], batch_size: int, pad_id: int, top_rate: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One language's windows ``seqs``: per neuron, the number of windows in which it is important
    (:func:`important_counts`), and its mean importance over the windows ``(layers, W)``."""
    imp = document_importance(model, ffns, seqs, batch_size, pad_id)
    return important_counts(imp, top_rate), imp.mean(dim=0)


def neuron_rows(codes: list[str], masks: torch.Tensor) -> tuple[list[dict], list[dict]]:
    """Per language (``masks`` (languages, layers, W)): its neurons, those of no other language and their share;
    and per layer and language, the neurons."""
    per_language, per_layer = [], []
    for li, code in enumerate(codes):
        per_language.append({"neurons": int(masks[li].sum()),
                             "only_this_language": int((masks[li] & (masks.sum(dim=0) == 1)).sum()),
                             "share": float(masks[li].double().mean())})
        per_layer += [{"layer": layer, "lang": code, "neurons": int(masks[li, layer].sum())}
                      for layer in range(masks.shape[1])]
    return per_language, per_layer


def region_overlap_rows(code: str, region: str, counts, sets: list[tuple[str, torch.Tensor]], draws: int,
                        seed: int) -> list[dict[str, Any]]:
    """Each neuron set's share of a region's FFN weights (``counts``: :func:`~babelscope.neurons.overlap.
    neuron_region_counts`) against random sets with the same count per layer."""
    from babelscope.neurons.overlap import overlap_stats

    rows = []
    for pair, neurons in sets:
        s = overlap_stats(neurons, counts, draws, seed)
        rows.append({"lang": code, "pair": pair, "region": region, "a": s["neurons"],
                     "weight_share": s.get("weight_share"),
                     "weight_random_layer_matched": s.get("weight_random_layer_matched"),
                     "enrichment": s.get("weight_enrichment_layer_matched"),
                     "p_layer_matched": s.get("weight_p_layer_matched")})
    return rows


#: the step moved to :func:`babelscope.neurons.steps.run_plnd`; this name still runs it
run = StepFunction("babelscope.neurons.steps", "run_plnd")
