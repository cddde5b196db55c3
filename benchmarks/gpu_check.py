"""The GPU check: the demo's core steps on a GPU in float32 and bfloat16 against the CPU results of the same steps,
their speed against bare loops, and peak GPU memory against the memory plan. One command, under 10 minutes on
one H100; without a CUDA device it says so and does nothing.

    python benchmarks/gpu_check.py --cpu-run runs/gpu-check-cpu          # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --out runs/gpu-check-cpu --dtypes float32   # the CPU results

1. Steps (the demo's budgets, ``examples/demo.yaml``): ``ppl`` (7 languages), ``bench`` (XCOPA sample),
   ``regions`` (importance, select, ablate, scan), ``neurons``, ``lens-translate`` and ``transfer-pretrain`` with
   the Top-1% region frozen, each run as an experiment into ``OUT/<dtype>``. Every numeric cell of every table is
   compared with the CPU run's float32 results: float32 on the GPU within 2e-3 relative (the same float32
   arithmetic summed in another order by other kernels, TF32 off, over 18 blocks; a selection that flips at a tie
   moves a few cells by more, so the share of cells beyond the bound is printed too), bfloat16 within 0.1 relative
   (an 8-bit mantissa, 2^-8 = 4e-3 per rounding, compounding over the blocks). Discrete results (counts,
   accuracies) are numbers too: a few differing cells are expected in bfloat16.
2. Speed, on the model in bfloat16: perplexity (the engine vs ``model(...).logits`` + cross-entropy over the same
   windows, as benchmarks/bench_ppl.py), importance (``language_scores`` vs a bare forward + backward with the
   model's own loss) and training (the pretraining step's samples per second vs a bare AdamW loop on the same
   sequences). Tokens per second, and model FLOPs utilisation: 2 N FLOPs a token forward, 6 N forward and
   backward (N = parameters outside the embedding), over the GPU's peak dense bfloat16 rate.
3. Memory: the peak allocated GPU memory of the importance run against ``babelscope model plan``'s total.

Last line: ``ratio X``, our perplexity tokens/s over the bare loop's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12}  # dense, no sparsity (vendor data sheets)
TOLERANCE = {"float32": 2e-3, "bfloat16": 0.1}


def steps(model: str) -> list[dict]:
    """The demo's core steps at the demo's budgets."""
    return [
        {"command": "ppl", "step": "ppl", "corpus": "udhr-sample", "langs": "en,zh,fr,de,ru,ar,ja", "window": 512,
         "batch_size": 8},
        {"command": "bench", "step": "bench-xcopa", "benchmark": "xcopa", "subsets": "it,id,sw,zh",
         "path": "embedded/xcopa-sample.jsonl", "limit": 15},
        {"command": "regions", "step": "regions", "langs": "eng,fra", "max_tokens": 64, "eval_langs": "eng,fra,deu,spa",
         "eval_max_tokens": 32, "k": "0.01", "scope": "tensor", "gen_langs": "eng", "max_new_tokens": 8,
         "scan_langs": "eng", "scan_top_n": 2, "scan_max_tokens": 32},
        {"command": "neurons", "step": "neurons", "corpus": "udhr-sample", "langs": "eng,fra,rus,cmn-Hans",
         "max_tokens": 128, "window": 128},
        {"command": "lens-translate", "step": "lens-translate", "source": "fra", "targets": "cmn-Hans,jpn,rus",
         "max_items": 12},
        {"command": "transfer-pretrain", "step": "transfer-pretrain", "corpus": "pud-sample", "langs": "deu",
         "seq_len": 32, "samples": 16, "micro_batch_size": 1, "eval_corpus": "udhr-sample", "eval_langs": "eng,fra",
         "eval_at": "0,8,16", "eval_max_tokens": 256, "eval_window": 128, "lr": 0.00005, "warmup": 2,
         "save_model": False, "freeze_region": "{run_dir}/regions-select/masks/top-k0.01-tensor.safetensors"},
    ]


def run_steps(model: str, dtype: str, device: str, out: Path) -> dict:
    """The steps as one experiment into ``out``; per step its wall seconds, and the peak GPU memory."""
    import torch
    import yaml

    from babelscope.experiment import run_file

    doc = {"run_dir": str(out), "defaults": {"model": model, "dtype": dtype, "device": device}, "steps": steps(model)}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(doc, fh)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_file(fh.name, out)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return {"seconds": seconds, "peak_bytes": peak}


def numeric_cells(run: Path) -> dict[str, dict[str, float]]:
    """Every step folder's numeric table cells, keyed ``table/row-label/column`` (the row label: its text cells)."""
    out: dict[str, dict[str, float]] = {}
    for results in sorted(run.glob("*/results.json")):
        doc = json.loads(results.read_text())
        cells = {}
        for name, table in (doc.get("tables") or {}).items():
            for i, row in enumerate(table.get("rows", [])):
                label = "|".join(str(v) for v in row.values() if isinstance(v, str)) or str(i)
                for col, v in row.items():
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                        cells[f"{name}/{label}/{col}"] = float(v)
        out[results.parent.name] = cells
    return out


def compare(gpu: Path, cpu: Path, tol: float) -> list[tuple[str, int, float, int]]:
    """Per step present in both: (step, cells compared, largest relative difference, cells beyond ``tol``)."""
    a, b = numeric_cells(gpu), numeric_cells(cpu)
    rows = []
    for step in sorted(set(a) & set(b)):
        common = set(a[step]) & set(b[step])
        rel = [abs(a[step][k] - b[step][k]) / max(abs(b[step][k]), 1e-12) for k in common]
        rows.append((step, len(common), max(rel, default=0.0), sum(r > tol for r in rel)))
    return rows


def timings(model_spec: str, device: str, batch: int, seq: int) -> dict:
    """Tokens per second of ours and the bare loops (bfloat16 on a GPU), and importance's peak memory."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).parent))
    from babelscope.models import load_model
    from babelscope.models.engine import Engine
    from babelscope.models.params import scored_parameters
    from babelscope.regions.importance import grads_only_for, language_scores
    from bench_ppl import run_bare, run_ours, windows_for

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model, tok, _ = load_model(model_spec, dtype=dtype, device=device)
    engine = Engine(model, tok, batch_size=batch, progress=False)
    seqs = windows_for(engine, "eng,fra,deu,rus,cmn-Hans,arb,hin,jpn", 4, seq)
    tokens = sum(n for _, n in seqs)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn) -> float:
        fn()  # warm-up (kernels, allocator)
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    out = {"tokens": tokens}
    out["ppl_ours"] = tokens / timed(lambda: run_ours(engine, seqs, batch))
    out["ppl_bare"] = tokens / timed(lambda: run_bare(model, engine, seqs, batch))
    params = scored_parameters(model)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with grads_only_for(model, params):
        out["importance_ours"] = tokens / timed(lambda: language_scores(engine, params, seqs))
        out["importance_peak_bytes"] = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0

        def bare_importance() -> None:
            for b in range(0, len(seqs), batch):
                ids, mask = engine._batch_inputs(seqs[b : b + batch])
                labels = ids.masked_fill(mask == 0, -100)
                model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            for p in params.values():
                p.grad = None

        out["importance_bare"] = tokens / timed(bare_importance)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    train_seqs = seqs[: 4 * batch]
    train_tokens = sum(len(s) - 1 for s, _ in train_seqs)

    def bare_training() -> None:
        for b in range(0, len(train_seqs), batch):
            ids, mask = engine._batch_inputs(train_seqs[b : b + batch])
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                   reduction="none").view(ids.shape[0], -1).mul(mask[:, 1:]).sum() / mask.sum()
            loss.backward()
            opt.step()
            opt.zero_grad()

    out["training_bare"] = train_tokens / timed(bare_training)
    embedding = model.get_input_embeddings().weight.numel()
    out["non_embedding_params"] = sum(p.numel() for p in model.parameters()) - embedding
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", default="runs/gpu-check")
    ap.add_argument("--cpu-run", default="runs/gpu-check-cpu",
                    help="the CPU results of the same steps (made with --device cpu --dtypes float32 --out DIR)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing to do. Run it on a machine with an NVIDIA GPU.")
        return 0
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}")
    out = Path(args.out)
    step_runs = {}
    for dtype in args.dtypes.split(","):
        step_runs[dtype] = run_steps(args.model, dtype, args.device, out / dtype)
        print(f"steps in {dtype}: {step_runs[dtype]['seconds']:.0f} s, peak GPU memory "
              f"{step_runs[dtype]['peak_bytes'] / 2**30:.2f} GiB")
    cpu = Path(args.cpu_run) / "float32"
    if args.device.startswith("cuda"):
        if not cpu.is_dir():
            print(f"no CPU results at {cpu}: make them with python benchmarks/gpu_check.py --device cpu "
                  f"--dtypes float32 --out {args.cpu_run}")
        for dtype in args.dtypes.split(","):
            tol = TOLERANCE[dtype]
            for step, n, worst, beyond in compare(out / dtype, cpu, tol) if cpu.is_dir() else []:
                verdict = "ok" if beyond == 0 else f"{beyond} of {n} cells beyond {tol:g}"
                print(f"{dtype:9} {step:28} {n:5d} cells  largest relative difference {worst:.2e}  {verdict}")
    t = timings(args.model, args.device, args.batch_size, args.seq_len)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    n = t["non_embedding_params"]
    for what, flops in (("ppl", 2), ("importance", 6), ("training", 6)):
        for who in ("ours", "bare"):
            rate = t.get(f"{what}_{who}")
            if rate is None:
                continue
            mfu = f"  MFU {flops * n * rate / peak:.1%}" if peak else ""
            print(f"{what:10} {who:4} {rate:10.0f} tokens/s{mfu}")
    pretrain = out / args.dtypes.split(",")[-1] / "transfer-pretrain" / "results.json"
    if pretrain.is_file():
        doc = json.loads(pretrain.read_text())
        seconds = doc.get("provenance", {}).get("seconds")
        if seconds:
            rate = 16 * 32 / seconds
            mfu = f"  MFU {6 * n * rate / peak:.1%}" if peak else ""
            print(f"training   ours {rate:10.0f} tokens/s (the pretraining step, evaluations included){mfu}")
    if args.device.startswith("cuda"):
        from babelscope.models.loader import _load_config, resolve_spec
        from babelscope.models.plan import GiB, Shape, plan_memory

        shape = Shape.of_config(_load_config(resolve_spec(args.model)[0], False))
        plan = plan_memory(shape, "importance", 1, 80 * GiB, seq_len=args.seq_len, batch_size=args.batch_size,
                           dtype="bfloat16")
        got = t["importance_peak_bytes"]
        print(f"importance peak GPU memory {got / GiB:.2f} GiB, plan {plan.total / GiB:.2f} GiB "
              f"({got / plan.total - 1:+.1%})")
    print(f"ratio {t['ppl_ours'] / t['ppl_bare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
