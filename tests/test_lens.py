"""The logit lens on tiny random Gemma 3 / Llama models: the last layer is the model's own distribution (with
Gemma's soft-capping), word-translation prompts and token sets, script shares, and bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from conftest import run_cli as _cli


def _loaded(kind="gemma3", softcap=None):
    from babelscope.models.loader import describe

    model, tok = build_tiny(kind)
    if softcap:
        model.config.final_logit_softcapping = softcap
    return model, tok, describe(model, tok, "tiny", "memory")


@pytest.mark.parametrize("kind,softcap", [("gemma3", 3.0), ("gemma3", None), ("llama", None)])
def test_last_layer_is_the_model_distribution(kind, softcap):
    from babelscope.lens.logit_lens import lens_pass

    model, tok, _ = _loaded(kind, softcap)
    seqs = [tok("Le renard brun rapide saute.")["input_ids"], tok("敏捷的棕色狐狸")["input_ids"]]
    positions = [list(range(len(seqs[0]))), [1, len(seqs[1]) - 1]]
    n = model.config.num_hidden_layers
    got = lens_pass(model, seqs, positions, [0, n], lambda probs, owner: probs, batch_size=2, chunk=3)
    want = []
    with torch.no_grad():
        for seq, pos in zip(seqs, positions, strict=True):
            logits = model(input_ids=torch.tensor([seq])).logits[0, pos].float()
            if softcap:  # the capped logits are bounded by the cap: the lens applied it too
                assert float(logits.abs().max()) <= softcap
            want.append(logits.softmax(-1))
    want = torch.cat(want)
    # same float32 computation in another batch shape: probabilities agree to float32 rounding of the logits
    # (|Δp| ≤ p·|Δz| with |Δz| a few ulps of |z| ≲ 10)
    torch.testing.assert_close(got[1], want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got[0], want, rtol=1e-2, atol=0)  # the embeddings layer decodes to something else
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5)


def test_layers_and_final_norm():
    from babelscope.errors import BabelscopeError
    from babelscope.lens.logit_lens import final_norm, parse_layers

    model, _, _ = _loaded("gemma3")
    assert final_norm(model) is model.model.norm
    assert parse_layers("all", 3) == [0, 1, 2, 3] and parse_layers("0,2-3", 3) == [0, 2, 3]
    with pytest.raises(BabelscopeError, match=r"layer\(s\) \[4\] out of range.*0\.\.3"):
        parse_layers("1,4", 3)
    with pytest.raises(BabelscopeError, match="not a layer"):
        parse_layers("x", 3)


def test_word_list_prompts_and_token_sets(tmp_path):
    from babelscope.lens.translate import build_prompt, make_items, read_word_list, token_set

    wl = read_word_list("embedded")
    assert {"eng", "fra", "cmn-Hans", "jpn", "kor", "rus", "arb", "hin"} <= set(wl.langs)
    assert len(wl.concepts) >= 40 and wl.names["cmn-Hans"] == "中文" and wl.names["fra"] == "Français"
    assert build_prompt(wl, "fra", "cmn-Hans", 0, [6]) == 'Français: "fleur" - 中文: "花"\nFrançais: "eau" - 中文: "'
    _, tok, _ = _loaded()
    ids = token_set(tok, "Hund")
    assert tok("Hund", add_special_tokens=False)["input_ids"][0] in ids
    first = tok(" Hund", add_special_tokens=False)["input_ids"][0]
    assert (first in ids) == bool(tok.decode([first]).strip())  # a bare marker token is no prefix of the word
    for i in ids:  # every member spells a prefix of the word, with or without the word-start marker
        assert ("Hund".startswith(tok.decode([i])) or " Hund".startswith(tok.decode([i])))
    path = tmp_path / "w.tsv"
    path.write_text("concept\teng\tfra\tdeu\nsame\ttaxi\ttaxi\tTaxi\nwater\twater\teau\tWasser\n"
                    "dog\tdog\tchien\tHund\n", encoding="utf-8")
    wl = read_word_list(str(path))
    items, dropped = make_items(wl, tok, "deu", "fra", shots=1, seed=0, max_items=None)
    assert dropped == 1 and [it["concept"] for it in items] == ["water", "dog"]  # taxi = taxi: overlap dropped
    assert all(not set(it["target_ids"]) & set(it["english_ids"]) for it in items)
    assert items[0]["prompt"].endswith('Deutsch: "Wasser" - French: "') or items[0]["prompt"].endswith(
        'German: "Wasser" - French: "')


def test_translate_and_script_steps(tmp_path):
    from babelscope.lens.configs import LensScriptConfig, LensTranslateConfig
    from babelscope.lens.steps import run_script as script
    from babelscope.lens.steps import run_translate as translate

    loaded = _loaded("gemma3")
    doc = translate(LensTranslateConfig(targets="rus,cmn-Hans", max_items=6), tmp_path, "lt", loaded=lambda: loaded)
    per_layer = doc["tables"]["per_layer"]["rows"]
    assert {r["layer"] for r in per_layer} == {0, 1, 2, 3}
    for r in per_layer:
        assert 0 <= r["p_target_lo"] <= r["p_target"] + 1e-12 and r["p_target"] <= r["p_target_hi"] + 1e-12
        assert 0 <= r["p_english"] <= 1
    items = doc["tables"]["per_item"]["rows"]
    for lang in ("rus", "cmn-Hans"):  # the per-layer mean is the mean of the items
        mine = [it for it in items if it["lang"] == lang]
        row = next(r for r in per_layer if r["lang"] == lang and r["layer"] == 2)
        assert row["p_english"] == pytest.approx(sum(it["p_english_L2"] for it in mine) / len(mine))
    doc = script(LensScriptConfig(langs="rus,cmn-Hans", max_tokens=30, window=16), tmp_path, "ls",
                 loaded=lambda: loaded)
    for r in doc["tables"]["per_layer"]["rows"]:
        assert r["positions"] == 30
        assert r["Latn"] + r["own"] + r["other"] + r["none"] == pytest.approx(1.0, abs=1e-4)  # float32 sums
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "word translation through the logit lens" in html and "script of the logit-lens prediction" in html
    assert html.count("<img") == 4  # one chart per language and step


def test_translation_method_without_a_run_dir_gives_the_step_numbers(tmp_path):
    """From a notebook: word list -> items -> lens probabilities -> tables, equal to the step's rows; the old
    import path of the step still names it."""
    from babelscope.lens import steps, translate
    from babelscope.lens.configs import LensTranslateConfig

    model, tok, info = _loaded("gemma3")
    wl = translate.read_word_list("embedded")
    items, dropped = translate.make_items(wl, tok, "fra", "rus", 1, 0, 4)
    values = translate.lens_translation(model, tok, items, [1, 3], batch_size=2)
    assert values.shape == (2, len(items), 3)
    per_layer, per_item, summary = translate.translation_tables("rus", items, dropped, values, [1, 3])
    cfg = LensTranslateConfig(source="fra", targets="rus", shots=1, max_items=4, layers="1,3")
    doc = steps.run_translate(cfg, tmp_path, loaded=lambda: (model, tok, info))
    assert doc["tables"]["per_layer"]["rows"] == per_layer and doc["tables"]["per_item"]["rows"] == per_item
    assert doc["results"]["summary"] == [summary]
    assert translate.run.load() is steps.run_translate




def test_bad_input(tmp_path, tiny_dir, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("concept\teng\tklingon-xx\nwater\twater\tx\n", encoding="utf-8")
    out = tmp_path / "run"
    code, err = _cli(capsys, "lens", "translate", "--words", str(bad), "--targets", "fra", "-o", str(out))
    assert code == 2 and err.count("\n") == 1
    assert f"{bad}:1: column 'klingon-xx' is not a known language" in err
    code, err = _cli(capsys, "lens", "translate", "--model", str(tiny_dir), "--layers", "0,9", "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "out of range" in err
    code, err = _cli(capsys, "lens", "script", "--model", tiny_dir, "--layers", "12", "--langs", "rus", "-o", out)
    assert code == 2 and "0..3" in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
