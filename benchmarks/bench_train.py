"""Training throughput and peak memory: our loop (``babelscope.transfer.loop.train``) vs a bare PyTorch loop.

Bare: the loop a user would write: ``loss = model(input_ids, labels=input_ids).loss`` (the full batch x sequence x
vocabulary logits), ``loss.backward()``, gradient clipping, ``AdamW.step()``. Ours: the same model, the same
batches (packed blocks, same order), the same AdamW settings and clipping, through Accelerate with the fused
chunked head + loss. To price freezing, a third child runs ours without and with a random 1% region of the
block weights frozen (gradient masking, decay exclusion, restore), in turn, ``--rounds`` times each: on a CPU
the optimizer step alone varies by 2x from step to step, and the two setups in separate processes came out
+4% or +14% apart depending on which ran first, so the comparison is made within one process; the freezing
operations themselves are timed inside it. Each setup runs in its own child process; its peak memory is the child's peak
RSS (VmHWM, reset after the model is loaded), or the CUDA allocator's peak on a GPU.
Timings are per optimizer step, the median after ``--warmup`` untimed steps.

Targets: ratio >= 1.0 at a lower peak memory; freezing costs < 3% of a step. Last line: ``ratio X`` = our
tokens/s over the bare loop's.

    python benchmarks/bench_train.py [--model gemma-3-270m] [--seq-len 256] [--batch 4] [--steps 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, reset_peak, run_child, status_bytes


def _peak(torch) -> int:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else status_bytes("VmHWM")


def _batches(tok, args):
    """``steps + warmup`` batches of ``batch`` blocks of ``seq_len`` tokens of UDHR text (several languages)."""
    from babelscope.data import open_corpus
    from babelscope.transfer.pretrain import pack

    corpus = open_corpus(args.corpus)
    texts = [u.text for lang in args.langs.split(",") for u in corpus.units(lang)]
    blocks = pack(tok(texts, add_special_tokens=False)["input_ids"], args.seq_len, tok.bos_token_id,
                  tok.eos_token_id)
    need = (args.steps + args.warmup) * args.batch
    if len(blocks) < need:
        raise SystemExit(f"only {len(blocks)} blocks of {args.seq_len} tokens; lower --steps or --seq-len")
    return blocks[:need]


def child(setup: str, args) -> dict:
    import torch

    from babelscope.models import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(args.model, device=args.device)
    blocks = _batches(tok, args)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    tokens_per_step = args.batch * (args.seq_len - 1)
    if setup == "bare":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        times = []
        for s in range(args.steps + args.warmup):
            ids = torch.as_tensor(blocks[s * args.batch : (s + 1) * args.batch], device=device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        step_s = statistics.median(times[args.warmup :])
    else:
        from babelscope.transfer.loop import LoopConfig, RegionFreeze, read_metrics, train

        spent: list[float] = []
        for name in ("snapshot", "zero_grads", "decay", "restore"):  # time the freezing operations themselves
            def timed_op(self, *a, _op=getattr(RegionFreeze, name), **k):
                t = time.perf_counter()
                _op(self, *a, **k)
                spent.append(time.perf_counter() - t)

            setattr(RegionFreeze, name, timed_op)
        examples = [{"input_ids": b.tolist(), "labels": b.tolist()} for b in blocks]
        cfg = LoopConfig(lr=1e-5, micro_batch_size=args.batch, shuffle=False, schedule="constant", progress=False,
                         save_model=False, max_grad_norm=1.0, logit_chunk=args.logit_chunk)

        def steps(freeze) -> list[float]:
            with tempfile.TemporaryDirectory() as out:
                train(model, tok, examples, cfg, out, freeze=freeze)
                rows = read_metrics(Path(out) / "metrics.jsonl")
            seconds = [rows[0]["seconds"]] + [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(rows)]
            return seconds[args.warmup :]

        if setup == "ours":
            times = steps(None)
            step_s = statistics.median(times)
        else:  # "freeze": runs without and with a frozen region in turn, in this one process
            from babelscope.models.params import scored_parameters
            from babelscope.regions.select import region_mask

            params = scored_parameters(model)
            masks = region_mask({n: torch.zeros(p.shape) for n, p in params.items()}, 0.01, "random", "tensor")
            plain, frozen = [], []
            for _ in range(args.rounds):
                plain += steps(None)
                frozen += steps(masks)
            ops = sum(spent) / (args.rounds * (args.steps + args.warmup))  # per step
            return {"setup": setup, "plain_s": statistics.median(plain), "frozen_s": statistics.median(frozen),
                    "ops_s": ops, "steps": len(frozen)}
    return {"setup": setup, "step_s": step_s, "min_step_s": min(times[args.warmup :] if setup == "bare" else times),
            "tokens_per_s": tokens_per_step / step_s, "peak_bytes": _peak(torch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--corpus", default="udhr")
    parser.add_argument("--langs", default="eng,fra,deu,vie,rus,cmn-Hans")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="runs without and with freezing, in turn")
    parser.add_argument("--logit-chunk", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    print(machine(), flush=True)
    results = {}
    for setup in ("bare", "ours", "freeze"):
        results[setup] = r = run_child([sys.executable, __file__, *sys.argv[1:], "--child", setup])
        if setup == "freeze":
            print(f"freeze       {r['steps']} steps each, in turn: step {r['plain_s']:.3f} s without, "
                  f"{r['frozen_s']:.3f} s with a 1% region frozen", flush=True)
            continue
        print(f"{setup:12s} step {r['step_s']:.3f} s (fastest {r['min_step_s']:.3f} s)  "
              f"{r['tokens_per_s']:.1f} tokens/s  peak {r['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    bare, ours, frozen = results["bare"], results["ours"], results["freeze"]
    print(f"batch {args.batch} x {args.seq_len} tokens, {args.steps} timed steps after {args.warmup}, model "
          f"{args.model}")
    print(f"peak memory ours / bare: {ours['peak_bytes'] / bare['peak_bytes']:.3f} (target < 1)")
    print(f"freezing a 1% region: its operations (snapshot, gradient zeroing, decay, restore) take "
          f"{frozen['ops_s']:.3f} s a step = {frozen['ops_s'] / frozen['frozen_s']:.2%} of it; the whole step "
          f"{frozen['frozen_s'] / frozen['plain_s'] - 1:+.2%} (median over {frozen['steps']} steps, runs without "
          "and with freezing in turn) (target < 3%)")
    print(f"ratio {ours['tokens_per_s'] / bare['tokens_per_s']:.3f}")


if __name__ == "__main__":
    main()
