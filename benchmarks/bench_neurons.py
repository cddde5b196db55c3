"""Activation statistics throughput: babelscope's counting hooks vs a bare forward with a plain hook that stores
the activations and counts afterwards, over the same batches.

Both read the same BOS-prefixed windows of the embedded UDHR sample in the same length-sorted batches.
Ours (:func:`babelscope.neurons.lape.count_activations`): the decoder without its LM head, stopped after the last
FFN activation, a forward hook on each FFN activation module that adds ``(act > 0)`` over each row's real tokens
into one integer row per neuron; nothing is kept. Two bare loops, each with a forward hook on the same modules
that stores each activation (copied to CPU), then the counts over the stored tensors:

* ``bare``: ``model(input_ids, attention_mask)``, the whole model as users call it (full-vocabulary logits
  included);
* ``bare-body``: ``model.model(input_ids, attention_mask)``, the decoder without its LM head (the plain way not
  to compute logits nobody reads; the fair baseline for the counting itself).

Timing alternates the three batch by batch in this process: each batch's forward is timed as the best of
``--repeats`` for each side, then each bare loop's counting afterwards (best of ``--repeats``), so a burst of load
on a shared machine hits all three alike. Each one's peak memory (RSS above the RSS after loading) is measured
over one whole pass in its own child process.

Correctness: all counts must be equal (integers over the same float values); exits non-zero, printing no ratio,
on a mismatch. Each bare loop's ratio is printed; the last line ``ratio X`` is our tokens/s over the *faster*
bare loop's (``bare-body`` unless the machine says otherwise).

    python benchmarks/bench_neurons.py [--model gemma-3-270m] [--langs eng,fra,...] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import PeakRss, run_child

LANGS = "eng,fra,deu,rus,cmn-Hans,arb,hin,jpn"


def setup(args):
    from babelscope.data import open_corpus, parse_languages
    from babelscope.models import load_model
    from babelscope.models.engine import Engine
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.neurons.lape import language_windows

    model, tok, _ = load_model(args.model)
    engine = Engine(model, tok, progress=False)
    corpus = open_corpus("udhr-sample")
    seqs = []
    for lang in parse_languages(args.langs):
        seqs += language_windows(engine, [u.text for u in corpus.units(lang.code)], args.window, args.max_tokens)
    return model, ffn_modules(model), seqs, engine.pad_id


def make_batches(seqs: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """The batches both sides run: windows sorted longest first, ``batch_size`` at a time (as
    :func:`~babelscope.neurons.lape.count_activations` forms them)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    return [[seqs[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def ours_batch(model, ffns, batch, pad_id) -> torch.Tensor:
    """Our counts of one batch: :func:`count_activations` over exactly these windows (one forward)."""
    from babelscope.neurons.lape import count_activations

    return count_activations(model, ffns, batch, len(batch), "act", pad_id)[0]


class Bare:
    """The plain way: a forward hook on each FFN activation module stores its output (copied to CPU); the counts
    are taken afterwards over the stored tensors. ``body``: call ``model.model`` (no LM head) instead of
    ``model``."""

    def __init__(self, model, ffns, pad_id: int, body: bool = False):
        from babelscope.models.arch import base_model

        self.forward = base_model(model) if body else model
        self.ffns, self.pad_id = ffns, pad_id
        self.stored: dict[int, list[torch.Tensor]] = {}  # batch number -> one activation per layer
        self.masks: dict[int, torch.Tensor] = {}

    def run_batch(self, b: int, batch: list[list[int]]) -> None:
        width = max(map(len, batch))
        ids = torch.tensor([s + [self.pad_id] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        acts: list[torch.Tensor] = []
        handles = [f.act.register_forward_hook(lambda m, a, o: acts.append(o.detach().cpu().clone()))
                   for f in self.ffns]
        try:
            with torch.inference_mode():
                self.forward(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        counted = mask.bool()
        counted[:, 0] = False
        self.stored[b], self.masks[b] = acts, counted

    def count(self) -> torch.Tensor:
        counts = torch.zeros(len(self.ffns), self.ffns[0].width, dtype=torch.int64)
        for b, acts in self.stored.items():
            for i, act in enumerate(acts):
                counts[i] += (act[self.masks[b]] > 0).sum(dim=0)
        return counts


NAMES = ("ours", "bare", "bare-body")


def run_all(name, model, ffns, batches, pad_id) -> torch.Tensor:
    """One whole pass of ``name`` over the batches (the memory measurement)."""
    if name == "ours":
        return sum(ours_batch(model, ffns, batch, pad_id) for batch in batches)
    bare = Bare(model, ffns, pad_id, body=name == "bare-body")
    for b, batch in enumerate(batches):
        bare.run_batch(b, batch)
    return bare.count()


def child(args) -> None:
    model, ffns, seqs, pad = setup(args)
    batches = make_batches(seqs, args.batch_size)
    with PeakRss() as mem:
        run_all(args.child, model, ffns, batches, pad)
    print(json.dumps({"peak_mib": mem.peak / 2**20, "after_load_mib": mem.base / 2**20}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--max-tokens", type=int, default=512, help="tokens per language")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    model, ffns, seqs, pad = setup(args)
    tokens = sum(len(s) - 1 for s in seqs)
    print(f"model {args.model}  windows {len(seqs)}  tokens {tokens}  batch {args.batch_size}  "
          f"threads {torch.get_num_threads()}")
    batches = make_batches(seqs, args.batch_size)
    ours_batch(model, ffns, batches[-1], pad)  # warm-up
    loops = {name: Bare(model, ffns, pad, body=name == "bare-body") for name in NAMES[1:]}
    # per batch, the three forwards one after another, each batch's time the best of --repeats; then each bare
    # loop's counting afterwards, best of --repeats: a burst of load on the shared machine hits all three alike
    times = {name: [float("inf")] * len(batches) for name in NAMES}
    after = {name: float("inf") for name in NAMES[1:]}
    ours_counts = [torch.zeros(0)] * len(batches)
    for r in range(args.repeats):
        for b, batch in enumerate(batches):
            for name in NAMES[r % 3 :] + NAMES[: r % 3]:  # who goes first turns with each repeat
                start = time.perf_counter()
                if name == "ours":
                    ours_counts[b] = ours_batch(model, ffns, batch, pad)
                else:
                    loops[name].run_batch(b, batch)
                times[name][b] = min(times[name][b], time.perf_counter() - start)
        for name in NAMES[1:]:
            start = time.perf_counter()
            loops[name].count()
            after[name] = min(after[name], time.perf_counter() - start)
    best = {name: sum(times[name]) + after.get(name, 0.0) for name in NAMES}
    counts = {"ours": sum(ours_counts), **{name: loops[name].count() for name in NAMES[1:]}}
    del loops
    for name in NAMES[1:]:
        if not torch.equal(counts["ours"], counts[name]):
            print(f"MISMATCH with {name}: {int((counts['ours'] != counts[name]).sum())} neurons differ")
            return 1
    print(f"counts equal: {int(counts['ours'].sum())} positive activations over {counts['ours'].numel()} neurons")
    memory = {}
    for name in NAMES:
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--langs", args.langs,
               "--max-tokens", str(args.max_tokens), "--window", str(args.window),
               "--batch-size", str(args.batch_size)]
        memory[name] = run_child(cmd)
    for name in NAMES:
        extra = memory[name]["peak_mib"] - memory[name]["after_load_mib"]
        counting = f"  (of which {after[name]:.2f} s counting afterwards)" if name in after else ""
        print(f"{name:9s} {best[name]:7.2f} s  {tokens / best[name]:8.1f} tokens/s  peak RSS "
              f"{memory[name]['peak_mib']:7.0f} MiB  (+{extra:.0f} MiB over the loaded model){counting}")
    for name in ("bare", "bare-body"):
        print(f"ratio vs {name}: {best[name] / best['ours']:.2f}")
    print(f"ratio {min(best['bare'], best['bare-body']) / best['ours']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
