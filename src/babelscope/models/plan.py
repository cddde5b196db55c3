"""A memory plan before the run: what each device will hold, from the model's ``config.json`` alone.

The parameter counts come from the model built on the meta device (no weights read: a hub id needs a local
directory offline). Per device, in bytes (``b`` = bytes per value of the dtype, ``n`` = devices):

* weights ``P b`` (``/ n`` under FSDP 2 or a device map);
* gradients of what is trained or scored: the block parameters for ``importance`` (the paper's θ ⊙ ∇ covers the
  blocks), every parameter for ``pretrain``/``sft`` (the LoRA factors only with ``lora``), ``/ n`` under FSDP 2;
* optimizer state: AdamW's two moments in float32, ``8`` bytes per trained value (``/ n`` under FSDP 2); the
  parameters and their gradients stay in the model's dtype (no float32 master copy);
* scores: importance's float32 aggregate over the block parameters and one language's signed scores, which the
  writer thread still holds while the next language runs (``2 x 4 P_blocks``, ``/ n`` under FSDP 2);
* activations: the tensors autograd keeps per block for the backward, counted for a Llama/Gemma block (RMS
  norms, attention through SDPA, gated FFN): per token ``(2 N + 2) H + 5 h_q + 2 q (h_q + h_kv) + 4 F`` values.
  A norm that feeds linear layers keeps its input, the normalised vector and its output (3 H; Llama's two),
  one on a branch's output its input and the normalised vector (2 H; Gemma 3's other two), so ``N`` hidden-size
  norms give ``(2 N + 2) H``; attention keeps the rotated queries, the keys and values (repeated to the query
  width when a mask sends grouped-query attention through ``repeat_kv``), its output and the output projection's
  input (``5 h_q``); query/key norms (``q`` = 1 in Gemma 3) their inputs and outputs; the FFN the gate, the up
  projection, the activation and the product (``4 F``). ``h_q``/``h_kv``: query / key-value widths, ``F``: the
  FFN width. Times ``B T`` tokens and the layers (one block plus each block's input with gradient
  checkpointing). On the CPU, SDPA with a padding mask runs its math kernel, which keeps the attention scores
  and probabilities, ``2 a T`` more values per token (``a`` query heads); a GPU's fused kernels keep none. A
  forward without gradients (``ppl``) holds one block's working set, ``(4 H + h_q + 2 h_kv +
  3 F) B T`` values;
* logits: the LM head runs on chunks of ``C = 256`` positions, ``C V`` float32 values held at a time in the
  backward (the fused loss of ``babelscope.models.loss`` turns a chunk's logits into their gradient in place;
  twice with a final-logit softcap, whose ``tanh`` is kept); scoring (``ppl``) reuses one buffer and may copy up
  to a chunk of rows more (the argmax of positions whose target ties the maximum), so ``2 C V``.

The rules are those of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
§4.1) with the tensor count redone for these blocks. ``fits`` compares the total with the device's capacity less
a reserve (10%, allocator fragmentation and the framework's own buffers); ``options`` lists what makes it fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from babelscope.errors import BabelscopeError

COMMANDS = ("importance", "pretrain", "sft", "ppl")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_CHUNK = 256
RESERVE = 0.10
GiB = 2**30


@dataclass
class Shape:
    """What the plan needs of a model: parameter counts and block widths."""

    params: int  # every parameter (tied ones once)
    block_params: int  # inside the transformer blocks
    layers: int
    hidden: int
    ffn: int
    q_width: int
    heads: int
    kv_width: int
    vocab: int
    norms: int  # hidden-size norm vectors per block
    qk_norm: bool  # query/key norms (Gemma 3)
    softcap: bool  # a final-logit softcap (Gemma 2)
    linear_shapes: list[tuple[int, int]] = field(default_factory=list)  # (in, out) of one block's matrices

    @staticmethod
    def of_config(config: Any) -> Shape:
        """From a transformers config: the model built on the meta device (nothing allocated)."""
        import torch
        from accelerate import init_empty_weights
        from torch import nn

        from babelscope.models.arch import block_list, text_config
        from babelscope.models.specs import auto_class, model_kind

        with init_empty_weights():
            model = auto_class(config, model_kind(config)).from_config(config)
        model.tie_weights()
        _, blocks = block_list(model)
        tc = text_config(model)
        heads, kv = tc.num_attention_heads, getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
        block = blocks[0]
        norms = sum(1 for m in block.modules() if "norm" in type(m).__name__.lower()
                    and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 1
                    and m.weight.shape[0] == tc.hidden_size)
        linears = [(m.in_features, m.out_features) for m in block.modules() if isinstance(m, nn.Linear)]
        qk_norm = any(n.endswith(("q_norm", "k_norm")) for n, _ in block.named_modules())
        return Shape(
            params=sum(p.numel() for p in model.parameters()),
            block_params=sum(p.numel() for p in blocks.parameters()),
            layers=len(blocks), hidden=tc.hidden_size, ffn=tc.intermediate_size, q_width=heads * head_dim, heads=heads,
            kv_width=kv * head_dim, vocab=tc.vocab_size, norms=norms, qk_norm=qk_norm,
            softcap=bool(getattr(tc, "final_logit_softcapping", None)), linear_shapes=linears,
        )


def parse_devices(text: str) -> tuple[int, int]:
    """``8x80GiB`` -> ``(8, bytes)``; ``80GiB`` is one device."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?(.+)", text)
    from babelscope.models.placement import parse_size

    count = int(m.group(1)) if m and m.group(1) else 1
    if count < 1:
        raise BabelscopeError(f"--devices {text!r}: give at least one device, like 8x80GiB")
    return count, parse_size(m.group(2) if m else text, f"--devices {text}")


@dataclass
class Plan:
    """Bytes per device for one command and setting (see the module docstring)."""

    command: str
    devices: int
    capacity: int
    setting: dict[str, Any]
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= (1 - RESERVE) * self.capacity


def plan_memory(shape: Shape, command: str, devices: int = 1, capacity: int = 80 * GiB, seq_len: int = 512,
                batch_size: int = 4, dtype: str = "float32", fsdp: bool = False, device_map: bool = False,
                checkpointing: bool = False, lora_rank: int = 0, offload: bool = False, device: str = "cuda") -> Plan:
    """Bytes per device of ``command`` (see the module docstring); ``batch_size`` is per process (FSDP 2 and data
    parallelism give each device its own batch), a device map runs the batch through the devices in turn.
    ``offload`` (``ppl`` with a device map): the weights that do not fit wait on the CPU or the disk, each device
    keeping as many blocks as fit beside the working set, and at least one."""
    if command not in COMMANDS:
        raise BabelscopeError(f"--command {command!r}: use one of {', '.join(COMMANDS)}")
    b = DTYPE_BYTES[dtype]
    split = devices if (fsdp or device_map) and devices > 1 else 1
    tokens = batch_size * seq_len
    s = shape
    parts: dict[str, int] = {"weights": s.params * b // split}
    training = command != "ppl"
    if command == "importance":
        parts["gradients"] = s.block_params * b // (devices if fsdp else 1)
        parts["scores"] = 2 * s.block_params * 4 // (devices if fsdp else 1)
    elif command in ("pretrain", "sft"):
        trained = s.params if not lora_rank else s.layers * sum(lora_rank * (i + o) for i, o in s.linear_shapes)
        shard = devices if fsdp and not lora_rank else 1
        parts["gradients"] = trained * b // shard
        parts["optimizer"] = trained * 8 // shard
    if training:
        per_token = ((2 * s.norms + 2) * s.hidden + 5 * s.q_width + 2 * s.qk_norm * (s.q_width + s.kv_width)
                     + 4 * s.ffn + (2 * s.heads * seq_len if device == "cpu" else 0))
        layers_held = s.layers // (devices if device_map and devices > 1 else 1)
        held = per_token + layers_held * s.hidden if checkpointing else per_token * layers_held
        parts["activations"] = tokens * held * b
    else:
        parts["activations"] = tokens * (4 * s.hidden + s.q_width + 2 * s.kv_width + 3 * s.ffn) * b
    parts["logits"] = (1 + (s.softcap if training else 1)) * LOGIT_CHUNK * s.vocab * 4
    if offload and not training:
        room = int((1 - RESERVE) * capacity) - parts["activations"] - parts["logits"]
        block = s.block_params // max(s.layers, 1) * b
        parts["weights"] = max(block, min(parts["weights"], room // block * block))
    setting = dict(seq_len=seq_len, batch_size=batch_size, dtype=dtype, fsdp=fsdp, device_map=device_map,
                   checkpointing=checkpointing, lora_rank=lora_rank, offload=offload, device=device)
    return Plan(command, devices, capacity, setting, parts)


def options_that_fit(shape: Shape, command: str, devices: int, capacity: int, **kw: Any) -> list[Plan]:
    """The plans that fit, trying the options in order of cost: as asked, then with gradient checkpointing,
    FSDP 2 (several devices), both, and LoRA (rank 16, training) or a device map (forward only)."""
    tries: list[dict[str, Any]] = [{}]
    if command == "ppl":
        tries += [{"device_map": True}, {"device_map": True, "offload": True}]
    else:
        tries += [{"checkpointing": True}]
        if devices > 1:
            tries += [{"fsdp": True}, {"fsdp": True, "checkpointing": True}]
        if command in ("pretrain", "sft"):
            tries += [{"lora_rank": 16}, {"lora_rank": 16, "checkpointing": True}]
            if devices > 1:
                tries += [{"lora_rank": 16, "fsdp": True, "checkpointing": True}]
    out = []
    for extra in tries:
        plan = plan_memory(shape, command, devices, capacity, **{**kw, **extra})
        if plan.fits:
            out.append(plan)
    return out


def describe_plan(plan: Plan) -> str:
    """``weights 12.6, gradients 12.6 ... = 40.1 GiB of 80 (fits)``."""
    parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in plan.parts.items())
    verdict = "fits" if plan.fits else "does not fit"
    return f"{parts} = {plan.total / GiB:.2f} GiB of {plan.capacity / GiB:.0f} per device ({verdict})"


def option_label(plan: Plan) -> str:
    s = plan.setting
    names = [n for n, on in (("FSDP 2", s["fsdp"]), ("device map", s["device_map"]),
                             ("CPU/disk offload", s["offload"]), ("gradient checkpointing", s["checkpointing"])) if on]
    if s["lora_rank"]:
        names.append(f"LoRA r={s['lora_rank']}")
    return " + ".join(names) or "as asked"
