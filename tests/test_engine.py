"""The scoring engine against the unmodified model's own forward, on tiny real architectures."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from babelscope.models.arch import block_list
from babelscope.models.engine import Engine
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


def test_rolling_windows_are_batched_a_window_a_row():
    """Windows share only their BOS context: never a shared unit, never more than batch_size rows a forward."""
    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=3, progress=False)
    sizes = []
    rows = engine._row_hidden
    engine._row_hidden = lambda groups: sizes.append(len(groups)) or rows(groups)
    engine._shared_hidden = None  # would fail if called
    engine.rolling_loglikelihood([LONG, LONG[:200], SENTENCES[1]], window=16)
    assert max(sizes) == 3 and sum(sizes) > 6


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


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_shared_contexts_run_once_and_match_model_forward(kind):
    """Multiple-choice items (contexts of different lengths, several multi-token choices each, one choice of a
    single token) take the shared-context path: each context once, left-padded, its KV cache copied to the
    continuations; every score equals the model's own unpadded forward, and the greedy flags agree."""
    model, tok = build_tiny(kind)
    items = [
        (SENTENCES[0] + " because", [" " + SENTENCES[1], " " + SENTENCES[2], " the"]),
        (SENTENCES[3] + " " + SENTENCES[2], [" " + SENTENCES[4], " " + SENTENCES[5]]),
        (LONG[:300], [" " + SENTENCES[6], " " + SENTENCES[0]]),
    ]
    reqs = [(ctx, cont) for ctx, conts in items for cont in conts]
    engine = Engine(model, tok, batch_size=3, progress=False)
    calls = []
    shared = engine._shared_hidden
    engine._shared_hidden = lambda groups: calls.append([len(g) for g in groups]) or shared(groups)
    out = engine.loglikelihood(reqs)
    assert sorted(calls[0]) == [2, 2, 3]  # one batch, one context group per item
    for (ctx, cont), got in zip(reqs, out, strict=True):
        whole = tok(ctx + cont)["input_ids"]
        n = len(whole) - len(tok(ctx)["input_ids"])
        x = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        targets = x[0, 1:][-n:]
        assert got.tokens == n
        expected = logp[-n:].gather(1, targets[:, None]).sum().item()
        assert got.logprob == pytest.approx(expected, rel=TINY_FORWARD)  # a sum of log-probabilities < 0
        assert got.greedy == bool((logp[-n:].argmax(-1) == targets).all())
    plain = Engine(model, tok, batch_size=3, progress=False)
    plain._shared_hidden = plain._row_hidden  # every distinct input as its own right-padded row
    rows = plain.loglikelihood(reqs)
    assert [r.logprob for r in rows] == pytest.approx([r.logprob for r in out], rel=TINY_FORWARD)


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
