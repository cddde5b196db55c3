"""The engine split over 2 CPU processes (gloo on loopback) gives the single-process results."""

from __future__ import annotations

import json
import os

import pytest

from conftest import SENTENCES, build_tiny, launch_two_processes
from numerics import TINY_BACKWARD, TINY_FORWARD, assert_close_scaled

TEXTS = [" ".join(SENTENCES[i:] * 2) for i in range(len(SENTENCES))]


def _worker():
    import torch

    from babelscope.models.engine import Engine, all_reduce_grads

    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, progress=False)
    assert engine.state is not None and engine.state.num_processes == 2
    scores = [s.nll for s in engine.rolling_loglikelihood(TEXTS, window=24)]
    seqs = [w for t in TEXTS for w in engine.windows(engine.encode([t])[0], 24)]
    model.zero_grad()
    engine.backward(seqs, normalizer=sum(n for _, n in seqs))
    params = [p for p in model.parameters()]
    all_reduce_grads(params)
    grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).tolist()
    if engine.is_main:
        with open(os.environ["BABELSCOPE_TEST_OUT"], "w") as fh:
            json.dump({"scores": scores, "grad": grad}, fh)


def test_two_processes_match_one(tmp_path):
    import torch

    from babelscope.models.engine import Engine

    out = tmp_path / "dist.json"
    launch_two_processes("test_distributed", "_worker", {"BABELSCOPE_TEST_OUT": str(out)})
    got = json.loads(out.read_text())

    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=2, progress=False)
    assert engine.state is None
    single = [s.nll for s in engine.rolling_loglikelihood(TEXTS, window=24)]
    seqs = [w for t in TEXTS for w in engine.windows(engine.encode([t])[0], 24)]
    model.zero_grad()
    engine.backward(seqs, normalizer=sum(n for _, n in seqs))
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert got["scores"] == pytest.approx(single, rel=TINY_FORWARD)  # positive NLL sums
    # every parameter's gradient in one vector: 2 partial sums all-reduced vs one sum, float32 rounding
    assert_close_scaled(torch.tensor(got["grad"]), grad, TINY_BACKWARD)
