"""One scoring engine on top of the unmodified Hugging Face model.

Every capability computes the same few things over many texts, so they live here once:

* ``loglikelihood``: log P(continuation | context), as lm-evaluation-harness's ``loglikelihood``;
* ``rolling_loglikelihood``: total NLL of whole texts in disjoint windows that each start with BOS;
* ``generate``: greedy generation with stop strings;
* ``hidden_states``: chosen layers only, the forward stopped after the deepest one;
* ``backward``: the summed token loss over a normaliser, back-propagated into ``.grad`` (importance scores).

How (lm-evaluation-harness's Collator, nanoGPT's chunked loss):

* requests are sorted longest first (padding stays small; an out-of-memory shows at the first batch), batched,
  right-padded, and returned in the original order;
* a token prefix shared by many requests (a k-shot task's description and solved examples, an item's context
  shared by its choices) runs once, found by a sort over the token sequences (:func:`prefix_groups`); each
  request continues from a copy of its KV cache with its true position ids (vLLM's automatic prefix caching,
  SGLang's RadixAttention); every forward holds at most ``batch_size`` rows, or more short ones within the
  tokens of ``batch_size`` longest rows;
* the decoder runs without its LM head; the head is applied only at the positions being scored, pooled across
  forwards into chunks of ``logit_chunk`` positions, so B x T x V float32 logits are never materialised;
* a per-request cache (JSON lines, keyed by the model checksum and the request) lets a re-run skip finished work;
* under ``accelerate launch`` requests are split across processes and the results gathered on every rank.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babelscope.caches import RequestCache
from babelscope.models.arch import base_model, lm_head, logits_from_hidden, logsumexp_, scoring_prefix
from babelscope.models.hooks import capture_layers, run_until_stopped
from babelscope.models.loss import head_nll
from babelscope.models.placement import input_device
from babelscope.processes import DistState, all_reduce_grads, gather_objects  # noqa: F401  (re-exported)
from babelscope.processes import state as _dist_state


@dataclass
class Scored:
    """Log-likelihood of the target tokens of one sequence (natural log)."""

    logprob: float
    greedy: bool  # every target token is the argmax
    tokens: int


@dataclass
class RollingScore:
    """Total NLL (nats) of one text scored in disjoint windows."""

    nll: float
    tokens: int
    windows: int


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of a tokenizer's serialized state (the fast tokenizer's JSON, or the vocabulary of a slow one,
    plus special tokens and chat template); memoised on the tokenizer while its length stays the same."""
    import json

    from babelscope.caches import digest

    memo = getattr(tokenizer, "_babelscope_sha256", None)
    if memo is not None and memo[0] == len(tokenizer):
        return memo[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"class": type(tokenizer).__name__, "special": getattr(tokenizer, "all_special_tokens", None),
             "chat_template": getattr(tokenizer, "chat_template", None), "len": len(tokenizer)}
    sha = digest([state, json.dumps(extra, sort_keys=True, default=str)])
    with contextlib.suppress(AttributeError, TypeError):  # a tokenizer that refuses new attributes
        tokenizer._babelscope_sha256 = (len(tokenizer), sha)
    return sha


class Engine:
    """Scores requests on ``model`` (eval mode, unmodified) with ``tokenizer``.

    ``checksum`` (the weights' sha256 from the model info, or a changed model's own key) keys the per-request
    cache in ``cache_dir`` together with the model's dtype, the device type and the tokenizer's checksum
    (:attr:`identity`); each request's key adds the request itself (its exact token ids, or the prompt text
    with the generation settings), so the window and prompt settings are part of it.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        batch_size: int = 8,
        logit_chunk: int = 256,
        cache_dir: str | Path | None = None,
        checksum: str = "",
        progress: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.logit_chunk = logit_chunk
        self.checksum = checksum
        self.progress = progress
        param = next(model.parameters(), None)
        self.identity = RequestCache.key(
            checksum,
            str(param.dtype) if param is not None else None,
            input_device(model).type if param is not None else None,
            tokenizer_sha256(tokenizer),
        )
        self.state = _dist_state()
        rank = self.state.process_index if self.state else 0
        self.cache = RequestCache(Path(cache_dir) / f"requests-rank{rank}.jsonl" if cache_dir else None)
        if cache_dir:  # a resumed run may have been made with another number of processes: read them all
            for other in Path(cache_dir).glob("requests-rank*.jsonl"):
                if other != self.cache.path:  # read only: another rank may be appending to it
                    self.cache._data.update(RequestCache(other, repair=False)._data)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        #: the token before a scored text (BOS), or None: scored from its first token (no BOS rule; Qwen)
        self.prefix = scoring_prefix(model, tokenizer)
        # tokens of the scored rows (``input_tokens``) and tokens actually run through the body (``body_tokens``)
        self.stats: Counter = Counter()

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first block's side (blocks may sit on several devices, or offloaded)."""
        return input_device(self.model)

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="req", disable=not (self.progress and self.is_main), leave=False)

    # ------------------------------------------------------------------------------------------ tokenization
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def windows(self, ids: list[int], window: int) -> list[tuple[list[int], int]]:
        """Disjoint windows of ``window`` tokens, each ``[BOS] + chunk``; every token scored exactly once.

        A model scored without BOS (:attr:`prefix` ``None``: Qwen, SmolLM2) has its first token as context
        only: each window is the token before its chunk + the chunk, and every token after the first is scored
        exactly once."""
        step = window - 1
        if self.prefix is None:
            return [([ids[i], *ids[i + 1 : i + 1 + step]], len(ids[i + 1 : i + 1 + step]))
                    for i in range(0, len(ids) - 1, step)]  # fmt: skip
        return [([self.prefix, *ids[i : i + step]], len(ids[i : i + step])) for i in range(0, len(ids), step)]

    # ------------------------------------------------------------------------------------------ public API
    def rolling_loglikelihood(
        self, texts: Sequence[str], window: int = 512, desc: str = "rolling"
    ) -> list[RollingScore]:
        """Total NLL of each text; long texts go in windows of ``window`` tokens, each starting with BOS."""
        if window < 2:
            from babelscope.errors import BabelscopeError

            raise BabelscopeError(f"--window {window}: a window needs at least 2 tokens (BOS + one scored)")
        owners, seqs = [], []
        for t, ids in enumerate(self.encode(texts)):
            for seq in self.windows(ids, window):
                owners.append(t)
                seqs.append(seq)
        scored = self.score_sequences(seqs, desc=desc)
        out = [RollingScore(0.0, 0, 0) for _ in texts]
        for t, s in zip(owners, scored, strict=True):
            out[t].nll -= s.logprob
            out[t].tokens += s.tokens
            out[t].windows += 1
        return out

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], max_length: int | None = None, desc: str = "loglikelihood"
    ) -> list[Scored]:
        """log P(continuation | context) for each ``(context, continuation)``, tokenized as
        lm-evaluation-harness does: trailing spaces of the context move to the continuation, the pair is
        encoded whole and the continuation is what follows the context's tokens; an empty context is the
        prefix token (BOS), or for a model scored without BOS the continuation's first token."""
        return self.score_sequences(self._sequences(requests, max_length), desc=desc)

    def _sequences(
        self, requests: Sequence[tuple[str, str]], max_length: int | None = None
    ) -> list[tuple[list[int], int]]:
        """``(tokens, n)`` of each request for :meth:`score_sequences` (see :meth:`loglikelihood`)."""
        prefix = self.prefix
        add_bos = self._adds_bos()
        max_length = max_length or getattr(self.model.config, "max_position_embeddings", 2048)
        seqs = []
        for context, continuation in requests:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            if context:
                whole = self._encode_one(context + continuation, add_bos)
                ctx = self._encode_one(context, add_bos)  # the context alone, as the harness does
                cont = whole[len(ctx) :]
            else:
                cont = self._encode_one(continuation, False)
                # no BOS rule: the continuation's first token is its own context, the rest is scored
                ctx, cont = ([prefix], cont) if prefix is not None else (cont[:1], cont[1:])
            seq = (ctx + cont)[-(max_length + 1) :]
            seqs.append((seq, len(cont)))
        return seqs

    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    def _encode_one(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    # ------------------------------------------------------------------------------------------ core
    def score_sequences(self, seqs: Sequence[tuple[list[int], int]], desc: str = "scoring") -> list[Scored]:
        """For each ``(tokens, n)``: log-probability of the last ``n`` tokens given those before them.

        Requests with the same input ``seq[:-1]`` share one row (the one-token answers of an item). The rows are
        grouped by shared token prefix (:func:`prefix_groups`, a sort over the token sequences): a group's prefix
        runs once (a k-shot task's description and solved examples, or an item's context shared by its choices)
        and every row continues from a copy of its KV cache with its true position ids. Rows with nothing worth
        sharing (rolling windows) run whole, ``batch_size`` rows a forward. A forward on shared prefixes holds
        ``batch_size`` rows, or more short ones when they fit in the tokens of ``batch_size`` longest rows (a few
        forwards of many short rows instead of many of few: a forward of 8 x 4 tokens costs 96 ms on 2 CPU
        threads, one of 16 x 4 126 ms).
        The scored positions of successive forwards are pooled for the LM head until they fill ``logit_chunk``
        rows: on 2 CPU threads a 262k-vocabulary head costs 5.4 ms per position at 16 rows, 1.7 ms at 256."""
        keys = [RequestCache.key(self.identity, "seq", seq, n) for seq, n in seqs]
        groups = prefix_groups([i for i, k in enumerate(keys) if k not in self.cache], seqs)
        if self.state is not None:
            groups = _rank_share(groups, self.state.process_index, self.state.num_processes, self.batch_size)
        with self._bar(sum(len(r) for g in groups for r in g.requests), desc) as bar:

            def score(batches: list[_Hidden]) -> None:
                hidden = _Hidden.join(batches)
                with torch.inference_mode():
                    scored = self._score_positions([[seqs[i] for i in hidden.served]], hidden)[0]
                self.cache.put_many(
                    {keys[i]: [r.logprob, r.greedy, r.tokens] for i, r in zip(hidden.served, scored, strict=True)}
                )
                bar.update(len(hidden.served))

            pending: list[_Hidden] = []  # forwards' scored hidden vectors, waiting for a full head chunk
            # a forward may hold as many tokens as batch_size of the longest rows (the plain path's first batch)
            budget = self.batch_size * max((len(g.rows[0]) for g in groups), default=0)
            for block in _blocks(groups, self.batch_size, budget):
                for hidden in self._run_block(block, seqs, budget):
                    pending.append(hidden)
                    if sum(len(b.h) for b in pending) >= self.logit_chunk:
                        score(pending)
                        pending = []
            if pending:
                score(pending)
        if self.state is not None:
            self._share_cache(keys)
        return [Scored(*self.cache[k]) for k in keys]

    def _share_cache(self, keys: list[str]) -> None:
        """Gather every rank's answers so all ranks return the full list."""
        mine = [(k, self.cache[k]) for k in keys if k in self.cache]
        for k, v in _flatten(gather_objects(mine)):
            self.cache._data[k] = v

    def _batch_inputs(self, seqs: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(seq) - 1 for seq, _ in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, (seq, _) in enumerate(seqs):
            ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            mask[row, : len(seq) - 1] = 1
        return ids.to(self.device), mask.to(self.device)

    def _positions(self, seqs: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, columns and target ids of every scored position in the batch."""
        rows, cols, targets = [], [], []
        for row, (seq, n) in enumerate(seqs):
            first = len(seq) - 1 - n
            rows += [row] * n
            cols += range(first, len(seq) - 1)
            targets += seq[len(seq) - n :]
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(rows), as_tensor(cols), as_tensor(targets)

    def _final_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return base_model(self.model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def _score_batch(self, groups: list[list[tuple[list[int], int]]]) -> list[list[Scored]]:
        """Score groups of requests in one forward of whole rows (nothing shared but identical inputs, which
        share a row); per group, in order."""
        flat = [r for group in groups for r in group]
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, (seq, _) in enumerate(flat):
            rows.setdefault(tuple(seq[:-1]), []).append(i)
        block = [PrefixGroup(0, list(rows), list(rows.values()))]
        with torch.inference_mode():
            hidden = self._continue(block, [(0, k) for k in range(len(rows))], None, flat)
            scored = dict(zip(hidden.served, self._score_positions([[flat[i] for i in hidden.served]], hidden)[0],
                              strict=True))
        order = iter(range(len(flat)))
        return [[scored[next(order)] for _ in group] for group in groups]

    def _score_positions(self, groups, hidden: _Hidden) -> list[list[Scored]]:
        """Log-probabilities of ``hidden.targets`` from the vectors ``hidden.h[hidden.where]``, the LM head
        applied once per distinct position, ``logit_chunk`` positions at a time; per request, in group order.

        A position is greedy when its target's logit is the row's maximum and no earlier entry ties it (so
        argmax's first-index rule holds); the maximum is the one ``logsumexp`` needs anyway, and a full argmax
        pass (5.6x an amax over a 256 x 262k block) runs only on the few rows where the target ties it."""
        h, where, targets = hidden.h, hidden.where, hidden.targets
        logprobs, greedy = [], []
        for start in range(0, len(targets), self.logit_chunk):
            need, inverse = torch.unique(where[start : start + self.logit_chunk], return_inverse=True)
            logits = logits_from_hidden(self.model, h[need], out=self._logit_buffer(h))
            inverse = inverse.to(logits.device)  # a head on another device than the last block
            tgt = targets[start : start + self.logit_chunk].to(logits.device)
            picked = logits[inverse, tgt]
            peak = logits.amax(dim=-1)
            top = picked == peak[inverse]
            if top.any():  # the target reaches the maximum: argmax agrees unless an earlier entry ties it
                top[top.clone()] = logits[inverse[top]].argmax(dim=-1) == tgt[top]
            greedy.append(top)
            logprobs.append(picked - logsumexp_(logits, peak)[inverse])  # overwrites the logits
        lp = torch.cat(logprobs).double().cpu() if logprobs else torch.zeros(0, dtype=torch.float64)
        gr = torch.cat(greedy).cpu() if greedy else torch.zeros(0, dtype=torch.bool)
        out, start = [], 0
        for group in groups:
            out.append([])
            for _, n in group:
                out[-1].append(Scored(float(lp[start : start + n].sum()), bool(gr[start : start + n].all()), n))
                start += n
        return out

    # ------------------------------------------------------------------------------------------ shared prefixes
    def _run_block(self, block: list[PrefixGroup], seqs, budget: int) -> Iterator[_Hidden]:
        """Run a block of groups: their prefixes once, in one left-padded forward whose KV cache (one row per
        group) is kept while the block runs; then the groups' rows, longest first, each on a copy of its group's
        cache, in forwards of ``batch_size`` rows or, when the rows are short, of as many as keep the forward
        within ``budget`` tokens (rows x (prefix width + longest continuation), the copied caches included).
        Rows that share nothing run ``batch_size`` at a time. Yields each forward's scored hidden vectors."""
        with torch.inference_mode():
            prefixes = self._run_prefixes(block) if block[0].prefix else None
        rows = [(g, k) for g, group in enumerate(block) for k in range(len(group.rows))]
        rows.sort(key=lambda gk: len(block[gk[0]].prefix_free(gk[1])), reverse=True)
        width = prefixes.width if prefixes else 0
        start = 0
        while start < len(rows):
            per_row = width + len(block[rows[start][0]].prefix_free(rows[start][1]))  # the longest continuation
            take = self.batch_size if prefixes is None else max(self.batch_size, budget // max(per_row, 1))
            with torch.inference_mode():
                yield self._continue(block, rows[start : start + take], prefixes, seqs)
            start += take

    def _run_prefixes(self, block: list[PrefixGroup]) -> _Prefixes:
        """The block's shared prefixes, left-padded so that each ends at the last column (the continuations
        follow it with no gap, as the sliding-window layers need), with positions counted from each one's first
        real token. The cache comes from the model's config: a sliding-window layer keeps the last
        ``sliding_window - 1`` positions (all a continuation can attend to there), a global layer all of them."""
        from transformers import DynamicCache

        ctxs = [group.rows[0][: group.prefix] for group in block]
        width = max(map(len, ctxs))
        ids = torch.full((len(ctxs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ctxs), width), dtype=torch.long)
        for row, ctx in enumerate(ctxs):
            ids[row, width - len(ctx) :] = torch.tensor(ctx)
            mask[row, width - len(ctx) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        body = base_model(self.model)
        cache = DynamicCache(config=body.config)
        hidden = body(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{_cache_arg(body): cache},
        ).last_hidden_state
        self.stats["body_tokens"] += sum(map(len, ctxs))
        return _Prefixes(hidden.reshape(-1, hidden.shape[-1]), cache, mask, width)

    def _continue(
        self, block: list[PrefixGroup], chunk: list[tuple[int, int]], prefixes: _Prefixes | None, seqs
    ) -> _Hidden:
        """One forward of the rows ``chunk`` (``(group, row)`` pairs of ``block``): what follows each row's
        prefix, right-padded, on a copy of its group's prefix cache, positions continuing from the prefix's true
        length (whole rows from position 0 when nothing is shared). Returns the distinct hidden vectors at the scored
        positions (a prefix's last position may serve several rows), their row per target, the targets and the
        requests served, in order."""
        body = base_model(self.model)
        width = prefixes.width if prefixes else 0
        base = prefixes.table.shape[0] if prefixes else 0
        rest = [block[g].prefix_free(k) for g, k in chunk]
        longer = [c for c, x in enumerate(rest) if x]  # rows with tokens after their prefix
        xrow = {c: r for r, c in enumerate(longer)}
        xwidth = max((len(rest[c]) for c in longer), default=0)
        tables = [prefixes.table] if prefixes else []
        if longer:
            xids = torch.full((len(longer), xwidth), self.pad_id, dtype=torch.long)
            xmask = torch.zeros((len(longer), xwidth), dtype=torch.long)
            for r, c in enumerate(longer):
                xids[r, : len(rest[c])] = torch.tensor(rest[c])
                xmask[r, : len(rest[c])] = 1
            xids, xmask = xids.to(self.device), xmask.to(self.device)
            if prefixes is None:
                hidden = self._final_hidden(xids, xmask)
            else:
                owner = self._long([chunk[c][0] for c in longer])
                hidden = body(
                    input_ids=xids,
                    attention_mask=torch.cat([prefixes.mask[owner], xmask], dim=1),
                    position_ids=prefixes.mask.sum(-1)[owner, None] + torch.arange(xwidth, device=self.device),
                    use_cache=True,
                    **{_cache_arg(body): _copy_rows(prefixes.cache, owner)},
                ).last_hidden_state
            tables.append(hidden.reshape(-1, hidden.shape[-1]))
            self.stats["body_tokens"] += sum(len(rest[c]) for c in longer)
        index, targets, served = [], [], []
        for c, (g, k) in enumerate(chunk):
            p = block[g].prefix
            self.stats["input_tokens"] += len(block[g].rows[k])
            for i in block[g].requests[k]:
                seq, n = seqs[i]
                served.append(i)
                targets += seq[len(seq) - n :]
                for j in range(len(seq) - 1 - n, len(seq) - 1):  # the hidden at input position j predicts j + 1
                    index.append(g * width + width - p + j if j < p else base + xrow[c] * xwidth + j - p)
        pos, where = torch.unique(self._long(index), return_inverse=True)  # distinct positions
        table = torch.cat(tables)  # on the last block's device, which may not be the inputs'
        return _Hidden(table[pos.to(table.device)], where.to(table.device), self._long(targets), served)

    def _long(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _logit_buffer(self, h: torch.Tensor) -> torch.Tensor | None:
        """One ``logit_chunk x vocab`` float32 block reused by every chunk (inference only)."""
        if h.dtype != torch.float32:
            return None
        vocab = lm_head(self.model).weight.shape[0]
        buf = getattr(self, "_logits", None)
        if buf is None or buf.shape != (self.logit_chunk, vocab) or buf.device != h.device:
            buf = self._logits = torch.empty(self.logit_chunk, vocab, device=h.device)
        return buf

    # ------------------------------------------------------------------------------------------ gradients
    def backward(
        self, seqs: Sequence[tuple[list[int], int]], normalizer: float, on_batch: Callable[[int], None] | None = None,
        even: bool = False,
    ) -> float:
        """Back-propagate ``sum of target-token NLL / normalizer`` into ``.grad`` (no optimizer step).

        Dividing by one global token count (not per batch) makes the accumulated gradient independent of the
        batch size and of the number of processes (Accelerate's token-count normalisation). Each rank takes
        its share of ``seqs``; call :func:`all_reduce_grads` afterwards. Returns this rank's summed NLL.
        The LM head and loss are one fused pass over chunks of positions (:func:`head_nll`): the logits
        are never all held, and their gradient is formed as they are computed. ``even`` (FSDP 2, whose every
        forward and backward is a collective): every rank runs as many batches as the busiest one, a rank with
        fewer repeating its first sequence with the loss weighted by 0 (nothing added to any gradient).
        """
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        pad = 0
        if self.state is not None:
            world, rank = self.state.num_processes, self.state.process_index
            if even:
                most = math.ceil(len(order[0::world]) / self.batch_size) if order else 0
                pad = most - math.ceil(len(order[rank::world]) / self.batch_size)
            order = order[rank::world]
        batches = [[seqs[i] for i in order[start : start + self.batch_size]]
                   for start in range(0, len(order), self.batch_size)]
        batches = [(b, 1.0) for b in batches] + [([seqs[0]], 0.0)] * pad
        total = 0.0
        for batch, weight in batches:
            ids, mask = self._batch_inputs(batch)
            hidden = self._final_hidden(ids, mask)
            rows, cols, targets = (t.to(hidden.device) for t in self._positions(batch))
            loss = head_nll(self.model, hidden[rows, cols], targets, self.logit_chunk)[0] * weight
            (loss / normalizer).backward()
            total += float(loss.detach())
            if on_batch and weight:
                on_batch(len(batch))
        return total

    # ------------------------------------------------------------------------------------------ hidden states
    def hidden_states(
        self, texts: Sequence[str], layers: Sequence[int], add_special_tokens: bool = True, desc: str = "hidden states"
    ) -> list[dict[str, Any]]:
        """Per text ``{"hidden": float32 (len(layers), T, H), "offsets": (T, 2), "ids": (T,)}``.

        Only the requested layers are captured (copied to CPU as each batch finishes) and the forward stops
        after the deepest one, so the LM head and later blocks never run.
        """
        enc = self.tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
        out: list[dict[str, Any] | None] = [None] * len(texts)
        layers = list(layers)
        with self._bar(len(order), desc) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                seqs = [(list(enc["input_ids"][i]) + [self.pad_id], 0) for i in batch]
                ids, mask = self._batch_inputs(seqs)
                with torch.inference_mode(), capture_layers(self.model, layers) as store:
                    run_until_stopped(base_model(self.model), input_ids=ids, attention_mask=mask, use_cache=False)
                    # each layer to the CPU first: consecutive blocks may sit on different devices
                    stacked = torch.stack([store[layer].float().cpu() for layer in layers], dim=1)
                for row, i in enumerate(batch):
                    n = len(enc["input_ids"][i])
                    out[i] = {
                        "hidden": stacked[row, :, :n].numpy(),
                        "offsets": np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2),
                        "ids": np.asarray(enc["input_ids"][i], dtype=np.int64),
                    }
                bar.update(len(batch))
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ generation
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 64, stop: Sequence[str] = (), desc: str = "generate"
    ) -> list[str]:
        """Greedy continuation of each prompt (left-padded batches, longest first), cut at the first stop string."""
        keys = [RequestCache.key(self.identity, "gen", p, max_new_tokens, list(stop)) for p in prompts]
        todo = sorted((i for i, k in enumerate(keys) if k not in self.cache), key=lambda i: -len(prompts[i]))
        if self.state is not None:
            todo = todo[self.state.process_index :: self.state.num_processes]
        tok = self.tokenizer
        side = tok.padding_side
        with self._bar(len(todo), desc) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                tok.padding_side = "left"
                try:
                    inputs = tok([prompts[i] for i in batch], return_tensors="pt", padding=True).to(self.device)
                finally:
                    tok.padding_side = side
                with torch.inference_mode():
                    gen = self.model.generate(
                        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad_id
                    )
                texts = tok.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                self.cache.put_many({keys[i]: _cut(t, stop) for i, t in zip(batch, texts, strict=True)})
                bar.update(len(batch))
        if self.state is not None:
            self._share_cache(keys)
        return [self.cache[k] for k in keys]


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
class _Prefixes:
    """A block's prefixes after their forward: hidden vectors (group-major, ``width`` per group), KV cache and
    left-padded attention mask."""

    table: torch.Tensor
    cache: Any
    mask: torch.Tensor
    width: int


@dataclass
class _Hidden:
    """The scored positions of one or more forwards: distinct hidden vectors ``h``, the row of ``h`` for every
    target (``where``), the target ids, and the requests served, in order (each owns its ``n`` targets)."""

    h: torch.Tensor
    where: torch.Tensor
    targets: torch.Tensor
    served: list[int]

    @staticmethod
    def join(parts: list[_Hidden]) -> _Hidden:
        """One :class:`_Hidden` of several, each part's ``where`` shifted past the vectors before it."""
        where, offset = [], 0
        for part in parts:
            where.append(part.where + offset)
            offset += len(part.h)
        served = [i for part in parts for i in part.served]
        return _Hidden(torch.cat([p.h for p in parts]), torch.cat(where), torch.cat([p.targets for p in parts]), served)


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


def _blocks(groups: list[PrefixGroup], batch_size: int, budget: int) -> list[list[PrefixGroup]]:
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


def _rank_share(groups: list[PrefixGroup], rank: int, world: int, batch_size: int) -> list[PrefixGroup]:
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


def _cut(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def _flatten(lists):
    for chunk in lists:
        yield from chunk


def perplexity(nll: float, tokens: int) -> float:
    """exp(mean token NLL)."""
    return math.exp(nll / tokens) if tokens else float("nan")
