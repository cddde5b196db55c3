"""The chunked fused linear cross-entropy equals the plain loss and its gradients."""

from __future__ import annotations

import pytest
import torch

from babelscope.models.loss import HeadSpec, fused_linear_cross_entropy, head_nll, head_spec, plain_cross_entropy
from conftest import build_tiny


def _plain(h, w, b, y, softcap, scale):
    logits = h @ w.t() + (b if b is not None else 0)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return plain_cross_entropy(logits * scale, y)


@pytest.mark.parametrize("softcap,scale,bias", [(None, 1.0, False), (3.0, 1.0, False), (None, 0.5, True)])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_equals_plain_loss_and_gradients(softcap, scale, bias, chunk):
    """float64 on both sides: the two differ only in summation order (reductions of length V = 300 and
    N = 50), so they agree to ~1e-13 relative; 1e-10 leaves room for any BLAS blocking."""
    gen = torch.Generator().manual_seed(0)
    n, hdim, vocab = 50, 16, 300
    h = torch.randn(n, hdim, generator=gen, dtype=torch.float64) * 2
    w = torch.randn(vocab, hdim, generator=gen, dtype=torch.float64)
    b = torch.randn(vocab, generator=gen, dtype=torch.float64) if bias else None
    y = torch.randint(vocab, (n,), generator=gen)
    y[::5] = -100
    tensors = [t.clone().requires_grad_() for t in (h, w) + ((b,) if bias else ())]
    ref = _plain(*tensors[:2], tensors[2] if bias else None, y, softcap, scale)
    ref.backward()
    mine = [t.clone().detach().requires_grad_() for t in tensors]
    spec = HeadSpec(mine[1], mine[2] if bias else None, softcap, scale)
    loss, count = fused_linear_cross_entropy(mine[0], spec, y, chunk=chunk)
    (loss * 3.0).backward()  # backward scales the stored gradients by the incoming one
    assert count == int((y != -100).sum())
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    for a, r in zip(mine, tensors, strict=True):
        assert torch.allclose(a.grad, 3.0 * r.grad, rtol=1e-10, atol=1e-12 * float(r.grad.abs().max()))


def test_float32_model_head():
    """On a real (tiny) model in float32: loss and gradients against HF's ``model(..., labels=)``.

    float32 accumulation over V = ~400 logits and N = ~60 positions: relative error a few 1e-6; 1e-4 on the
    loss and 1e-4 of each gradient's norm are safe bounds on any BLAS."""
    from babelscope.models.arch import base_model

    model, tok = build_tiny("gemma3")
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog. " * 3)["input_ids"]])
    ref = model(input_ids=ids, labels=ids).loss * (ids.shape[1] - 1)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    hidden = base_model(model)(input_ids=ids).last_hidden_state[:, :-1]
    loss, count = fused_linear_cross_entropy(hidden, head_spec(model), ids[:, 1:], chunk=16)
    loss.backward()
    assert count == ids.shape[1] - 1
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4)
    for n, p in model.named_parameters():
        assert float((p.grad - ref_grads[n]).norm()) <= 1e-4 * float(ref_grads[n].norm()) + 1e-12, n


@pytest.mark.parametrize("fallback", [False, True])
def test_head_nll_equals_plain_cross_entropy(fallback):
    """The one head + loss (:func:`head_nll`) on a tiny float32 model, with ignored targets: the fused path (a
    plain linear head) and the fallback (a head with a forward hook, which the fused pass cannot take: the head's
    own forward in checkpointed chunks) both match the plain cross-entropy of materialised logits, in loss and in
    every parameter's gradient. Bounds as in test_float32_model_head (float32 sums over V ~ 400 and N ~ 60)."""
    from babelscope.models.arch import base_model, logits_from_hidden

    model, tok = build_tiny("gemma3")
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog. " * 3)["input_ids"]] * 2)
    targets = ids[:, 1:].clone()
    targets[0, ::4] = -100
    targets[1, :5] = -100

    hidden = base_model(model)(input_ids=ids).last_hidden_state[:, :-1]
    ref = plain_cross_entropy(logits_from_hidden(model, hidden), targets)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    handle = model.get_output_embeddings().register_forward_hook(lambda *a: None) if fallback else None
    try:
        assert (head_spec(model) is None) == fallback
        hidden = base_model(model)(input_ids=ids).last_hidden_state[:, :-1]
        loss, count = head_nll(model, hidden, targets, chunk=7)  # several chunks, the last one short
        loss.backward()
    finally:
        if handle is not None:
            handle.remove()
    assert count == int((targets != -100).sum())
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4)
    for n, p in model.named_parameters():
        assert float((p.grad - ref_grads[n]).norm()) <= 1e-4 * float(ref_grads[n].norm()) + 1e-12, n


def test_head_nll_takes_the_fused_path_bit_for_bit():
    """For a plain linear head :func:`head_nll` is exactly :func:`fused_linear_cross_entropy` (the numbers the
    engine and the training loop computed before they shared it)."""
    from babelscope.models.arch import base_model

    model, tok = build_tiny("gemma3")
    ids = torch.tensor([tok("Der schnelle braune Fuchs springt über den faulen Hund.")["input_ids"]])
    with torch.no_grad():
        hidden = base_model(model)(input_ids=ids).last_hidden_state[:, :-1]
    targets = ids[:, 1:].clone()
    targets[0, 0] = -100
    ours, n = head_nll(model, hidden, targets, chunk=5)
    fused, m = fused_linear_cross_entropy(hidden, head_spec(model), targets, 5)
    assert n == m and torch.equal(ours, fused)


def test_head_nll_of_no_targets_is_a_zero_graph_node():
    """Nothing to score (every target ignored): 0 with a graph through the head (DDP needs every parameter to
    get a gradient), on both paths."""
    from babelscope.models.arch import base_model

    model, tok = build_tiny("gemma3")
    ids = torch.tensor([tok("abc def")["input_ids"]])
    for fallback in (False, True):
        handle = model.get_output_embeddings().register_forward_hook(lambda *a: None) if fallback else None
        hidden = base_model(model)(input_ids=ids).last_hidden_state[:, :-1]
        loss, count = head_nll(model, hidden, torch.full(ids[:, 1:].shape, -100))
        loss.backward()
        if handle is not None:
            handle.remove()
        head = model.get_output_embeddings().weight
        assert count == 0 and float(loss.detach()) == 0.0 and head.grad is not None and not head.grad.any()
        model.zero_grad(set_to_none=True)
