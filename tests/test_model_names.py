"""Names of models that Babelscope steps saved (``STEP/model``): results and report titles say what the model is
made of (``gemma-3-270m + SFT (sft)``), not the directory name ``model``."""

from __future__ import annotations

import json
import shutil

from babelscope.models.loader import model_name
from conftest import build_tiny


def _step_model(tiny_dir, run_dir, step: str, record: str | None, doc: dict):
    """A copy of the tiny model saved as ``run_dir/step/model`` with the record that step writes."""
    out = run_dir / step / "model"
    shutil.copytree(tiny_dir, out)
    if record is None:  # further pretraining: trained.json and results.json in the step folder
        (run_dir / step / "trained.json").write_text(json.dumps({"steps": 2, "samples": 4, "tokens": 256}))
        (run_dir / step / "results.json").write_text(json.dumps({"kind": "transfer-pretrain", "config": doc}))
    else:
        (out / record).write_text(json.dumps(doc))
    return out


def test_saved_models_are_named_by_base_and_step(tiny_dir, tmp_path):
    run = tmp_path / "run"
    sft = _step_model(tiny_dir, run, "sft", "babelscope_sft.json", {"base": "gemma-3-270m", "save": "full"})
    assert model_name(str(sft)) == "gemma-3-270m + SFT (sft)"
    vocab = _step_model(tiny_dir, run, "vocab", "babelscope-vocab.json",
                        {"base_model": {"spec": "gemma-3-270m", "name": "gemma-3-270m"}, "lang": "tur"})
    assert model_name(str(vocab)) == "gemma-3-270m + tur vocabulary (vocab)"
    pre = _step_model(tiny_dir, run, "pretrain-16", None, {"model": str(vocab)})
    assert model_name(str(pre)) == "gemma-3-270m + tur vocabulary (vocab) + pretraining (pretrain-16)"
    nested = _step_model(tiny_dir, run, "sft-pt16", "babelscope_sft.json", {"base": str(pre)})
    assert model_name(str(nested)) == ("gemma-3-270m + tur vocabulary (vocab) + pretraining (pretrain-16) + SFT "
                                       "(sft-pt16)")
    # plain directories, files and the default keep their plain names; an unreadable record too
    assert model_name(str(tiny_dir)) == tiny_dir.name and model_name("gemma-3-270m") == "gemma-3-270m"
    assert model_name(str(tmp_path / "x.gguf")) == "x"
    (sft / "babelscope_sft.json").write_text("{not json")
    assert model_name(str(sft)) == "model"


def test_report_titles_name_the_tuned_model(tiny_dir, tmp_path):
    """The response-quality and code-switching sections of a tuned model's steps: its name, not ``model`` (the
    directory) nor the base model (the code-switching step's own ``model`` option)."""
    from babelscope.evaluate.codeswitch import CodeSwitchConfig
    from babelscope.evaluate.codeswitch import run as run_codeswitch
    from babelscope.evaluate.respond import RespondConfig
    from babelscope.evaluate.respond import run as run_respond
    from babelscope.report.sections.evaluate import codeswitch_section, responses_section

    run = tmp_path / "run"
    sft = _step_model(tiny_dir, run, "sft", "babelscope_sft.json", {"base": "gemma-3-270m", "save": "full"})
    build_tiny("gemma3", sft, seed=1)  # weights of its own (rewritten in place; the record stays)
    doc = run_respond(RespondConfig(model=str(sft), instructions="embedded", limit=2, max_new_tokens=3,
                                    judge="local", judge_model=str(tiny_dir), judge_max_tokens=3), run, "respond-sft")
    assert doc["results"]["model"] == "gemma-3-270m + SFT (sft)"
    assert doc["results"]["judge"] == f"{tiny_dir.name} (local)"
    title = f"Response quality of gemma-3-270m + SFT (sft) judged by {tiny_dir.name} (local)"
    assert responses_section(doc).title == title
    switch = run_codeswitch(CodeSwitchConfig(model="gemma-3-270m", responses="respond-sft"), run, "codeswitch-sft")
    assert switch["results"]["model"] == "gemma-3-270m + SFT (sft)"
    assert codeswitch_section(switch).title == "Code-switching rate of gemma-3-270m + SFT (sft)"
    # responses from a JSONL file: the step's own model option names them
    (tmp_path / "r.jsonl").write_text(json.dumps({"lang": "de", "response": "Guten Tag."}) + "\n")
    other = run_codeswitch(CodeSwitchConfig(model="mine", responses=str(tmp_path / "r.jsonl")), run, "cs-file")
    assert other["results"]["model"] == "mine"
