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

The parts live beside it: requests and collation in :mod:`babelscope.models.prefixes`, the head and loss in
:mod:`babelscope.models.loss`, gradients in :mod:`babelscope.models.gradients`, activation capture in
:mod:`babelscope.models.capture`; the engine holds tokenization, scoring, generation and the request cache.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.caches import RequestCache
from babelscope.models import capture, gradients
from babelscope.models.arch import base_model, lm_head, logits_from_hidden, logsumexp_, scoring_prefix
from babelscope.models.placement import input_device
from babelscope.models.prefixes import (  # noqa: F401  (PrefixGroup, prefix_groups: re-exported)
    Hidden,
    Prefixes,
    PrefixGroup,
    Request,
    batch_inputs,
    continue_rows,
    forward_blocks,
    prefix_groups,
    rank_groups,
    run_prefixes,
    target_positions,
)
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
    def score_sequences(self, seqs: Sequence[Request], desc: str = "scoring") -> list[Scored]:
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
            groups = rank_groups(groups, self.state.process_index, self.state.num_processes, self.batch_size)
        with self._bar(sum(len(r) for g in groups for r in g.requests), desc) as bar:

            def score(batches: list[Hidden]) -> None:
                hidden = Hidden.join(batches)
                with torch.inference_mode():
                    scored = self._score_positions([[seqs[i] for i in hidden.served]], hidden)[0]
                self.cache.put_many(
                    {keys[i]: [r.logprob, r.greedy, r.tokens] for i, r in zip(hidden.served, scored, strict=True)}
                )
                bar.update(len(hidden.served))

            pending: list[Hidden] = []  # forwards' scored hidden vectors, waiting for a full head chunk
            # a forward may hold as many tokens as batch_size of the longest rows (the plain path's first batch)
            budget = self.batch_size * max((len(g.rows[0]) for g in groups), default=0)
            for block in forward_blocks(groups, self.batch_size, budget):
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

    def _batch_inputs(self, seqs: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_inputs(seqs, self.pad_id, self.device)

    def _positions(self, seqs: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, columns and target ids of every scored position in the batch."""
        return target_positions(seqs, self.device)

    def _final_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return base_model(self.model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def _score_batch(self, groups: list[list[Request]]) -> list[list[Scored]]:
        """Score groups of requests in one forward of whole rows (nothing shared but identical inputs, which
        share a row); per group, in order."""
        flat = [r for group in groups for r in group]
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, (seq, _) in enumerate(flat):
            rows.setdefault(tuple(seq[:-1]), []).append(i)
        block = [PrefixGroup(0, list(rows), list(rows.values()))]
        with torch.inference_mode():
            hidden = continue_rows(base_model(self.model), block, [(0, k) for k in range(len(rows))], None, flat,
                                   self.pad_id, self.device, self.stats)
            scored = dict(zip(hidden.served, self._score_positions([[flat[i] for i in hidden.served]], hidden)[0],
                              strict=True))
        order = iter(range(len(flat)))
        return [[scored[next(order)] for _ in group] for group in groups]

    def _score_positions(self, groups, hidden: Hidden) -> list[list[Scored]]:
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
    def _run_block(self, block: list[PrefixGroup], seqs, budget: int) -> Iterator[Hidden]:
        """Run a block of groups: their prefixes once, in one left-padded forward whose KV cache (one row per
        group) is kept while the block runs; then the groups' rows, longest first, each on a copy of its group's
        cache, in forwards of ``batch_size`` rows or, when the rows are short, of as many as keep the forward
        within ``budget`` tokens (rows x (prefix width + longest continuation), the copied caches included).
        Rows that share nothing run ``batch_size`` at a time. Yields each forward's scored hidden vectors."""
        body = base_model(self.model)
        with torch.inference_mode():
            prefixes = run_prefixes(body, block, self.pad_id, self.device, self.stats) if block[0].prefix else None
        rows = [(g, k) for g, group in enumerate(block) for k in range(len(group.rows))]
        rows.sort(key=lambda gk: len(block[gk[0]].prefix_free(gk[1])), reverse=True)
        width = prefixes.width if prefixes else 0
        start = 0
        while start < len(rows):
            per_row = width + len(block[rows[start][0]].prefix_free(rows[start][1]))  # the longest continuation
            take = self.batch_size if prefixes is None else max(self.batch_size, budget // max(per_row, 1))
            with torch.inference_mode():
                yield continue_rows(body, block, rows[start : start + take], prefixes, seqs, self.pad_id, self.device,
                                    self.stats)
            start += take

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
        self, seqs: Sequence[Request], normalizer: float, on_batch: Callable[[int], None] | None = None,
        even: bool = False,
    ) -> float:
        """Back-propagate ``sum of target-token NLL / normalizer`` into ``.grad`` (no optimizer step), this rank's
        share of ``seqs`` in batches of ``batch_size``, the head and loss ``logit_chunk`` positions at a time
        (:func:`babelscope.models.gradients.backward`: token-count normalisation, ``even`` for FSDP 2). Call
        :func:`all_reduce_grads` afterwards. Returns this rank's summed NLL."""
        return gradients.backward(self.model, seqs, normalizer, batch_size=self.batch_size,
                                  logit_chunk=self.logit_chunk, pad_id=self.pad_id, state=self.state,
                                  on_batch=on_batch, even=even)

    # ------------------------------------------------------------------------------------------ hidden states
    def hidden_states(
        self, texts: Sequence[str], layers: Sequence[int], add_special_tokens: bool = True, desc: str = "hidden states"
    ) -> list[dict[str, Any]]:
        """Per text ``{"hidden": float32 (len(layers), T, H), "offsets": (T, 2), "ids": (T,)}``.

        Only the requested layers are captured (copied to CPU as each batch finishes) and the forward stops
        after the deepest one, so the LM head and later blocks never run (:mod:`babelscope.models.capture`).
        """
        with self._bar(len(texts), desc) as bar:
            return capture.hidden_states(self.model, self.tokenizer, texts, layers, batch_size=self.batch_size,
                                         pad_id=self.pad_id, add_special_tokens=add_special_tokens,
                                         on_batch=bar.update)

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



def _cut(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def _flatten(lists):
    for chunk in lists:
        yield from chunk


def perplexity(nll: float, tokens: int) -> float:
    """exp(mean token NLL)."""
    return math.exp(nll / tokens) if tokens else float("nan")
