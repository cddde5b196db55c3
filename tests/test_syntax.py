"""babelscope.syntax on plain arrays, small treebanks and tiny in-process models: pooling, instances, OTDD,
RSA, probes, typology, bad input, the steps, the CLI and the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from babelscope.errors import BabelscopeError
from babelscope.syntax import otdd, probe, represent, rsa, typology
from numerics import TINY_FORWARD, assert_close_scaled, gamma

# A French sentence with a multiword token ("du" = de + le) and a subtyped relation (nmod:poss would strip).
CONLLU_FR = """# sent_id = s1
# text = Le chat du voisin dort.
1\tLe\tle\tDET\t_\t_\t2\tdet\t_\t_
2\tchat\tchat\tNOUN\t_\t_\t6\tnsubj\t_\t_
3-4\tdu\t_\t_\t_\t_\t_\t_\t_\t_
3\tde\tde\tADP\t_\t_\t5\tcase\t_\t_
4\tle\tle\tDET\t_\t_\t5\tdet\t_\t_
5\tvoisin\tvoisin\tNOUN\t_\t_\t2\tnmod:poss\t_\t_
6\tdort\tdormir\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No
7\t.\t.\tPUNCT\t_\t_\t6\tpunct\t_\t_

# sent_id = s2
# text = Il dort.
1\tIl\til\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tdort\tdormir\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _words(tmp_path: Path):
    from babelscope.data.ud import read_conllu

    sentences = read_conllu(_write(tmp_path, "fr_test-ud-test.conllu", CONLLU_FR))
    return sentences, represent._words_table(sentences)


# ------------------------------------------------------------------------------------------------- pooling
def test_token_spans_trim_whitespace_and_specials():
    text = "Hello world"
    spans = represent.token_spans(text, np.array([[0, 0], [0, 5], [5, 11], [11, 11]]))
    assert spans.tolist() == [[0, 0], [0, 5], [6, 11], [0, 0]]


def test_pool_words_first_last_mean():
    hidden = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # 2 layers, 4 tokens
    tok = np.array([[0, 0], [0, 3], [3, 5], [6, 9]])  # BOS, "abc", "de" (one word "abcde"), "fgh"
    words = np.array([[0, 5], [6, 9], [10, 12]])  # the last word has no token (cut off)
    mask = represent.word_token_mask(words, tok)
    assert mask.tolist() == [[False, True, True, False], [False, False, False, True], [False] * 4]
    first = represent.pool_words(hidden, mask, "first")
    last = represent.pool_words(hidden, mask, "last")
    mean = represent.pool_words(hidden, mask, "mean")
    np.testing.assert_array_equal(first[:, 0], hidden[:, 1])
    np.testing.assert_array_equal(last[:, 0], hidden[:, 2])
    np.testing.assert_allclose(mean[:, 0], hidden[:, 1:3].mean(axis=1))
    np.testing.assert_array_equal(first[:, 1], hidden[:, 3])
    assert np.isnan(first[:, 2]).all() and np.isnan(mean[:, 2]).all()
    with pytest.raises(BabelscopeError, match="pooling"):
        represent.pool_words(hidden, mask, "max")


def test_relation_and_pos_instances(tmp_path):
    sentences, words = _words(tmp_path)
    assert sentences[0].text == "Le chat du voisin dort."
    V = np.eye(len(words["sent"]), dtype=np.float32) * 10  # one-hot word vectors
    rel = represent.relation_instances(words, V, "fra", 3)
    # s1: 7 words, root left out, de->voisin and le->voisin kept (different spans from voisin), none inside "du"
    # s2: 3 words, root left out
    assert sorted(rel.labels.tolist()) == sorted(["det", "nsubj", "case", "det", "nmod", "punct", "nsubj", "punct"])
    i = rel.labels.tolist().index("nmod")  # chat (word 2) is the head of voisin (word 5)
    np.testing.assert_array_equal(rel.X[i], V[1] - V[4])
    assert set(rel.sent_ids.tolist()) == {"s1", "s2"}
    pos = represent.pos_instances(words, V, "fra", 3)
    assert len(pos) == 10 and pos.labels[0] == "DET"


def test_relations_inside_a_multiword_token_are_left_out(tmp_path):
    text = CONLLU_FR.replace("4\tle\tle\tDET\t_\t_\t5\tdet", "4\tle\tle\tDET\t_\t_\t3\tfixed")
    from babelscope.data.ud import read_conllu

    sentences = read_conllu(_write(tmp_path, "fr_x-ud-test.conllu", text))
    words = represent._words_table(sentences)
    rel = represent.relation_instances(words, np.ones((len(words["sent"]), 4), np.float32), "fra")
    assert "fixed" not in rel.labels.tolist()  # de and le share the span of "du": r would be 0


def test_split_by_sentence_is_the_same_in_every_language():
    ids = np.array([f"n{i:04d}" for i in range(200)])
    a = represent.split_by_sentence(ids, 0.5, seed=1)
    b = represent.split_by_sentence(ids[::-1], 0.5, seed=1)[::-1]
    assert (a == b).all() and 60 < a.sum() < 140


def test_standardize_removes_a_massive_dimension():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    X[:, 3] *= 1000
    assert represent.top_dimension_share(X) > 0.99
    inst = represent.Instances(X, np.array(["a"] * 300), np.array(["s"] * 300))
    mean, std = represent.standardizer([inst])
    assert represent.top_dimension_share(represent.standardize(inst, mean, std).X) < 0.2


# ------------------------------------------------------------------------------------------------- OTDD
def _labelled(rng, n, shift=0.0, dim=6, means=None):
    means = means if means is not None else {k: rng.normal(size=dim) * 4 for k in "abc"}
    y = rng.choice(list("abc"), size=n)
    X = np.stack([means[k] for k in y]) + rng.normal(size=(n, dim)) + shift
    return X, y, means


def test_sinkhorn_cost_matches_pot():
    import ot

    rng = np.random.default_rng(0)
    C = rng.random((40, 30)) * 50
    ours = otdd.sinkhorn_cost(C, 2.0, tol=1e-12, max_iter=20000)
    pot = ot.sinkhorn2(np.full(40, 1 / 40), np.full(30, 1 / 30), C, reg=2.0, method="sinkhorn_log",
                       stopThr=1e-12, numItermax=20000)
    assert ours == pytest.approx(float(pot), rel=1e-7)
    # cost range 1000 eps: neither solver reaches 1e-12 in 20,000 iterations; both last iterates agree
    tiny = otdd.sinkhorn(C, 0.05, tol=1e-12, max_iter=20000)
    assert tiny.marginal_error < otdd.MAX_MARGINAL_ERROR
    tiny_eps = tiny.value
    pot = ot.sinkhorn2(np.full(40, 1 / 40), np.full(30, 1 / 30), C, reg=0.05, method="sinkhorn_log",
                       stopThr=1e-12, numItermax=20000)
    assert tiny_eps == pytest.approx(float(pot), rel=1e-5)


def test_label_distances_are_exact_w2():
    import ot

    rng = np.random.default_rng(1)
    X, y, means = _labelled(rng, 60)
    Z, yz, _ = _labelled(rng, 50, shift=1.0, means=means)
    C = otdd.squared_distances(X, Z)
    # float64 |x|² + |z|² − 2 x·z against POT's: dot products of dim terms, relative to the largest entry
    assert_close_scaled(C, ot.dist(X, Z), 4 * gamma(X.shape[1], u=2.0**-53))
    la, lb, W = otdd.label_distances(C, y, yz, max_per_label=None)
    a, b = X[y == "b"], Z[yz == "c"]
    expected = ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), ot.dist(a, b))
    assert W[list(la).index("b"), list(lb).index("c")] == pytest.approx(expected)
    assert W[0, 0] < W[0, 1]  # a label is closer to itself in the other set than to another label


def test_otdd_is_zero_on_itself_symmetric_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    X, y, means = _labelled(rng, 120)
    assert otdd.otdd(X, y, X, y)["distance"] == 0.0
    shifted = [otdd.otdd(X, y, *_labelled(np.random.default_rng(3), 120, s, means=means)[:2])["distance"]
               for s in (0.0, 1.0, 3.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    relabelled = otdd.otdd(X, y, X, np.roll(y, 1))["distance"]  # same vectors, scrambled labels
    assert relabelled > 0
    sets = [(X, y), _labelled(rng, 100, 1.0, means=means)[:2], _labelled(rng, 90, 3.0, means=means)[:2]]
    D, eps = otdd.otdd_matrix(sets)
    assert eps > 0 and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    assert D[0, 1] < D[0, 2]
    sinkhorn_inner = otdd.otdd(*sets[0], *sets[1], inner="sinkhorn")["distance"]
    assert sinkhorn_inner == pytest.approx(otdd.otdd(*sets[0], *sets[1])["distance"], rel=0.2)


# ------------------------------------------------------------------------------------------------- RSA
def test_rsa_procrustes_and_permutation_test():
    rng = np.random.default_rng(4)
    P = rng.normal(size=(12, 10))
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    rotated = P @ Q * 3 + 1  # same geometry, rotated, scaled, shifted
    rho, p = rsa.rsa_test(rsa.rdm(P), rsa.rdm(rotated), n_perm=200)
    assert rho == pytest.approx(1.0) and p < 0.02
    # float64: 1 − (Σ singular values)² cancels to 0 up to γ over the 12 x 10 entries (~1e-14)
    assert rsa.procrustes_disparity(P, rotated) == pytest.approx(0.0, abs=1e3 * gamma(120, u=2.0**-53))
    other = rng.normal(size=(12, 10))
    rho2, p2 = rsa.rsa_test(rsa.rdm(P), rsa.rdm(other), n_perm=200)
    assert rho2 < 0.5 and p2 > 0.01
    assert rsa.procrustes_disparity(P, other) > 0.3
    from scipy.spatial import procrustes

    f64 = 1e3 * gamma(12 * 300, u=2.0**-53)  # float64 SVDs of at most 12 x 300 entries, with a wide margin
    assert rsa.procrustes_disparity(P, other) == pytest.approx(procrustes(P, other)[2], rel=f64)
    wide = rng.normal(size=(12, 300))  # more dimensions than concepts
    noisy = wide + rng.normal(size=(12, 300))
    assert rsa.procrustes_disparity(wide, noisy) == pytest.approx(procrustes(wide, noisy)[2], rel=f64)
    with pytest.raises(BabelscopeError, match="metric"):
        rsa.rdm(P, "manhattan")


def test_alignability_and_split_half():
    rng = np.random.default_rng(5)
    X, y, means = _labelled(rng, 400, dim=8)
    means.update({k: rng.normal(size=8) * 4 for k in "def"})
    y = rng.choice(list("abcdef"), size=400)
    X = np.stack([means[k] for k in y]) + rng.normal(size=(400, 8))
    X2 = np.stack([means[k] for k in y]) @ np.linalg.qr(rng.normal(size=(8, 8)))[0] + rng.normal(size=(400, 8))
    res = rsa.alignability(X, y, X2, y, min_count=20, n_perm=100)
    assert res["concepts"] == 6 and res["rsa"] > 0.8 and res["procrustes"] < 0.1
    ceiling = rsa.split_half(X, y, np.array([f"s{i // 10}" for i in range(400)]), min_count=20)
    assert ceiling > 0.8
    with pytest.raises(BabelscopeError, match="attested"):
        rsa.alignability(X, y, X2, y, min_count=10_000)


# ------------------------------------------------------------------------------------------------- probes, typology
def test_probe_beats_majority_on_separable_data_and_transfer_matrix():
    rng = np.random.default_rng(6)
    X, y, means = _labelled(rng, 300)
    Z, yz, _ = _labelled(rng, 200, means=means)
    model = probe.fit_probe(X, y)
    assert probe.accuracy(model, Z, yz) > 0.9 > probe.majority_accuracy(y, yz)
    noise = rng.normal(size=(200, 6)) * 10
    langs, T = probe.transfer_matrix({"a": (X, y), "b": (noise, yz)}, {"a": (Z, yz), "b": (noise, yz)})
    assert langs == ["a", "b"] and T[0, 0] > 0.9 and T[1, 0] < 0.7


def test_typology_table_and_mantel():
    F = typology.syntax_features(["en", "de", "fr", "ja", "tr"])
    assert F.shape == (5, len(typology.feature_names())) == (5, 103)
    D = typology.typological_distance(F)
    assert D[0, 1] < D[0, 3]  # English is closer to German than to Japanese
    r, p = typology.mantel(D, D * 2 + 1, n_perm=999)
    assert r == pytest.approx(1.0) and p < 0.05
    rows, r2 = typology.feature_importance(F, D, typology.feature_names())
    assert rows and rows[0]["importance"] > 0 and r2 > 0.5
    assert typology.uriel_code("zh-Hant") == "cmn"
    with pytest.raises(BabelscopeError, match="URIEL"):
        typology.syntax_features(["wol", "yor"])


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_treebanks_give_one_line_errors(tmp_path):
    from babelscope.data.ud import load_treebanks

    cycle = CONLLU_FR.replace("1\tLe\tle\tDET\t_\t_\t2\tdet", "1\tLe\tle\tDET\t_\t_\t1\tdet")
    with pytest.raises(BabelscopeError, match="cycle"):
        load_treebanks(str(_write(tmp_path, "fr_a-ud-test.conllu", cycle)))
    (tmp_path / "fr_a-ud-test.conllu").unlink()
    out_of_range = CONLLU_FR.replace("7\t.\t.\tPUNCT\t_\t_\t6", "7\t.\t.\tPUNCT\t_\t_\t9")
    with pytest.raises(BabelscopeError, match=r"fr_b-ud-test.conllu:\d+: HEAD 9 is out of range"):
        load_treebanks(str(_write(tmp_path, "fr_b-ud-test.conllu", out_of_range)))
    with pytest.raises(BabelscopeError, match="no such file"):
        load_treebanks(str(tmp_path / "missing"))


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False
        name_or_path = "slow-tok"

    with pytest.raises(BabelscopeError, match="slow-tok: a slow"):
        represent._check_offsets(Slow())


def test_parse_layers():
    from babelscope.syntax.steps import parse_layers

    assert parse_layers("all", 3) == [0, 1, 2, 3]
    assert parse_layers("middle", 18) == [9]
    assert parse_layers("3,1", 3) == [1, 3]
    with pytest.raises(BabelscopeError, match="out of range"):
        parse_layers("7", 3)


# ---------------------------------------------------------------------------------- steps on a tiny model
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from babelscope.models.loader import describe
    from babelscope.syntax import steps
    from conftest import build_tiny

    run_dir = tmp_path_factory.mktemp("syntax-run")
    model, tok = build_tiny("gemma3")
    loaded = lambda: (model, tok, describe(model, tok, "tiny", "tiny", checksum="tiny"))  # noqa: E731
    cfg = steps.ExtractConfig(model="tiny", treebank="pud-sample", langs="en,de,ja", layers="all",
                              max_sentences=25, batch_size=8)
    doc = steps.run_extract(cfg, run_dir, loaded=loaded)
    control = steps.run_extract(steps.ExtractConfig(**{**vars(cfg), "random_init": True, "seed": 1}), run_dir,
                                step="syntax-extract-random", loaded=loaded)
    return run_dir, doc, control, model, tok, loaded


def test_extract_store_matches_engine_hidden_states(tiny_run):
    from babelscope.data.ud import load_treebanks
    from babelscope.models.engine import Engine

    run_dir, doc, control, model, tok, _ = tiny_run
    res = doc["results"]
    assert res["pooling"] == "last" and res["layers"] == [0, 1, 2, 3] and res["languages"] == ["eng", "deu", "jpn"]
    rows = {r["lang"]: r for r in doc["tables"]["per_language"]["rows"]}
    assert rows["eng"]["sentences"] == 25 and rows["eng"]["words_without_token"] == 0
    store = represent.Store(run_dir / "syntax-extract" / "store")
    sentence = load_treebanks("pud-sample", "en", 25)["eng"][3]
    words = store.words("eng")
    first_row = int(np.flatnonzero(words["sent"] == 3)[0])
    state = Engine(model, tok, progress=False).hidden_states([sentence.text], [2])[0]
    mask = represent.word_token_mask(np.array([(t.start, t.end) for t in sentence.tokens]),
                                     represent.token_spans(sentence.text, state["offsets"]))
    last_token = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    # the same float32 forward, batched differently: bound of the tiny model's forward, scaled to the tensor
    assert_close_scaled(store.vectors("eng", 2)[first_row:first_row + len(sentence.tokens)],
                        state["hidden"][0, last_token], TINY_FORWARD)
    # the random-init control differs from the trained (here: seed-0) weights
    ctrl = represent.Store(run_dir / "syntax-extract-random" / "store")
    assert not np.allclose(ctrl.vectors("eng", 2), store.vectors("eng", 2))
    assert control["results"]["random_init"] is True


def test_extract_resumes_per_language(tiny_run, tmp_path):
    import shutil

    from babelscope.syntax import steps

    run_dir, doc, _, model, tok, loaded = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "syntax-extract", copy / "syntax-extract")
    (copy / "syntax-extract" / "results.json").unlink()
    shutil.rmtree(copy / "syntax-extract" / "store" / "jpn")
    before = (copy / "syntax-extract" / "store" / "eng" / "layer02.npy").stat().st_mtime_ns
    again = steps.run_extract(steps.ExtractConfig(**doc["config"]), copy, loaded=loaded)
    assert (copy / "syntax-extract" / "store" / "eng" / "layer02.npy").stat().st_mtime_ns == before
    assert again["tables"]["per_language"]["rows"] == doc["tables"]["per_language"]["rows"]
    assert not list((copy / "syntax-extract" / "store").glob("*/.*.tmp"))


def test_otdd_rsa_probe_steps_and_report(tiny_run):
    from babelscope.report import render_report
    from babelscope.syntax import steps

    run_dir, *_ = tiny_run
    o = steps.run_otdd(steps.OtddConfig(samples=80, draws=2, max_per_label=20, mantel_perm=99), run_dir)
    pairs = o["tables"]["pairs"]["rows"]
    assert len(pairs) == 3 and all(r["otdd_raw"] > 0 and r["otdd_std"] > 0 for r in pairs)
    assert {"mantel_otdd_raw_vs_typology", "mantel_otdd_std_vs_typology"} <= set(o["results"]["links"])
    r = steps.run_rsa(steps.RsaConfig(control="syntax-extract-random", min_count=5, n_perm=50), run_dir)
    curves = r["tables"]["per_layer"]["rows"]
    assert [c["layer"] for c in curves] == [0, 1, 2, 3] and all("control_rsa" in c for c in curves)
    assert all(-1 <= p["rsa"] <= 1 for p in r["tables"]["pairs"]["rows"])
    assert len(r["results"]["most_alignable"]) == 3
    p = steps.run_probe(steps.ProbeConfig(control="syntax-extract-random", layers="0,3", max_iter=50,
                                          otdd="syntax-otdd"), run_dir)
    summary = p["tables"]["per_layer"]["rows"]
    assert {s["concepts"] for s in summary} == {"relation", "pos"}
    assert all(0 <= s["accuracy"] <= 1 and "control_accuracy" in s for s in summary)
    assert len(p["tables"]["transfer"]["rows"]) == 3
    assert "mantel_otdd_std_vs_transfer_loss" in p["results"]["links"]
    with pytest.raises(BabelscopeError, match="only .* relation instances|at least 2 languages"):
        steps.run_otdd(steps.OtddConfig(langs="en"), run_dir, step="otdd-one")
    html = render_report(run_dir).read_text(encoding="utf-8")
    for title in ("OTDD syntactic distance", "alignability of structural concepts", "Syntax: probes",
                  "word representations"):
        assert title in html


def test_cli_help_and_bad_input_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "babelscope.cli", "syntax", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "extract" in out.stdout and "otdd" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "babelscope.cli", "syntax", "rsa", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "syntax extract" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
