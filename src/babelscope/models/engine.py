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
* the decoder runs without its LM head; the head is applied only at the positions being scored, in chunks of
  ``logit_chunk`` positions, so B x T x V float32 logits are never materialised;
* a per-request cache (JSON lines, keyed by the model checksum and the request) lets a re-run skip finished work;
* under ``accelerate launch`` requests are split across processes and the results gathered on every rank.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babelscope.models.arch import base_model, lm_head, logits_from_hidden, logsumexp_, prefix_token_id
from babelscope.models.hooks import capture_layers, run_until_stopped
from babelscope.runs import RequestCache


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


@dataclass
class DistState:
    """Rank and world size of the torch.distributed group this process belongs to."""

    process_index: int
    num_processes: int

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0


def _dist_state() -> DistState | None:
    """The process group when launched with several processes (``accelerate launch``, ``debug_launcher``,
    ``torchrun``), else ``None``. Accelerate's ``PartialState`` sets the group up when the launcher did not."""
    import os

    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import PartialState

        PartialState()
        if not dist.is_initialized():
            return None
    world = dist.get_world_size()
    return DistState(dist.get_rank(), world) if world > 1 else None


class Engine:
    """Scores requests on ``model`` (eval mode, unmodified) with ``tokenizer``.

    ``checksum`` (the weights' sha256 from the model info) keys the per-request cache in ``cache_dir``.
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
        self.state = _dist_state()
        rank = self.state.process_index if self.state else 0
        self.cache = RequestCache(Path(cache_dir) / f"requests-rank{rank}.jsonl" if cache_dir else None)
        if cache_dir:  # a resumed run may have been made with another number of processes: read them all
            for other in Path(cache_dir).glob("requests-rank*.jsonl"):
                self.cache._data.update(RequestCache(other)._data)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
        """Disjoint windows of ``window`` tokens, each ``[BOS] + chunk``; every token scored exactly once."""
        prefix = prefix_token_id(self.tokenizer)
        step = window - 1
        return [([prefix, *ids[i : i + step]], len(ids[i : i + step])) for i in range(0, len(ids), step)]

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
        prefix token (BOS)."""
        prefix = prefix_token_id(self.tokenizer)
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
                ctx, cont = [prefix], self._encode_one(continuation, False)
            seq = (ctx + cont)[-(max_length + 1) :]
            seqs.append((seq, len(cont)))
        return self.score_sequences(seqs, desc=desc)

    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    def _encode_one(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    # ------------------------------------------------------------------------------------------ core
    def score_sequences(self, seqs: Sequence[tuple[list[int], int]], desc: str = "scoring") -> list[Scored]:
        """For each ``(tokens, n)``: log-probability of the last ``n`` tokens given those before them.

        Work goes in units of one forward row each: requests with the same input share a row (one-token
        answers), and requests sharing a context long enough to be worth running once (the choices of a
        multiple-choice item) form one shared unit (see :func:`_units`). A batch is ``batch_size`` units of
        one kind, longest first."""
        keys = [RequestCache.key(self.checksum, "seq", seq, n) for seq, n in seqs]
        todo = _units([i for i, k in enumerate(keys) if k not in self.cache], seqs)
        if self.state is not None:
            todo = todo[self.state.process_index :: self.state.num_processes]
        kinds = ([u for u in todo if u[0]], [u for u in todo if not u[0]])
        size = self.batch_size
        batches = [part[start : start + size] for part in kinds for start in range(0, len(part), size)]
        with self._bar(sum(len(u[1]) for u in todo), desc) as bar:
            for units in batches:
                groups = [[seqs[i] for i in u[1]] for u in units]
                with torch.inference_mode():
                    hidden = self._shared_hidden(groups) if units[0][0] else self._row_hidden(groups)
                    scored = self._score_positions(groups, *hidden)
                batch = [i for u in units for i in u[1]]
                results = [r for group in scored for r in group]
                self.cache.put_many(
                    {keys[i]: [r.logprob, r.greedy, r.tokens] for i, r in zip(batch, results, strict=True)}
                )
                bar.update(len(batch))
        if self.state is not None:
            self._share_cache(keys)
        return [Scored(*self.cache[k]) for k in keys]

    def _share_cache(self, keys: list[str]) -> None:
        """Gather every rank's answers so all ranks return the full list."""
        import torch.distributed as dist

        mine = [(k, self.cache[k]) for k in keys if k in self.cache]
        everyone: list = [None] * self.state.num_processes
        dist.all_gather_object(everyone, mine)
        for k, v in _flatten(everyone):
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

    def _score_batch(self, groups: list[list[tuple[list[int], int]]], shared: bool = False) -> list[list[Scored]]:
        """Score groups of requests in one batch (the shared-context path when ``shared``)."""
        hidden = self._shared_hidden(groups) if shared else self._row_hidden(groups)
        return self._score_positions(groups, *hidden)

    def _score_positions(
        self, groups, table: torch.Tensor, index: torch.Tensor, targets: torch.Tensor
    ) -> list[list[Scored]]:
        """Log-probabilities of ``targets`` from the hidden vectors ``table[index]``, the LM head applied once
        per distinct position, ``logit_chunk`` positions at a time; per request, in group order."""
        pos, where = torch.unique(index, return_inverse=True)  # distinct positions
        h = table[pos]
        logprobs, greedy = [], []
        for start in range(0, len(targets), self.logit_chunk):
            need, inverse = torch.unique(where[start : start + self.logit_chunk], return_inverse=True)
            logits = logits_from_hidden(self.model, h[need], out=self._logit_buffer(h))
            tgt = targets[start : start + self.logit_chunk]
            picked = logits[inverse, tgt]
            greedy.append(logits.argmax(dim=-1)[inverse] == tgt)
            logprobs.append(picked - logsumexp_(logits)[inverse])  # overwrites the logits
        lp = torch.cat(logprobs).double().cpu() if logprobs else torch.zeros(0, dtype=torch.float64)
        gr = torch.cat(greedy).cpu() if greedy else torch.zeros(0, dtype=torch.bool)
        out, start = [], 0
        for group in groups:
            out.append([])
            for _, n in group:
                out[-1].append(Scored(float(lp[start : start + n].sum()), bool(gr[start : start + n].all()), n))
                start += n
        return out

    def _row_hidden(self, groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One right-padded row per distinct input ``seq[:-1]``: ``(hidden table, row per scored position,
        targets)`` in request order."""
        row_of: dict[tuple, int] = {}
        unique = []
        for seq, n in (r for group in groups for r in group):
            if tuple(seq[:-1]) not in row_of:
                row_of[tuple(seq[:-1])] = len(unique)
                unique.append((seq, n))
        ids, mask = self._batch_inputs(unique)
        hidden = self._final_hidden(ids, mask)
        width = ids.shape[1]
        index, targets = [], []
        for seq, n in (r for group in groups for r in group):
            base = row_of[tuple(seq[:-1])] * width
            index += range(base + len(seq) - 1 - n, base + len(seq) - 1)
            targets += seq[len(seq) - n :]
        return hidden.reshape(-1, hidden.shape[-1]), self._long(index), self._long(targets)

    def _shared_hidden(self, groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each context once (left-padded, so its last position predicts every continuation's first token),
        then the continuations' inputs on a copy of their context's KV cache, right-padded, with positions
        continuing from the context's length. Same table/index/targets as :meth:`_row_hidden`."""
        from transformers import DynamicCache

        ctxs = [g[0][0][: len(g[0][0]) - g[0][1]] for g in groups]
        width = max(map(len, ctxs))
        ids = torch.full((len(ctxs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ctxs), width), dtype=torch.long)
        for row, ctx in enumerate(ctxs):
            ids[row, width - len(ctx) :] = torch.tensor(ctx)
            mask[row, width - len(ctx) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        body = base_model(self.model)
        cache = DynamicCache(config=body.config)
        cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        last = body(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{cache_arg: cache},
        ).last_hidden_state[:, -1]
        conts = [(g, seq[len(seq) - n :]) for g, group in enumerate(groups) for seq, n in group]
        longer = [(g, cont[:-1]) for g, cont in conts if len(cont) > 1]
        table = [last]
        if longer:
            owner = self._long([g for g, _ in longer])
            xwidth = max(len(x) for _, x in longer)
            xids = torch.full((len(longer), xwidth), self.pad_id, dtype=torch.long)
            xmask = torch.zeros((len(longer), xwidth), dtype=torch.long)
            for row, (_, x) in enumerate(longer):
                xids[row, : len(x)] = torch.tensor(x)
                xmask[row, : len(x)] = 1
            xids, xmask = xids.to(self.device), xmask.to(self.device)
            cache.reorder_cache(owner)  # one copy of its context's keys and values per continuation
            hidden = body(
                input_ids=xids,
                attention_mask=torch.cat([mask[owner], xmask], dim=1),
                position_ids=mask.sum(-1)[owner, None] + torch.arange(xwidth, device=self.device),
                use_cache=True,
                **{cache_arg: cache},
            ).last_hidden_state
            table.append(hidden.reshape(-1, hidden.shape[-1]))
        index, targets, row = [], [], 0
        for g, cont in conts:
            index.append(g)
            if len(cont) > 1:
                index += range(len(ctxs) + row * xwidth, len(ctxs) + row * xwidth + len(cont) - 1)
                row += 1
            targets += cont
        return torch.cat(table), self._long(index), self._long(targets)

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
        self, seqs: Sequence[tuple[list[int], int]], normalizer: float, on_batch: Callable[[int], None] | None = None
    ) -> float:
        """Back-propagate ``sum of target-token NLL / normalizer`` into ``.grad`` (no optimizer step).

        Dividing by one global token count (not per batch) makes the accumulated gradient independent of the
        batch size and of the number of processes (Accelerate's token-count normalisation). Each rank takes
        its share of ``seqs``; call :func:`all_reduce_grads` afterwards. Returns this rank's summed NLL.
        The LM head and loss are one fused pass over chunks of positions (:func:`_chunk_nll`): the logits
        are never all held, and their gradient is formed as they are computed.
        """
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        if self.state is not None:
            order = order[self.state.process_index :: self.state.num_processes]
        total = 0.0
        for start in range(0, len(order), self.batch_size):
            batch = [seqs[i] for i in order[start : start + self.batch_size]]
            ids, mask = self._batch_inputs(batch)
            hidden = self._final_hidden(ids, mask)
            rows, cols, targets = self._positions(batch)
            loss = self._chunk_nll(hidden[rows, cols], targets)
            (loss / normalizer).backward()
            total += float(loss.detach())
            if on_batch:
                on_batch(len(batch))
        return total

    def _chunk_nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed NLL of ``targets`` from hidden vectors ``h``: the chunked fused linear cross-entropy
        (:mod:`babelscope.models.loss`), or for a head it cannot take checkpointed chunks of the head."""
        from babelscope.models.loss import fused_linear_cross_entropy, head_spec

        head = head_spec(self.model)
        if head is not None:
            return fused_linear_cross_entropy(h, head, targets, self.logit_chunk)[0]
        from torch.utils.checkpoint import checkpoint

        def nll(hc: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
            logits = logits_from_hidden(self.model, hc)
            return (torch.logsumexp(logits, dim=-1) - logits.gather(1, tc[:, None])[:, 0]).sum()

        chunk = self.logit_chunk
        parts = [checkpoint(nll, h[c : c + chunk], targets[c : c + chunk], use_reentrant=False)
                 for c in range(0, len(targets), chunk)]
        return torch.stack(parts).sum() if parts else h.sum() * 0.0

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
                    stacked = torch.stack([store[layer] for layer in layers], dim=1).float().cpu()
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
        keys = [RequestCache.key(self.checksum, "gen", p, max_new_tokens, list(stop)) for p in prompts]
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


def _units(todo: list[int], seqs: Sequence[tuple[list[int], int]]) -> list[tuple[bool, list[int]]]:
    """Requests ``todo`` (indices into ``seqs``) as forward units ``(shared, request indices)``, longest first.

    Requests with the same context (the tokens before the scored ones) form a shared unit when the context is
    run once for several multi-token continuations and that saves at least a fifth of their input tokens (an
    item's choices; not rolling windows, whose shared context is BOS alone). Every other request joins the
    row unit of its input tokens ``seq[:-1]`` (identical inputs, e.g. one-token answers, share a row)."""
    by_context: dict[tuple, list[int]] = {}
    for i in todo:
        seq, n = seqs[i]
        by_context.setdefault(tuple(seq[: len(seq) - n]), []).append(i)
    units: list[tuple[bool, list[int]]] = []
    rows: dict[tuple, list[int]] = {}
    for context, group in by_context.items():
        whole = sum(len(seqs[i][0]) - 1 for i in group)
        alone = len(context) + sum(max(seqs[i][1] - 1, 0) for i in group)
        if sum(seqs[i][1] > 1 for i in group) > 1 and alone <= 0.8 * whole:
            units.append((True, group))
        else:
            for i in group:
                rows.setdefault(tuple(seqs[i][0][:-1]), []).append(i)
    units += [(False, group) for group in rows.values()]
    return sorted(units, key=lambda u: -max(len(seqs[i][0]) for i in u[1]))


def _cut(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def _flatten(lists):
    for chunk in lists:
        yield from chunk


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum ``.grad`` over processes (no-op in a single process)."""
    if _dist_state() is None:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def perplexity(nll: float, tokens: int) -> float:
    """exp(mean token NLL)."""
    return math.exp(nll / tokens) if tokens else float("nan")
