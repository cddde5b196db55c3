"""Language activation probability entropy (LAPE; Tang et al., ACL 2024, §2.1-2.2) and the selection of
language-specific neurons.

For language ``l`` with ``N_l`` tokens, the activation probability of neuron ``j`` in layer ``i`` is

    p^l_{i,j} = (1 / N_l) Σ_t 1[act(h^i_t W^i_gate)_j > 0]                                   (Eq. 2)

counted by hooks during a plain forward (one integer row per neuron and batch; no activation is stored).
Normalised over the languages, ``p'^l_{i,j} = p^l_{i,j} / Σ_k p^k_{i,j}``, its entropy is

    LAPE_{i,j} = - Σ_l p'^l_{i,j} log p'^l_{i,j}                                              (Eq. 3)

Selection (as the official code does): a neuron is a candidate when its probability in some language exceeds
the ``filter_rate`` quantile of all probabilities (0.95); of the candidates, the ``top_rate`` share of *all*
neurons (1%) with the lowest entropy is kept, and each kept neuron is assigned to every language whose
probability exceeds the ``bar_rate`` quantile (0.95 again). A neuron can belong to several languages.

Counts are per language (``counts/<lang>.safetensors``, written as each language finishes: a re-run loads
finished languages), and under several processes every rank takes its share of the batches and the counts are
summed across ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from babelscope.caches import json_sha256
from babelscope.commands import StepFunction
from babelscope.data.views import language_windows  # noqa: F401  (re-exported: older imports)
from babelscope.errors import BabelscopeError
from babelscope.neurons.configs import NeuronsConfig  # noqa: F401  (re-exported: the older import path)

KIND = "neurons"


# ------------------------------------------------------------------------------------------------ maths
def activation_probabilities(over_zero: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``p`` (layers, neurons, languages) from counts (languages, layers, neurons) and tokens (languages,)."""
    return (over_zero.double() / tokens.double()[:, None, None]).permute(1, 2, 0).contiguous()


def lape(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p', LAPE)``: the distribution over languages (Eq. 3's ``p'``; 0 for a neuron never active) and its
    entropy in nats."""
    total = probs.sum(dim=-1, keepdim=True)
    normed = torch.where(total > 0, probs / total.clamp_min(1e-300), torch.zeros_like(probs))
    logs = torch.where(normed > 0, normed.clamp_min(1e-300).log(), torch.zeros_like(normed))
    return normed, -(normed * logs).sum(dim=-1)


def quantile_value(values: torch.Tensor, rate: float) -> float:
    """The ``round(n * rate)``-th smallest value (the official code's ``kthvalue``)."""
    flat = values.flatten()
    k = min(max(1, round(flat.numel() * rate)), flat.numel())
    return float(flat.kthvalue(k).values)


def select_neurons(
    probs: torch.Tensor, filter_rate: float = 0.95, top_rate: float = 0.01, bar_rate: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(masks (languages, layers, neurons) bool, LAPE (layers, neurons), thresholds)``.

    Candidates: some probability above the ``filter_rate`` quantile of all probabilities; kept: the
    ``round(top_rate · layers · neurons)`` candidates of lowest LAPE; assigned: to each language whose
    probability is above the ``bar_rate`` quantile."""
    for name, rate in (("--filter-rate", filter_rate), ("--top-rate", top_rate), ("--bar-rate", bar_rate)):
        if not 0 < rate < 1:
            raise BabelscopeError(f"{name} {rate}: must lie strictly between 0 and 1")
    _, entropy = lape(probs)
    threshold = quantile_value(probs, filter_rate)
    bar = quantile_value(probs, bar_rate)
    candidate = (probs > threshold).any(dim=-1)
    ranked = torch.where(candidate, entropy, torch.full_like(entropy, float("inf"))).flatten()
    count = min(round(top_rate * entropy.numel()), int(candidate.sum()))
    keep = torch.zeros(entropy.numel(), dtype=torch.bool)
    if count:
        keep[torch.topk(ranked, count, largest=False).indices] = True
    keep = keep.view(entropy.shape)
    masks = (probs > bar) & keep[..., None]  # (layers, neurons, languages)
    return masks.permute(2, 0, 1).contiguous(), entropy, {"filter": threshold, "bar": bar, "kept": count}


def neuron_indices(mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{layer: neuron indices}`` of a (layers, neurons) mask (layers without neurons left out)."""
    return {i: torch.nonzero(row).flatten() for i, row in enumerate(mask) if bool(row.any())}


# ------------------------------------------------------------------------------------------------ counting
def count_activations(model, ffns, seqs: list[list[int]], batch_size: int, site: str = "act", pad_id: int = 0,
                      on_batch=None) -> tuple[torch.Tensor, int]:
    """``(over_zero (layers, neurons) int64, tokens)`` over the token windows ``seqs`` (each ``[BOS, ...]``).

    Windows are sorted longest first and batched (right-padded); position 0 (the BOS every window starts with)
    and padding are not counted; the forward ends at the last FFN activation (the last block's down projection,
    the final norm and the LM head never run). Under several processes each rank runs every ``world``-th batch
    and the counts are summed, so every rank returns the single-process counts."""
    from babelscope.models.arch import base_model
    from babelscope.models.batches import length_sorted_batches, right_padded
    from babelscope.models.hooks import run_until_stopped
    from babelscope.models.placement import input_device
    from babelscope.neurons.ffn import ActivationCounter
    from babelscope.processes import all_reduce, rank_share, state

    batches = length_sorted_batches(seqs, batch_size)
    dist_state = state()
    if dist_state is not None:
        batches = rank_share(batches, dist_state)
    counter = ActivationCounter(ffns, site, stop_after=True)  # nothing after the last FFN activation runs
    device = input_device(model)
    body = base_model(model)
    with torch.inference_mode(), counter.hooked():
        for batch in batches:
            ids, mask = right_padded([seqs[i] for i in batch], pad_id)
            counter.set_spans([(1, len(seqs[i])) for i in batch])  # the real tokens after BOS
            run_until_stopped(body, input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            if on_batch:
                on_batch(len(batch))
    over_zero, tokens = counter.over_zero, counter.tokens
    if dist_state is not None:
        total = torch.cat([over_zero.flatten(), torch.tensor([tokens], dtype=torch.int64)])
        all_reduce(total)
        over_zero, tokens = total[:-1].view_as(over_zero), int(total[-1])
    return over_zero, tokens


def _key(obj: Any) -> str:
    return json_sha256(obj, 16)


# ------------------------------------------------------------------------------------------------ step
def plan_check(cfg, run_dir=None, earlier=()) -> list[str]:
    """The option checks (no model): window and counts, the three rates, the site, at least two languages of the
    corpus; run when an experiment is planned and again by :func:`run`. Returns the language codes."""
    from babelscope.data.views import language_codes, open_text_corpus
    from babelscope.neurons.ffn import SITES

    if cfg.window < 2 or cfg.max_tokens < 1 or cfg.batch_size < 1:
        raise BabelscopeError(
            f"--window {cfg.window} / --max-tokens {cfg.max_tokens} / --batch-size {cfg.batch_size}: "
            "window >= 2, the others >= 1"
        )
    for name, rate in (("--filter-rate", cfg.filter_rate), ("--top-rate", cfg.top_rate),
                       ("--bar-rate", cfg.bar_rate)):
        if not 0 < rate < 1:
            raise BabelscopeError(f"{name} {rate}: must lie strictly between 0 and 1")
    if cfg.site not in SITES:
        raise BabelscopeError(f"--site {cfg.site!r}: use one of {', '.join(SITES)}")
    codes = language_codes(open_text_corpus(cfg.corpus), cfg.langs)
    if len(codes) < 2:
        raise BabelscopeError(f"--langs {cfg.langs!r}: LAPE compares languages; give at least two")
    return codes


def neuron_tables(codes: list[str], probs: torch.Tensor, masks: torch.Tensor, entropy: torch.Tensor
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """The tables of a LAPE selection (``probs`` (layers, W, languages), ``masks`` (languages, layers, W),
    ``entropy`` (layers, W)): per language its neurons, those of no other language and its mean activation
    probability; per layer and language the neurons; and one row per selected neuron with its LAPE, languages
    and activation probabilities."""
    per_language, per_layer, neurons = [], [], []
    for li, code in enumerate(codes):
        only = masks[li] & (masks.sum(dim=0) == 1)
        per_language.append({"neurons": int(masks[li].sum()), "only_this_language": int(only.sum()),
                             "mean_activation_probability": float(probs[..., li].mean())})
        for layer in range(entropy.shape[0]):
            per_layer.append({"layer": layer, "lang": code, "neurons": int(masks[li, layer].sum())})
    for layer, j in torch.nonzero(masks.any(dim=0)).tolist():
        langs = [codes[li] for li in range(len(codes)) if masks[li, layer, j]]
        neurons.append({"layer": layer, "neuron": j, "langs": ",".join(langs),
                        "lape": float(entropy[layer, j]),
                        **{f"p_{c}": float(probs[layer, j, li]) for li, c in enumerate(codes)}})
    return per_language, per_layer, neurons


def load_neurons(path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``({lang: (layers, neurons) bool mask}, metadata)`` from a neurons step's ``neurons.safetensors``."""
    from babelscope.tensorfiles import load_tensors, read_metadata

    meta = read_metadata(path)
    tensors = load_tensors(path)
    return {c: tensors[f"mask/{c}"] for c in meta["languages"]}, meta


#: the step moved to :func:`babelscope.neurons.steps.run_find`; this name still runs it
run = StepFunction("babelscope.neurons.steps", "run_find")
