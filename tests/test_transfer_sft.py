"""Instruction tuning (babelscope.transfer.sft / instructions / study): response-only labels, data errors, LoRA
merged vs adapter, tied weights, trainable tokens on an extended vocabulary, a tiny end-to-end study."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.transfer.configs import SftConfig
from babelscope.transfer.instructions import (
    IGNORE,
    PLAIN_TEMPLATE,
    Conversation,
    choose_template,
    encode,
    encode_all,
    read_conversations,
    split,
)
from babelscope.transfer.steps import run_sft as run


def merging_tokenizer():
    """A character-level BPE tokenizer with one merge across the plain template's prompt/response boundary
    (``"\\n" + "H"``), BOS added, EOS a special token."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    text = "### Instruction:\nSay hi.\n\n### Response:\nHello there"
    chars = sorted(set(text))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab["\nH"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "H")]))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def test_mask_is_exact_when_a_token_merges_across_the_boundary():
    tok = merging_tokenizer()
    conv = Conversation([{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hello there"}],
                        "eng", "x", "test:1")
    e = encode(tok, PLAIN_TEMPLATE, conv)
    pieces = tok.convert_ids_to_tokens(e.input_ids)
    assert "\nH" in pieces  # the merge happened across the boundary
    first = e.labels.index(next(x for x in e.labels if x != IGNORE))
    last = e.input_ids.index(tok.eos_token_id)
    # every token from the merged one to EOS is a target (labels = the ids), none before it, and not the
    # template's blank line after EOS
    assert e.labels[:first] == [IGNORE] * first and e.labels[first : last + 1] == e.input_ids[first : last + 1]
    assert set(e.labels[last + 1 :]) == {IGNORE} and pieces[first] == "\nH"
    assert "".join(pieces[first : last + 1]) == "\nHello there<eos>"
    # encoding the prompt alone and masking its length (the naive way) would shift the mask by one token
    prompt = tok.apply_chat_template(conv.messages[:1], chat_template=PLAIN_TEMPLATE, tokenize=False,
                                     add_generation_prompt=True)
    assert len(tok(prompt)["input_ids"]) == first + 1


def test_gemma_tokenizer_labels_exactly_the_response(default_model_tokenizer):
    """On the real tokenizer: the trained tokens decode to each BELLE response plus <end_of_turn>."""
    tok = default_model_tokenizer
    convs, skipped = read_conversations("belle")
    assert skipped == 369 and len(convs) == 631  # the eval rows without a reference answer are skipped
    name, template = choose_template(tok)
    assert name == "gemma"
    for conv in convs[:40]:
        e = encode(tok, template, conv)
        targets = [i for i, x in zip(e.input_ids, e.labels, strict=True) if x != IGNORE]
        assert tok.decode(targets) == conv.reference + "<end_of_turn>"
        where = [i for i, x in enumerate(e.labels) if x != IGNORE]
        assert where == list(range(where[0], where[-1] + 1))  # one contiguous span
        assert tok.decode(e.input_ids[where[-1] + 1 :]).strip() == ""  # followed by the template's newline only


@pytest.fixture(scope="module")
def default_model_tokenizer():
    from transformers import AutoTokenizer

    from babelscope.models.loader import resolve_spec

    return AutoTokenizer.from_pretrained(str(resolve_spec("gemma-3-270m")[0]))


def test_truncation_counted_and_cut_away_responses_dropped(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    long_prompt = Conversation([{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}],
                               "eng", "a", "t:1")
    long_answer = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes " * 80}],
                               "eng", "b", "t:2")
    short = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                         "eng", "c", "t:3")
    fits = len(encode(tok, PLAIN_TEMPLATE, short).input_ids)  # the short one fits exactly
    kept, counts = encode_all(tok, PLAIN_TEMPLATE, [long_prompt, long_answer, short], max_length=fits)
    assert counts["cut_away"] == 1 and counts["truncated"] == 1 and counts["encoded"] == 2
    assert [e.conversation.id for e in kept] == ["b", "c"] and not kept[1].truncated
    assert all(len(e.input_ids) <= fits and e.targets > 0 for e in kept)
    assert counts["target_tokens"] == sum(e.targets for e in kept)


def test_formats_and_split(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"instruction": "Add", "input": "1+1", "output": "2", "lang": "en"},
            {"question": "问", "std_answer": "答"},
            {"instruction": "Name", "instances": [{"input": "", "output": "A"}, {"input": "x", "output": "B"}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}], "language": "fr"},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "R"}]}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    convs, _ = read_conversations(str(path), lang="zh")
    assert [c.lang for c in convs] == ["eng", "cmn-Hans", "cmn-Hans", "cmn-Hans", "fra", "cmn-Hans"]
    assert convs[0].messages[0]["content"] == "Add\n\n1+1" and convs[3].reference == "B"
    assert [m["role"] for m in convs[4].messages] == ["system", "user", "assistant"]
    as_array = tmp_path / "array.json"
    as_array.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    assert [c.messages for c in read_conversations(str(as_array), lang="zh")[0]] == [c.messages for c in convs]
    many = [Conversation([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "eng",
                         str(i), "") for i in range(400)]
    train, val = split(many, 0.25, seed=3)
    assert 60 < len(val) < 140 and len(train) + len(val) == 400
    # the split depends on each row's content, not on its position
    assert {c.id for c in split(many[::-1], 0.25, seed=3)[1]} == {c.id for c in val}
    assert {c.id for c in split(many, 0.25, seed=4)[1]} != {c.id for c in val}


@pytest.mark.parametrize("line, expected", [
    ('{"instruction": "a", "output": "b", "lang": "en"}\n{"instruction": "a", "lang": "en"}', "bad.jsonl:2: field 'output' is missing"),  # noqa: E501
    ('{"instruction": "a", "output": "b", "lang": "en"}\n\n{"instruction": ', "bad.jsonl:3: not valid JSON"),
    ('["a", "b"]', "bad.jsonl:1: expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "x"}], "lang": "en"}', "bad.jsonl:1: no assistant message"),
    ('{"instruction": "a", "output": "b", "lang": "klingonish"}', "bad.jsonl:1: unknown language"),
    ('{"instruction": "a", "output": "", "lang": "en"}', "bad.jsonl:1: empty output"),
])
def test_bad_rows_one_line_exit_2_nothing_written(tmp_path, tiny_dir, capsys, monkeypatch, line, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n", encoding="utf-8")
    code, err = _cli(monkeypatch, capsys, ["transfer", "sft", "--model", str(tiny_dir), "--data", str(bad),
                                           "--run-dir", str(tmp_path / "run")])
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_templates_that_do_not_fit(tmp_path, tiny_dir, capsys, monkeypatch):
    drops = tmp_path / "drops.jinja"  # renders the user turns only: the response is not in the text
    drops.write_text("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% endif %}"
                     "{% endfor %}", encoding="utf-8")
    rewrites = tmp_path / "rewrites.jinja"  # a generation prompt that the full conversation does not start with
    rewrites.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant says:{% endif %}", encoding="utf-8")
    for template, expected in [(drops, "drops or rewrites the response"), (rewrites, "does not render as a prefix"),
                               ("gemma", "no <start_of_turn>/<end_of_turn> tokens"),
                               ("chat", "has no (single) chat template")]:
        code, err = _cli(monkeypatch, capsys, ["transfer", "sft", "--model", str(tiny_dir), "--template",
                                               str(template), "--run-dir", str(tmp_path / "run")])
        assert code == 2 and expected in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


def _cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    from babelscope.cli import main

    monkeypatch.setattr(sys, "argv", ["babelscope", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_lora_merged_equals_adapter_tied_stays_tied(tmp_path, tiny_dir):
    from babelscope.models import load_model

    common = dict(model=str(tiny_dir), data="embedded", max_length=64, lora_r=4, lr=5e-3, micro_batch_size=8)
    merged = run(SftConfig(**common), tmp_path, step="merged")
    run(SftConfig(**common, save="adapter"), tmp_path, step="adapter")
    assert merged["results"]["tied"] is True and merged["results"]["lora"]["targets"] == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert (tmp_path / "adapter/model/adapter_config.json").is_file()
    a, tok, _ = load_model(str(tmp_path / "merged/model"))
    b, _, info = load_model(str(tmp_path / "adapter/model"))
    base, _, _ = load_model(str(tiny_dir))
    ids = tok("Hello there, friend.")["input_ids"]
    la, lb, l0 = _logits(a, ids), _logits(b, ids), _logits(base, ids)
    # both merge W + (alpha/r) B A in float32 from the same trained factors: equal up to rounding of a
    # 32-term sum (the tiny model's width), relative to the logits' scale
    scale = la.abs().max()
    assert (la - lb).abs().max() <= 1e-5 * scale
    assert (la - l0).abs().max() > 1e-3 * scale  # and training changed the model
    for m in (a, b):
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert info.spec.endswith("adapter/model")
    from babelscope.evaluate.perplexity import PplConfig
    from babelscope.evaluate.perplexity import run as ppl

    # every command loads the tuned model, the adapter too (merged onto its base): the same perplexity
    scores = [ppl(PplConfig(model=str(tmp_path / f"{kind}/model"), langs="en", max_units=1, window=64), tmp_path,
                  step=f"ppl-{kind}")["tables"]["per_language"]["rows"][0]["ppl"] for kind in ("merged", "adapter")]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)  # float32 sums over ~100 tokens of the same logits
    assert "<eos>" in (tok.chat_template or "") or tok.chat_template  # the training template travels along


def test_adapter_for_another_base_is_refused(tmp_path, capsys, monkeypatch):
    from conftest import build_tiny

    base = tmp_path / "base"
    build_tiny("gemma3", base, seed=1)
    run(SftConfig(model=str(base), data="embedded", max_length=128, lora_r=2, save="adapter", samples=8,
                  micro_batch_size=8), tmp_path, step="sft")
    build_tiny("gemma3", base, seed=2)  # the base directory now holds another model
    code, err = _cli(monkeypatch, capsys, ["eval", "respond", "--model", str(tmp_path / "sft/model"), "--judge",
                                           "none", "--run-dir", str(tmp_path / "out")])
    assert code == 2 and "an adapter for another base model" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "respond").exists()  # the run folder may exist; no step was written


def test_new_embedding_rows_train_through_trainable_tokens(tmp_path):
    from babelscope.models import load_model
    from conftest import build_tiny

    base = tmp_path / "extended"
    model, tok = build_tiny("gemma3")
    old = len(tok)
    tok.add_tokens(["狐狸", "懒狗", "夏天", "城市"])  # stand-in for a vocabulary step's new pieces
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    (base / "vocab_extension.json").write_text(json.dumps({"new_token_ids": list(range(old, len(tok)))}))
    doc = run(SftConfig(model=str(base), data="embedded", max_length=64, lora_r=4, lr=5e-2, micro_batch_size=8),
              tmp_path, step="sft")
    assert doc["results"]["lora"]["train_tokens"] == 4 and doc["results"]["tied"] is True
    before, _, _ = load_model(str(base))
    after, _, _ = load_model(str(tmp_path / "sft/model"))
    w0, w1 = before.model.embed_tokens.weight, after.model.embed_tokens.weight
    assert torch.equal(w0[:old], w1[:old])  # the old rows are not trained (peft keeps a delta for the new ones)
    assert (w0[old:] - w1[old:]).abs().sum(dim=1).min() > 0  # every new row moved
    assert after.lm_head.weight.data_ptr() == w1.data_ptr()
    from babelscope.transfer.sft import new_token_ids

    # a model pretrained after the vocabulary step has no record of its own: point at the vocab model's
    assert new_token_ids(tmp_path / "sft/model", after, "auto") == []
    assert new_token_ids(tmp_path / "sft/model", after, str(base)) == list(range(old, len(tok)))
    (base / "babelscope-vocab.json").write_text(json.dumps({"embedding_rows": [old, len(tok)], "first_new_id": old}))
    (base / "vocab_extension.json").unlink()
    assert new_token_ids(base, after, "auto") == list(range(old, len(tok)))


def test_tiny_study_end_to_end(tmp_path, tiny_dir):
    """sft -> respond (held-out instructions) on base and tuned -> codeswitch -> the Table 1 step -> report."""
    from babelscope.experiment import run_file
    from babelscope.runs import load_results

    run_dir = tmp_path / "study"
    exp = tmp_path / "study.yaml"
    steps = [
        {"command": "transfer-sft", "step": "sft", "data": "embedded", "max_length": 64, "epochs": 2, "lr": 1e-3,
         "micro_batch_size": 8, "eval_every": 8},
        {"command": "respond", "step": "respond-base", "instructions": str(run_dir / "sft/heldout.jsonl"),
         "max_new_tokens": 6, "judge": "local", "judge_model": str(tiny_dir), "judge_max_tokens": 4},
        {"command": "respond", "step": "respond-sft", "model": str(run_dir / "sft/model"),
         "instructions": str(run_dir / "sft/heldout.jsonl"), "max_new_tokens": 6, "judge": "local",
         "judge_model": str(tiny_dir), "judge_max_tokens": 4},
        {"command": "codeswitch", "step": "codeswitch-base", "responses": "respond-base"},
        {"command": "codeswitch", "step": "codeswitch-sft", "responses": "respond-sft"},
        {"command": "transfer-table", "step": "table", "labels": "base,sft"},
    ]
    import yaml

    exp.write_text(yaml.safe_dump({"run_dir": str(run_dir), "defaults": {"model": str(tiny_dir)}, "steps": steps}))
    report = run_file(exp)
    sft = load_results(run_dir / "sft")
    evals = sft["tables"]["validation"]["rows"]
    assert evals[0]["samples"] == 0 and evals[-1]["epoch"] == pytest.approx(2.0)
    assert sft["results"]["summary"]["steps"] == len(sft["tables"]["train_curve"]["rows"])
    heldout = (run_dir / "sft/heldout.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(heldout) == sft["results"]["data_counts"]["validation_conversations"]
    tuned = load_results(run_dir / "respond-sft")
    assert tuned["results"]["summary"]["responses"] == len(heldout)
    table = load_results(run_dir / "table")["tables"]["variants"]["rows"]
    assert [r["variant"] for r in table] == ["base", "sft"]
    assert all(r["code_switching"] is not None for r in table)
    html = report.read_text(encoding="utf-8")
    assert "Instruction tuning of" in html and "Table 1 analog" in html
    # a finished step is skipped on re-run (no retraining): same results file
    before = (run_dir / "sft/results.json").read_text()
    run_file(exp)
    assert (run_dir / "sft/results.json").read_text() == before


def test_options_refused_before_loading(tmp_path):
    with pytest.raises(BabelscopeError, match="--save adapter needs --lora-r"):
        run(SftConfig(save="adapter"), tmp_path)
    with pytest.raises(BabelscopeError, match="--val-fraction"):
        run(SftConfig(val_fraction=1.5), tmp_path)
    with pytest.raises(BabelscopeError, match="--samples 0"):
        run(SftConfig(samples=0), tmp_path)
    assert not any(tmp_path.iterdir())


def _two_process_sft():
    import os

    cfg = SftConfig(model=os.environ["SFT_TINY"], data="embedded", max_length=64, lr=1e-3, micro_batch_size=4,
                    eval_every=16)
    run(cfg, Path(os.environ["SFT_RUN"]))


def test_two_processes_match_one(tmp_path, tiny_dir):
    """2 CPU processes (gloo) x micro-batch 4 against 1 process x micro-batch 4 x 2 accumulation: the same
    global steps, so the same validation curve and weights up to float32 reduction order."""
    from babelscope.runs import load_results
    from conftest import launch_two_processes

    launch_two_processes("test_transfer_sft", "_two_process_sft", {"SFT_TINY": str(tiny_dir),
                                                                    "SFT_RUN": str(tmp_path / "two")})
    one = run(SftConfig(model=str(tiny_dir), data="embedded", max_length=64, lr=1e-3, micro_batch_size=4,
                        grad_accum=2, eval_every=16), tmp_path / "one")
    two = load_results(tmp_path / "two/sft")
    a = [r["val_loss"] for r in one["tables"]["validation"]["rows"]]
    b = [r["val_loss"] for r in two["tables"]["validation"]["rows"]]
    assert len(a) == len(b) >= 3 and a[0] == pytest.approx(b[0], rel=1e-6)  # before training: same sums
    # after training: gradients all-reduced in another order; a few steps of Adam at lr 1e-3 keep the
    # difference at float32 rounding scale relative to the loss (~6 nats)
    assert a == pytest.approx(b, rel=1e-4)
    assert (tmp_path / "two/sft/model/model.safetensors").is_file()


@pytest.mark.parametrize("name", ["zhao2024.yaml", "demo.yaml"])
def test_example_experiments_name_known_options(name):
    """Every step of the example experiments whose command is registered uses only that command's options."""
    import dataclasses

    import yaml

    from babelscope.registry import all_commands
    from babelscope.registry import command as _command

    doc = yaml.safe_load((Path(__file__).parents[1] / "examples" / name).read_text(encoding="utf-8"))
    known = all_commands()
    checked = 0
    for raw in doc["steps"]:
        if raw["command"] not in known:
            continue  # a capability merged from another branch (transfer-vocab) checks its own steps
        cfg_cls, _ = _command(raw["command"])
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        assert set(raw) - {"command", "step"} <= fields, (raw["step"], set(raw) - fields)
        checked += 1
    assert checked >= (17 if name == "zhao2024.yaml" else 3)


def test_turning_point():
    from babelscope.transfer.sft import turning_point

    rows = [{"step": s, "samples": 4 * s, "epoch": s / 10, "val_loss": v} for s, v in
            [(0, 3.0), (5, 2.5), (10, 2.2), (15, 2.3), (20, 2.6)]]
    assert turning_point(rows) == {"step": 10, "samples": 40, "epoch": 1.0, "val_loss": 2.2}
    assert turning_point(rows[:3]) is None  # still falling
    assert turning_point(rows[:1]) is None


def test_resume_of_another_lora_configuration_is_refused(tmp_path, tiny_dir, capsys, monkeypatch):
    """Killed after the step-2 checkpoint, then re-run with another LoRA alpha or rank: one line naming the option
    (exit 2), config.yaml and the checkpoint untouched; with --restart the run trains from the start and ends
    bit-identical to a run that was never interrupted."""
    from safetensors.torch import load_file

    import babelscope.transfer.loop as loop

    run_dir = tmp_path / "run"
    base = ["transfer", "sft", "--model", str(tiny_dir), "--data", "embedded", "--max-length", "64",
            "--micro-batch-size", "2", "--eval-every", "8", "--lora-r", "4", "--checkpoint-every", "2"]
    real = loop._save_checkpoint

    def dies(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", dies)
    with pytest.raises(KeyboardInterrupt):
        run(SftConfig(model=str(tiny_dir), data="embedded", max_length=64, micro_batch_size=2, eval_every=8,
                      lora_r=4, checkpoint_every=2), run_dir)
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    step = run_dir / "sft"
    config, checkpoints = (step / "config.yaml").read_text(), sorted(p.name for p in (step / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]
    for extra, named in ((["--lora-alpha", "64"], "lora_alpha 8 -> 64"), (["--lora-r", "8"], "lora_r 4 -> 8"),
                         (["--lora-dropout", "0.1"], "lora_dropout 0.0 -> 0.1"),
                         (["--lr", "1e-3"], "lr 0.0002 -> 0.001"), (["--seed", "1"], "seed 0 -> 1")):
        code, err = _cli(monkeypatch, capsys, [*base, *extra, "--run-dir", str(run_dir)])
        assert code == 2 and err.count("\n") == 1 and "another training configuration" in err, err
        assert named in err and "--restart" in err, err
        assert (step / "config.yaml").read_text() == config
        assert sorted(p.name for p in (step / "checkpoints").iterdir()) == checkpoints
        assert not (step / "results.json").exists()
    # --restart: trains afresh, the same weights and curve as an uninterrupted run with these options
    code, err = _cli(monkeypatch, capsys, [*base, "--lora-alpha", "64", "--restart", "--run-dir", str(run_dir)])
    assert code == 0, err
    code, err = _cli(monkeypatch, capsys, [*base, "--lora-alpha", "64", "--run-dir", str(tmp_path / "fresh")])
    assert code == 0, err
    done = json.loads((step / "results.json").read_text())
    fresh = json.loads((tmp_path / "fresh/sft/results.json").read_text())
    assert done["results"]["lora"]["alpha"] == 64 and done["tables"]["validation"] == fresh["tables"]["validation"]
    a = load_file(str(step / "model/model.safetensors"))
    b = load_file(str(tmp_path / "fresh/sft/model/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (step / "checkpoints").exists()


def test_lr_zero_is_refused_not_the_default(tmp_path, tiny_dir):
    """--lr 0 used to train at the default (``cfg.lr or default``); "not given" is None, 0 is refused."""
    from babelscope.transfer.sft import default_lr, loop_config

    with pytest.raises(BabelscopeError, match="--lr 0.0: must be positive"):
        run(SftConfig(model=str(tiny_dir), lr=0.0), tmp_path)
    with pytest.raises(BabelscopeError, match="--lora-alpha 0.0: must be positive"):
        run(SftConfig(model=str(tiny_dir), lora_r=4, lora_alpha=0.0), tmp_path)
    assert not any(tmp_path.iterdir())
    assert default_lr(SftConfig()) == 2e-5 and default_lr(SftConfig(lora_r=4)) == 2e-4
    assert loop_config(SftConfig(lr=3e-4), 1).lr == 3e-4


def test_table_messages(tmp_path, tiny_dir, capsys):
    """transfer table: one space where no response step is missing by name; a table where nothing was judged
    says why on stderr and in its results and report."""
    from babelscope.evaluate.respond import RespondConfig
    from babelscope.evaluate.respond import run as respond
    from babelscope.report import render_html
    from babelscope.transfer.study import StudyTableConfig
    from babelscope.transfer.study import run as table

    with pytest.raises(BabelscopeError) as exc:
        table(StudyTableConfig(), tmp_path)
    assert "  " not in str(exc.value) and "no finished response step in" in str(exc.value)
    respond(RespondConfig(model=str(tiny_dir), judge="none", limit=2, max_new_tokens=2), tmp_path)
    capsys.readouterr()
    doc = table(StudyTableConfig(), tmp_path)
    err = capsys.readouterr().err
    assert doc["tables"]["variants"]["rows"][0]["AVG"] is None
    warning = doc["results"]["warning"]
    assert "no variant has a judged response" in warning and "respond: judge none" in warning
    assert f"warning: {warning}\n" in err
    assert "no variant has a judged response" in render_html(tmp_path)
