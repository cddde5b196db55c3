"""Perplexity throughput: babelscope's engine vs a bare forward + cross-entropy loop over the same batches.

Both score the same BOS-prefixed 512-token windows of the embedded UDHR sample in the same length-sorted
batches. The bare loop is the plain way: ``model(input_ids, attention_mask).logits`` (B x T x V float32) and
``cross_entropy``; the engine runs the decoder and applies the LM head in chunks at the scored positions.
Timing alternates the two in this process (best of ``--repeats``); each one's peak memory (RSS sampled
during the scoring, above the RSS after loading) is measured in its own child process.

Correctness: every window's loss from the engine must equal, to 1e-5 relative, the loss computed in float64
from the same model's own logits (an untimed pass). The bare loop's float32 cross-entropy over a 262k
vocabulary itself carries rounding of a few 1e-5 (its log-sum-exp adds 262k float32 terms), so its distance
to the float64 reference is printed too. Exits non-zero, printing no ratio, on a mismatch.
Last line: ``ratio X`` = our tokens/s over the bare loop's.

    python benchmarks/bench_ppl.py [--model gemma-3-270m] [--langs eng,fra,...] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from _common import PeakRss, run_child

LANGS = "eng,fra,deu,rus,cmn-Hans,arb,hin,jpn"


def windows_for(engine, langs: str, units: int, window: int) -> list[tuple[list[int], int]]:
    from babelscope.data import open_corpus, parse_languages

    corpus = open_corpus("udhr-sample")
    texts = [u.text for lang in parse_languages(langs) for u in corpus.units(lang.code)[:units]]
    return [w for ids in engine.encode(texts) for w in engine.windows(ids, window)]


def batches(seqs, batch_size):
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_ours(engine, seqs, batch_size) -> list[float]:
    out = [0.0] * len(seqs)
    for batch in batches(seqs, batch_size):
        with torch.inference_mode():
            scored = engine._score_batch([[seqs[i]] for i in batch])  # one request per context group
        for i, (s,) in zip(batch, scored, strict=True):
            out[i] = -s.logprob
    return out


def run_bare(model, engine, seqs, batch_size) -> list[float]:
    out = [0.0] * len(seqs)
    for batch in batches(seqs, batch_size):
        ids, mask = engine._batch_inputs([seqs[i] for i in batch])
        labels = torch.full_like(ids, -100)
        for row, i in enumerate(batch):
            seq = seqs[i][0]
            labels[row, : len(seq) - 1] = torch.tensor(seq[1:])
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            nll = F.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none").sum(1)
        for row, i in enumerate(batch):
            out[i] = float(nll[row])
    return out


def run_reference(model, engine, seqs, batch_size) -> list[float]:
    """Untimed: the bare loop's logits, cross-entropy in float64."""
    out = [0.0] * len(seqs)
    for batch in batches(seqs, batch_size):
        ids, mask = engine._batch_inputs([seqs[i] for i in batch])
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for row, i in enumerate(batch):
            seq = seqs[i][0]
            out[i] = float(
                F.cross_entropy(logits[row, : len(seq) - 1].double(), torch.tensor(seq[1:]), reduction="sum")
            )
    return out


def setup(args):
    from babelscope.models import load_model
    from babelscope.models.engine import Engine

    model, tok, _ = load_model(args.model)
    engine = Engine(model, tok, batch_size=args.batch_size, progress=False)
    return model, engine, windows_for(engine, args.langs, args.units, args.window)


def child(args) -> None:
    model, engine, seqs = setup(args)
    with PeakRss() as mem:
        (
            run_ours(engine, seqs, args.batch_size)
            if args.child == "ours"
            else run_bare(model, engine, seqs, args.batch_size)
        )
    print(json.dumps({"peak_mib": mem.peak / 2**20, "after_load_mib": mem.base / 2**20}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--units", type=int, default=2, help="UDHR articles per language")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    model, engine, seqs = setup(args)
    tokens = sum(n for _, n in seqs)
    print(
        f"model {args.model}  windows {len(seqs)}  tokens {tokens}  batch {args.batch_size}  "
        f"threads {torch.get_num_threads()}"
    )
    run_ours(engine, seqs[:2], args.batch_size)  # warm-up
    best = {"ours": float("inf"), "bare": float("inf")}
    losses = {}
    for _ in range(args.repeats):
        for name in ("ours", "bare"):
            start = time.perf_counter()
            losses[name] = (
                run_ours(engine, seqs, args.batch_size)
                if name == "ours"
                else run_bare(model, engine, seqs, args.batch_size)
            )
            best[name] = min(best[name], time.perf_counter() - start)
    reference = run_reference(model, engine, seqs, args.batch_size)
    rel = lambda xs: max(abs(a - b) / abs(b) for a, b in zip(xs, reference, strict=True))  # noqa: E731
    worst = rel(losses["ours"])
    print(
        f"max relative difference per window vs float64 reference: ours {worst:.2e}  "
        f"bare (float32 cross-entropy) {rel(losses['bare']):.2e}"
    )
    memory = {}
    for name in ("ours", "bare"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--model",
            args.model,
            "--langs",
            args.langs,
            "--units",
            str(args.units),
            "--window",
            str(args.window),
            "--batch-size",
            str(args.batch_size),
        ]
        memory[name] = run_child(cmd)
    for name in ("ours", "bare"):
        extra = memory[name]["peak_mib"] - memory[name]["after_load_mib"]
        print(
            f"{name:5s} {best[name]:7.2f} s  {tokens / best[name]:8.1f} tokens/s  "
            f"peak RSS {memory[name]['peak_mib']:7.0f} MiB  (+{extra:.0f} MiB over the loaded model)"
        )
    if worst > 1e-5:
        print(f"FAIL: losses differ by {worst:.2e} > 1e-5 relative", file=sys.stderr)
        return 1
    over = {k: v["peak_mib"] - v["after_load_mib"] for k, v in memory.items()}
    print(f"scoring memory ratio (ours/bare, above the loaded model) {over['ours'] / max(over['bare'], 1):.3f}")
    print(f"ratio {best['bare'] / best['ours']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
