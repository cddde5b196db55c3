"""Token windows into model inputs: length-sorted batches (longest first, as lm-evaluation-harness's Collator
orders requests: least padding, an out-of-memory at the first batch, honest progress) and right padding with an
attention mask. Used by every hooked forward outside the scoring engine (activation counts, PLND, DiffMean sums,
the logit lens, SSU column energies)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def length_sorted_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``seqs``, longest first (ties in input order), cut into batches of at most ``batch_size``."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def right_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(len(seqs), longest)`` int64: each sequence left-aligned, the rest
    ``pad_id`` with mask 0."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
