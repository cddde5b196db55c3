"""Perplexity on a model partly on the disk: babelscope's engine vs a bare forward + cross-entropy loop, both on
the same Accelerate device map and the same windows.

The default model (Gemma 3 270M, float32) is loaded with ``--device-map sequential --max-memory cpu=900MiB
--offload-dir DIR``: the embedding (= the tied LM head) and the first blocks stay in memory, the other blocks are
read back from the disk at every forward by Accelerate's offload hooks, whose cost both loops pay. The windows,
batches and the bare loop are those of ``bench_ppl.py`` (``model(...).logits`` then ``cross_entropy``); the engine
runs the decoder and applies the head in chunks at the scored positions. Timing alternates the two (best of
``--repeats``); each one's peak memory (RSS sampled during the scoring, above the RSS after loading) is measured
in its own child process. Correctness: every window's loss from the engine must equal the float64 reference
from the same offloaded model's own logits to 1e-5 relative. Last line: ``ratio X`` = our tokens/s over the bare
loop's (target >= 1.0).

    python benchmarks/bench_offload.py [--max-memory cpu=900MiB] [--langs eng,fra,...] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from _common import PeakRss, machine, run_child
from bench_ppl import run_bare, run_ours, run_reference, windows_for


def setup(args):
    from babelscope.models import load_model
    from babelscope.models.engine import Engine

    model, tok, info = load_model(args.model, device_map="sequential", max_memory=args.max_memory,
                                  offload_dir=args.offload_dir)
    engine = Engine(model, tok, batch_size=args.batch_size, progress=False)
    return model, engine, windows_for(engine, args.langs, args.units, args.window), info


def child(args) -> None:
    import json

    model, engine, seqs, _ = setup(args)
    with PeakRss() as mem:
        run_ours(engine, seqs, args.batch_size) if args.child == "ours" else run_bare(model, engine, seqs,
                                                                                      args.batch_size)
    print(json.dumps({"peak_mib": mem.peak / 2**20, "after_load_mib": mem.base / 2**20}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-memory", default="cpu=900MiB")
    ap.add_argument("--offload-dir", default=None, help="default: a new temporary folder")
    ap.add_argument("--langs", default="eng,fra,rus,cmn-Hans")
    ap.add_argument("--units", type=int, default=1, help="UDHR articles per language")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.offload_dir = args.offload_dir or tempfile.mkdtemp(prefix="bench-offload-")
    if args.child:
        child(args)
        return 0
    print(machine())
    model, engine, seqs, info = setup(args)
    on_disk = sorted(k for k, v in info.device_map.items() if v == "disk")
    tokens = sum(n for _, n in seqs)
    print(f"model {args.model}  max memory {args.max_memory}  on disk: {len(on_disk)} of {len(info.device_map)} "
          f"map entries ({', '.join(on_disk[:3])}{' ...' if len(on_disk) > 3 else ''})")
    print(f"windows {len(seqs)}  tokens {tokens}  batch {args.batch_size}  threads {torch.get_num_threads()}")
    run_ours(engine, seqs[:1], args.batch_size)  # warm-up
    best = {"ours": float("inf"), "bare": float("inf")}
    losses = {}
    for _ in range(args.repeats):
        for name in ("ours", "bare"):
            start = time.perf_counter()
            losses[name] = (run_ours(engine, seqs, args.batch_size) if name == "ours"
                            else run_bare(model, engine, seqs, args.batch_size))
            best[name] = min(best[name], time.perf_counter() - start)
    reference = run_reference(model, engine, seqs, args.batch_size)
    rel = lambda xs: max(abs(a - b) / abs(b) for a, b in zip(xs, reference, strict=True))  # noqa: E731
    worst = rel(losses["ours"])
    print(f"max relative difference per window vs float64 reference: ours {worst:.2e}  "
          f"bare (float32 cross-entropy) {rel(losses['bare']):.2e}")
    memory = {}
    for name in ("ours", "bare"):
        memory[name] = run_child([sys.executable, __file__, "--child", name, "--model", args.model, "--max-memory",
                                  args.max_memory, "--offload-dir", tempfile.mkdtemp(prefix="bench-offload-"),
                                  "--langs", args.langs, "--units", str(args.units), "--window", str(args.window),
                                  "--batch-size", str(args.batch_size)])
    for name in ("ours", "bare"):
        extra = memory[name]["peak_mib"] - memory[name]["after_load_mib"]
        print(f"{name:5s} {best[name]:7.2f} s  {tokens / best[name]:8.1f} tokens/s  peak RSS "
              f"{memory[name]['peak_mib']:7.0f} MiB  (+{extra:.0f} MiB over the loaded model)")
    if worst > 1e-5:
        print(f"FAIL: losses differ by {worst:.2e} > 1e-5 relative", file=sys.stderr)
        return 1
    print(f"ratio {best['bare'] / best['ours']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
