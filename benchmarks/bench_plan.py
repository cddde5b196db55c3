"""The memory plan (``babelscope model plan``) against measured peaks on this machine.

Each case runs in a fresh process: the model is loaded, the peak resident set is reset (``/proc/self/clear_refs``
5, Linux), the step runs, and the measured peak is the growth of the resident set during the step plus the
loaded weights' bytes (the interpreter and its libraries, which the plan does not count, stay out; the weights
are the model's own tensors). ``importance`` runs the ``regions importance`` step on two languages of two
``batch x seq`` batches each (long texts, so that every window is full), so that the gradients, the aggregate
scores and the activations are all held at once as in a real run; ``ppl`` the ppl step's scoring
(``Engine.rolling_loglikelihood``) on ``batch`` windows of ``seq`` tokens in one forward. Cases: the default
model (Gemma 3 270M) and a randomly initialised Llama of about 60M parameters (its config written here), at two
batch sizes each. Prints one row per case and, last, ``ratio X``: the largest |measured / planned - 1| (target
<= 0.15).

    python benchmarks/bench_plan.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [  # (model, command, batch, seq)
    ("gemma-3-270m", "importance", 2, 256),
    ("gemma-3-270m", "importance", 4, 256),
    ("gemma-3-270m", "ppl", 2, 256),
    ("gemma-3-270m", "ppl", 8, 256),
    ("llama-60m", "importance", 2, 256),
    ("llama-60m", "importance", 8, 256),
    ("llama-60m", "ppl", 2, 256),
    ("llama-60m", "ppl", 8, 256),
]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def llama_dir(root: Path) -> Path:
    """A random Llama (hidden 512, 8 blocks, FFN 1536, 8 heads / 4 KV, vocabulary of the tiny test tokenizer
    padded to 32,000), saved as safetensors with a byte-level BPE tokenizer."""
    out = root / "llama-60m"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=0,
                      bos_token_id=2, eos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def long_texts(out: Path) -> Path:
    """A JSON-lines corpus of English and French texts of about 20,000 characters each (PUD sentences joined), so
    that importance's windows (one text's disjoint windows) are full."""
    from babelscope.data import open_corpus

    pud = open_corpus("pud")
    path = out / "long.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for lang in ("eng", "fra"):
            text = " ".join(u.text for u in pud.units(lang))
            for i in range(0, len(text), 20000):
                fh.write(json.dumps({"id": f"t{i // 20000}", "lang": lang, "text": text[i : i + 20000]}) + "\n")
    return path


def measure(spec: str, command: str, batch: int, seq: int, out: Path) -> dict:
    """One case in this process (run by :func:`main` in a fresh interpreter)."""
    import gc

    from babelscope.memory import release_freed_memory
    from babelscope.models import load_model

    base = _rss()
    model, tok, info = load_model(spec)
    loaded = lambda: (model, tok, info)  # noqa: E731
    gc.collect()
    release_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")
    before = _hwm()
    if command == "importance":
        from babelscope.regions.importance import ImportanceConfig, run

        corpus = long_texts(out)  # every window full: seq tokens, as the plan assumes
        run(ImportanceConfig(model=spec, corpus=str(corpus), langs="eng,fra", max_tokens=2 * batch * (seq - 1),
                             window=seq, batch_size=batch, test_fraction=0.1), out, "imp", loaded=loaded)
    else:  # the ppl step's scoring: ``batch`` full windows of ``seq`` tokens in one forward
        from babelscope.data import open_corpus
        from babelscope.models.engine import Engine

        text = " ".join(u.text for u in open_corpus("udhr-sample").units("eng"))
        engine = Engine(model, tok, batch_size=batch, progress=False)
        ids = engine.encode([text])[0]
        while len(ids) < batch * (seq - 1):
            ids = ids + ids
        chunk = tok.decode(ids[: batch * (seq - 1)])
        engine.rolling_loglikelihood([chunk], window=seq)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"base": base, "after_load": before, "peak": _hwm(), "weights": weights,
            "measured": _hwm() - before + weights}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the Llama cases only")
    ap.add_argument("--only", help="the cases of one command (importance or ppl)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec, command, batch, seq, out = json.loads(args.one)
        print(json.dumps(measure(spec, command, batch, seq, Path(out))))
        return
    from babelscope.models.loader import _load_config, resolve_spec
    from babelscope.models.plan import GiB, Shape, plan_memory

    root = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    llama = llama_dir(root)
    worst = 0.0
    print(f"{'model':14} {'command':10} {'batch':>5} {'seq':>4} {'planned GiB':>11} {'measured GiB':>12} {'diff':>7}")
    for spec, command, batch, seq in CASES:
        if args.quick and spec != "llama-60m" or args.only and command != args.only:
            continue
        path = str(llama) if spec == "llama-60m" else spec
        shape = Shape.of_config(_load_config(resolve_spec(path)[0], False))
        planned = plan_memory(shape, command, 1, 64 * GiB, seq_len=seq, batch_size=batch, device="cpu").total
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        proc = subprocess.run([sys.executable, __file__, "--one",
                               json.dumps([path, command, batch, seq, str(root / f"run-{spec}-{command}-{batch}")])],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        got = json.loads(proc.stdout.strip().splitlines()[-1])["measured"]
        diff = got / planned - 1
        worst = max(worst, abs(diff))
        print(f"{spec:14} {command:10} {batch:5d} {seq:4d} {planned / GiB:11.3f} {got / GiB:12.3f} {diff:+7.1%}",
              flush=True)
    print(f"ratio {worst:.3f}")


if __name__ == "__main__":
    main()
