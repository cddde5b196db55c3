"""Importance scoring vs a bare forward + backward loop over the same batches (Zhang et al. 2024, Eq. 2-3).

Ours: the full ``regions importance`` step (per-language S = θ ⊙ g through ``Engine.backward``, whose LM head
and loss are the chunked fused linear cross-entropy of ``babelscope.models.loss``; each
language's scores written to safetensors, the aggregate Imp = Σ|S| kept and written). Bare: the plain loop a
user would write, over the same windows in the same longest-first batches, the same chunked, checkpointed
LM-head loss and the same trainable set (the weights inside the blocks), gradients dropped after each language;
no scores, no files. Each setup runs in its own child process; its peak memory is the peak RSS (VmHWM, reset
after the model is loaded and the text tokenized) of that child. Run with 2, 6 and 24 languages
(``--counts``): the step holds one per-language score set at a time, so its memory must not grow with them.

Targets: throughput >= 1.1 times the bare loop's (the fused loss runs two head products a chunk where the
checkpointed head runs three: forward, recomputed forward, backward); peak memory <= bare peak + 2 x fp32 bytes
of the scored weights; flat in the number of languages: our peak over the bare loop's grows by at most 5% of our
peak from the fewest languages to the most. (Both peaks rise with the language whose padded batches are
largest, nld in the default list at 512 tokens a language; the step's resident set between languages is flat.)
Last line: ``ratio X`` = our tokens/s over the bare loop's (all runs together).

    python benchmarks/bench_importance.py [--corpus udhr] [--max-tokens 512] [--batch-size 4] [--counts 2,6,24]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, reset_peak, run_child, status_bytes

LANGS = (
    "eng,fra,deu,spa,rus,cmn-Hans,ita,por-BR,nld,pol,ces,swe,tur,arb,heb,hin,jpn,kor,vie,ind,ell,fin,hun,ukr"
)


def child(setup: str, args) -> dict:
    import torch

    from babelscope.data.views import language_codes, open_text_corpus, split_side, token_windows
    from babelscope.models import load_model
    from babelscope.models.arch import base_model, logits_from_hidden
    from babelscope.models.engine import Engine
    from babelscope.models.params import scored_parameters
    from babelscope.regions.importance import ImportanceConfig, grads_only_for, run

    torch.manual_seed(0)
    loaded = load_model(args.model)
    model, tok, info = loaded
    params = scored_parameters(model)
    engine = Engine(model, tok, batch_size=args.batch_size, progress=False)
    corpus = open_text_corpus(args.corpus)
    codes = language_codes(corpus, args.langs)
    per_lang = [
        token_windows(
            engine, [u.text for u in split_side(corpus, c, "train", 0.5, 0)], args.window, args.max_tokens
        )
        for c in codes
    ]
    tokens = sum(n for seqs in per_lang for _, n in seqs)
    scored_bytes = 4 * sum(p.numel() for p in params.values())
    after_load = status_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    if setup == "ours":
        cfg = ImportanceConfig(
            model=args.model,
            corpus=args.corpus,
            langs=args.langs,
            max_tokens=args.max_tokens,
            window=args.window,
            batch_size=args.batch_size,
        )
        with tempfile.TemporaryDirectory() as tmp:
            run(cfg, Path(tmp), "imp", loaded=lambda: loaded)
            seconds = time.perf_counter() - start
    else:
        from torch.utils.checkpoint import checkpoint

        def chunk_nll(h, targets):
            logits = logits_from_hidden(model, h)
            return (torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None])[:, 0]).sum()

        with grads_only_for(model, params):
            for seqs in per_lang:
                n_tokens = sum(n for _, n in seqs)
                order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
                for b in range(0, len(order), args.batch_size):
                    batch = [seqs[i] for i in order[b : b + args.batch_size]]
                    ids, mask = engine._batch_inputs(batch)
                    rows, cols, targets = engine._positions(batch)
                    hidden = base_model(model)(
                        input_ids=ids, attention_mask=mask, use_cache=False
                    ).last_hidden_state
                    h = hidden[rows, cols]
                    loss = h.new_zeros(())
                    for c in range(0, len(targets), 256):
                        loss = loss + checkpoint(
                            chunk_nll, h[c : c + 256], targets[c : c + 256], use_reentrant=False
                        )
                    (loss / n_tokens).backward()
                for p in params.values():
                    p.grad = None
        seconds = time.perf_counter() - start
    return {
        "setup": setup,
        "languages": len(codes),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_bytes": status_bytes("VmHWM"),
        "after_load_bytes": after_load,
        "scored_bytes": scored_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--corpus", default="udhr")
    ap.add_argument("--langs", default=LANGS, help="languages; the run with N languages takes the first N")
    ap.add_argument("--counts", default="2,6,24", help="numbers of languages to run")
    ap.add_argument("--setups", default="bare,ours", help="bare,ours or one of them (time budget)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--child", choices=["ours", "bare"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    print(machine(), flush=True)
    all_langs = args.langs.split(",")
    counts = [int(c) for c in args.counts.split(",")]
    setups = args.setups.split(",")
    results = []
    for count in counts:
        langs = ",".join(all_langs[:count])
        for setup in setups:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                setup,
                "--model",
                args.model,
                "--corpus",
                args.corpus,
                "--langs",
                langs,
                "--max-tokens",
                str(args.max_tokens),
                "--window",
                str(args.window),
                "--batch-size",
                str(args.batch_size),
            ]
            r = run_child(cmd)
            results.append(r)
            print(
                f"{setup:5s} {r['languages']} langs: {r['tokens']} tokens in {r['seconds']:.2f} s = "
                f"{r['tokens_per_s']:.1f} tokens/s; peak RSS {r['peak_bytes'] / 2**30:.3f} GiB "
                f"(after load {r['after_load_bytes'] / 2**30:.3f} GiB)",
                flush=True,
            )
    ok = True
    peaks = {(r["setup"], r["languages"]): r["peak_bytes"] for r in results}
    mine = {n: p for (setup, n), p in peaks.items() if setup == "ours"}
    if len(mine) > 1:
        lo, hi = min(mine), max(mine)
        print("our peak: " + ", ".join(f"{n} langs {p / 2**30:.3f} GiB" for n, p in sorted(mine.items()))
              + f"; {hi} / {lo} langs = {mine[hi] / mine[lo]:.3f}")
        if ("bare", lo) in peaks and ("bare", hi) in peaks:
            # The peak is the largest language's batch (its activations) plus what the step holds; a language
            # with longer padded batches raises the bare loop's peak as much. What must stay flat is the step's
            # own part: its peak over the bare loop's, on the same batches.
            over_lo, over_hi = mine[lo] - peaks["bare", lo], mine[hi] - peaks["bare", hi]
            growth = (over_hi - over_lo) / mine[lo]
            ok &= growth <= 0.05
            print(f"bare peak {lo} -> {hi} langs = {peaks['bare', hi] / peaks['bare', lo]:.3f}; ours over bare "
                  f"{over_lo / 2**20:+.0f} -> {over_hi / 2**20:+.0f} MiB = {growth:+.1%} of our peak "
                  "(target <= +5%: nothing kept across languages)")
    for n in counts:
        bare = next((r for r in results if r["setup"] == "bare" and r["languages"] == n), None)
        ours = next((r for r in results if r["setup"] == "ours" and r["languages"] == n), None)
        if bare is None or ours is None:
            continue
        extra = ours["peak_bytes"] - bare["peak_bytes"]
        budget = 2 * ours["scored_bytes"]
        thr = ours["tokens_per_s"] / bare["tokens_per_s"]
        ok &= extra <= budget
        print(
            f"{n} langs: throughput ratio {thr:.3f}; peak memory over bare "
            f"{extra / 2**20:.0f} MiB, budget 2 x fp32 scored = {budget / 2**20:.0f} MiB "
            f"({'within' if extra <= budget else 'OVER'})"
        )

    def total(setup: str) -> float:
        runs = [r for r in results if r["setup"] == setup]
        return sum(r["tokens"] for r in runs) / sum(r["seconds"] for r in runs)

    both = set(setups) >= {"bare", "ours"}
    if both:
        ratio = total("ours") / total("bare")
        ok &= ratio >= 1.1
        print(f"throughput over all runs: {ratio:.3f} of the bare loop's (target >= 1.1)")
    print(f"targets {'met' if ok else 'NOT met'}")
    if both:
        print(f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
