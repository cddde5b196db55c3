"""Time and peak memory of the OTDD distance matrix for 10 languages x 2000 relation vectors.

Ours: :func:`babelscope.syntax.otdd.otdd_matrix` (one eps for all pairs, so each language's self term
OT(A, A) is solved once; cost matrices rebuilt rather than kept). Baseline: the straightforward loop of
:func:`babelscope.syntax.otdd.otdd` over every pair, each pair solving its own two self terms. Data: seeded
synthetic relation sets shaped like the default model's (hidden 640, 35 labels with Zipf frequencies, one
"massive" dimension), so the benchmark needs no model. Each setup runs in a child process (peak RSS = VmHWM).

``--solver N`` first times one outer Sinkhorn solve on an N x N pair of these sets (eps = 0.05 x median cost,
marginal tolerance 1e-6): :func:`babelscope.syntax.otdd.sinkhorn` against POT's ``ot.sinkhorn2`` with
``method="sinkhorn_log"`` (its stabilised log-domain solver), the figure behind keeping our own loop.

Last line: ``ratio X`` = baseline seconds / our seconds.

    python benchmarks/bench_otdd.py [--langs 10] [--n 2000] [--dim 640] [--solver 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import reset_peak, run_child, status_bytes


def sets(n_langs: int, n: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.array([f"rel{k}" for k in range(35)])
    p = 1.0 / np.arange(1, 36)
    p /= p.sum()
    means = rng.normal(size=(35, dim)) * 2
    out = []
    for lang in range(n_langs):
        y = rng.choice(35, size=n, p=p)
        shift = rng.normal(size=dim) * 0.3 * lang / n_langs
        X = means[y] + rng.normal(size=(n, dim)) + shift
        X[:, 0] *= 50  # a massive-activation dimension
        out.append((X.astype(np.float32), labels[y]))
    return out


def child(setup: str, args) -> dict:
    from babelscope.syntax import otdd

    data = sets(args.langs, args.n, args.dim)
    reset_peak()
    start = time.perf_counter()
    if setup == "ours":
        D, _ = otdd.otdd_matrix(data)
    else:
        import numpy as np

        D = np.zeros((args.langs, args.langs))
        for i in range(args.langs):
            for j in range(i + 1, args.langs):
                D[i, j] = D[j, i] = otdd.otdd(*data[i], *data[j])["distance"]
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    return {"seconds": seconds, "peak_rss": peak, "mean_distance": float(D.sum() / (args.langs ** 2 - args.langs))}


def solver_comparison(n: int, dim: int) -> None:
    """One outer problem: our stabilised scaling vs POT's log-domain Sinkhorn, same eps and tolerance."""
    import numpy as np
    import ot

    from babelscope.syntax import otdd

    (Xa, ya), (Xb, yb) = sets(2, n, dim)[:2]
    C = otdd.augmented_cost(Xa, ya, Xb, yb)
    eps = 0.05 * float(np.median(C))
    start = time.perf_counter()
    ours = otdd.sinkhorn(C, eps, tol=1e-6)
    t_ours = time.perf_counter() - start
    a, b = np.full(n, 1 / n), np.full(n, 1 / n)
    start = time.perf_counter()
    value, log = ot.sinkhorn2(a, b, C, reg=eps, method="sinkhorn_log", stopThr=1e-6, numItermax=20000, log=True)
    t_pot = time.perf_counter() - start
    print(f"solver {n} x {n}: ours {t_ours:.2f} s ({ours.n_iter} iterations, value {ours.value:.6g}); "
          f"POT sinkhorn_log {t_pot:.2f} s ({log.get('niter')} iterations, value {float(value):.6g}); "
          f"POT / ours {t_pot / t_ours:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--langs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--solver", type=int, default=0, help="also time one N x N solve against POT's")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    if args.solver:
        solver_comparison(args.solver, args.dim)
    results = {}
    for setup in ("ours", "pairwise"):
        cmd = [sys.executable, __file__, "--langs", str(args.langs), "--n", str(args.n), "--dim", str(args.dim),
               "--child", setup]
        results[setup] = r = run_child(cmd)
        print(f"{setup:8s}: {args.langs} languages x {args.n} vectors (dim {args.dim}): {r['seconds']:.1f} s, "
              f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB, mean distance {r['mean_distance']:.4g}", flush=True)
    print(f"ratio {results['pairwise']['seconds'] / results['ours']['seconds']:.3f}")


if __name__ == "__main__":
    main()
