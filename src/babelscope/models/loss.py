"""Chunked fused linear cross-entropy: the LM head and its loss without the N x V logits.

For hidden vectors ``h_i`` (N x H), head weight ``W`` (V x H) and targets ``y_i``, the summed loss is

    L = Σ_i [ logsumexp_v z_iv - z_{i y_i} ],   z_i = s · c · tanh((W h_i + b) / c)

(``c`` the final-logit softcap when the architecture has one, ``s`` a logit scale; both optional). Its gradient
with respect to the logits is ``∂L/∂z_i = softmax(z_i) - onehot(y_i)``, so per chunk of ``chunk`` rows the head
is applied once, the logits' gradient formed in place, and both ``∂L/∂h = G W`` and ``∂L/∂W = Gᵀ h`` accumulated
in the same pass (the technique of Liger-Kernel's ``FusedLinearCrossEntropy`` and Apple's Cut Cross-Entropy,
Wijmans et al. 2025, here in plain PyTorch so it runs on CPUs). Only one ``chunk x V`` float32 block exists at a
time; backward just scales the stored gradients by the incoming ``∂/∂L``. The exponentials are computed once
per chunk, for the logsumexp and the softmax both (``torch.logsumexp`` then ``exp(z - lse)`` took two passes:
61 ms of the 256 x 262k chunk's ~0.5 s on 2 CPU threads).

:func:`head_nll` is the one head + loss of the package (the engine's gradients, the training loop): this fused
pass for a plain linear head, else the model's own head in checkpointed chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100


@dataclass
class HeadSpec:
    """The LM head as the fused loss needs it: weight, bias and the logit post-processing."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    scale: float = 1.0


def head_spec(model: nn.Module) -> HeadSpec | None:
    """The model's LM head as a :class:`HeadSpec`, or ``None`` when it is not a plain linear map (then use
    :func:`babelscope.models.arch.logits_from_hidden`). Mirrors that function's post-processing."""
    from babelscope.models.arch import lm_head, text_config

    head = lm_head(model)
    if not isinstance(head, nn.Linear) or head._forward_hooks or head._forward_pre_hooks:
        return None
    config = text_config(model)
    scale = 1.0
    if getattr(config, "logit_scale", None) and isinstance(config.logit_scale, float):  # Cohere
        scale *= config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        scale /= config.logits_scaling
    return HeadSpec(head.weight, head.bias, getattr(config, "final_logit_softcapping", None) or None, scale)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of ``targets`` under ``softcap(hidden @ weight.T + bias) * scale``; gradients in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, softcap, scale: float):  # type: ignore[override]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        compute = hidden.dtype
        acc = torch.promote_types(compute, torch.float32)  # softmax and sums in float32 (float64 stays)
        w = weight.to(compute)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ w.t()).to(acc)
            if bias is not None:
                logits += bias.to(acc)
            if softcap:
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * (softcap * scale)
            elif scale != 1.0:
                logits.mul_(scale)
            rows = torch.arange(h.shape[0], device=h.device)
            picked = logits[rows, y]
            peak = logits.amax(dim=-1)
            grad = logits.sub_(peak[:, None]).exp_()  # one exp pass for both the loss and its gradient
            total = grad.sum(dim=-1)
            loss += (total.log() + peak - picked).sum()  # logsumexp = log Σ exp(z - max) + max
            grad.div_(total[:, None])  # softmax, in place of the logits
            grad[rows, y] -= 1.0
            if softcap:  # d(s c tanh(u/c))/du = s (1 - tanh²)
                grad.mul_(tanh.square_().neg_().add_(1.0)).mul_(scale)
                del tanh
            elif scale != 1.0:
                grad.mul_(scale)
            if need_b:
                grad_b += grad.sum(0)
            grad = grad.to(compute)
            if need_h:
                torch.matmul(grad, w, out=grad_h[start : start + chunk])
            if need_w:
                grad_w.addmm_(grad.t().to(acc), h.to(acc))
            del grad, logits
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)),
        )
        ctx.have = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        grads = []
        for g, have, dtype in zip(ctx.saved_tensors, ctx.have, ctx.dtypes, strict=True):
            # in place: no second V x H block for the head's gradient (the stored one is used once)
            grads.append(g.mul_(grad_loss.to(g.dtype)).to(dtype) if have else None)
        return grads[0], grads[1], grads[2], None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    head: HeadSpec,
    targets: torch.Tensor,
    chunk: int = 512,
    ignore_index: int = IGNORE,
) -> tuple[torch.Tensor, int]:
    """``(summed NLL over the non-ignored targets, their count)`` for hidden vectors ``(..., H)`` and aligned
    ``targets`` ``(...)`` (already shifted: ``targets[i]`` is predicted from ``hidden[i]``). Divide by a global
    token count yourself (token-count normalisation)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    if not bool(keep.all()):
        idx = keep.nonzero()[:, 0]
        hidden, targets = hidden.index_select(0, idx), targets.index_select(0, idx)
    count = int(targets.numel())
    if count == 0:  # still a graph node, so every parameter gets a (zero) gradient under DDP
        return hidden.sum() * 0.0 + head.weight.sum() * 0.0, 0
    loss = _FusedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, head.softcap, head.scale)
    return loss, count


def head_nll(
    model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 512, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, int]:
    """``(summed NLL over the non-ignored targets, their count)`` of ``model``'s LM head on hidden vectors
    ``(..., H)`` with aligned targets ``(...)`` (``targets[i]`` predicted from ``hidden[i]``), the head applied
    ``chunk`` positions at a time.

    A plain linear head (:func:`head_spec`) takes the fused linear cross-entropy above: the ``N x V`` logits
    never exist and their gradient is formed as they are computed. Any other head (hooked, wrapped, sharded)
    runs through :func:`babelscope.models.arch.logits_from_hidden` in activation-checkpointed chunks,
    ``Σ_i logsumexp_v z_iv - z_{i y_i}``: one ``chunk x V`` block lives at a time, recomputed in backward."""
    head = head_spec(model)
    if head is not None:
        return fused_linear_cross_entropy(hidden, head, targets, chunk, ignore_index)
    from torch.utils.checkpoint import checkpoint

    from babelscope.models.arch import logits_from_hidden

    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    if not bool(keep.all()):
        idx = keep.nonzero()[:, 0]
        hidden, targets = hidden.index_select(0, idx), targets.index_select(0, idx)
    count = int(targets.numel())
    if count == 0:  # still a graph node through the head, so every parameter gets a (zero) gradient under DDP
        return logits_from_hidden(model, hidden).sum() * 0.0, 0

    def nll(hc: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        logits = logits_from_hidden(model, hc)
        return (torch.logsumexp(logits, dim=-1) - logits.gather(1, tc[:, None])[:, 0]).sum()

    parts = [checkpoint(nll, hidden[c : c + chunk], targets[c : c + chunk], use_reentrant=False)
             for c in range(0, count, chunk)]
    return torch.stack(parts).sum(), count


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """The reference: summed NLL from materialised float32 logits (what ``model(..., labels=)`` computes, unsummed)."""
    logits = logits.reshape(-1, logits.shape[-1]).to(torch.promote_types(logits.dtype, torch.float32))
    return nn.functional.cross_entropy(logits, targets.reshape(-1), ignore_index=ignore_index, reduction="sum")
