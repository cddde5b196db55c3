"""Word-vector extraction vs a bare forward that returns hidden states without the LM head, same batches.

Ours: :func:`babelscope.syntax.represent.extract_language` (``Engine.hidden_states`` with capture hooks that stop
after the deepest requested layer, subword-to-word pooling, memory-mapped per-layer shards written to disk).
Bare: what a user would write: ``model.base_model(ids, mask, output_hidden_states=True)`` over the same
sentences in the same longest-first batches, hidden states copied to CPU, nothing pooled or written. Each setup
runs in its own child process (the fastest of ``--repeats`` passes counts; peak memory is that child's peak
RSS, VmHWM reset after loading the model).
Run with every layer (no early stop: the hooks' and pooling's cost) and with the middle layer.
Memory: our peak RSS with every layer at two corpus sizes (``--sentences`` and ``--large``, English PUD from
``--treebank``): the store is written batch by batch, so the peak must not grow with the corpus.

Target: throughput >= 0.9 of the bare forward. Last line: ``ratio X`` = our sentences/s over the bare
forward's (all runs together).

    python benchmarks/bench_extract.py [--model gemma-3-270m] [--sentences 48] [--large 192] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import reset_peak, run_child, status_bytes


def child(setup: str, layers_spec: str, args) -> dict:
    import torch

    from babelscope.data.ud import load_treebanks
    from babelscope.models import load_model
    from babelscope.models.arch import base_model
    from babelscope.models.engine import Engine
    from babelscope.syntax.represent import extract_language
    from babelscope.syntax.steps import parse_layers

    torch.manual_seed(0)
    model, tok, info = load_model(args.model)
    sentences = load_treebanks(args.treebank, "en", args.sentences)["eng"]
    layers = parse_layers(layers_spec, info.layers)
    engine = Engine(model, tok, batch_size=args.batch_size, progress=False)
    reset_peak()
    times = []
    for _ in range(args.repeats):  # the fastest of a few passes: the machine may be shared
        start = time.perf_counter()
        if setup == "ours":
            with tempfile.TemporaryDirectory() as tmp:
                extract_language(engine, sentences, layers, "last", Path(tmp) / "eng", {"lang": "eng"})
        else:
            texts = [s.text for s in sentences]
            enc = tok(texts, add_special_tokens=True)
            order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
            for b in range(0, len(order), args.batch_size):
                batch = order[b:b + args.batch_size]
                seqs = [(list(enc["input_ids"][i]) + [engine.pad_id], 0) for i in batch]
                ids, mask = engine._batch_inputs(seqs)
                with torch.inference_mode():
                    out = base_model(model)(input_ids=ids, attention_mask=mask, use_cache=False,
                                            output_hidden_states=True)
                    _ = [out.hidden_states[layer].float().cpu() for layer in layers]
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "sentences": len(sentences), "peak_rss": status_bytes("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sentences", type=int, default=48)
    parser.add_argument("--large", type=int, default=192, help="The larger corpus of the memory runs.")
    parser.add_argument("--treebank", default="pud", help="pud (1000 sentences, ../shared/data) or pud-sample (60).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per setup (the fastest counts).")
    parser.add_argument("--child", nargs=2, metavar=("SETUP", "LAYERS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    def launch(setup: str, layers: str, sentences: int, repeats: int) -> dict:
        cmd = [sys.executable, __file__, "--model", args.model, "--sentences", str(sentences), "--treebank",
               args.treebank, "--batch-size", str(args.batch_size), "--repeats", str(repeats), "--child", setup,
               layers]
        return run_child(cmd)

    peaks = {}
    for n in (args.sentences, args.large):  # memory: one pass each, every layer
        peaks[n] = launch("ours", "all", n, 1)["peak_rss"]
        print(f"memory: {n} sentences, every layer: peak RSS {peaks[n] / 2**20:.0f} MiB", flush=True)
    print(f"memory: peak at {args.large} / at {args.sentences} sentences = "
          f"{peaks[args.large] / peaks[args.sentences]:.3f} (flat: 1.0)")
    ours_total = bare_total = 0.0
    for layers in ("all", "middle"):
        results = {}
        for setup in ("bare", "ours"):
            results[setup] = launch(setup, layers, args.sentences, args.repeats)
            r = results[setup]
            print(f"layers={layers:6s} {setup:4s}: {r['sentences'] / r['seconds']:.2f} sentences/s "
                  f"({r['seconds']:.1f} s), peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)
        ours_total += results["ours"]["seconds"]
        bare_total += results["bare"]["seconds"]
        speed = results["bare"]["seconds"] / results["ours"]["seconds"]
        print(f"layers={layers}: throughput ours / bare = {speed:.3f}")
    print(f"ratio {bare_total / ours_total:.3f}")


if __name__ == "__main__":
    main()
