"""The freezing trade-off at one budget: per arm of ``examples/freeze.yaml``, the target's perplexity at the end over
the start against the geometric mean of the other languages', one panel per run directory (model).

    python tools/freeze_tradeoff.py runs/freeze runs/freeze-smollm -o docs/figures/freeze-tradeoff.png

Reads each ``pretrain-*/curve.csv`` (the target on its held-out text, the others on the evaluation corpus); the
first and last measured points of each arm. Prints the table it plots.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def tradeoff(run: Path) -> dict[str, tuple[float, float]]:
    """``{arm: (target end/start, others' geometric-mean end/start)}`` for every finished pretraining step."""
    out = {}
    for curve in sorted(run.glob("pretrain-*/curve.csv")):
        ppl: dict[str, dict[int, float]] = {}
        for row in csv.DictReader(curve.open(encoding="utf-8")):
            if row["target"] == "True" and row["text"] != "held-out":
                continue  # the target on the evaluation corpus: another domain (see docs/transfer-pretrain.md)
            key = "target" if row["target"] == "True" else row["lang"]
            ppl.setdefault(key, {})[int(row["samples"])] = float(row["ppl"])
        if "target" not in ppl:
            continue
        first, last = min(ppl["target"]), max(ppl["target"])
        others = [k for k in ppl if k != "target" and last in ppl[k]]
        ratio = math.exp(sum(math.log(ppl[k][last] / ppl[k][first]) for k in others) / max(len(others), 1))
        out[curve.parent.name.removeprefix("pretrain-")] = (ppl["target"][last] / ppl["target"][first], ratio)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of examples/freeze.yaml")
    ap.add_argument("-o", "--out", type=Path, required=True, help="PNG file")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from babelscope.runs import load_results

    fig, axes = plt.subplots(1, len(args.runs), figsize=(5 * len(args.runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], args.runs, strict=True):
        points = tradeoff(run)
        doc = load_results(run / "pretrain-none" / "results.json")
        model = doc["results"].get("model", run.name)
        print(f"{run}: {model}")
        for arm, (x, y) in points.items():
            print(f"  {arm:12s} target x{x:.3f}  others x{y:.3f}")
            ax.scatter(x, y, s=40)
            ax.annotate(arm, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=9)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{model}: {doc['config'].get('samples')} samples, lr {doc['config'].get('lr'):g}")
        ax.set_xlabel("target perplexity, end / start (lower: more gain)")
        ax.set_ylabel("others' perplexity, end / start (geometric mean)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
