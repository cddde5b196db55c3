"""Per-language parameter importance (Zhang et al. 2024, §2.1, Eq. 1-3).

For language ``l`` with text ``D_l`` (``N_l`` tokens), the causal-LM loss is the token-normalised sum

    L_l(θ) = (1 / N_l) Σ_{x ∈ D_l} Σ_t -log p_θ(x_t | x_<t)

and the importance of each scored parameter is its first-order Taylor estimate of the loss change when it is
set to zero (Eq. 2):

    S_l = θ ⊙ ∂L_l/∂θ                          (method "taylor", the paper's; signed, saved per language)
    S_l = Σ_b |θ ⊙ ∂L_{l,b}/∂θ|                 (method "per-step": one term per batch b, each already /N_l)

and the model-wide importance (Eq. 3) is ``Imp = Σ_l |S_l|``. Dividing the *summed* token loss by the
language's total token count (not a per-batch mean) makes ``S_l`` independent of the batch size and of the
number of processes: gradients are accumulated with no optimizer step and summed across processes once. The
per-step variant takes absolute values before summing, so opposite-signed batch gradients no longer cancel;
it is never smaller than |taylor| and depends on how the text is batched.

Each language's scores are written (safetensors, atomically) as soon as it finishes; a re-run loads finished
languages and computes only the rest. Memory: the model, its gradients (decoder layers only), one
per-language score set (held in the gradient buffers) and the aggregate; freed memory goes back to the system
after each language (:mod:`babelscope.memory`), so the peak does not grow with the number of languages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import mmap
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.regions.configs import ImportanceConfig

KIND = "regions-importance"
METHODS = ("taylor", "per-step")


# ------------------------------------------------------------------------------------------------ scoring
@contextlib.contextmanager
def grads_only_for(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only (embeddings and head frozen) within the block; flags restored after."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params.values()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None


def language_scores(
    engine,
    params: dict[str, nn.Parameter],
    seqs: list[tuple[list[int], int]],
    method: str = "taylor",
    on_batch=None,
) -> tuple[dict[str, torch.Tensor], float, int]:
    """``(S_l per parameter (float32, CPU), summed NLL, tokens)`` for one language's windows ``seqs``.

    Call inside :func:`grads_only_for`. Under Accelerate every process takes its share of ``seqs`` and the
    gradients are summed across processes, so every rank returns the same scores.
    """
    from babelscope.models.engine import all_reduce_grads

    if method not in METHODS:
        raise BabelscopeError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    tokens = sum(n for _, n in seqs)
    if tokens == 0:
        raise BabelscopeError("no tokens to score importance on; raise --max-tokens or give more text")
    for p in params.values():
        p.grad = None
    acc: dict[str, torch.Tensor] = {}

    def step(n_seqs: int) -> None:
        if method == "per-step":
            for name, p in params.items():
                if p.grad is None:
                    continue
                term = (p.detach().float() * p.grad.float()).abs_()
                acc[name] = acc[name].add_(term) if name in acc else term
                p.grad = None
        if on_batch:
            on_batch(n_seqs)

    nll = engine.backward(seqs, normalizer=float(tokens), on_batch=step)
    if method == "taylor":
        all_reduce_grads(list(params.values()))
        for name, p in params.items():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            acc[name] = grad.float().mul_(p.detach().float()).cpu()  # S = θ ⊙ g (Eq. 2), in the grad's memory
            p.grad = None
    else:
        for name, p in params.items():
            acc.setdefault(name, torch.zeros(p.shape, dtype=torch.float32, device=p.device))
        all_reduce_grads([_GradView(t) for t in acc.values()])
        acc = {name: t.cpu() for name, t in acc.items()}
    nll = _sum_across_processes(nll)
    return acc, nll, tokens


class _GradView:
    """Lets :func:`all_reduce_grads` sum a plain tensor in place (it reduces ``.grad``)."""

    def __init__(self, tensor: torch.Tensor):
        self.grad = tensor


def _sum_across_processes(value: float) -> float:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0])
    return value


def aggregate_importance(per_language: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``Imp = Σ_l |S_l|`` (Eq. 3) over a list of per-language score sets (for small cases and tests)."""
    total: dict[str, torch.Tensor] = {}
    for scores in per_language:
        for name, s in scores.items():
            total[name] = total[name] + s.abs() if name in total else s.abs().clone()
    return total


# ------------------------------------------------------------------------------------------------ files
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.bool: "BOOL",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.uint8: "U8"}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically (temporary file, fsync, then rename); metadata values JSON-encoded."""
    commit_file(write_temporary(path, tensors, metadata), path)


def write_temporary(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` to a temporary file beside ``path`` and return its name (see :func:`commit_file`).

    The file is streamed one tensor at a time (the safetensors layout: 8-byte header size, JSON header, raw
    little-endian data), so saving never holds a second copy of the whole score set in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {"__metadata__": {k: json.dumps(v) for k, v in metadata.items()}}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    pieces = [len(raw).to_bytes(8, "little"), raw, *map(_raw_bytes, tensors.values())]
    try:
        if not _write_direct(tmp, pieces):
            with open(tmp, "wb") as fh:
                for piece in pieces:
                    fh.write(piece)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _raw_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


_BOUNCE = 8 << 20  # bytes; a multiple of every logical block size


def _write_direct(path: str, pieces: list) -> bool:
    """Write ``pieces`` to ``path`` with ``O_DIRECT`` through an aligned bounce buffer, bypassing the page
    cache: a 400 MB score file then costs the scoring threads a fraction of a second of copying instead of the
    page-cache allocation and copy (measured 0.85 s of CPU here). False, with nothing written, where the
    filesystem refuses ``O_DIRECT`` (tmpfs); the caller then writes buffered."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | flag)
    except OSError:
        return False
    bounce = mmap.mmap(-1, _BOUNCE)  # page-aligned
    view = memoryview(bounce)
    fill = total = 0

    def flush(n: int) -> None:
        done = 0
        while done < n:
            done += os.write(fd, view[done:n])

    try:
        for piece in pieces:
            at = 0
            while at < len(piece):
                k = min(_BOUNCE - fill, len(piece) - at)
                view[fill : fill + k] = piece[at : at + k]
                fill, at = fill + k, at + k
                if fill == _BOUNCE:
                    flush(fill)
                    total, fill = total + fill, 0
        if fill:
            pad = -fill % 4096
            view[fill : fill + pad] = bytes(pad)
            flush(fill + pad)
            total += fill
        os.ftruncate(fd, total)  # drop the final block's padding
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL and total == 0:  # O_DIRECT writes refused here
            return False
        raise
    finally:
        view.release()
        bounce.close()
        os.close(fd)


def commit_file(tmp: Path, path: str | Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``path``: the file appears whole or not at all."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such file; run the step that writes it first") from None
    except Exception as exc:  # a truncated or foreign file
        raise BabelscopeError(
            f"{path}: not a readable safetensors file ({exc}); delete it and re-run"
        ) from None
    return {k: json.loads(v) for k, v in raw.items()}


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise BabelscopeError(f"{path}: no such file; run the step that writes it first") from None
    except Exception as exc:
        raise BabelscopeError(
            f"{path}: not a readable safetensors file ({exc}); delete it and re-run"
        ) from None


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ step
def run(cfg: ImportanceConfig, run_dir, step: str = "regions-importance", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions importance`` step: per-language scores, then ``importance.safetensors``."""
    from tqdm.auto import tqdm

    from babelscope.memory import release_freed_memory
    from babelscope.regions.params import layer_and_kind, scored_parameters
    from babelscope.regions.texts import language_codes, open_text_corpus, split_side, token_windows
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    st = sr.st
    if cfg.method not in METHODS:
        raise BabelscopeError(f"--method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.window < 2 or cfg.max_tokens < 1:
        raise BabelscopeError(f"--window {cfg.window} / --max-tokens {cfg.max_tokens}: both must be positive")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    texts = {code: split_side(corpus, code, "train", cfg.test_fraction, cfg.seed) for code in codes}
    if (doc := sr.done(inputs={c: text_sha256(u.text for u in us) for c, us in texts.items()})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "importance")
    params = scored_parameters(model, cfg.include, cfg.exclude)
    engine = sr.engine(batch_size=cfg.batch_size, cache=False, progress=False)
    shapes = {name: list(p.shape) for name, p in params.items()}
    aggregate = {name: torch.zeros(p.shape, dtype=torch.float32) for name, p in params.items()}
    for stale in (st.path / "scores").glob(".*.tmp"):  # left by an interrupted run
        stale.unlink()
    rows: list[dict[str, Any]] = []
    saves: list[Future] = []
    bar = tqdm(total=len(codes), desc="importance", unit="lang", disable=not engine.is_main, leave=False)
    # One writer thread saves each language's scores while the next language runs; it drops them as soon as
    # they are in the page cache, before the fsync.
    with bar, grads_only_for(model, params), ThreadPoolExecutor(1, thread_name_prefix="scores") as writer:
        for code in codes:
            units = texts[code]
            sha = text_sha256(u.text for u in units)
            key = _key(
                {
                    "model": info.checksum,
                    "lang": code,
                    "text": sha,
                    "window": cfg.window,
                    "max_tokens": cfg.max_tokens,
                    "method": cfg.method,
                    "shapes": shapes,
                    "batch_size": cfg.batch_size if cfg.method == "per-step" else None,
                }
            )
            path = st.path / "scores" / f"{code}.safetensors"
            meta = read_metadata(path) if path.exists() else {}
            if meta.get("key") == key:  # finished in an earlier run
                scores, save = load_tensors(path), None
            else:
                seqs = token_windows(engine, [u.text for u in units], cfg.window, cfg.max_tokens)
                scores, nll, tokens = language_scores(engine, params, seqs, cfg.method)
                if not math.isfinite(nll):  # never saved: a re-run at another dtype starts clean
                    raise BabelscopeError(f"{code}: the loss came out {nll} (the model overflows in --dtype "
                                          f"{cfg.dtype}); nothing was saved: re-run with --dtype float32")
                meta = {
                    "key": key,
                    "lang": code,
                    "model": info.checksum,
                    "method": cfg.method,
                    "tokens": tokens,
                    "nll": nll,
                    "units": [u.id for u in units],
                    "text_sha256": sha,
                }
                save = path
            if engine.is_main:
                rows.append(_language_row(code, meta, _fold(scores, aggregate)))
                if save is not None:
                    saves.append(writer.submit(_save, scores, save, meta))
                _raise_failed(saves)
            del scores
            release_freed_memory()  # flat in the number of languages (see babelscope.memory)
            bar.update(1)
        for f in saves:
            f.result()
    if not engine.is_main:
        return sr.wait()
    imp_meta = {
        "model": info.checksum,
        "model_name": info.name,
        "languages": codes,
        "method": cfg.method,
        "shapes": shapes,
    }
    save_tensors(st.path / "importance.safetensors", aggregate, imp_meta)
    by_matrix = []
    for name, imp in aggregate.items():
        layer, kind = layer_and_kind(name)
        by_matrix.append(
            {
                "layer": layer,
                "kind": kind,
                "parameters": imp.numel(),
                "mean_importance": float(imp.mean(dtype=torch.float64)),
                "max_importance": float(imp.max()),
            }
        )
    results = {
        "model": info.name,
        "corpus": corpus.name,
        "languages": codes,
        "method": cfg.method,
        "scored_parameters": sum(p.numel() for p in params.values()),
        "scored_tensors": len(params),
        "importance_file": "importance.safetensors",
        "score_files": {code: f"scores/{code}.safetensors" for code in codes},
    }
    prov = provenance(
        model=info.to_dict(), data={"corpus": corpus.name, "units": {r["lang"]: r["units"] for r in rows}}
    )
    return sr.write(KIND, results, {"per_language": rows, "by_matrix": by_matrix}, prov)


def _fold(scores: dict[str, torch.Tensor], aggregate: dict[str, torch.Tensor]) -> float:
    """Add |S_l| into ``aggregate`` (Eq. 3), one tensor at a time (the signed scores stay intact for the file);
    returns Σ|S_l|."""
    abs_sum = 0.0
    for name, s in scores.items():
        magnitude = s.abs()
        aggregate[name].add_(magnitude)
        abs_sum += float(magnitude.sum(dtype=torch.float64))
    return abs_sum


def _save(scores: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    """(Writer thread: file I/O only, no tensor arithmetic to compete with the scoring.) Stream the signed scores
    into a temporary file, drop them, then make the file durable and give it its name."""
    from babelscope.memory import release_freed_memory

    tmp = write_temporary(path, scores, meta)
    scores.clear()
    release_freed_memory()
    commit_file(tmp, path)


def _raise_failed(futures: list) -> None:
    """Surface a writer-thread error (disk full, permissions) at once rather than after every language."""
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


def _language_row(code: str, meta: dict[str, Any], abs_sum: float) -> dict[str, Any]:
    from babelscope.data.languages import resolve_language

    tokens, nll = meta["tokens"], meta["nll"]
    return {
        "lang": code,
        "name": resolve_language(code).name,
        "units": ",".join(meta["units"]),
        "tokens": tokens,
        "loss": nll / tokens,
        "ppl": math.exp(nll / tokens),
        "sum_abs_score": abs_sum,
    }

