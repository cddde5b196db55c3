"""Activation statistics throughput: babelscope's counting hooks vs a bare forward with a plain hook that stores
the activations and counts afterwards, over the same batches.

Both read the same BOS-prefixed windows of the embedded UDHR sample in the same length-sorted batches.
Ours (:func:`babelscope.neurons.lape.count_activations`): the decoder without its LM head, a forward hook on each
FFN activation module that adds ``(act > 0)`` over the batch's real tokens into one integer row per neuron; nothing
is kept. The bare way: ``model(input_ids, attention_mask)`` (the whole model, logits included) with a forward hook
on the same modules that stores each activation (copied to CPU), then the counts over the stored tensors.
Timing alternates the two in this process (best of ``--repeats``); each one's peak memory (RSS above the RSS
after loading) is measured in its own child process.

Correctness: both counts must be equal (integers over the same float values); exits non-zero, printing no ratio,
on a mismatch. Last line: ``ratio X`` = our tokens/s over the bare loop's.

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


def run_ours(model, ffns, seqs, batch_size, pad_id) -> torch.Tensor:
    from babelscope.neurons.lape import count_activations

    return count_activations(model, ffns, seqs, batch_size, "act", pad_id)[0]


def run_bare(model, ffns, seqs, batch_size, pad_id) -> torch.Tensor:
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    stored: list[list[torch.Tensor]] = [[] for _ in ffns]
    masks = []
    handles = [f.act.register_forward_hook(lambda m, a, o, i=i: stored[i].append(o.detach().cpu().clone()))
               for i, f in enumerate(ffns)]
    try:
        for start in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[start : start + batch_size]]
            width = max(map(len, batch))
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            counted = mask.bool()
            counted[:, 0] = False
            masks.append(counted)
    finally:
        for h in handles:
            h.remove()
    counts = torch.zeros(len(ffns), ffns[0].width, dtype=torch.int64)
    for i, acts in enumerate(stored):
        for act, mask in zip(acts, masks, strict=True):
            counts[i] += (act[mask] > 0).sum(dim=0)
    return counts


def child(args) -> None:
    model, ffns, seqs, pad = setup(args)
    fn = run_ours if args.child == "ours" else run_bare
    with PeakRss() as mem:
        fn(model, ffns, seqs, args.batch_size, pad)
    print(json.dumps({"peak_mib": mem.peak / 2**20, "after_load_mib": mem.base / 2**20}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--max-tokens", type=int, default=512, help="tokens per language")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    model, ffns, seqs, pad = setup(args)
    tokens = sum(len(s) - 1 for s in seqs)
    print(f"model {args.model}  windows {len(seqs)}  tokens {tokens}  batch {args.batch_size}  "
          f"threads {torch.get_num_threads()}")
    run_ours(model, ffns, seqs[:2], args.batch_size, pad)  # warm-up
    best = {"ours": float("inf"), "bare": float("inf")}
    counts = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", run_ours), ("bare", run_bare)):
            start = time.perf_counter()
            counts[name] = fn(model, ffns, seqs, args.batch_size, pad)
            best[name] = min(best[name], time.perf_counter() - start)
    if not torch.equal(counts["ours"], counts["bare"]):
        print(f"MISMATCH: {int((counts['ours'] != counts['bare']).sum())} neurons differ")
        return 1
    print(f"counts equal: {int(counts['ours'].sum())} positive activations over {counts['ours'].numel()} neurons")
    memory = {}
    for name in ("ours", "bare"):
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--langs", args.langs,
               "--max-tokens", str(args.max_tokens), "--window", str(args.window),
               "--batch-size", str(args.batch_size)]
        memory[name] = run_child(cmd)
    for name in ("ours", "bare"):
        extra = memory[name]["peak_mib"] - memory[name]["after_load_mib"]
        print(f"{name:5s} {best[name]:7.2f} s  {tokens / best[name]:8.1f} tokens/s  peak RSS "
              f"{memory[name]['peak_mib']:7.0f} MiB  (+{extra:.0f} MiB over the loaded model)")
    print(f"ratio {best['bare'] / best['ours']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
