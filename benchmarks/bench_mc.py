"""Multiple-choice scoring: babelscope's engine vs lm-evaluation-harness's HFLM on the same loaded model.

Both sides score the same items of XCOPA (Italian, 0-shot), a 5-shot C-Eval subject and a 5-shot MMLU subject:
the harness's requests come from its own task files (``tasks/xcopa``, ``tasks/ceval``, ``tasks/mmlu/default``)
on the shared data (C-Eval is non-commercial: read from ../shared/data at run time, never copied); ours from
babelscope's task YAMLs (the prompts must be identical). The engine runs a prefix shared by a subject's items
(the description and the five solved examples) once and each item from a copy of its KV cache; the share of
the input tokens that prefix holds is printed per subject. Batch size 8, the default model loaded once (load
time excluded), each side timed on its log-likelihood calls only after a one-batch warm-up. The harness is
timed as users run it (float32 log_softmax); agreement is checked against the harness run again with
``softmax_dtype=float64`` (its float32 log_softmax over a 262k vocabulary is itself off by ~1e-4 nats per token).
Exits 1, printing no ratio, if a prompt differs or a per-item log-likelihood differs by more than 1e-4.

    python benchmarks/bench_mc.py [--model gemma-3-270m] [--tasks xcopa,ceval,mmlu] [--mmlu-subject world_religions]
                                  [--mmlu-items 20] [--ceval-subject physician] [--ceval-items 20] [--xcopa-items 50]

The default sizes take about 5-6 minutes on 2 busy CPU cores: the harness and its float64 reference apply the
262k-vocabulary head at every input position (about 0.3 GFLOP per position), which dominates the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import machine


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(name: str, benchmark: str, subset: str, shots: int, items: int, model, tok, lm, reference) -> float:
    from babelscope.evaluate.benchmarks import build_items, load_task
    from babelscope.evaluate.harness import harness_loglikelihoods, harness_requests, harness_task
    from babelscope.models.engine import Engine, prefix_groups

    with tempfile.TemporaryDirectory() as tmp:
        instances = harness_requests(harness_task(benchmark, subset, Path(tmp), shots), limit=items)
    instances.sort(key=lambda i: (i.doc_id, i.idx))
    ours = [r for it in build_items(load_task(benchmark), subset, shots, items) for r in it.requests]
    if ours != [tuple(i.args) for i in instances]:
        print(f"{name}: prompts differ from lm-evaluation-harness's")
        sys.exit(1)
    engine = Engine(model, tok, batch_size=8, progress=False)
    engine.loglikelihood(ours[-8:])  # warm-up; no cache directory, so the timed run recomputes everything
    harness_loglikelihoods(lm, instances[-8:])
    engine = Engine(model, tok, batch_size=8, progress=False)
    mine, t_ours = timed(lambda: [s.logprob for s in engine.loglikelihood(ours)])
    seqs = engine._sequences(ours)
    groups = prefix_groups(list(range(len(seqs))), seqs)
    rows = sum(len(g.rows) for g in groups)
    inputs = sum(len(r) for g in groups for r in g.rows)  # one row per distinct input, as the harness runs them
    once = sum(g.prefix * len(g.rows) for g in groups)
    longest = max(groups, key=lambda g: g.prefix * len(g.rows))
    print(f"{name}: {rows} distinct input rows, {inputs} input tokens; {len(groups)} prefix groups, the largest "
          f"{longest.prefix} tokens x {len(longest.rows)} rows; {once / inputs:.1%} of the input tokens run once "
          f"per group; tokens through the body {engine.stats['body_tokens']} of {engine.stats['input_tokens']}")
    theirs, t_harness = timed(lambda: harness_loglikelihoods(lm, instances))
    exact = harness_loglikelihoods(reference, instances)  # untimed: the harness with a float64 log_softmax
    diff = max(abs(a - b) for a, b in zip(mine, exact, strict=True))
    fp32 = max(abs(a - b) for a, b in zip(theirs, exact, strict=True))
    print(f"{name}: {len(instances)} requests, {items} items; max |ll diff| babelscope vs harness (float64 "
          f"softmax) {diff:.2e}; harness default (float32 softmax) vs float64 {fp32:.2e}")
    print(f"{name}: babelscope {t_ours:.2f} s, lm-evaluation-harness {t_harness:.2f} s")
    if diff > 1e-4:
        print(f"{name}: per-item log-likelihoods differ by more than 1e-4")
        sys.exit(1)
    return t_harness / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="model spec (a named model, a directory ...)")
    parser.add_argument("--tasks", default="xcopa,ceval,mmlu", help="which comparisons to run (mmlu is the target)")
    parser.add_argument("--mmlu-subject", default="world_religions")
    parser.add_argument("--mmlu-items", type=int, default=20)
    parser.add_argument("--ceval-subject", default="physician")
    parser.add_argument("--ceval-items", type=int, default=20)
    parser.add_argument("--xcopa-items", type=int, default=50)
    args = parser.parse_args()
    print(machine(), flush=True)

    import torch

    from babelscope.evaluate.harness import harness_model
    from babelscope.models import load_model

    tasks = set(args.tasks.split(","))
    model, tok, info = load_model(args.model)
    lm = harness_model(model, tok, batch_size=8)  # timed: the harness as users run it
    reference = harness_model(model, tok, batch_size=1, softmax_dtype="float64")  # agreement reference
    print(f"model {info.name} ({info.parameters:,} parameters), torch threads {torch.get_num_threads()}")
    if "xcopa" in tasks:
        xcopa = compare("xcopa it 0-shot", "xcopa", "it", 0, args.xcopa_items, model, tok, lm, reference)
        print(f"ratio xcopa {xcopa:.2f}")
    if "ceval" in tasks:
        ceval = compare(f"ceval {args.ceval_subject} 5-shot", "ceval", args.ceval_subject, 5, args.ceval_items, model,
                        tok, lm, reference)
        print(f"ratio ceval {ceval:.2f}")
    mmlu = compare(f"mmlu {args.mmlu_subject} 5-shot", "mmlu", args.mmlu_subject, 5, args.mmlu_items, model, tok, lm,
                   reference)
    print(f"ratio {mmlu:.2f}")


if __name__ == "__main__":
    main()
