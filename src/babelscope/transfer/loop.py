"""One training loop for further pretraining and instruction tuning (Zhao et al. 2024; Zhang et al. 2024).

A plain PyTorch loop on Hugging Face Accelerate: the same code runs on a CPU, one GPU, DDP, FSDP or DeepSpeed,
picked by ``accelerate launch --config_file examples/accelerate/*.yaml`` (see docs/transfer-pretrain.md).

Interface (stable; :mod:`babelscope.transfer.pretrain` and :mod:`babelscope.transfer.sft` build on it)::

    from babelscope.transfer.loop import LoopConfig, train
    result = train(model, tokenizer, examples, LoopConfig(lr=2e-5, micro_batch_size=4, grad_accum=2),
                   out_dir, evaluate=fn, eval_at=(0, 100, 1000), freeze=masks,
                   fingerprint={"model": checksum, "data": data_sha256, "lora_r": 8, ...})

* ``examples``: a sequence (``len`` + ``__getitem__``) of mappings ``{"input_ids": [int], "labels": [int]}``;
  ``labels`` is aligned with ``input_ids`` (``labels[t]`` is the token at ``t``; -100 = no loss, the Hugging Face
  convention) and shifted here: position ``t`` predicts ``labels[t + 1]``. Rows of a micro-batch are
  right-padded (pad id, label -100, attention mask 0).
* Order: sample ``j`` of the run is ``examples[order[j]]`` with ``order`` = ``epochs`` concatenated permutations
  seeded by ``seed + epoch`` (``shuffle=False``: the given order, repeated). An optimizer step takes
  ``G = micro_batch_size x grad_accum x processes`` consecutive samples; process ``p`` takes micro-batch
  ``m`` of step ``s`` from samples ``s G + (m P + p) b ...``; a short last step is padded with empty rows.
* Loss of a step (Accelerate's token-count normalisation): ``L = Σ_tokens NLL / T`` with ``T`` the number of
  target tokens of the whole step over every micro-batch and process (all-reduced before the first backward),
  so the gradient does not depend on how the step is cut.
* The LM head and the loss are :func:`babelscope.models.loss.head_nll` (one chunked fused linear cross-entropy
  for a plain linear head): the batch x sequence x vocabulary logits never exist.
* AdamW (no decay on 1-D tensors), linear warmup over ``warmup`` steps then ``schedule`` cosine | linear |
  constant decay to ``min_lr_ratio x lr``; gradient clipping at ``max_grad_norm``; bf16 autocast on GPUs and
  fp32 on CPUs (``mixed_precision="auto"``); optional gradient checkpointing.
* ``freeze``: ``{parameter name: bool mask}`` (True = frozen, e.g. ``babelscope regions select`` masks). Frozen
  entries have their gradients zeroed (before clipping), are kept out of weight decay (the tensor's decay is
  applied here to the other entries) and are restored after every optimizer step, so they stay bit-identical
  (Adam's moments never see them). Masks, not ``requires_grad`` (which FSDP refuses within one flat
  parameter): on one device, under DDP, and under FSDP 2 (each process masks the rows of its dim-0 shard);
  refused under FSDP 1 and DeepSpeed (flat / partitioned parameters).
* ``evaluate(model, samples_seen, step) -> dict | None``: called at the first step boundary at or after each
  sample count in ``eval_at`` (0 = before training), on every process, model in eval mode; returns are
  collected in ``result.evals``. The caller writes what it measures (a killed run keeps it).
* Progress: one tqdm bar (loss, lr, tokens/s); every ``log_every`` steps a line of ``out_dir/metrics.jsonl``
  (step, samples, tokens, loss, lr, grad_norm, tokens_per_s, seconds) and Accelerate trackers when
  ``trackers`` names them (tensorboard, wandb, mlflow; off by default).
* Checkpoints: every ``checkpoint_every`` steps ``accelerator.save_state`` into
  ``out_dir/checkpoints/step-N`` plus ``position.json`` (step, samples, tokens, fingerprint) written last.
  ``train`` on an ``out_dir`` with a checkpoint resumes from its last one by sample index (bit-identical weights
  on a CPU). The fingerprint (:func:`resume_key`, one :func:`babelscope.caches.fingerprint`) holds every loop
  setting that changes the weights, the number of examples and processes, and the caller's ``fingerprint``
  parts (model and tokenizer checksums, data, adapter and freezing options), never logging or checkpoint
  frequency; a checkpoint of another fingerprint is refused with one line naming the parts that differ
  (:class:`BabelscopeError`), or discarded with ``cfg.restart``. The steps check this before they write
  anything (:func:`check_resumable`).
* The trained model: ``out_dir/model``, a normal Hugging Face directory (safetensors + tokenizer) that
  ``babelscope.models.load_model`` loads (``save_model=False``: kept in memory only); once it is written the
  checkpoints are removed (``save_model=False``: the caller removes them with :func:`remove_checkpoints` once
  it has written what it keeps, so a finished run never leaves them behind).

Freezing lives in :mod:`babelscope.transfer.freezing` and checkpoints in :mod:`babelscope.transfer.checkpoints`;
their names stay importable from here.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelscope.errors import BabelscopeError
from babelscope.models.loss import IGNORE, head_nll
from babelscope.transfer.checkpoints import (  # noqa: F401  (re-exported: the loop's interface)
    _save_checkpoint,
    _truncate_metrics,
    check_resumable,
    last_checkpoint,
    read_metrics,
    remove_checkpoints,
    resume_key,
)
from babelscope.transfer.freezing import RegionFreeze, local_mask, param_groups, unsharded  # noqa: F401

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class LoopConfig:
    """Optimisation settings (defaults: a small further-pretraining run)."""

    lr: float = 2e-5
    warmup: int = 0  # optimizer steps of linear warmup
    schedule: str = "cosine"  # cosine | linear | constant after warmup
    min_lr_ratio: float = 0.0  # decay floor as a fraction of lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    micro_batch_size: int = 4
    grad_accum: int = 1
    epochs: int = 1
    shuffle: bool = True
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = no intermediate checkpoints
    keep_checkpoints: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    log_every: int = 1
    logit_chunk: int = 512  # rows per chunk of the fused LM head + loss
    trackers: str = ""  # comma-separated Accelerate trackers: tensorboard, wandb, mlflow
    freeze_norms: bool = False  # also freeze masked entries of norm vectors
    save_model: bool = True
    progress: bool = True
    restart: bool = False  # discard a checkpoint (of any configuration) and train from the start

    #: settings that never change the trained weights: left out of the resume fingerprint (gradient
    #: checkpointing recomputes the same activations; it trades time for memory)
    NOT_WEIGHTS = ("checkpoint_every", "keep_checkpoints", "log_every", "trackers", "save_model", "progress",
                   "restart", "gradient_checkpointing")

    def fingerprint(self) -> dict[str, Any]:
        """Everything of the loop's settings that changes the trained weights (see :func:`resume_key`)."""
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_WEIGHTS}


@dataclass
class TrainResult:
    steps: int
    samples: int
    tokens: int
    loss: float | None
    model_dir: Path | None
    metrics_path: Path
    evals: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0  # step of the checkpoint the run resumed from
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- schedule
def lr_at(step: int, total: int, cfg: LoopConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine/linear/constant decay."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(total - cfg.warmup, 1)
    progress = min(max(step - cfg.warmup, 0) / span, 1.0)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    if cfg.schedule == "linear":
        return cfg.lr * (floor + (1 - floor) * (1 - progress))
    return cfg.lr


def sample_order(n: int, cfg: LoopConfig) -> torch.Tensor:
    """Indices into ``examples`` of every sample of the run (``epochs`` seeded permutations, or in order)."""
    parts = []
    for epoch in range(cfg.epochs):
        if cfg.shuffle:
            parts.append(torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch)))
        else:
            parts.append(torch.arange(n))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def check_config(cfg: LoopConfig) -> None:
    """Refuse impossible settings before anything is loaded."""
    if cfg.schedule not in SCHEDULES:
        raise BabelscopeError(f"--schedule {cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")
    for name in ("micro_batch_size", "grad_accum", "epochs", "log_every", "logit_chunk"):
        if getattr(cfg, name) < 1:
            raise BabelscopeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if not cfg.lr > 0:  # NaN too
        raise BabelscopeError(f"--lr {cfg.lr}: must be positive")
    if cfg.warmup < 0 or cfg.weight_decay < 0 or cfg.max_grad_norm < 0:
        raise BabelscopeError("--lr must be positive and --warmup, --weight-decay, --max-grad-norm not negative")
    if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise BabelscopeError(f"--mixed-precision {cfg.mixed_precision!r}: use auto, no, bf16 or fp16")
    import importlib.util

    packages = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}
    for name in (t.strip() for t in cfg.trackers.split(",") if t.strip()):
        if name not in packages:
            raise BabelscopeError(f"--trackers {name!r}: use any of {', '.join(packages)} (comma-separated)")
        if importlib.util.find_spec(packages[name]) is None:
            raise BabelscopeError(f"--trackers {name}: the package {packages[name]} is not installed; "
                                  f"pip install {packages[name]}, or drop it from --trackers")


# ----------------------------------------------------------------------------------------------- the model
class CausalLMLoss(nn.Module):
    """The unmodified causal LM plus the fused head + loss: ``forward`` returns the summed NLL of a micro-batch
    and its target count. Accelerate wraps this module (DDP/FSDP see a normal forward)."""

    def __init__(self, model: nn.Module, logit_chunk: int = 512):
        super().__init__()
        self.model = model
        self.logit_chunk = logit_chunk
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP's default wrap classes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        from babelscope.models.arch import base_model

        hidden = base_model(self.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return head_nll(self.model, hidden.last_hidden_state[:, :-1], labels[:, 1:], self.logit_chunk)


def collate(rows: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; an empty one becomes a single all-ignored row (every process still steps)."""
    rows = list(rows) or [{"input_ids": [pad_id, pad_id], "labels": [IGNORE, IGNORE]}]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        if len(r["labels"]) != n:
            raise BabelscopeError(f"example {i}: {len(r['labels'])} labels for {n} input ids; align them")
        ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(r["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_count(batch: Mapping[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


# ----------------------------------------------------------------------------------------------- train
def train(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Mapping[str, Sequence[int]]],
    cfg: LoopConfig,
    out_dir: str | Path,
    *,
    evaluate: Callable[[nn.Module, int, int], dict[str, Any] | None] | None = None,
    eval_at: Sequence[int] = (),
    freeze: Mapping[str, torch.Tensor] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    tracker_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``examples`` (see the module docstring); returns a :class:`TrainResult`."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    check_config(cfg)
    out_dir = Path(out_dir)
    accelerator, trackers = _accelerator(model, cfg, out_dir)
    P, b = accelerator.num_processes, cfg.micro_batch_size
    G = b * cfg.grad_accum * P
    order = sample_order(len(examples), cfg)
    total_steps = math.ceil(len(order) / G)
    fp = resume_key(cfg, len(examples), P, fingerprint)
    position = check_resumable(out_dir, fp, cfg.restart)
    set_seed(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    wrapped, optimizer, frozen = _prepare(model, cfg, accelerator, freeze)
    if trackers:
        accelerator.init_trackers("babelscope", config={**asdict(cfg), **(tracker_config or {})})

    step, samples, tokens = 0, 0, 0
    resumed_from = 0
    if position is not None:
        accelerator.load_state(str(out_dir / "checkpoints" / f"step-{position['step']}"))
        step, samples, tokens = position["step"], position["samples"], position["tokens"]
        resumed_from = step
    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
    accelerator.wait_for_everyone()
    pending = sorted({int(x) for x in eval_at if int(x) > samples or (int(x) == 0 and step == 0)})
    evals: list[dict[str, Any]] = []

    def run_evals() -> None:
        while pending and pending[0] <= samples:
            pending.pop(0)
            if evaluate is None:
                continue
            inner = accelerator.unwrap_model(wrapped).model
            inner.eval()
            with torch.no_grad(), unsharded(wrapped):
                measured = evaluate(inner, samples, step)
            inner.train()
            if measured is not None:
                evals.append(measured)

    run_evals()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
               disable=not (cfg.progress and accelerator.is_local_main_process))
    last_loss = None
    start_time = time.perf_counter()
    window_tokens, window_time = 0, time.perf_counter()
    while step < total_steps:
        micro = [collate([examples[i] for i in idx], pad_id)
                 for idx in _micro_indices(order, step, cfg, P, accelerator.process_index)]
        global_tokens, nll_sum = _backward(accelerator, wrapped, micro, cfg.grad_accum)
        lr = lr_at(step, total_steps, cfg)
        grad_norm = _optimizer_step(accelerator, wrapped, optimizer, frozen, lr, cfg)

        step_loss = float(accelerator.reduce(nll_sum, reduction="sum").item()) / max(global_tokens, 1)
        last_loss = step_loss
        step += 1
        samples = min(step * G, len(order))
        tokens += global_tokens
        window_tokens += global_tokens
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            now = time.perf_counter()
            tps = window_tokens / max(now - window_time, 1e-9)
            window_tokens, window_time = 0, now
            row = {"step": step, "samples": samples, "tokens": tokens, "loss": step_loss, "lr": lr,
                   "grad_norm": grad_norm, "tokens_per_s": tps, "seconds": now - start_time}
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
            _log(accelerator, metrics_path, row, trackers)
        run_evals()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            _save_checkpoint(accelerator, out_dir, step, samples, tokens, fp, cfg.keep_checkpoints)
    bar.close()
    run_evals()

    model_dir = _save_model(accelerator, wrapped, tokenizer, out_dir, step, samples, tokens) if cfg.save_model else None
    if trackers:
        accelerator.end_training()
    model.eval()
    return TrainResult(step, samples, tokens, last_loss, model_dir, metrics_path, evals, resumed_from,
                       time.perf_counter() - start_time)


def _accelerator(model: nn.Module, cfg: LoopConfig, out_dir: Path):
    """The Accelerator of a run (bf16 autocast on GPUs, fp32 on CPUs for ``mixed_precision="auto"``) and the
    names of its trackers."""
    from accelerate import Accelerator

    gpu = next(model.parameters()).device.type != "cpu" or torch.cuda.is_available()
    precision = ("bf16" if gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    trackers = [t.strip() for t in cfg.trackers.split(",") if t.strip()]
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=not gpu,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers or None,
        project_dir=str(out_dir),
    )
    return accelerator, trackers


def _prepare(model: nn.Module, cfg: LoopConfig, accelerator, freeze: Mapping[str, torch.Tensor] | None):
    """The model wrapped with its loss (:class:`CausalLMLoss`), the AdamW optimizer and the region freeze (or
    ``None``), prepared by Accelerate; freezing is refused under FSDP 1 and DeepSpeed."""
    named = dict(model.named_parameters())
    frozen = None
    if freeze:
        from babelscope.models.params import norm_modules

        norms = set() if cfg.freeze_norms else set(norm_modules(model))
        frozen = RegionFreeze(named, freeze, norms)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    wrapped = CausalLMLoss(model, cfg.logit_chunk)
    groups = param_groups(model, cfg, frozen.ids if frozen else set())
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    kind = accelerator.distributed_type.value
    fsdp2 = kind == "FSDP" and getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", 1) == 2
    if frozen is not None and (kind == "DEEPSPEED" or (kind == "FSDP" and not fsdp2)):
        raise BabelscopeError(
            f"region freezing under {kind}{' (FSDP 1)' if kind == 'FSDP' else ''} is not supported (flat or "
            "partitioned parameters); launch with FSDP 2 (examples/accelerate/fsdp.yaml) or DDP (ddp.yaml)"
        )
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    if frozen is not None and fsdp2:  # the parameters are now DTensors: rebind and take each shard's rows
        frozen = RegionFreeze(dict(accelerator.unwrap_model(wrapped).model.named_parameters()), freeze, norms)
    return wrapped, optimizer, frozen


def _micro_indices(order: torch.Tensor, step: int, cfg: LoopConfig, processes: int, rank: int) -> list[list[int]]:
    """The sample indices of this process's micro-batches of optimizer step ``step``: micro-batch ``m`` takes
    samples ``step G + (m P + rank) b ...`` (``G = b x grad_accum x P``)."""
    b = cfg.micro_batch_size
    base = step * b * cfg.grad_accum * processes
    out = []
    for m in range(cfg.grad_accum):
        lo = base + (m * processes + rank) * b
        out.append(order[lo : min(lo + b, len(order))].tolist())
    return out


def _backward(accelerator, wrapped, micro: list[dict[str, torch.Tensor]], grad_accum: int
              ) -> tuple[int, torch.Tensor]:
    """Forward and backward of a step's micro-batches with the loss over the step's global target count ``T``
    (all-reduced first); returns ``T`` and this process's summed NLL."""
    P = accelerator.num_processes
    local = torch.tensor([sum(target_count(x) for x in micro)], device=accelerator.device)
    global_tokens = int(accelerator.reduce(local, reduction="sum").item())
    denom = max(global_tokens, 1)
    nll_sum = torch.zeros((), device=accelerator.device)
    for batch in micro:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.accumulate(wrapped), accelerator.autocast():
            nll, _ = wrapped(**batch)
            # accelerator.backward divides by grad_accum and DDP averages over P: undo both, then
            # divide by the step's global token count.
            accelerator.backward(nll * (grad_accum * P / denom))
        nll_sum += nll.detach().float()
    return global_tokens, nll_sum


def _optimizer_step(accelerator, wrapped, optimizer, frozen: RegionFreeze | None, lr: float, cfg: LoopConfig
                    ) -> float | None:
    """One AdamW step at ``lr``: frozen entries saved and their gradients zeroed, gradients clipped, the frozen
    tensors' decay applied to their other entries, frozen entries restored. Returns the gradient norm."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if frozen is not None:
        frozen.snapshot()
        frozen.zero_grads()
    grad_norm = None
    if cfg.max_grad_norm:
        norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
        grad_norm = float(norm) if norm is not None else None  # DeepSpeed clips inside its step
    if frozen is not None:
        frozen.decay(lr, cfg.weight_decay)
    optimizer.step()
    if frozen is not None:
        frozen.restore()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _log(accelerator, metrics_path: Path, row: dict[str, Any], trackers: list[str]) -> None:
    """A line of ``metrics.jsonl`` (main process) and the trackers' log."""
    if accelerator.is_main_process:
        with open(metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    if trackers:
        accelerator.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])


def _save_model(accelerator, wrapped, tokenizer, out_dir: Path, step: int, samples: int, tokens: int) -> Path:
    """The trained model as a Hugging Face directory ``out_dir/model`` (shards gathered under FSDP and
    DeepSpeed, written to a temporary folder and renamed), ``trained.json``; the checkpoints are removed."""
    from babelscope.runs import write_json

    model_dir = out_dir / "model"
    inner = accelerator.unwrap_model(wrapped).model
    state = None
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):  # gather the shards
        full = accelerator.get_state_dict(wrapped)
        state = {k.removeprefix("model."): v for k, v in full.items()} if full is not None else None
    if accelerator.is_main_process:
        tmp = out_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        inner.config.use_cache = True
        inner.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
        write_json(out_dir / "trained.json", {"steps": step, "samples": samples, "tokens": tokens})
        remove_checkpoints(out_dir)  # the finished model supersedes them
    accelerator.wait_for_everyone()
    return model_dir
