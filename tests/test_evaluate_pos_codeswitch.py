"""Code-switching detection (constructed and real text) and in-context POS tagging."""

from __future__ import annotations

import pytest

from babelscope.errors import BabelscopeError
from babelscope.evaluate.codeswitch import CodeSwitchConfig, codeswitch_rows, switch_segments
from babelscope.evaluate.pos import PosConfig, parse_tags, pos_prompt, tag_accuracy, treebank_split
from babelscope.evaluate.steps import run_codeswitch, run_pos
from babelscope.models.loader import ModelInfo
from conftest import build_tiny


@pytest.mark.parametrize("lang,text,switched", [
    ("zh", "我认为机器学习很有趣，尤其是 deep learning and neural networks 的应用。", True),
    ("zh", "我喜欢用Python写程序，详见 https://example.com/a 或 `print(1)`，共 42 个。", False),  # name, URL, code
    ("zh", "今天天气很好，我们去公园散步吧。", False),
    ("de", "Das ist ein schöner Tag. I think we should go to the park this afternoon. Wir gehen spazieren.", True),
    ("de", "Die Hauptstadt von Deutschland ist Berlin und sie hat viele Museen und Parks.", False),
    ("ja", "私は東京に住んでいます。毎日 Tokyo Tower を見ます。", False),  # a name in Latin script
    ("ru", "Я думаю, что это очень хорошая idea для нашего проекта.", True),
    ("ru", "```python\nprint('hello world from the code')\n```\nЭто пример кода на языке программирования.", False),
])
def test_constructed_switches(lang, text, switched):
    assert bool(switch_segments(text, lang)) is switched


def test_real_sentences_are_not_switches_and_real_mixtures_are():
    """PUD sentences (real text) in their own language rarely count as switches; an English PUD sentence appended
    to a German or Chinese one is found."""
    from babelscope.data.ud import read_conllu
    from babelscope.settings import data_dir

    ud = data_dir() / "ud"
    text = {lang: [s.text for s in read_conllu(next(ud.glob(f"UD_*-PUD/{lang}_pud-ud-test.conllu")))[:40]]
            for lang in ["en", "de", "fr", "zh", "ru"]}
    for lang in ["de", "fr", "zh", "ru"]:
        false = sum(bool(switch_segments(t, lang)) for t in text[lang])
        assert false <= 4, (lang, false)  # at most 10% (names and loanwords)
    mixed = [f"{a} {b}" for a, b in zip(text["de"][:20], text["en"][20:40], strict=True)]
    assert sum(bool(switch_segments(t, "de")) for t in mixed) >= 16
    mixed = [f"{a}{b}" for a, b in zip(text["zh"][:20], text["en"][20:40], strict=True)]
    assert sum(bool(switch_segments(t, "zh")) for t in mixed) == 20


def test_rates_per_language_and_step(tmp_path):
    rows = [{"id": "1", "lang": "zh", "response": "这是 machine learning 的例子。"},
            {"id": "2", "lang": "zh", "response": "这是一个例子。"},
            {"id": "3", "lang": "de", "response": "Das ist gut."}]
    per_language, per_response = codeswitch_rows(rows, CodeSwitchConfig())
    assert per_language == [{"lang": "zh", "responses": 2, "switched": 1, "rate": 0.5},
                            {"lang": "de", "responses": 1, "switched": 0, "rate": 0.0}]
    path = tmp_path / "r.jsonl"
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    doc = run_codeswitch(CodeSwitchConfig(responses=str(path)), tmp_path, "cs")
    assert doc["results"]["summary"] == {"responses": 3, "switched": 1, "rate": pytest.approx(1 / 3)}
    path.write_text('{"id": "x", "lang": "de"}\n', encoding="utf-8")
    with pytest.raises(BabelscopeError, match="needs 'lang' and 'response'"):
        run_codeswitch(CodeSwitchConfig(responses=str(path)), tmp_path, "cs2")


def test_pos_prompt_parse_and_accuracy():
    pool, test = treebank_split("de", "embedded")
    prompt = pos_prompt(pool[:2], test[0])
    assert prompt.count("\n=> ") == 2 and prompt.endswith("\n=>")
    assert f"{pool[0].tokens[0].form}/{pool[0].tokens[0].upos}" in prompt
    assert parse_tags(" Der/DET Hund/NOUN bellt/VERB ./PUNCT\nmore") == ["DET", "NOUN", "VERB", "PUNCT"]
    assert tag_accuracy(["DET", "NOUN"], ["DET", "VERB", "PUNCT"]) == 1


def test_pos_method_jobs_and_accuracies_without_a_model():
    """The method apart from the step: seeded prompts per language, setting and run; answers that copy the
    gold line score 1, answers without tags 0, and the tables hold the mean and std over runs."""
    from babelscope.evaluate import pos

    data = {"de": treebank_split("de", "embedded")}
    english = pos.short_sentences(treebank_split("en", "embedded")[0], 12)
    jobs = pos.build_jobs(data, english, ["MONO", "EN"], shots=2, runs=3, queries=2, max_words=12, seed=0)
    assert len(jobs) == 2 * 3 * 2 and jobs == pos.build_jobs(data, english, ["MONO", "EN"], shots=2, runs=3,
                                                             queries=2, max_words=12, seed=0)
    outputs = [" " + " ".join(f"w/{tag}" for tag in job.gold) if job.run < 2 else "" for job in jobs]
    per_query, per_run, per_language, summary = pos.accuracies(jobs, outputs, ["de"], ["MONO", "EN"])
    assert [r["accuracy"] for r in per_run] == [1.0, 1.0, 0.0] * 2
    assert per_language[0]["MONO_mean"] == pytest.approx(2 / 3) and summary == {"MONO_mean": pytest.approx(2 / 3),
                                                                               "EN_mean": pytest.approx(2 / 3)}
    with pytest.raises(BabelscopeError, match="--settings"):
        pos.parse_settings("MONO,FEW")


def test_pos_treebanks_with_and_without_train_split():
    pool, test = treebank_split("mt", "ud")  # Maltese-MUDT: train pool, test queries
    assert len(pool) == 1123 and len(test) == 518
    pool, test = treebank_split("fr", "ud")  # French-PUD only: the first half is the pool
    assert len(pool) == 500 and {s.id for s in pool}.isdisjoint({s.id for s in test})
    with pytest.raises(BabelscopeError, match="no UD treebank"):
        treebank_split("sw", "ud")


def test_pos_step_on_tiny_model(tmp_path):
    model, tok = build_tiny("llama")
    info = ModelInfo("tiny", "tiny", "causal", "llama", 1, 2, 32, len(tok), "abc", "memory", "float32")
    cfg = PosConfig(langs="de", treebanks="embedded", shots=1, runs=2, queries=2, max_words=12, batch_size=4)
    doc = run_pos(cfg, tmp_path, "pos", loaded=lambda: (model, tok, info))
    (row,) = doc["tables"]["per_language"]["rows"]
    assert set(row) == {"lang", "MONO_mean", "MONO_std", "EN_mean", "EN_std"}
    assert all(0 <= row[k] <= 1 for k in ("MONO_mean", "EN_mean"))
    assert len(doc["tables"]["per_query"]["rows"]) == 2 * 2 * 2


@pytest.mark.slow
def test_pos_real_model_beats_nothing(default_model, tmp_path):
    """The real default model, 2-shot MONO on short German sentences: it writes word/TAG lines."""
    cfg = PosConfig(langs="de", treebanks="embedded", settings="MONO", shots=2, runs=2, queries=1, max_words=9)
    doc = run_pos(cfg, tmp_path, "pos", loaded=lambda: default_model)
    queries = doc["tables"]["per_query"]["rows"]
    assert any(q["predicted"] for q in queries)  # the format was picked up from the demonstrations
    assert 0 < doc["tables"]["per_language"]["rows"][0]["MONO_mean"] <= 1
