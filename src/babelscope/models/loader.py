"""Load any Hugging Face model (embedded default, local directory, ``.gguf`` file or hub id) unmodified.

``load_model(spec)`` returns ``(model, tokenizer, info)``. The class comes from the config: causal LMs load with
``AutoModelForCausalLM``, encoders (BERT / XLM-R family) with ``AutoModel``. Weights load from safetensors or
GGUF only, and ``trust_remote_code`` stays off unless the caller asks for it. A LoRA adapter directory (from
``babelscope transfer sft --save adapter``) loads onto the base model it records, merged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.settings import cache_dir

DEFAULT_MODEL = "gemma-3-270m"
_ENCODER_TYPES = {"bert", "xlm-roberta", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "camembert"}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- spec resolution
def resolve_spec(spec: str) -> tuple[Path | str, str | None]:
    """Turn a model spec into ``(directory_or_hub_id, gguf_file_name_or_None)``, converting GGUF once."""
    if spec == DEFAULT_MODEL:
        from babelscope.models.default import default_model_dir

        return default_model_dir(), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BabelscopeError(f"{spec}: no such GGUF file; give the path of a .gguf model file")
        from babelscope.models.default import converted_gguf_dir

        return converted_gguf_dir(path), None
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise BabelscopeError(
                f"{spec}: not a model directory (no config.json); give a Hugging Face model directory, "
                f"a .gguf file, a hub id or '{DEFAULT_MODEL}'"
            )
        return path, None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BabelscopeError(f"{spec}: no such model directory; check the path")
    return spec, None  # a hub id


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _load_config(source: Path | str, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except OSError as exc:
        if isinstance(source, Path):
            raise BabelscopeError(f"{source}: cannot read the model config ({exc}); is it a model directory?") from None
        hint = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise BabelscopeError(
            f"{source}: cannot fetch this hub model{hint}; download it where the hub is reachable "
            f"(huggingface-cli download {source} --local-dir DIR) and pass the local DIR instead"
        ) from None


def _weights_checksum(source: Path | str, model) -> str:
    """sha256 over the safetensors files (cached by path, size and mtime), else over the tensors."""
    files = sorted(Path(source).glob("*.safetensors")) if isinstance(source, Path) else []
    if not files:
        return state_dict_checksum(model)
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    memo = cache_dir() / "checksums" / f"{key}.txt"
    if memo.exists():
        return memo.read_text().strip()
    from babelscope.runs import file_sha256, write_text

    digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
    write_text(memo, digest)
    return digest


def state_dict_checksum(model) -> str:
    """sha256 over a model's tensors in name order (for models built in memory)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def model_kind(config) -> str:
    """``"causal"`` for decoder LMs, ``"encoder"`` for BERT / XLM-R style models (read from the config)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("CausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if getattr(config, "model_type", "") in _ENCODER_TYPES or archs:
        return "encoder"
    return "causal"


def describe(model, tokenizer, spec: str, source: Path | str, checksum: str | None = None) -> ModelInfo:
    """The info record of a loaded model."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = spec if spec == DEFAULT_MODEL else Path(str(spec)).name or str(spec)
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
):
    """Load ``spec`` and return ``(model, tokenizer, info)``; the model is in eval mode.

    ``spec`` is ``gemma-3-270m`` (embedded default), a local Hugging Face directory (also ones Babelscope
    writes, with extended tokenizers), a ``.gguf`` file (converted once into a cached safetensors directory)
    or a hub id (online; offline it fails with a message saying how to pass a local path).
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if (Path(spec).expanduser() / "adapter_config.json").is_file():
        return load_adapter(Path(spec).expanduser(), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    source, _ = resolve_spec(spec)
    config = _load_config(source, trust_remote_code)
    kind = model_kind(config)
    try:
        torch_dtype = getattr(torch, dtype)
    except AttributeError:
        raise BabelscopeError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    if isinstance(source, Path) and not list(source.glob("*.safetensors")):
        raise BabelscopeError(
            f"{source}: no .safetensors weights (Babelscope does not load pickle .bin files); "
            "convert them with `save_pretrained(..., safe_serialization=True)`"
        )
    try:
        model = cls.from_pretrained(
            str(source), dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise BabelscopeError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    model.eval()
    model.to(resolve_device(device))
    info = describe(model, tokenizer, spec, source)
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
    from babelscope.runs import file_sha256

    files = sorted(path.glob("*.safetensors"))
    checksum = hashlib.sha256((base_info.checksum + "".join(file_sha256(f) for f in files)).encode()).hexdigest()
    return model, tokenizer, describe(model, tokenizer, str(path), path, checksum=checksum)
