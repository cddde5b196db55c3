"""OT and RSA edge cases: Sinkhorn reports (and refuses) non-convergence, ``--reg`` is bounded, the per-label
cap subsamples each set once (symmetry, zero self terms, no dependence on the order of the languages), and a
constant RDM has no p-value."""

from __future__ import annotations

import numpy as np
import pytest

from babelscope.errors import BabelscopeError
from babelscope.syntax import otdd, rsa, typology

TOL = 1e-6  # sinkhorn's default: L1 error of the marginals at the stop


def _sets(seed: int, n: int, shift: float, labels: int = 4, dim: int = 6):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(labels, dim)) * 3
    y = rng.integers(labels, size=n)
    return means[y] + rng.normal(size=(n, dim)) + shift, np.array([f"r{k}" for k in y])


def test_sinkhorn_reports_convergence_and_refuses_its_last_iterate():
    import ot

    rng = np.random.default_rng(0)
    C = rng.random((60, 50)) * 10
    a, b = np.full(60, 1 / 60), np.full(50, 1 / 50)
    res = otdd.sinkhorn(C, 0.05 * np.median(C))
    assert res.converged and 0 < res.n_iter < 20000 and res.marginal_error < TOL
    # a feasible plan costs at least the exact optimum (up to what the marginal error allows)
    assert res.value >= ot.emd2(a, b, C) - TOL * C.max()
    cut = otdd.sinkhorn(C, 0.002 * np.median(C), max_iter=30)
    assert not cut.converged and cut.n_iter == 30 and cut.marginal_error > TOL
    with pytest.raises(BabelscopeError, match="did not converge"):
        otdd.sinkhorn_cost(C, 0.002 * np.median(C), max_iter=30)
    # Stopped between tol and the accepted error: used, with a warning that says how far off.
    mid = otdd.sinkhorn(C, 0.002 * np.median(C), max_iter=20000)
    assert TOL < mid.marginal_error <= otdd.MAX_MARGINAL_ERROR or mid.converged
    with pytest.warns(RuntimeWarning, match="stopped short"):
        otdd.sinkhorn_cost(C, 0.05 * np.median(C), tol=1e-15, max_iter=40)
    X, y = _sets(1, 80, 0.0)
    Z, yz = _sets(2, 80, 1.0)
    out = otdd.otdd(X, y, Z, yz)
    assert out["solves"] == 3 and out["max_iterations"] > 0 and out["max_marginal_error"] < TOL
    for bad in (0.003, 0.0, -1.0, 50.0):
        with pytest.raises(BabelscopeError, match="--reg"):
            otdd.otdd(X, y, Z, yz, reg=bad)
        with pytest.raises(BabelscopeError, match="--reg"):
            otdd.otdd_matrix([(X, y), (Z, yz)], reg=bad)


def test_capped_labels_symmetric_zero_self_terms_and_order_free():
    cap = 10  # every label has about 40 vectors: the cap is active
    D_set, E_set, F_set = _sets(3, 160, 0.0), _sets(4, 150, 1.0), _sets(5, 170, 2.5)
    assert min(np.unique(s[1], return_counts=True)[1].min() for s in (D_set, E_set, F_set)) > cap
    X, y = D_set
    _, _, W = otdd.label_distances(otdd.squared_distances(X, X), y, y, max_per_label=cap)
    # the same subsample on both sides of a self term: W_kk is 0 up to float64 cancellation in |x|² + |x|² − 2x·x
    # (before, two different subsamples gave W_kk of the order of the other entries)
    assert np.all(np.diag(W) <= 1e3 * np.finfo(float).eps * W.max())
    de = otdd.otdd(*D_set, *E_set, max_per_label=cap)
    ed = otdd.otdd(*E_set, *D_set, max_per_label=cap)
    # Both solves stop with marginals within TOL (L1); moving that much mass changes <P, C> by at most TOL·max C.
    bound = 2 * TOL * otdd.augmented_cost(*D_set, *E_set, max_per_label=cap).max()
    assert abs(de["distance"] - ed["distance"]) <= bound and de["distance"] > 0
    assert otdd.otdd(*D_set, *D_set, max_per_label=cap)["distance"] == 0.0
    sets = [D_set, E_set, F_set]
    M, eps = otdd.otdd_matrix(sets, max_per_label=cap)
    order = [2, 0, 1]
    P, eps_p = otdd.otdd_matrix([sets[i] for i in order], max_per_label=cap)
    assert eps_p == pytest.approx(eps, rel=1e-12)  # the median of the same pair medians
    back = np.empty_like(P)
    back[np.ix_(order, order)] = P
    assert np.abs(back - M).max() <= bound * 2


def test_constant_rdm_has_no_p_value_and_one_permutation_test_serves_both():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(6)
    P = rng.normal(size=(8, 5))
    const = np.ones(28)
    rho, p = rsa.rsa_test(const, rsa.rdm(P), n_perm=100)
    assert np.isnan(rho) and np.isnan(p)
    r, p = typology.mantel(np.ones((5, 5)) - np.eye(5), rng.random((5, 5)), n_perm=99)
    assert np.isnan(r) and np.isnan(p)
    # Mantel (two-sided) and RSA (one-sided) are the same permutation test on the condensed matrices.
    A, B = rsa.rdm(P), rsa.rdm(P + rng.normal(size=P.shape) * 0.3)
    rho, p_one = rsa.rsa_test(A, B, n_perm=200, seed=3)
    from scipy.spatial.distance import squareform

    r, p_two = typology.mantel(squareform(A), squareform(B), n_perm=200, seed=3)
    assert rho == pytest.approx(spearmanr(A, B).statistic) and r == pytest.approx(rho)
    assert rho > 0.5 and p_one == p_two == pytest.approx(1 / 201)  # no permutation beats a strong match
