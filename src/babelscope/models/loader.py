"""Load any Hugging Face model (embedded default, local directory, ``.gguf`` file or hub id) unmodified.

``load_model(spec)`` returns ``(model, tokenizer, info)``. The kind comes from transformers' own auto-class
mappings (:func:`model_kind`): a model type with a causal-LM class (``Gemma3ForConditionalGeneration`` for
``gemma3`` too) loads with ``AutoModelForCausalLM``, an image-text-to-text one (Qwen2.5-VL) with
``AutoModelForImageTextToText`` (text-only inputs), anything else (BERT / XLM-R family) with ``AutoModel`` as an
encoder. A causal model is checked once at load time: the engine's log-likelihood of a short text must equal the
one from ``model(...).logits``, so an architecture with its own logit processing is never silently mis-scored.
Weights load from safetensors or GGUF only, and ``trust_remote_code`` stays off unless the caller asks for it.
A LoRA adapter directory (from ``babelscope transfer sft --save adapter``) loads onto the base model it records,
merged.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from babelscope.caches import digest, file_sha256, json_sha256
from babelscope.errors import BabelscopeError
from babelscope.models.specs import (  # noqa: F401  (re-exported: they were here)
    _load_config,
    _offline,
    auto_class,
    model_kind,
    resolve_spec,
)
from babelscope.settings import cache_dir

DEFAULT_MODEL = "gemma-3-270m"
#: The text of the load-time logits check (a few tokens in two scripts).
CHECK_TEXT = "The quick brown fox. Le renard brun rapide."


@dataclass
class ModelInfo:
    """What a result needs to say about the model that produced it."""

    spec: str
    name: str
    kind: str  # "causal" or "encoder"
    model_type: str
    parameters: int
    layers: int
    hidden_size: int
    vocab_size: int
    checksum: str  # sha256 over the weight files (or tensors, for in-memory models)
    source: str  # path the weights were read from
    dtype: str
    device_map: dict[str, str] | None = None  # module -> device when Accelerate spread the model (--device-map)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- spec resolution
def _weights_checksum(source: Path | str, model) -> str:
    """sha256 over the safetensors files (cached by path, size and mtime), else over the tensors."""
    files = sorted(Path(source).glob("*.safetensors")) if isinstance(source, Path) else []
    if not files:
        return state_dict_checksum(model)
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = json_sha256(stamp, sort_keys=False)
    memo = cache_dir() / "checksums" / f"{key}.txt"
    if memo.exists():
        return memo.read_text().strip()
    from babelscope.runs import write_text

    checksum = digest(file_sha256(f) for f in files)
    write_text(memo, checksum)
    return checksum


def state_dict_checksum(model) -> str:
    """sha256 over a model's tensors in name order (for models built in memory)."""
    return digest(part for name, tensor in sorted(model.state_dict().items())
                  for part in (name, tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy()
                               .tobytes()))


def _byte_dtype():
    import torch

    return torch.uint8


def check_logits(model, tokenizer, text: str = CHECK_TEXT) -> float:
    """Refuse a causal model whose scores through the engine (base model + LM head + the logit processing
    :func:`babelscope.models.arch.logits_from_hidden` knows) differ from its own ``model(...).logits``.

    Compares the summed token log-likelihood of ``text``; returns the relative difference. The bound is 1e-3
    relative in float32 (the two paths run the same matrix products, so only rounding separates them, far
    below that) and 2e-2 in 16-bit formats; a missed logit softcapping or scaling is off by far more."""
    import torch

    from babelscope.models.engine import Engine
    from babelscope.models.placement import input_device

    engine = Engine(model, tokenizer, batch_size=1, progress=False)
    ours = engine.rolling_loglikelihood([text], window=64)[0].nll
    theirs = 0.0
    for seq, n in engine.windows(engine.encode([text])[0], 64):  # [BOS] + chunk, as the engine scores it
        x = torch.tensor([seq], device=input_device(model))
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0, :-1]
        theirs -= float(torch.log_softmax(logits.float(), -1)[-n:].gather(1, x[0, -n:, None]).sum())
    dtype = next(model.parameters()).dtype
    if not (math.isfinite(ours) and math.isfinite(theirs)):
        raise BabelscopeError(
            f"{type(model).__name__} in {str(dtype).replace('torch.', '')} gives non-finite scores on a short text "
            "(overflow); load it in float32 or bfloat16"
        )
    diff = abs(ours - theirs) / max(abs(theirs), 1e-30)
    bound = 1e-3 if dtype == torch.float32 else 2e-2
    if not diff <= bound:
        raise BabelscopeError(
            f"{type(model).__name__}: the engine's scores differ from model(...).logits (NLL {ours:.4f} vs "
            f"{theirs:.4f} on a short text): this architecture processes its logits in a way Babelscope does "
            "not know; report it with the model's config"
        )
    return diff


#: what a Babelscope step that saved a model directory did to its base, by the record the step wrote there
#: (``None``: the record is in the step folder above the model directory, with the step's ``results.json``)
MADE_BY = (("babelscope_sft.json", "SFT"), ("babelscope_adapter.json", "SFT"),
           ("babelscope-vocab.json", "vocabulary"), (None, "pretraining"))  # fmt: skip


def model_name(spec: str, _depth: int = 0) -> str:
    """The name results and reports give a model spec: the embedded default's name, a hub id, a file or directory
    name; a model directory that a Babelscope step saved (``STEP/model`` of ``transfer sft``, ``transfer vocab``,
    ``transfer pretrain``) names its base and the step, from the records it carries:
    ``gemma-3-270m + SFT (sft)``, ``gemma-3-270m + pretraining (pretrain-64) + SFT (sft-pt64)``."""
    from babelscope.models.named import NAMED_MODELS

    if spec in NAMED_MODELS:
        return spec
    path = Path(str(spec)).expanduser()
    plain = path.name.removesuffix(".gguf") or str(spec)
    if _depth > 8 or not path.is_dir():
        return plain
    step = path.parent.name if path.name == "model" and path.parent.name else path.name
    for record, what in MADE_BY:
        try:
            if record is None:  # further pretraining: trained.json and the step's config (its base model)
                if not (path.parent / "trained.json").is_file():
                    continue
                base = json.loads((path.parent / "results.json").read_text(encoding="utf-8"))["config"]["model"]
            elif (path / record).is_file():
                doc = json.loads((path / record).read_text(encoding="utf-8"))
                base = doc["base_model"]["spec"] if "base_model" in doc else doc["base"]
                what = f"{doc['lang']} {what}" if doc.get("lang") else what
            else:
                continue
        except (OSError, ValueError, KeyError, TypeError):  # a record we cannot read: the plain name
            return plain
        if not isinstance(base, str) or not base:
            return plain
        return f"{model_name(base, _depth + 1)} + {what} ({step})"
    return plain


def describe(model, tokenizer, spec: str, source: Path | str, checksum: str | None = None) -> ModelInfo:
    """The info record of a loaded model (its ``name``: :func:`model_name`)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = model_name(str(spec))
    return ModelInfo(
        spec=str(spec),
        name=name,
        kind=model_kind(config),
        model_type=config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        layers=int(getattr(text_config, "num_hidden_layers", 0)),
        hidden_size=int(getattr(text_config, "hidden_size", 0)),
        vocab_size=int(getattr(text_config, "vocab_size", len(tokenizer))),
        checksum=checksum or _weights_checksum(source, model),
        source=str(source),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
    )


def resolve_device(device: str | None) -> str:
    """``device``, or by default this process's GPU (``cuda:LOCAL_RANK`` under ``accelerate launch``), else CPU."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    return device


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | None = None,
    offload_dir: str | None = None,
    *,
    source: Path | str | None = None,
    tokenizer=None,
):
    """Load ``spec`` and return ``(model, tokenizer, info)``; the model is in eval mode.

    ``spec`` is a named model (``gemma-3-270m``, the embedded default; ``smollm2-135m``, ``qwen2.5-coder-0.5b``:
    :data:`babelscope.models.named.NAMED_MODELS`), a local Hugging Face directory (also ones Babelscope
    writes, with extended tokenizers), a ``.gguf`` file (converted once into a cached safetensors directory)
    or a hub id (online; offline it fails with a message saying how to pass a local path).
    ``device_map`` (``auto``, ``balanced``, ``sequential``) with ``max_memory`` and ``offload_dir`` spreads the
    model over devices, the CPU and the disk instead of ``device`` (:mod:`babelscope.models.placement`).
    ``source``: ``spec`` already resolved (:func:`resolve_spec`), and ``tokenizer``: one already loaded from it, so
    that a step that read them before the model (to check its options) resolves and loads each once.
    """
    import torch
    from transformers import AutoTokenizer

    if (Path(spec).expanduser() / "adapter_config.json").is_file():
        if device_map:
            raise BabelscopeError(f"--device-map {device_map}: {spec} is a LoRA adapter, merged into its base on "
                                  "load; merge it into a model directory first, or leave --device-map out")
        return load_adapter(Path(spec).expanduser(), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if source is None:
        source, _ = resolve_spec(spec)
    config = _load_config(source, trust_remote_code)
    kind = model_kind(config)
    try:
        torch_dtype = getattr(torch, dtype)
    except AttributeError:
        raise BabelscopeError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    cls = auto_class(config, kind)
    if isinstance(source, Path) and not list(source.glob("*.safetensors")):
        raise BabelscopeError(
            f"{source}: no .safetensors weights (Babelscope does not load pickle .bin files); "
            "convert them with `save_pretrained(..., safe_serialization=True)`"
        )
    placed: dict[str, Any] = {}
    if device_map:
        from babelscope.models.placement import offload_folder, plan_device_map

        placed = {"device_map": plan_device_map(spec, device_map, max_memory, offload_dir, dtype, trust_remote_code)}
        if "disk" in placed["device_map"].values():
            placed["offload_folder"] = offload_folder(offload_dir)
    try:
        model = cls.from_pretrained(
            str(source), dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **placed
        )
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise BabelscopeError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    model.eval()
    if not placed:
        model.to(resolve_device(device))
    if kind == "causal":
        check_logits(model, tokenizer)
    info = describe(model, tokenizer, spec, source)
    if placed:
        info.device_map = {k: str(v) for k, v in placed["device_map"].items()}
    return model, tokenizer, info


def load_adapter(path: Path, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False):
    """A peft LoRA adapter merged into the base model it was trained on (``babelscope_adapter.json``: base spec,
    weights sha256 and vocabulary size); an adapter whose base has other weights is refused."""
    from transformers import AutoTokenizer

    record_path = path / "babelscope_adapter.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
    else:  # a peft adapter made elsewhere: its own record of the base
        record = {"base": json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")}
    if not record.get("base"):
        raise BabelscopeError(f"{path}: the adapter names no base model; it cannot be loaded")
    model, _, base_info = load_model(record["base"], dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    rows = model.get_input_embeddings().weight.shape[0]
    if record.get("base_checksum") not in (None, base_info.checksum) or record.get("vocab_size") not in (None, rows):
        raise BabelscopeError(f"{path}: an adapter for another base model (trained on {record['base']} with weights "
                              f"sha256 {str(record.get('base_checksum'))[:12]}, that model now has "
                              f"{base_info.checksum[:12]}); load it onto the base it was trained on")
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    files = sorted(path.glob("*.safetensors"))
    checksum = digest([base_info.checksum, *(file_sha256(f) for f in files)])
    return model, tokenizer, describe(model, tokenizer, str(path), path, checksum=checksum)
