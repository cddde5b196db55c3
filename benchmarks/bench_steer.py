"""DiffMean sums and PLND importances: ours against the plain ways, over the same batches.

DiffMean (:func:`babelscope.steer.diffmean.language_sums`): hooks on every block reduce the residual stream to one
float64 row per layer and batch as the forward runs (the decoder without its LM head); nothing is kept. The bare
loop: ``model.model(input_ids, attention_mask, output_hidden_states=True)`` (no LM head either: the fair baseline),
every layer's hidden states copied to CPU and kept, the masked means taken afterwards. Both see the same
length-sorted batches; each batch is timed as the best of ``--repeats`` for each side, alternating, and each side's
peak memory (RSS over the loaded model) is measured over one whole pass in its own child process. The sums must
agree (float32 activations summed in float64, to 1e-5 of each layer's largest sum), else no ratio is printed.

PLND (:func:`babelscope.neurons.plnd.document_importance`): ``‖a_j‖ · ‖W_down[:, j]‖`` for all neurons of a layer
from one forward, against the naive way: capture each down projection's input, then deactivate its neurons
``--chunk`` at a time (copies of the input with one neuron zeroed each) and measure the FFN output's change
(:func:`babelscope.neurons.plnd.naive_importance`). The importances must agree to 1e-4 of each layer's largest
importance in each window.

The last line ``ratio X`` is DiffMean's speed over the bare loop's (target >= 1.0 at lower memory); the PLND line
before it prints naive time / one-pass time.

    python benchmarks/bench_steer.py [--model gemma-3-270m] [--langs eng,fra,...] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import PeakRss, machine, run_child

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


def batches_of(seqs, batch_size):
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    return [[seqs[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def ours(model, batch, pad) -> torch.Tensor:
    from babelscope.steer.diffmean import language_sums

    return language_sums(model, batch, len(batch), pad).residual


class Bare:
    """``output_hidden_states=True`` from the decoder body, every layer kept on CPU, averaged afterwards."""

    def __init__(self, model, pad):
        self.model, self.pad = model, pad
        self.kept: list[tuple[list[torch.Tensor], torch.Tensor]] = []

    def run_batch(self, batch) -> None:
        from babelscope.models.hooks import capture_layers

        width = max(map(len, batch))
        ids = torch.tensor([s + [self.pad] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        n = self.model.config.get_text_config().num_hidden_layers
        with torch.inference_mode(), capture_layers(self.model, [n], stop=False) as last:
            out = self.model.model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        # the last entry of hidden_states is after the final norm: the last block's output is captured instead
        hs = [h.detach().cpu().clone() for h in out.hidden_states[:-1]] + [last[n].cpu().clone()]
        w = mask.double()
        w[:, 0] = 0
        self.kept.append((hs, w))

    def sums(self) -> torch.Tensor:
        return sum(torch.stack([torch.einsum("bt,bth->h", w, h.double()) for h in hs]) for hs, w in self.kept)


def child(args) -> None:
    model, _, seqs, pad = setup(args)
    batches = batches_of(seqs, args.batch_size)
    with PeakRss() as mem:
        if args.child == "ours":
            for b in batches:
                ours(model, b, pad)
        else:
            bare = Bare(model, pad)
            for b in batches:
                bare.run_batch(b)
            bare.sums()
    print(json.dumps({"peak_mib": mem.peak / 2**20, "after_load_mib": mem.base / 2**20}))


def plnd(model, ffns, seqs, pad, chunk: int) -> tuple[float, float, float]:
    """(one-pass seconds, naive seconds, max relative difference) over the windows, one document each."""
    from babelscope.neurons.plnd import document_importance, naive_importance

    document_importance(model, ffns, seqs[:1], 1, pad)  # warm-up
    start = time.perf_counter()
    fast = document_importance(model, ffns, seqs, 4, pad)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = torch.zeros_like(fast)
    for d, seq in enumerate(seqs):
        store: dict = {}
        hooks = [f.down.register_forward_pre_hook(lambda m, a, i=f.layer, s=store: s.__setitem__(i, a[0][0, 1:]))
                 for f in ffns]
        try:
            with torch.inference_mode():
                model.model(input_ids=torch.tensor([seq]), use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        for f in ffns:
            slow[d, f.layer] = naive_importance(f, store[f.layer], chunk)
    t_slow = time.perf_counter() - start
    # per document and layer, relative to the layer's largest importance: the naive way subtracts two float32 FFN
    # outputs, so its error is a few ulps of the output's norm, whatever the neuron's own importance; a neuron whose
    # importance is 1e-5 of the output's comes out of the subtraction with a relative error of 1e-2 (measured on
    # Gemma: element-wise up to 1.3e-3 in the first windows, while the one-pass value stays within 1.7e-6 of the
    # float64 formula everywhere). Per layer, the two agree to 5e-6.
    rel = float(((fast - slow).abs().amax(dim=-1) / slow.abs().amax(dim=-1).clamp_min(1e-12)).max())
    return t_fast, t_slow, rel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--max-tokens", type=int, default=512, help="tokens per language")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--plnd-docs", type=int, default=4, help="windows the naive PLND deactivates neuron by neuron")
    ap.add_argument("--chunk", type=int, default=64, help="neurons deactivated per naive batch")
    ap.add_argument("--child", choices=("ours", "bare"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    print(machine())
    model, ffns, seqs, pad = setup(args)
    tokens = sum(len(s) - 1 for s in seqs)
    print(f"model {args.model}  windows {len(seqs)}  tokens {tokens}  batch {args.batch_size}")
    batches = batches_of(seqs, args.batch_size)
    ours(model, batches[-1], pad)  # warm-up
    best = {"ours": [float("inf")] * len(batches), "bare": [float("inf")] * len(batches)}
    got = [None] * len(batches)
    bare = None
    after = float("inf")
    for r in range(args.repeats):
        bare = Bare(model, pad)
        for b, batch in enumerate(batches):
            for name in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                start = time.perf_counter()
                if name == "ours":
                    got[b] = ours(model, batch, pad)
                else:
                    bare.run_batch(batch)
                best[name][b] = min(best[name][b], time.perf_counter() - start)
        start = time.perf_counter()
        want = bare.sums()
        after = min(after, time.perf_counter() - start)
    mine = sum(got)
    # per layer, relative to the layer's largest sum: two float32 forwards differ by a few ulps of the layer's
    # largest activation, so the error scales with it, not with each element (Gemma's massive dimensions sum to
    # 2.4e7 where others sum to 16: element-wise, 4e-3 of 16 is one float32 ulp at 1e5). Measured: at most 7e-7.
    rel = float(((mine - want).abs().amax(dim=-1) / want.abs().amax(dim=-1).clamp_min(1e-12)).max())
    if rel > 1e-5:
        print(f"MISMATCH: DiffMean sums differ by {rel:.2e} relative")
        return 1
    t = {"ours": sum(best["ours"]), "bare": sum(best["bare"]) + after}
    memory = {name: run_child([sys.executable, __file__, "--child", name, "--model", args.model, "--langs",
                               args.langs, "--max-tokens", str(args.max_tokens), "--window", str(args.window),
                               "--batch-size", str(args.batch_size)]) for name in ("ours", "bare")}
    for name in ("ours", "bare"):
        extra = memory[name]["peak_mib"] - memory[name]["after_load_mib"]
        print(f"diffmean {name:5s} {t[name]:7.2f} s  {tokens / t[name]:8.1f} tokens/s  peak RSS "
              f"{memory[name]['peak_mib']:7.0f} MiB (+{extra:.0f} MiB over the loaded model)")
    t_fast, t_slow, diff = plnd(model, ffns, seqs[: args.plnd_docs], pad, args.chunk)
    if diff > 1e-4:
        print(f"MISMATCH: PLND importances differ by {diff:.2e} relative")
        return 1
    print(f"plnd one-pass {t_fast:.2f} s  naive (deactivate {args.chunk} neurons at a time) {t_slow:.2f} s  "
          f"over {min(args.plnd_docs, len(seqs))} windows  max per-layer rel diff {diff:.1e}  "
          f"plnd ratio {t_slow / t_fast:.1f}")
    print(f"ratio {t['bare'] / t['ours']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
