"""babelscope.syntax.meta (the method) and its step (babelscope.syntax.steps.run_meta): the prototype probe, the
meta-aligner and the step on synthetic vectors and on a tiny in-process model's store (fast), bad input, and
bit-for-bit reproducibility with a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.syntax import meta, steps


def _synthetic(n_sent: int, shift: float, rotate: np.ndarray | None, seed: int, k: int = 4, dim: int = 16):
    """Sentences of 6 instances of k concepts; concept c has mean 3 e_c (then rotated/shifted per language)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=(n_sent, 6)).ravel()
    means = np.zeros((k, dim))
    means[np.arange(k), np.arange(k)] = 3.0
    X = means[y] + 0.5 * rng.standard_normal((len(y), dim))
    if rotate is not None:
        X = X @ rotate
    X = (X + shift).astype(np.float32)
    sent_ids = np.repeat([f"s{i:03d}" for i in range(n_sent)], 6)
    labels = np.asarray([f"C{c}" for c in y])
    return X, labels, sent_ids


VOCAB = {f"C{c}": c for c in range(4)}


def test_sentences_rows_and_take():
    X, labels, ids = _synthetic(5, 0.0, None, 0)
    order = np.random.default_rng(1).permutation(len(ids))  # any input order
    s = meta.group_by_sentence(X[order], labels[order], ids[order], VOCAB)
    assert list(s.sent_ids) == [f"s{i:03d}" for i in range(5)] and list(s.start) == [0, 6, 12, 18, 24, 30]
    rows = s.rows(np.array([3, 1]))
    assert list(rows) == list(range(18, 24)) + list(range(6, 12))
    sub = s.take(np.array([3, 1]))
    np.testing.assert_array_equal(sub.X, s.X[rows])
    assert list(sub.start) == [0, 6, 12] and list(sub.sent_ids) == ["s003", "s001"]


def test_concept_set_frequency_filter():
    a = np.array([0, 0, 0, 1, 1, 2])
    b = np.array([0, 0, 0, 2, 2, 2, 1])
    assert list(meta.concept_set(a, b, 3, 2)) == [0]
    assert list(meta.concept_set(a, b, 3, 4)) == []
    assert list(meta.local_labels(np.array([2, 0, 1]), np.array([0, 2]), 3)) == [1, 0, -1]


def test_sq_dist_matches_direct_difference():
    a, b = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    direct = ((a[:, None] - b[None]) ** 2).sum(-1)
    # float64 on O(10) values: the expansion loses at most a few ulps of |a|^2 + |b|^2
    assert torch.allclose(meta.sq_dist(a, b), direct, rtol=0, atol=1e-12 * float(direct.max()))


def test_prototype_probe_learns_separable_concepts():
    X, labels, ids = _synthetic(40, 0.0, None, 0)
    data = meta.group_by_sentence(X, labels, ids, VOCAB)
    train, dev = data.take(np.arange(30)), data.take(np.arange(30, 40))
    pr = meta.train_prototype_probe(train, dev, np.arange(4), 4, dim=8, epochs=5, lr=1e-2, seed=0)
    assert pr["P"].shape == (8, 16) and pr["mu"].shape == (4, 16)
    pred = meta.probe_predict(pr, dev.X)
    assert (pred == dev.y).mean() > 0.95 and pr["dev_accuracy"] > 0.95


def test_meta_aligner_identity_adaptor_and_refined_prototypes():
    m = meta.MetaAligner(16, dim=4, width=8, dropout=0.33)
    e = torch.randn(3, 4)
    assert torch.equal(m.prototypes(e), e)  # identity-initialised adaptor with zero bias
    zs = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [9.0, 9, 9, 9]])
    q = m.prototypes(e, zs, torch.tensor([0, 0, -1]))  # the -1 (outside the concept set) is ignored
    assert torch.allclose(q[0], (e[0] + zs[0] + zs[1]) / 3) and torch.equal(q[1:], e[1:])


def test_meta_training_aligns_a_rotated_language():
    """Languages are the English space rotated and shifted; English prototypes alone fail on the target,
    the meta-trained network recovers the concepts zero-shot."""
    rng = np.random.default_rng(5)
    en = meta.group_by_sentence(*_synthetic(60, 0.0, None, 1), VOCAB)
    pr = meta.train_prototype_probe(en, None, np.arange(4), 4, dim=8, epochs=3, lr=1e-2, seed=0)
    english = pr["mu"] @ pr["P"].T
    rot = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    tasks = [meta.MetaTask(f"l{i}", meta.group_by_sentence(*_synthetic(60, 1.0, rot, 10 + i), VOCAB),
                           meta.group_by_sentence(*_synthetic(10, 1.0, rot, 20 + i), VOCAB), np.arange(4))
             for i in range(2)]
    test = meta.group_by_sentence(*_synthetic(20, 1.0, rot, 99), VOCAB)
    baseline = (meta.probe_predict(pr, test.X) == test.y).mean()
    model, hist = meta.meta_train(english, tasks, 4, hidden=16, dim=8, width=32, epochs=3, episodes_per_lang=30,
                                  support=5, query=10, lr=3e-3, seed=0)
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)
    zero = meta.meta_accuracy(model, english, test, test.y)
    assert zero > 0.9 and zero > baseline + 0.2
    sup = test.take(np.arange(3))
    assert meta.meta_accuracy(model, english, test, test.y, sup, sup.y) > 0.9


def test_align_concepts_from_vectors_alone():
    """The method without a run directory or store: instances in, a ConceptResult out (as from a notebook);
    the rotated languages are aligned zero-shot far above chance (4 concepts: 0.25)."""
    from babelscope.syntax.represent import Instances

    rot = np.linalg.qr(np.random.default_rng(5).standard_normal((16, 16)))[0]
    inst = {"en": Instances(*_synthetic(60, 0.0, None, 1))}
    inst.update({f"l{i}": Instances(*_synthetic(60, 1.0, rot, 10 + i)) for i in range(2)})
    test = {"t": Instances(*_synthetic(30, 1.0, rot, 99))}
    ids = inst["en"].sent_ids
    setup = meta.MetaSetup("en", ["l0", "l1"], ["t"], set(ids[ids >= "s048"].tolist()), {"t": ({}, "hash")},
                           [0, 2])
    cfg = meta.MetaConfig(runs=1, min_count=5, probe_epochs=3, probe_lr=1e-2, meta_epochs=3, episodes_per_lang=30,
                          support=5, query=10, meta_lr=3e-3, proj_dim=8, width=32)
    out = meta.align_concepts("pos", {7: (inst, test)}, setup, cfg)
    assert out.layer == 7 and out.left_out == [] and out.langs["t"]["pos_concepts"] == 4
    acc = {(r["method"], r["shots"]): r["accuracy"] for r in out.per_run}
    assert set(acc) == {("EN-probe", 0), ("META", 0), ("META", 2), ("target-probe", 2)}
    assert acc[("META", 0)] > 0.9 and len(out.history) == 3
    assert [r["runs"] for r in meta.summarize(out.per_run)] == [1, 1, 1, 1]


def test_parse_shots_and_bad_config():
    assert steps.parse_shots("10,0,5") == [0, 5, 10]
    with pytest.raises(BabelscopeError, match="--shots"):
        steps.parse_shots("one")
    with pytest.raises(BabelscopeError, match="--concepts"):
        steps.check_meta_config(meta.MetaConfig(concepts="morph"))


# ---------------------------------------------------------------------------------- the step on a tiny model
@pytest.fixture(scope="module")
def tiny_meta_run(tmp_path_factory):
    from babelscope.models.loader import describe
    from conftest import build_tiny

    run_dir = tmp_path_factory.mktemp("meta-run")
    model, tok = build_tiny("gemma3")
    loaded = lambda: (model, tok, describe(model, tok, "tiny", "tiny", checksum="tiny"))  # noqa: E731
    steps.run_extract(steps.ExtractConfig(model="tiny", treebank="pud-sample", langs="en,de,fr,ru,tr,ja",
                                          layers="1,2", max_sentences=40, batch_size=8), run_dir, loaded=loaded)
    return run_dir, model, tok


FAST = dict(source="en", test_langs="tr", meta_langs="de,fr,ru", shots="0,2", runs=2, meta_epochs=2,
            episodes_per_lang=3, support=4, query=6, probe_epochs=2, min_count=5, pos_step="")


def test_step_results_and_reproducible(tiny_meta_run, tmp_path):
    import shutil

    run_dir, _, _ = tiny_meta_run
    doc = steps.run_meta(meta.MetaConfig(**FAST, layer="auto"), run_dir)
    res = doc["results"]
    assert res["meta_langs"] == ["deu", "fra", "rus"] and res["test_langs"] == ["tur"]
    assert set(res["layer"]) == {"pos", "relation"} and all(v in (1, 2) for v in res["layer"].values())
    summary = doc["tables"]["summary"]["rows"]
    methods = {(r["concepts"], r["method"], r["shots"]) for r in summary}
    for kind in ("pos", "relation"):
        assert {(kind, "META", 0), (kind, "META", 2), (kind, "EN-probe", 0), (kind, "target-probe", 2)} <= methods
    assert all(0 <= r["mean"] <= 1 and r["runs"] == 2 for r in summary)
    lang = doc["tables"]["languages"]["rows"][0]
    # Turkish of the sample is a PUD language not in meta-training here; the tiny model documents no languages
    assert lang["lang"] == "tur" and lang["mark"] == "?" and lang["split"].startswith("hash")
    # the same config is skipped; a copy of the store in another run dir reproduces every number bit for bit
    assert steps.run_meta(meta.MetaConfig(**FAST, layer="auto"), run_dir)["provenance"] == doc["provenance"]
    shutil.copytree(run_dir / "syntax-extract", tmp_path / "syntax-extract")
    again = steps.run_meta(meta.MetaConfig(**FAST, layer="auto"), tmp_path)
    assert again["tables"]["per_run"]["rows"] == doc["tables"]["per_run"]["rows"]
    assert again["tables"]["training"]["rows"] == doc["tables"]["training"]["rows"]
    other = steps.run_meta(meta.MetaConfig(**{**FAST, "seed": 1}, layer="auto"), tmp_path, step="meta-seed1")
    assert other["tables"]["per_run"]["rows"] != doc["tables"]["per_run"]["rows"]
    from babelscope.report import render_report

    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "meta-learned concept alignment" in html and html.count("Fig. 17") >= 4  # 2 charts x 2 steps


def test_step_bad_input(tiny_meta_run, tmp_path):
    import shutil

    run_dir, _, _ = tiny_meta_run
    cases = [
        (dict(shots="0,500"), "fewer than --shots 500"),
        (dict(min_count=10_000), "after the frequency filter|fewer than 2"),
        (dict(model="gemma-3-270m"), "made with tiny, not gemma-3-270m"),
        (dict(test_langs="ko"), "not in the store"),
    ]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(BabelscopeError, match=message):
            steps.run_meta(meta.MetaConfig(**{**FAST, **change}), run_dir, step=f"bad{i}")
        assert not (run_dir / f"bad{i}" / "results.json").exists()
    # a test store made with another model than the training store
    shutil.copytree(run_dir / "syntax-extract", tmp_path / "syntax-extract")
    shutil.copytree(run_dir / "syntax-extract", tmp_path / "other")
    done = tmp_path / "other" / "store" / "tur" / "done.json"
    rec = json.loads(done.read_text())
    done.write_text(json.dumps({**rec, "checksum": "different", "model": "other-model"}))
    with pytest.raises(BabelscopeError, match="re-extract both with one model"):
        steps.run_meta(meta.MetaConfig(**{**FAST, "test_store": "other"}), tmp_path)
    assert not (tmp_path / "syntax-meta").exists()


def test_demo_step_runs_on_the_store(tiny_meta_run, tmp_path):
    """The demo's syntax-meta options (examples/demo.yaml) on a store of the same languages and size."""
    import shutil
    from pathlib import Path

    import yaml

    run_dir, _, _ = tiny_meta_run
    demo = yaml.safe_load((Path(__file__).parents[1] / "examples" / "demo.yaml").read_text(encoding="utf-8"))
    options = next(s for s in demo["steps"] if s["command"] == "syntax-meta")
    options = {k: v for k, v in options.items() if k not in ("command", "step")}
    shutil.copytree(run_dir / "syntax-extract", tmp_path / "syntax-extract")
    doc = steps.run_meta(meta.MetaConfig(**options), tmp_path)
    assert doc["results"]["test_langs"] == ["deu"] and doc["results"]["meta_langs"] == ["jpn"]
    assert {r["shots"] for r in doc["tables"]["summary"]["rows"] if r["method"] == "META"} == {0, 1, 5}


def test_in_context_baselines_from_a_pos_step(tiny_meta_run, tmp_path):
    """MONO / EN rows of a pos step in the run dir join the table; a pos step of another model is refused."""
    import shutil

    from babelscope.runs import Step, provenance

    run_dir, _, _ = tiny_meta_run
    shutil.copytree(run_dir / "syntax-extract", tmp_path / "syntax-extract")
    rows = [{"lang": "de", "MONO_mean": 0.5, "MONO_std": 0.1, "EN_mean": 0.4, "EN_std": 0.05}]
    Step(tmp_path, "pos").write_results("pos", {}, {"shots": 2}, {"per_language": rows},
                                        provenance(model={"checksum": "tiny"}))
    cfg = meta.MetaConfig(**{**FAST, "test_langs": "de", "meta_langs": "fr,ru", "pos_step": "pos"})
    doc = steps.run_meta(cfg, tmp_path)
    icl = {r["method"]: r for r in doc["tables"]["summary"]["rows"] if r["method"].startswith("ICL")}
    assert icl["ICL-MONO"]["mean"] == 0.5 and icl["ICL-EN"]["std"] == 0.05 and icl["ICL-EN"]["shots"] == 2
    Step(tmp_path, "pos").write_results("pos", {}, {"shots": 2, "model": "big"}, {"per_language": rows},
                                        provenance(model={"checksum": "another"}))
    with pytest.raises(BabelscopeError, match="another model"):
        steps.run_meta(cfg, tmp_path)


def test_cli_meta_help_and_one_line_error(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "babelscope.cli", "syntax", "meta", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--shots" in out.stdout and "--test-store" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "babelscope.cli", "syntax", "meta", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "syntax extract" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "syntax-meta").exists()


def test_loss_without_concept_instances_is_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = meta._ce(logits, torch.tensor([-1, -1, -1, -1]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros(4, 3))
