"""Removal conditions that say what they did: weights already 0 (a quantised model) are not "removed" again,
the counts are of values that actually change, norm entries inside a region are counted, and the terminal table
is plain text."""

from __future__ import annotations

import pytest
import torch

from babelscope.models.params import norm_modules, scored_parameters
from babelscope.regions.apply import applied_region
from babelscope.regions.select import region_mask
from conftest import build_tiny


def _quantised_like(model, fraction=0.3, seed=0):
    """Set a fraction of every block matrix to exactly 0, as a Q4_K_M GGUF dequantised to float32 has (and give
    the norms trained-looking nonzero weights: a fresh Gemma's start at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scored_parameters(model).values():
            if p.ndim == 2:
                p[torch.rand(p.shape, generator=gen) < fraction] = 0
            else:
                p.copy_(torch.randn(p.shape, generator=gen))


def test_bottom_and_random_skip_weights_that_are_already_zero():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(40, 50, generator=gen), "b": torch.rand(300, generator=gen)}
    scores["a"][:20] = 0  # half of a: importance 0 (weights already 0)
    for scope in ("tensor", "global"):
        plain = region_mask(scores, 0.1, "bottom", scope)
        assert bool((scores["a"][plain["a"]] == 0).all())  # the plain ranking takes a's zeros first
        for which in ("top", "bottom", "random"):
            mask = region_mask(scores, 0.1, which, scope, seed=1, skip_zeros=True)
            if scope == "global":
                assert sum(int(m.sum()) for m in mask.values()) == round(0.1 * 2300)
            else:
                assert all(int(mask[n].sum()) == round(0.1 * s.numel()) for n, s in scores.items())
            assert not any(bool((scores[n][mask[n]] == 0).any()) for n in scores), (which, scope)
        bottom = region_mask(scores, 0.1, "bottom", scope, skip_zeros=True)
        nonzero = {n: s[s != 0] for n, s in scores.items()}
        if scope == "tensor":  # the smallest nonzero ones of each tensor
            for n, s in scores.items():
                assert int(bottom[n].sum()) == round(0.1 * s.numel())
                assert s[bottom[n]].max() <= nonzero[n][~bottom[n][s != 0]].min()
    mid = {"w": torch.cat([torch.zeros(70), torch.rand(30, generator=gen) + 0.1])}  # nonzero < 4 x count
    m = region_mask(mid, 0.2, "random", "tensor", skip_zeros=True)["w"]
    assert int(m.sum()) == 20 and not bool(m[:70].any())
    # Too few nonzero weights: all of them, then zeros (Bottom in order, Random at random), count kept.
    sparse = {"w": torch.tensor([0.0] * 9 + [0.5])}
    for which in ("bottom", "random"):
        m = region_mask(sparse, 0.3, which, "tensor", skip_zeros=True)["w"]
        assert int(m.sum()) == 3 and bool(m[9])


def test_applied_region_counts_values_that_change_and_norm_entries():
    model, _ = build_tiny("gemma3")
    _quantised_like(model)
    params = scored_parameters(model)
    norms = set(norm_modules(model))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    zeros = sum(int((p == 0).sum()) for n, p in params.items() if n not in norms)
    total = sum(p.numel() for n, p in params.items() if n not in norms)
    in_norms = sum(params[n].numel() for n in norms)
    with applied_region(params, mask, "zero", norm_names=norms) as counts:
        assert counts.selected == total + in_norms and counts.norm_entries == in_norms
        assert counts.changed == total - zeros  # weights already 0 do not change
    with applied_region(params, mask, "scale", factor=2.0, include_norms=True, norm_names=norms) as counts:
        norm_zeros = sum(int((params[n] == 0).sum()) for n in norms)
        assert counts.changed == total - zeros + in_norms - norm_zeros  # 2·0 = 0 is no change either


def _loaded(model, tok):
    from babelscope.models.loader import describe

    info = describe(model, tok, "tiny", "memory")
    return lambda: (model, tok, info)


@pytest.fixture(scope="module")
def quantised_run(tmp_path_factory):
    """Importance of a tiny Gemma with 30% exact zeros in its matrices, on 2 languages."""
    from babelscope.regions import importance

    tmp = tmp_path_factory.mktemp("quantised")
    model, tok = build_tiny("gemma3")
    _quantised_like(model)
    loaded = _loaded(model, tok)
    importance.run(importance.ImportanceConfig(langs="eng,fra", max_tokens=48, window=32), tmp, "imp", loaded)
    return tmp, loaded


def test_conditions_change_the_same_number_of_values(quantised_run):
    from babelscope.regions import ablate, select

    tmp, loaded = quantised_run
    changed = {}
    for skip in (True, False):
        sel = select.run(select.SelectConfig(importance_step="imp", k="0.05", scope="tensor,global",
                                             monolingual=False, skip_zeros=skip), tmp, f"sel-{skip}")
        rows = {(r["region"], r["scope"]): r for r in sel["tables"]["regions"]["rows"] if r["file"]}
        doc = ablate.run(ablate.AblateConfig(select_step=f"sel-{skip}", langs="eng,spa", k="0.05",
                                             scope="tensor,global", max_tokens=24, window=32, generate=False),
                         tmp, f"abl-{skip}", loaded)
        summary = {(r["region"], r["scope"]): r for r in doc["tables"]["summary"]["rows"]}
        for key, r in summary.items():
            assert r["selected"] == rows[key]["parameters"] and r["norm_entries"] == rows[key]["norm_entries"]
            assert r["changed"] <= r["selected"] - r["norm_entries"]
        changed[skip] = {key: r["changed"] for key, r in summary.items()}
        if skip:
            for key, r in summary.items():  # no selected matrix weight is already 0: every one changes
                assert rows[key]["zero_importance"] == 0
                assert r["changed"] == r["selected"] - r["norm_entries"]
    tensor = {w: changed[True][(w, "tensor")] for w in ("top", "bottom", "random")}
    assert len(set(tensor.values())) == 1  # per tensor: Top, Bottom and Random change the same number
    # The paper's plain ranking: Bottom takes the zeros first and changes (almost) nothing.
    assert changed[False][("bottom", "tensor")] < 0.2 * changed[False][("top", "tensor")]
    assert changed[False][("random", "tensor")] < changed[True][("random", "tensor")]
    # The global regions hold norm entries, which zeroing leaves alone: they are counted and reported.
    sel = select.run(select.SelectConfig(importance_step="imp", k="0.05", scope="global", monolingual=False),
                     tmp, "sel-True")
    assert sum(r["norm_entries"] for r in sel["tables"]["regions"]["rows"]) > 0


def test_select_terminal_table_is_plain_text(quantised_run):
    from typer.testing import CliRunner

    from babelscope.cli import app
    from babelscope.report.markup import format_plain

    assert format_plain(None) == "—" and format_plain(2.184) == "2.184" and format_plain(1234567) == "1,234,567"
    tmp, _ = quantised_run
    out = CliRunner().invoke(app, ["regions", "select", "--importance-step", "imp", "--k", "0.05",
                                   "--table-k", "0.1", "--no-monolingual", "-o", str(tmp), "--step", "sel-cli"])
    assert out.exit_code == 0, out.output
    assert "—" in out.output  # the table-k row has no file
    assert "<span" not in out.output and "class=" not in out.output and "&" not in out.output
