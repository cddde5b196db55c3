"""Model loading: every spec form, the info record, and one-line errors for bad models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.models import load_model
from babelscope.models.loader import model_kind, state_dict_checksum
from conftest import build_tiny


def test_local_causal_directory(tiny_dir):
    model, tok, info = load_model(str(tiny_dir))
    assert info.kind == "causal" and info.model_type == "gemma3_text"
    assert info.layers == 3 and info.hidden_size == 32 and info.vocab_size == len(tok)
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert len(info.checksum) == 64
    assert load_model(str(tiny_dir))[2].checksum == info.checksum  # stable (and memoised)
    assert not model.training


def test_local_encoder_directory(tmp_path):
    build_tiny("bert", tmp_path)
    model, _, info = load_model(str(tmp_path))
    assert info.kind == "encoder" and type(model).__name__ == "BertModel"


def test_state_dict_checksum_sees_weight_changes():
    model, _ = build_tiny("llama")
    before = state_dict_checksum(model)
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1
    assert state_dict_checksum(model) != before


def test_model_kind_from_config():
    from transformers import BertConfig, LlamaConfig

    assert model_kind(BertConfig()) == "encoder"
    assert model_kind(LlamaConfig()) == "causal"
    assert model_kind(LlamaConfig(architectures=["LlamaForCausalLM"])) == "causal"


def _make(path, content):
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "no such model directory"),
        (lambda p: _make(p / "empty", None), "not a model directory"),
        (lambda p: _make(p / "bad.gguf", b"GGUF\x03\x00garbage"), "corrupt GGUF"),
        (lambda p: p / "nothing.gguf", "no such GGUF file"),
    ],
)
def test_bad_model_specs_give_one_line_errors(tmp_path, make, match):
    with pytest.raises(BabelscopeError, match=match) as err:
        load_model(str(make(tmp_path)))
    assert "\n" not in str(err.value)


def test_pickle_weights_are_refused(tmp_path):
    model, tok = build_tiny("llama")
    model.save_pretrained(tmp_path, safe_serialization=False)
    tok.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(BabelscopeError, match="safetensors"):
        load_model(str(tmp_path))


def test_hub_id_offline_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BabelscopeError, match="pass the local DIR"):
        load_model("some-org/some-model-that-is-not-cached")


def test_cli_model_info_errors_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "babelscope.cli", "model", "info", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_default_model_is_real_gemma(default_model):
    model, tok, info = default_model
    assert info.kind == "causal" and info.model_type == "gemma3_text"
    assert (info.layers, info.hidden_size, info.vocab_size) == (18, 640, 262144)
    assert info.parameters == 268_098_176
    assert tok.bos_token_id == 2


def test_real_encoder_loads(encoder_dir):
    model, tok, info = load_model(str(encoder_dir))
    assert info.kind == "encoder" and info.layers == 12 and info.hidden_size == 384
    out = model(**tok(["Bonjour le monde", "你好世界"], return_tensors="pt", padding=True))
    assert out.last_hidden_state.shape[-1] == 384
