"""From a model spec to what loading needs, without loading: the directory or hub id (named models and GGUF files
converted once), the config, its kind (causal or encoder) and the Auto class. Read by the loader and by the
memory planner (:mod:`babelscope.models.placement`), which plans a model from its ``config.json`` alone."""

from __future__ import annotations

import os
from pathlib import Path

from babelscope.errors import BabelscopeError


def resolve_spec(spec: str) -> tuple[Path | str, str | None]:
    """Turn a model spec into ``(directory_or_hub_id, gguf_file_name_or_None)``, converting GGUF once."""
    from babelscope.models.named import NAMED_MODELS, converted_gguf_dir, named_model_dir

    if spec in NAMED_MODELS:
        return named_model_dir(spec), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BabelscopeError(f"{spec}: no such GGUF file; give the path of a .gguf model file")
        return converted_gguf_dir(path), None
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise BabelscopeError(
                f"{spec}: not a model directory (no config.json); give a Hugging Face model directory, "
                f"a .gguf file, a hub id or a named model ({', '.join(NAMED_MODELS)})"
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


def model_kind(config) -> str:
    """``"causal"`` for generative decoders, ``"encoder"`` otherwise, from transformers' auto-class mappings.

    A config whose ``architectures`` or ``model_type`` appears in the causal-LM mapping (``gemma3`` ->
    ``Gemma3ForConditionalGeneration``, ``llama`` -> ``LlamaForCausalLM``) or the image-text-to-text mapping
    (``qwen2_5_vl``) is causal; BERT / XLM-R (masked-LM types, unless ``is_decoder``) and every other type are
    encoders."""
    from transformers.models.auto import modeling_auto as auto

    generative = [auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES]
    classes = {c for mapping in generative for c in mapping.values()}
    archs = getattr(config, "architectures", None) or []
    if archs:  # the saved classes say it (BertModel, BertForMaskedLM: encoders)
        return "causal" if any(a in classes for a in archs) else "encoder"
    model_type = getattr(config, "model_type", "")
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "encoder"  # BERT / XLM-R also have a causal-LM class, but as encoders unless is_decoder
    return "causal" if any(model_type in mapping for mapping in generative) else "encoder"


def auto_class(config, kind: str):
    """The Auto class that loads ``config``'s model of ``kind``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto import modeling_auto as auto

    if kind != "causal":
        return AutoModel
    if getattr(config, "model_type", "") in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    return AutoModelForImageTextToText
