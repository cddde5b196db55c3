"""The prefix-sharing collator of the scoring engine (:class:`babelscope.models.engine.Engine`).

Requests are ``(tokens, n)``: score the last ``n`` tokens of ``tokens`` given those before them. Here they become
forwards:

* identical inputs ``seq[:-1]`` share a row; rows are grouped by a shared token prefix (:func:`prefix_groups`, a
  sort over the token sequences and its LCP intervals), so that a k-shot task's description and solved examples,
  or an item's context shared by its choices, runs once (vLLM's automatic prefix caching, SGLang's RadixAttention);
* groups go into forward blocks (:func:`forward_blocks`) and, under several processes, into each rank's share
  (:func:`rank_groups`);
* a block's prefixes run in one left-padded forward whose KV cache is kept (:func:`run_prefixes`); each row
  continues from a copy of its group's cache with its true position ids (:func:`continue_rows`), and the hidden
  vectors at the scored positions come back as one :class:`Hidden`, ready for the LM head;
* rows that share nothing run whole, right-padded (:func:`batch_inputs`, :func:`target_positions`).

Everything above the two forwards is a pure function of the token sequences.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Request = tuple[list[int], int]  # (tokens, n): the last n tokens are scored


@dataclass
class PrefixGroup:
    """Distinct input rows (``seq[:-1]``) sharing their first ``prefix`` tokens; ``requests[k]`` are the indices
    of the requests that row ``k`` serves. ``prefix == 0``: nothing is shared, every row runs whole."""

    prefix: int
    rows: list[tuple[int, ...]]
    requests: list[list[int]]

    def prefix_free(self, k: int) -> tuple[int, ...]:
        """The tokens of row ``k`` after the shared prefix."""
        return self.rows[k][self.prefix :]


@dataclass
class Prefixes:
    """A block's prefixes after their forward: hidden vectors (group-major, ``width`` per group), KV cache and
    left-padded attention mask."""

    table: torch.Tensor
    cache: Any
    mask: torch.Tensor
    width: int


@dataclass
class Hidden:
    """The scored positions of one or more forwards: distinct hidden vectors ``h``, the row of ``h`` for every
    target (``where``), the target ids, and the requests served, in order (each owns its ``n`` targets)."""

    h: torch.Tensor
    where: torch.Tensor
    targets: torch.Tensor
    served: list[int]

    @staticmethod
    def join(parts: list[Hidden]) -> Hidden:
        """One :class:`Hidden` of several, each part's ``where`` shifted past the vectors before it."""
        where, offset = [], 0
        for part in parts:
            where.append(part.where + offset)
            offset += len(part.h)
        served = [i for part in parts for i in part.served]
        return Hidden(torch.cat([p.h for p in parts]), torch.cat(where), torch.cat([p.targets for p in parts]), served)


MIN_PREFIX = 4  # tokens: a shorter shared prefix (BOS alone, for rolling windows) is not worth a forward of its own
KEEP = 0.8  # share a prefix when it cuts the tokens run through the body by at least a fifth


def prefix_groups(todo: list[int], seqs: Sequence[tuple[list[int], int]], min_prefix: int = MIN_PREFIX,
                  keep: float = KEEP) -> list[PrefixGroup]:
    """Requests ``todo`` (indices into ``seqs``) as rows grouped by shared token prefix, longest first.

    Identical inputs ``seq[:-1]`` share a row. The distinct rows are sorted; the longest common prefixes of
    neighbours (an LCP array) define the nodes of the rows' compressed trie, the LCP intervals, visited bottom-up
    with a stack (Abouelhoda, Kurtz & Ohlebusch 2004, "Replacing suffix trees with enhanced suffix arrays",
    Alg. 4.4). A node of depth ``l`` over ``k`` rows of ``S`` tokens costs ``l + S - k l`` tokens through the body
    as a group (its prefix once, each row's rest); it is taken when ``l >= min_prefix`` and that is at most
    ``keep`` times the best its children and lone rows can do; rows left over run whole (``prefix == 0``).
    For a k-shot subject this picks the description and solved examples shared by every item (plus any words
    all its questions start with); for 0-shot multiple choice, each item's context shared by its choices."""
    requests_of: dict[tuple[int, ...], list[int]] = {}
    for i in todo:
        requests_of.setdefault(tuple(seqs[i][0][:-1]), []).append(i)
    rows = sorted(requests_of)
    cum = [0]
    for row in rows:
        cum.append(cum[-1] + len(row))
    lcp = [0] + [_common_prefix(rows[i - 1], rows[i]) for i in range(1, len(rows))]

    def finish(node: list, rb: int) -> tuple[float, int, list]:
        depth, lb, child_cost, child_tokens, picked = node
        tokens, k = cum[rb + 1] - cum[lb], rb - lb + 1
        alone = child_cost + tokens - child_tokens  # children at their best, the other rows whole
        shared = depth + tokens - k * depth
        if depth >= min_prefix and shared <= keep * alone:
            return shared, tokens, [(depth, lb, rb)]
        return alone, tokens, picked

    def adopt(parent: list, child: tuple[float, int, list]) -> None:
        parent[2] += child[0]
        parent[3] += child[1]
        parent[4] += child[2]

    stack: list[list] = [[0, 0, 0.0, 0, []]]  # [depth, left bound, children's cost, children's tokens, groups]
    for i in range(1, len(rows) + 1):
        depth = lcp[i] if i < len(rows) else 0
        lb, done = i - 1, None
        while depth < stack[-1][0]:
            node = stack.pop()
            done, lb = finish(node, i - 1), node[1]
            if depth <= stack[-1][0]:
                adopt(stack[-1], done)
                done = None
        if depth > stack[-1][0]:
            stack.append([depth, lb, 0.0, 0, []])
            if done is not None:
                adopt(stack[-1], done)
    picked = finish(stack[0], len(rows) - 1)[2] if rows else []
    groups, covered = [], set()
    for depth, lb, rb in picked:
        groups.append(PrefixGroup(depth, rows[lb : rb + 1], [requests_of[r] for r in rows[lb : rb + 1]]))
        covered.update(range(lb, rb + 1))
    lone = [r for i, r in enumerate(rows) if i not in covered]
    if lone:
        groups.append(PrefixGroup(0, lone, [requests_of[r] for r in lone]))
    for group in groups:  # longest rows first: little padding, an out-of-memory shows at the first batch
        order = sorted(range(len(group.rows)), key=lambda k: -len(group.rows[k]))
        group.rows, group.requests = [group.rows[k] for k in order], [group.requests[k] for k in order]
    return sorted(groups, key=lambda g: -len(g.rows[0]))


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token tuples (binary search over C-level slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def forward_blocks(groups: list[PrefixGroup], batch_size: int, budget: int) -> list[list[PrefixGroup]]:
    """Forward blocks: groups with a shared prefix, longest prefix first, ``batch_size`` at a time or as many as
    keep their prefix forward (left-padded to the longest) within ``budget`` tokens; then the rows that share
    nothing, alone."""
    blocks: list[list[PrefixGroup]] = []
    for group in sorted((g for g in groups if g.prefix), key=lambda g: -g.prefix):  # little left padding
        block = blocks[-1] if blocks else None
        if block and (len(block) < batch_size or (len(block) + 1) * block[0].prefix <= budget):  # [0]: the widest
            block.append(group)
        else:
            blocks.append([group])
    return blocks + [[g] for g in groups if not g.prefix]


def rank_groups(groups: list[PrefixGroup], rank: int, world: int, batch_size: int) -> list[PrefixGroup]:
    """This rank's part of the work: a group of more than ``batch_size`` rows (or the rows sharing nothing) is
    split by rows, each rank running the prefix once; smaller groups go whole to the ranks in turn."""
    mine, turn = [], 0
    for group in groups:
        if not group.prefix or len(group.rows) > batch_size:
            part = PrefixGroup(group.prefix, group.rows[rank::world], group.requests[rank::world])
            if part.rows:
                mine.append(part)
        else:
            if turn % world == rank:
                mine.append(group)
            turn += 1
    return mine


def _copy_rows(cache, index: torch.Tensor):
    """A new cache whose row ``b`` is a copy of row ``index[b]`` of ``cache``, which stays as it is (its layers
    are copied shallowly, then ``reorder_cache`` replaces their tensors by ``index_select`` copies)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.reorder_cache(index)
    return out


def _cache_arg(body: nn.Module) -> str:
    """The name of the cache argument of the decoder's forward (``cache`` in transformers 5, else
    ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


# ----------------------------------------------------------------------------------------------- batches
def batch_inputs(seqs: Sequence[Request], pad_id: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids ``seq[:-1]`` of each request, right-padded with ``pad_id``, and their attention mask."""
    length = max(len(seq) - 1 for seq, _ in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, (seq, _) in enumerate(seqs):
        ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        mask[row, : len(seq) - 1] = 1
    return ids.to(device), mask.to(device)


def target_positions(seqs: Sequence[Request], device: torch.device | str = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and target ids of every scored position of :func:`batch_inputs`'s batch."""
    rows, cols, targets = [], [], []
    for row, (seq, n) in enumerate(seqs):
        first = len(seq) - 1 - n
        rows += [row] * n
        cols += range(first, len(seq) - 1)
        targets += seq[len(seq) - n :]
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(rows), as_tensor(cols), as_tensor(targets)


# ----------------------------------------------------------------------------------------------- forwards
def run_prefixes(body: nn.Module, block: list[PrefixGroup], pad_id: int, device: torch.device,
                 stats: Counter | None = None) -> Prefixes:
    """The block's shared prefixes through the decoder ``body``, left-padded so that each ends at the last
    column (the continuations follow it with no gap, as the sliding-window layers need), with positions counted
    from each one's first real token. The cache comes from the model's config: a sliding-window layer keeps the
    last ``sliding_window - 1`` positions (all a continuation can attend to there), a global layer all of them.
    ``stats["body_tokens"]`` counts the tokens run."""
    from transformers import DynamicCache

    ctxs = [group.rows[0][: group.prefix] for group in block]
    width = max(map(len, ctxs))
    ids = torch.full((len(ctxs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ctxs), width), dtype=torch.long)
    for row, ctx in enumerate(ctxs):
        ids[row, width - len(ctx) :] = torch.tensor(ctx)
        mask[row, width - len(ctx) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=body.config)
    hidden = body(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        **{_cache_arg(body): cache},
    ).last_hidden_state
    if stats is not None:
        stats["body_tokens"] += sum(map(len, ctxs))
    return Prefixes(hidden.reshape(-1, hidden.shape[-1]), cache, mask, width)


def continue_rows(
    body: nn.Module, block: list[PrefixGroup], chunk: list[tuple[int, int]], prefixes: Prefixes | None,
    seqs: Sequence[Request], pad_id: int, device: torch.device, stats: Counter | None = None,
) -> Hidden:
    """One forward of the rows ``chunk`` (``(group, row)`` pairs of ``block``) through the decoder ``body``: what
    follows each row's prefix, right-padded, on a copy of its group's prefix cache, positions continuing from the
    prefix's true length (whole rows from position 0 when nothing is shared). Returns the distinct hidden vectors
    at the scored positions (a prefix's last position may serve several rows), their row per target, the targets
    and the requests served, in order. ``stats`` counts ``body_tokens`` and ``input_tokens``."""
    stats = Counter() if stats is None else stats
    long = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    width = prefixes.width if prefixes else 0
    base = prefixes.table.shape[0] if prefixes else 0
    rest = [block[g].prefix_free(k) for g, k in chunk]
    longer = [c for c, x in enumerate(rest) if x]  # rows with tokens after their prefix
    xrow = {c: r for r, c in enumerate(longer)}
    xwidth = max((len(rest[c]) for c in longer), default=0)
    tables = [prefixes.table] if prefixes else []
    if longer:
        xids = torch.full((len(longer), xwidth), pad_id, dtype=torch.long)
        xmask = torch.zeros((len(longer), xwidth), dtype=torch.long)
        for r, c in enumerate(longer):
            xids[r, : len(rest[c])] = torch.tensor(rest[c])
            xmask[r, : len(rest[c])] = 1
        xids, xmask = xids.to(device), xmask.to(device)
        if prefixes is None:
            hidden = body(input_ids=xids, attention_mask=xmask, use_cache=False).last_hidden_state
        else:
            owner = long([chunk[c][0] for c in longer])
            hidden = body(
                input_ids=xids,
                attention_mask=torch.cat([prefixes.mask[owner], xmask], dim=1),
                position_ids=prefixes.mask.sum(-1)[owner, None] + torch.arange(xwidth, device=device),
                use_cache=True,
                **{_cache_arg(body): _copy_rows(prefixes.cache, owner)},
            ).last_hidden_state
        tables.append(hidden.reshape(-1, hidden.shape[-1]))
        stats["body_tokens"] += sum(len(rest[c]) for c in longer)
    index, targets, served = [], [], []
    for c, (g, k) in enumerate(chunk):
        p = block[g].prefix
        stats["input_tokens"] += len(block[g].rows[k])
        for i in block[g].requests[k]:
            seq, n = seqs[i]
            served.append(i)
            targets += seq[len(seq) - n :]
            for j in range(len(seq) - 1 - n, len(seq) - 1):  # the hidden at input position j predicts j + 1
                index.append(g * width + width - p + j if j < p else base + xrow[c] * xwidth + j - p)
    pos, where = torch.unique(long(index), return_inverse=True)  # distinct positions
    table = torch.cat(tables)  # on the last block's device, which may not be the inputs'
    return Hidden(table[pos.to(table.device)], where.to(table.device), long(targets), served)
