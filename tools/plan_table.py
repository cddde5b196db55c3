"""Print the memory-plan table of docs/scale.md: Llama-2 7B, 13B and 70B (their public configs, in
``examples/configs``) on 1, 2 and 8 GPUs of 80 GiB, for every command, from ``babelscope.models.plan``.

Usage::

    python tools/plan_table.py [--seq-len 512] [--batch-size 4] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from babelscope.models.loader import _load_config
    from babelscope.models.plan import COMMANDS, GiB, Shape, option_label, options_that_fit, plan_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    setting = dict(seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype)
    print("| model | parameters | GPUs | command | as asked (GiB per GPU) | fits with (GiB per GPU) |")
    print("|---|---|---|---|---|---|")
    for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b"):
        shape = Shape.of_config(_load_config(ROOT / "examples" / "configs" / name, False))
        for n in (1, 2, 8):
            for command in COMMANDS:
                asked = plan_memory(shape, command, n, 80 * GiB, **setting)
                fitting = options_that_fit(shape, command, n, 80 * GiB, **setting)
                if asked.fits:
                    fit = "as asked"
                elif fitting:
                    fit = f"{option_label(fitting[0])} ({fitting[0].total / GiB:.1f})"
                else:
                    fit = "none"
                print(f"| {name} | {shape.params / 1e9:.2f}B | {n} | {command} | {asked.total / GiB:.1f} | {fit} |")


if __name__ == "__main__":
    main()
