"""Tokenizer efficiency: ``babelscope tokens``' measurement vs a plain loop of ``tokenizer(text)`` per language.

Both count the tokens (and byte-fallback tokens) of every unit of every language of the embedded UDHR sample
(92 languages x 4 articles) with the same loaded tokenizer. Ours is :func:`babelscope.evaluate.tokens.
efficiency_rows` (one batched call, the fast tokenizer's Rust threads, numpy counts); the baseline calls
``tokenizer(text)`` once per unit in a Python loop and counts with a list comprehension. The token counts must be
equal for every language (exits non-zero otherwise, printing no ratio). Best of ``--repeats``, alternating.
Last line: ``ratio X`` = the baseline's seconds over ours.

    python benchmarks/bench_tokens.py [--model gemma-3-270m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time


def plain_loop(tokenizer, units: dict[str, list], byte_ids: set[int]) -> dict[str, tuple[int, int]]:
    out = {}
    for lang, us in units.items():
        tokens = n_bytes = 0
        for u in us:
            ids = tokenizer(u.text, add_special_tokens=False)["input_ids"]
            tokens += len(ids)
            n_bytes += sum(1 for i in ids if i in byte_ids)
        out[lang] = (tokens, n_bytes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from babelscope.data import open_corpus
    from babelscope.evaluate.tokens import efficiency_rows, load_tokenizer, parallel_units, special_ids

    t0 = time.perf_counter()
    tokenizer, _ = load_tokenizer(args.model)
    info = special_ids(tokenizer)
    corpus = open_corpus("udhr-sample")
    units = parallel_units(corpus, "all", "eng", None)
    n_units = sum(len(us) for us in units.values())
    print(f"{args.model}: {len(tokenizer):,} entries, loaded in {time.perf_counter() - t0:.1f} s; "
          f"{len(units)} languages, {n_units} units")  # fmt: skip
    ours_t, base_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        rows = efficiency_rows(tokenizer, units, "eng", True, info)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain = plain_loop(tokenizer, units, info[0])
        base_t.append(time.perf_counter() - t)
    mismatch = [r["lang"] for r in rows if (r["tokens"], round(r["byte_fallback_share"] * r["tokens"]))
                != plain[r["lang"]]]  # fmt: skip
    if mismatch:
        print(f"token counts differ from the plain loop for {mismatch[:10]}", file=sys.stderr)
        sys.exit(1)
    tokens = sum(r["tokens"] for r in rows)
    ours, base = min(ours_t), min(base_t)
    print(f"tokens counted: {tokens:,} (equal in both, every language)")
    print(f"ours (batched):  {ours * 1000:8.1f} ms  ({tokens / ours:,.0f} tokens/s)")
    print(f"plain loop:      {base * 1000:8.1f} ms  ({tokens / base:,.0f} tokens/s)")
    print(f"ratio {base / ours:.2f}")


if __name__ == "__main__":
    main()
