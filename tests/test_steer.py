"""Language steering on tiny random models: DiffMean against a hand computation from ``output_hidden_states``, the
steering and LAPE hooks (exact shift, removed on every path), the CLaS-Bench scores, the step end to end with
resume, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny
from conftest import run_cli as _cli

LANGS = "eng,fra,rus,jpn"


def _loaded(kind="gemma3"):
    from babelscope.models.loader import describe

    model, tok = build_tiny(kind)
    return model, tok, describe(model, tok, "tiny", "memory")


def _seqs(tok, lang, n=3):
    from babelscope.data import open_corpus

    corpus = open_corpus("udhr-sample")
    return [[tok.bos_token_id, *tok(u.text, add_special_tokens=False)["input_ids"][: 20 - 4 * i]]
            for i, u in enumerate(corpus.units(lang)[:n])]


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_diffmean_equals_hand_computation(kind):
    """Sums reduced inside the hooks equal summing ``output_hidden_states`` of each window run alone (no padding),
    and DiffMean is each language's mean minus the pooled mean of the others' tokens."""
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.steer.diffmean import diffmean, language_sums

    model, tok, _ = _loaded(kind)
    langs = ["eng", "fra", "rus"]
    sums, hand, counts = [], [], []
    for lang in langs:
        seqs = _seqs(tok, lang)
        s = language_sums(model, seqs, batch_size=2, pad_id=0, ffns=ffn_modules(model))
        total = None
        n = 0
        for seq in seqs:
            with torch.inference_mode():
                out = model.model(input_ids=torch.tensor([seq]), output_hidden_states=True, use_cache=False)
            # layers 0..n-1 are block inputs; the block outputs before the final norm: use our capture for the last
            hs = torch.stack([h[0, 1:].double().sum(0) for h in out.hidden_states[:-1]])
            total = hs if total is None else total + hs
            n += len(seq) - 1
        assert s.tokens == n
        # float32 activations of magnitude ~1 summed over ~50 tokens: batched (padded) and single-window forwards
        # differ by a few float32 ulps per element
        torch.testing.assert_close(s.residual[:-1], total, rtol=1e-5, atol=1e-5)
        sums.append(s.residual)
        hand.append(total)
        counts.append(n)
    d = diffmean(torch.stack(sums), torch.tensor(counts))
    means = [h / c for h, c in zip(hand, counts, strict=True)]
    for i in range(len(langs)):
        others = sum(hand[j] for j in range(len(langs)) if j != i) / sum(counts[j] for j in range(len(langs)) if j != i)
        torch.testing.assert_close(d[i, :-1], means[i] - others, rtol=1e-5, atol=1e-5)


def test_steering_shifts_exactly_and_hooks_are_removed():
    from babelscope.errors import BabelscopeError
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.steer.apply import neurons_set, steered

    model, tok, _ = _loaded()
    ids = torch.tensor([_seqs(tok, "eng", 1)[0]])
    vec = torch.randn(32, generator=torch.Generator().manual_seed(1))
    from babelscope.models.hooks import capture_layers

    def hidden(steer=None):
        with torch.inference_mode():
            if steer is None:
                with capture_layers(model, [0, 1, 2, 3], stop=False) as store:
                    model.model(input_ids=ids)
            else:
                with steered(model, *steer), capture_layers(model, [0, 1, 2, 3], stop=False) as store:
                    model.model(input_ids=ids)
        return [store[i].clone() for i in range(4)]

    base = hidden()
    for layer in (0, 1):
        out = hidden(({layer: vec}, 2.5))
        # what the later blocks read at the steered layer is the base plus 2.5 · vec (one float32 add of values ~1)
        torch.testing.assert_close(out[layer], base[layer] + 2.5 * vec, rtol=0, atol=1e-5)
        assert not torch.allclose(out[layer + 1], base[layer + 1])
        for earlier in range(layer):
            assert torch.equal(out[earlier], base[earlier])
    assert all(torch.equal(a, b) for a, b in zip(hidden(), base, strict=True))
    with pytest.raises(RuntimeError, match="boom"), steered(model, {1: vec}, 1.0):
        raise RuntimeError("boom")
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in model.model.layers)
    with pytest.raises(BabelscopeError, match="out of range"), steered(model, {9: vec}, 1.0):
        pass
    with pytest.raises(BabelscopeError, match="not a finite"), steered(model, {1: vec}, math.inf):
        pass
    # LAPE steering: the down projection reads alpha x the mean at the chosen neurons, the input elsewhere
    ffns = ffn_modules(model)
    seen = {}
    handle = ffns[1].down.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    values = torch.rand(3, 64)
    try:
        with torch.inference_mode(), neurons_set(ffns, {1: torch.tensor([3, 7])}, values, 2.0) as n:
            model.model(input_ids=ids)
    finally:
        handle.remove()
    assert n == 2
    # the recording hook ran before ours (registered first): check ours by running it directly
    x = seen["x"]
    with neurons_set(ffns, {1: torch.tensor([3, 7])}, values, 2.0):
        hooked = next(iter(ffns[1].down._forward_pre_hooks.values()))((ffns[1].down), (x,))[0]
    assert torch.equal(hooked[..., 3], torch.full_like(x[..., 3], 2.0 * values[1, 3]))
    assert torch.equal(hooked[..., [0, 1, 2]], x[..., [0, 1, 2]])
    assert not ffns[1].down._forward_pre_hooks


def test_scores():
    from babelscope.steer.score import chrf, harmonic, identify, relevant, score_generations

    assert chrf("the same text", "the same text") == pytest.approx(1.0)
    assert chrf("abc", "xyz") == 0.0
    assert harmonic(1.0, 0.5) == pytest.approx(2 / 3) and harmonic(0.0, 0.0) == 0.0
    assert identify("Tous les êtres humains naissent libres et égaux en dignité et en droits.", "fra") == "fr"
    refs = ["Tous les êtres humains naissent libres", "Chacun peut se prévaloir de tous les droits",
            "Tout individu a droit à la vie"]
    assert relevant("les êtres humains naissent libres et égaux", 0, refs)
    assert not relevant("les êtres humains naissent libres et égaux", 1, refs)
    summary, rows = score_generations(["les êtres humains naissent libres et égaux en dignité",
                                       "Everyone has the right to life and liberty and security",
                                       ""], "fra", {"fra": refs, "eng": ["a", "Everyone has the right to life", "c"]},
                                      {"fr": "fra", "en": "eng"})
    assert [r["forced"] for r in rows] == [True, False, False]
    assert [r["reference_lang"] for r in rows] == ["fra", "eng", "fra"]
    assert summary["forcing"] == pytest.approx(1 / 3) and summary["relevance"] == pytest.approx(2 / 3)


def _steer(run_dir, loaded, **kw):
    from babelscope.steer.steps import SteerConfig, run

    cfg = dict(corpus="pud-sample", langs=LANGS, source="eng", targets="fra,jpn", layers="1,3",
               alphas="1,4", lape_alphas="1", max_tokens=80, window=32, batch_size=4, prompts=4,
               max_new_tokens=4, ppl_max_tokens=40, test_fraction=0.5)
    cfg.update(kw)
    return run(SteerConfig(**cfg), run_dir, "steer", loaded=lambda: loaded)


def test_steer_step_with_lape_and_resume(tmp_path, monkeypatch):
    from babelscope.neurons.lape import NeuronsConfig
    from babelscope.neurons.lape import run as find
    from babelscope.steer import diffmean as dm
    from babelscope.tensorfiles import load_tensors, read_metadata

    loaded = _loaded()
    find(NeuronsConfig(corpus="pud-sample", langs=LANGS, max_tokens=80, window=32, batch_size=2, top_rate=0.05),
         tmp_path, "neurons", loaded=lambda: loaded)
    doc = _steer(tmp_path, loaded)
    conds = doc["tables"]["conditions"]["rows"]
    assert {(c["method"], c["lang"]) for c in conds} >= {("diffmean", "fra"), ("none", "fra")}
    assert len([c for c in conds if c["method"] == "diffmean"]) == 2 * 2 * 2
    for c in conds:
        assert 0 <= c["forcing"] <= 1 and 0 <= c["relevance"] <= 1 and c["n"] == doc["results"]["prompts"]
    best = doc["tables"]["best"]["rows"]
    assert {r["method"] for r in best} <= {"diffmean", "lape"} and any(r["method"] == "diffmean" for r in best)
    ppl = doc["tables"]["ppl_cost"]["rows"]
    assert all(r["ratio"] > 0 for r in ppl)
    meta = read_metadata(tmp_path / "steer" / "directions.safetensors")
    assert meta["languages"] == LANGS.split(",") and meta["model"] == loaded[2].checksum
    tensors = load_tensors(tmp_path / "steer" / "directions.safetensors")
    assert sorted(tensors) == [f"layer.{i}" for i in range(4)] and tensors["layer.1"].shape == (4, 32)
    # a finished step is skipped; sums of finished languages are re-read when results are gone
    (tmp_path / "steer" / "results.json").unlink()
    monkeypatch.setattr(dm, "language_sums", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recount")))
    again = _steer(tmp_path, loaded)
    assert again["tables"]["conditions"]["rows"] == conds
    # normalised directions have the layer's mean residual norm
    monkeypatch.undo()
    norm = _steer(tmp_path / "n", loaded, normalise=True, neurons_step="none")
    t = load_tensors(tmp_path / "n" / "steer" / "directions.safetensors")["layer.2"]
    m = read_metadata(tmp_path / "n" / "steer" / "directions.safetensors")["mean_residual_norm"][2]
    torch.testing.assert_close(t.norm(dim=-1), torch.full((4,), m), rtol=1e-5, atol=0)
    assert not [r for r in norm["tables"]["best"]["rows"] if r["method"] == "lape"]
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Steering the output language of tiny" in html




def test_bad_input(tmp_path, capsys, tiny_dir):
    base = ["steer", "--model", str(tiny_dir), "--corpus", "pud-sample", "--langs", LANGS, "--neurons-step", "none",
            "-o", str(tmp_path / "run")]
    for extra, words in ((["--layers", "7"], "layer 7 out of range"), (["--alphas", "1,inf"], "not finite"),
                         (["--lape-alphas", "nan"], "not finite"), (["--langs", "eng,fra,xho"], "xho"),
                         (["--neurons-step", "neurons"], "neurons"),
                         (["--targets", "deu"], "--targets")):
        args = base + extra
        code, err = _cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and words in err, (extra, err)
        assert not (tmp_path / "run" / "steer").exists()
