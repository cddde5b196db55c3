"""Shared fixtures: tiny models built in-process (random weights, real tokenizers trained here), the real
embedded default model, and the real multilingual encoder built by ../shared/tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "All human beings are born free and equal in dignity and rights.",
]


def build_tokenizer(out: Path | None = None):
    """A byte-level BPE tokenizer trained on a few sentences; adds BOS like Gemma's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    if out is not None:
        fast.save_pretrained(out)
    return fast


def build_tiny(kind: str, out: Path | None = None, seed: int = 0):
    """A tiny random model of a real architecture: 'gemma3', 'llama' (causal) or 'bert' (encoder)."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    tok = build_tokenizer()
    vocab = len(tok)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
        )
        model = Gemma3ForCausalLM(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "bert":
        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
        )
        model = BertModel(cfg)
    else:
        raise ValueError(kind)
    model.eval()
    if out is not None:
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return model, tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-gemma3")
    build_tiny("gemma3", out)
    return out


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default (Gemma 3 270M), converted once into the cache."""
    from babelscope.models import load_model

    return load_model("gemma-3-270m")


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    """The real multilingual encoder (multilingual-e5-small), built once by ../shared/tools."""
    from babelscope.settings import cache_dir, data_dir

    out = cache_dir() / "models" / "multilingual-e5-small"
    tool = data_dir().parent / "tools" / "multilingual_encoder.py"
    subprocess.run([sys.executable, str(tool), str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def launch_two_processes(module: str, function: str, env: dict[str, str], timeout: float = 900) -> None:
    """Run ``module.function`` in 2 CPU processes (Accelerate's ``debug_launcher``, gloo on loopback) from a
    fresh interpreter: forking this pytest process after torch has started its thread pools can deadlock."""
    tests = str(Path(__file__).parent)
    code = (f"import sys; sys.path.insert(0, {tests!r}); from accelerate import debug_launcher; "
            f"from {module} import {function}; debug_launcher({function}, num_processes=2)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_tiny_step(run, cfg, run_dir: Path, step: str) -> None:
    """A step's ``run(cfg, run_dir, step, loaded=...)`` on the tiny Gemma 3, built in this process (the same
    weights in every process: :func:`build_tiny` seeds them)."""
    from babelscope.models.loader import describe

    model, tok = build_tiny("gemma3")
    info = describe(model, tok, "tiny", "memory")
    run(cfg, run_dir, step, loaded=lambda: (model, tok, info))


def assert_two_processes() -> None:
    """Inside a :func:`launch_two_processes` worker: Accelerate sees 2 processes."""
    from babelscope.models.engine import _dist_state

    state = _dist_state()
    assert state is not None and state.num_processes == 2


def run_cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI entry point in this process (as `babelscope ARGS`): (exit code, stderr)."""
    from babelscope import cli

    capsys.readouterr()  # drop what the test printed before
    saved = sys.argv
    sys.argv = ["babelscope", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        sys.argv = saved
    return exit_.value.code, capsys.readouterr().err
