"""The scoring engine against the unmodified model's own forward, on tiny real architectures."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from babelscope.models.arch import block_list
from babelscope.models.engine import Engine, prefix_groups
from conftest import SENTENCES, build_tiny
from numerics import TINY_BACKWARD, TINY_FORWARD, assert_close_scaled

LONG = " ".join(SENTENCES * 4)


def reference_nll(model, seqs) -> float:
    """Sum of token NLL from the model's own forward, one unpadded window at a time, in float64."""
    total = 0.0
    for seq, n in seqs:
        x = torch.tensor([seq])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, :-1].double()
        total += F.cross_entropy(logits[-n:], x[0, -n:], reduction="sum").item()
    return total


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_rolling_matches_model_forward(kind, batch_size):
    model, tok = build_tiny(kind)
    engine = Engine(model, tok, batch_size=batch_size, progress=False)
    texts = [LONG, SENTENCES[4], SENTENCES[0] + " " + SENTENCES[6]]
    scores = engine.rolling_loglikelihood(texts, window=16)
    for text, score in zip(texts, scores, strict=True):
        ids = engine.encode([text])[0]
        windows = engine.windows(ids, 16)
        assert score.tokens == len(ids)  # every token scored exactly once
        assert all(seq[0] == tok.bos_token_id and len(seq) <= 16 for seq, _ in windows)
        assert score.nll == pytest.approx(reference_nll(model, windows), rel=TINY_FORWARD)  # a sum of NLLs > 0


def test_batch_size_invariance():
    model, tok = build_tiny("gemma3")
    texts = [LONG[: 40 * (i + 1)] for i in range(7)]
    a = [s.nll for s in Engine(model, tok, batch_size=1, progress=False).rolling_loglikelihood(texts, window=32)]
    b = [s.nll for s in Engine(model, tok, batch_size=5, progress=False).rolling_loglikelihood(texts, window=32)]
    assert a == pytest.approx(b, rel=TINY_FORWARD)  # the same positive sums, batched differently


def forward_rows(model) -> tuple[list[int], object]:
    """Rows of every forward of the decoder body, recorded by a pre-hook (returned with its handle)."""
    sizes: list[int] = []
    handle = model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return sizes, handle


def test_rolling_windows_of_a_few_tokens_respect_the_batch_size():
    """300 short texts (windows of a few tokens) in batches of 8: never more than 8 rows a forward, whatever path
    the rows take (they once went as one shared-context unit of hundreds of rows); scores as at batch size 1."""
    model, tok = build_tiny("gemma3")
    texts = [SENTENCES[i % 8][: 4 + i % 7] for i in range(300)]
    sizes, handle = forward_rows(model)
    try:
        eight = Engine(model, tok, batch_size=8, progress=False)
        got = eight.rolling_loglikelihood(texts, window=16)
    finally:
        handle.remove()
    assert max(sizes) == 8 and len(sizes) >= len({tuple(t[:-1]) for t in eight.encode(texts)}) / 8
    one = Engine(model, tok, batch_size=1, progress=False).rolling_loglikelihood(texts, window=16)
    assert [s.nll for s in got] == pytest.approx([s.nll for s in one], rel=1e-5)


def test_logit_chunking_never_changes_scores():
    model, tok = build_tiny("llama")
    texts = [LONG]
    a = Engine(model, tok, logit_chunk=7, progress=False).rolling_loglikelihood(texts, window=64)[0].nll
    b = Engine(model, tok, logit_chunk=10_000, progress=False).rolling_loglikelihood(texts, window=64)[0].nll
    assert a == pytest.approx(b, rel=TINY_FORWARD)  # the same positive sums, batched differently


def test_loglikelihood_and_greedy():
    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, progress=False)
    reqs = [("The quick brown", " fox jumps"), ("Le renard ", "brun"), ("", "Hello")]
    out = engine.loglikelihood(reqs)
    for (ctx, cont), got in zip(reqs, out, strict=True):
        if ctx:
            ctx_t, cont_t = ctx.rstrip(), ctx[len(ctx.rstrip()) :] + cont
            whole = tok(ctx_t + cont_t)["input_ids"]
            n = len(whole) - len(tok(ctx_t)["input_ids"])
        else:
            whole = [tok.bos_token_id] + tok(cont, add_special_tokens=False)["input_ids"]
            n = len(whole) - 1
        x = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        targets = x[0, 1:][-n:]
        expected = logp[-n:].gather(1, targets[:, None]).sum().item()
        assert got.tokens == n
        assert got.logprob == pytest.approx(expected, rel=TINY_FORWARD)  # float32 against the float64 softmax
        assert got.greedy == bool((logp[-n:].argmax(-1) == targets).all())


def tolerance(dtype: torch.dtype, reduction: int, logprob: float, tokens: int) -> float:
    """Float rounding bound for a log-likelihood computed by two paths that differ only in the order of their
    reductions (batch shapes, padding, a KV cache): the probabilistic bound for a reduction of length ``K``,
    about ``sqrt(K) * eps`` relative (Higham & Mary 2019), on the scale of the quantity, ``|ll|`` plus one nat per
    token (each token's log-prob is a logit minus a logsumexp); a factor 4 for the layers it passes through."""
    return 4 * math.sqrt(reduction) * torch.finfo(dtype).eps * (abs(logprob) + tokens)


def few_shot_requests(shots: int, items: int = 6) -> list[tuple[str, str]]:
    """A k-shot task: ``shots`` solved examples shared by every item, the item's question, then choices of one
    token (` A`, ` B`: one row per item) and of several (an item's context shared by them)."""
    solved = "".join(f"Q: {SENTENCES[s]} A: {'AB'[s % 2]}\n" for s in range(shots))
    return [
        (solved + f"Q: {SENTENCES[(q + 3) % 8][: 12 + 5 * q]} ({q}) A:", choice)
        for q in range(items)
        for choice in (" A", " B", " the lazy dog", " le chien paresseux")
    ]


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
@pytest.mark.parametrize("shots", [0, 1, 4])
def test_shared_prefix_matches_plain_path(kind, shots):
    """The few-shot prefix of every item runs once and each row continues from a copy of its KV cache: every
    request's log-likelihood equals the plain path's (each request alone, one unpadded row) and the model's own
    forward, to the float format's rounding. Shared prefixes of 0 shots (the item's context, 5-12 tokens)
    straddle the tiny Gemma 3's sliding window of 8; 1 and 4 shots (about 30 and 120 tokens) are far longer.
    The bound is tight enough to matter: zeroing the oldest sliding-window key of the copied cache moves scores
    by 5 to 40 times it, while the path as built stays under 1% of it."""
    model, tok = build_tiny(kind)
    dtype = torch.float32
    reqs = few_shot_requests(shots)
    engine = Engine(model, tok, batch_size=3, progress=False)
    sizes, handle = forward_rows(model)
    try:
        out = engine.loglikelihood(reqs)
    finally:
        handle.remove()
    assert max(sizes) <= 3 or shots == 0  # 0 shots: short rows may fill a forward up to the token budget
    assert engine.stats["body_tokens"] < engine.stats["input_tokens"]
    plain = Engine(model, tok, progress=False)
    seqs = plain._sequences(reqs)
    alone = [plain._score_batch([[s]])[0][0] for s in seqs]
    cfg = model.config
    for (seq, n), got, ref in zip(seqs, out, alone, strict=True):
        x = torch.tensor([seq])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        own = logp[-n:].gather(1, x[0, -n:, None]).sum().item()
        tol = tolerance(dtype, max(cfg.intermediate_size, len(seq)), own, n)
        assert got.tokens == ref.tokens == n
        assert abs(got.logprob - ref.logprob) <= tol and abs(got.logprob - own) <= tol
        assert got.greedy == ref.greedy


def test_prefix_shared_by_every_item_runs_once_in_bounded_batches():
    """A 4-shot task of 12 items at batch size 3: the few-shot prefix (longer than the sliding window) runs in
    one forward of one row, then the items 3 rows a forward; every forward's KV cache holds at most 3 rows, its
    sliding-window layers at most ``sliding_window - 1`` prefix positions."""
    model, tok = build_tiny("gemma3")
    reqs = [r for r in few_shot_requests(4, items=12) if r[1] in (" A", " B")]
    engine = Engine(model, tok, batch_size=3, progress=False)
    seen = []

    def record(mod, args, kwargs):
        cache = kwargs.get("cache")
        filled = cache is not None and cache.get_seq_length() > 0  # the prefix forward starts an empty cache
        layers = [(type(layer).__name__, tuple(layer.keys.shape)) for layer in cache.layers] if filled else []
        seen.append((tuple(kwargs["input_ids"].shape), layers))

    handle = model.base_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine.loglikelihood(reqs)
    finally:
        handle.remove()
    groups = prefix_groups(list(range(len(reqs))), engine._sequences(reqs))
    assert len(groups) == 1 and len(groups[0].rows) == 12  # one row per item, one shared prefix
    prefix = groups[0].prefix
    assert prefix > 100 > model.config.sliding_window
    assert seen[0][0] == (1, prefix) and not seen[0][1]  # the prefix, once
    assert [shape[0] for shape, _ in seen[1:]] == [3, 3, 3, 3]
    assert "sliding_attention" in model.config.layer_types
    for _, layers in seen[1:]:
        for kind, (name, shape) in zip(model.config.layer_types, layers, strict=True):
            assert shape[0] == 3
            assert shape[2] == (model.config.sliding_window - 1 if kind == "sliding_attention" else prefix), name
    assert engine.stats["body_tokens"] == prefix + sum(len(r) - prefix for r in groups[0].rows)


def test_short_shared_rows_fill_forwards_up_to_the_token_budget():
    """Twenty 0-shot items of two choices (contexts of 5-12 tokens) at batch size 2: the continuation forwards
    hold more than 2 short rows, but never more tokens (rows x (prefix cache width + continuation width)) than
    2 of the longest rows, which is what the plain path's first forward holds; scores as each request alone."""
    model, tok = build_tiny("gemma3")
    reqs = [(SENTENCES[q % 8][: 12 + q], choice) for q in range(20) for choice in (" the lazy dog", " le chien")]
    engine = Engine(model, tok, batch_size=2, progress=False)
    seen = []

    def record(mod, args, kwargs):
        cache = kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        seen.append((kwargs["input_ids"].shape[0], cached + kwargs["input_ids"].shape[1]))

    handle = model.base_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = engine.loglikelihood(reqs)
    finally:
        handle.remove()
    seqs = engine._sequences(reqs)
    budget = 2 * max(len(seq) - 1 for seq, _ in seqs)
    assert all(rows <= 2 or rows * width <= budget for rows, width in seen)
    assert max(rows for rows, _ in seen) > 2
    alone = [Engine(model, tok, progress=False)._score_batch([[s]])[0][0] for s in seqs]
    for (_seq, n), got, ref in zip(seqs, out, alone, strict=True):
        assert abs(got.logprob - ref.logprob) <= tolerance(torch.float32, model.config.intermediate_size,
                                                           ref.logprob, n)
        assert got.greedy == ref.greedy


def test_greedy_follows_argmax_on_tied_logits():
    """Two vocabulary rows of the head made identical tie their logits everywhere: a target that ties the
    maximum is greedy only when it is the first such index, as ``argmax`` (and lm-evaluation-harness) say."""
    model, tok = build_tiny("llama")
    engine = Engine(model, tok, progress=False)
    seq = engine._sequences([("The quick brown", " fox")])[0][0]
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq[:-1]])).logits[0, -1]
        top = int(logits.argmax())
        low, high = min(top, 3), max(top, 3) if top != 3 else 4
        head[[low, high]] = head[top].clone()  # both now carry the maximal logit at the last position
    scored = engine.score_sequences([(seq[:-1] + [low], 1), (seq[:-1] + [high], 1)])
    assert scored[0].logprob == scored[1].logprob
    assert scored[0].greedy and not scored[1].greedy


def test_prefix_groups_pick_the_longest_shared_prefix():
    """The sort-and-LCP grouping on hand-made token rows: each subject's rows share its few-shot prefix, a 0-shot
    item's choices share its context, identical inputs share a row, rows sharing only 3 tokens run whole."""
    a, b = (1, 5, 6, 7, 8, 9, 10, 11), (1, 20, 21, 22, 23, 24, 25)
    seqs = [(list(a) + [40 + q, 41, 42, 0], 1) for q in range(5)]  # requests 0-4: subject a, 8 shared tokens
    seqs += [(list(b) + [50 + q, 0], 1) for q in range(3)]  # 5-7: subject b, 7 shared tokens
    seqs += [([1, 90, 91, 92, 93, 94, c, c + 1, 0], 2) for c in (60, 70)]  # 8-9: one item, context of 6 tokens
    seqs += [([1, 2, 3, q, 0], 1) for q in range(4)]  # 10-13: share 3 tokens, below MIN_PREFIX
    seqs.append((seqs[0][0], 1))  # 14: the input of request 0 again
    groups = prefix_groups(list(range(len(seqs))), seqs)
    by_prefix = {g.prefix: sorted(sorted(r) for r in g.requests) for g in groups}
    assert by_prefix == {
        8: [[0, 14], [1], [2], [3], [4]],
        7: [[5], [6], [7]],
        6: [[8], [9]],
        0: [[10], [11], [12], [13]],
    }
    assert [len(g.rows[0]) for g in groups] == sorted((len(g.rows[0]) for g in groups), reverse=True)


def test_hidden_states_match_output_hidden_states_and_stop_early():
    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, progress=False)
    texts = [SENTENCES[0], SENTENCES[4], LONG[:100]]
    _, blocks = block_list(model)
    ran_last = []
    handle = blocks[-1].register_forward_hook(lambda *a: ran_last.append(1))
    try:
        out = engine.hidden_states(texts, layers=[0, 2])
    finally:
        handle.remove()
    assert not ran_last  # the forward stopped after block 2 of 3
    for text, item in zip(texts, out, strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        assert item["hidden"].shape == (2, ids.shape[1], 32)
        # the same float32 forward (hooks vs output_hidden_states), maybe batched and padded differently
        assert_close_scaled(torch.from_numpy(item["hidden"][0]), ref[0][0], TINY_FORWARD)
        assert_close_scaled(torch.from_numpy(item["hidden"][1]), ref[2][0], TINY_FORWARD)
        assert item["offsets"].shape == (ids.shape[1], 2)


def test_hooks_removed_on_error_and_no_leak():
    model, tok = build_tiny("llama")
    _, blocks = block_list(model)
    engine = Engine(model, tok, progress=False)
    with pytest.raises(Exception, match="out of range"):
        engine.hidden_states([SENTENCES[0]], layers=[99])
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in blocks)
    out = engine.hidden_states([SENTENCES[0]], layers=[1])
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in blocks)
    ref = weakref.ref(model)
    del engine, model, blocks, out
    gc.collect()
    assert ref() is None  # nothing (hooks, closures, caches) keeps the model alive


def test_request_cache_resumes_without_forward(tmp_path):
    model, tok = build_tiny("gemma3")
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    base = model.base_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = Engine(model, tok, cache_dir=tmp_path, checksum="x", progress=False).rolling_loglikelihood([LONG], 32)
        assert calls
        calls.clear()
        second = Engine(model, tok, cache_dir=tmp_path, checksum="x", progress=False).rolling_loglikelihood([LONG], 32)
        assert not calls and second == first
        other = Engine(model, tok, cache_dir=tmp_path, checksum="y", progress=False).rolling_loglikelihood([LONG], 32)
        assert calls and other[0].nll == pytest.approx(first[0].nll)
    finally:
        handle.remove()
        base.remove()


def test_backward_equals_autograd_of_mean_loss():
    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, logit_chunk=5, progress=False)
    seqs = [s for t in SENTENCES[:4] for s in engine.windows(engine.encode([t])[0], 8)]
    total = sum(n for _, n in seqs)
    model.zero_grad()
    engine.backward(seqs, normalizer=total)
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss = 0
    for seq, n in seqs:
        x = torch.tensor([seq])
        logits = model(input_ids=x).logits[0, :-1]
        loss = loss + F.cross_entropy(logits[-n:], x[0, -n:], reduction="sum")
    (loss / total).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close_scaled(ours[name], p.grad, TINY_BACKWARD)  # chunked head, batches: other order


def test_backward_through_a_head_the_fused_pass_cannot_take():
    """A head with a forward hook is not a plain linear map: ``backward`` runs it in checkpointed chunks
    (:func:`babelscope.models.loss.head_nll`'s fallback) and gives the fused pass's gradients."""
    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, logit_chunk=5, progress=False)
    seqs = [s for t in SENTENCES[:3] for s in engine.windows(engine.encode([t])[0], 8)]
    total = sum(n for _, n in seqs)
    model.zero_grad()
    fused = engine.backward(seqs, normalizer=total)
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    handle = model.get_output_embeddings().register_forward_hook(lambda *a: None)
    try:
        chunked = engine.backward(seqs, normalizer=total)
    finally:
        handle.remove()
    assert chunked == pytest.approx(fused, rel=1e-5)  # float32 sums of ~60 NLLs in another order
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close_scaled(p.grad, ref[name], TINY_BACKWARD)


def test_generate_is_greedy():
    model, tok = build_tiny("llama")
    engine = Engine(model, tok, batch_size=2, progress=False)
    prompts = ["The quick", "Le renard brun rapide saute"]
    got = engine.generate(prompts, max_new_tokens=5)
    for prompt, text in zip(prompts, got, strict=True):
        ids = tok(prompt, return_tensors="pt")
        ref = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert text == tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_perplexity_helper():
    from babelscope.models.engine import perplexity

    assert perplexity(10 * math.log(3), 10) == pytest.approx(3.0)
    assert math.isnan(perplexity(0.0, 0))


def test_real_model_mmlu_five_shot_prefix_longer_than_the_sliding_window(default_model):
    """Four 5-shot MMLU astronomy items on the real Gemma 3 270M: the shared prefix (517 tokens: description and
    five solved examples) is longer than its 512-token sliding window; it runs once and each item continues from
    a copy of its cache. Every choice's log-likelihood equals the plain path's (the request alone, one unpadded
    row) to float32 rounding (reductions up to the FFN width 2048)."""
    from babelscope.evaluate.benchmarks import build_items, load_task

    model, tok, _ = default_model
    items = build_items(load_task("mmlu"), "astronomy", 5, 4)
    reqs = [r for item in items for r in item.requests]
    engine = Engine(model, tok, batch_size=8, progress=False)
    seqs = engine._sequences(reqs)
    (group,) = prefix_groups(list(range(len(seqs))), seqs)
    assert group.prefix > model.config.sliding_window and len(group.rows) == 4
    out = engine.loglikelihood(reqs)
    assert engine.stats["body_tokens"] == group.prefix + sum(len(r) - group.prefix for r in group.rows)
    per_item = len(items[0].requests)
    for start in range(0, len(seqs), per_item):  # an item's one-token choices share one plain row
        span = slice(start, start + per_item)
        alone = engine._score_batch([seqs[span]])[0]
        for (seq, n), got, ref in zip(seqs[span], out[span], alone, strict=True):
            tol = tolerance(torch.float32, max(model.config.intermediate_size, len(seq)), ref.logprob, n)
            assert abs(got.logprob - ref.logprob) <= tol
            assert got.greedy == ref.greedy
