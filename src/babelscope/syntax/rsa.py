"""Alignability of structural concepts across languages by representational similarity analysis.

Xu et al. (2023), Sec. 3 ("Are Structural Concepts Universal in Transformer Language Models?"): a concept
(a grammatical relation or a UPOS tag) is represented in language ``A`` at layer ``l`` by its prototype, the
mean of its instances,

    p_A(c) = (1 / |I_A(c)|) sum_{i in I_A(c)} x_i                                                  (1)

over the concepts ``c in K`` attested at least ``min_count`` times in both languages. The representational
dissimilarity matrix is ``RDM_A[c, c'] = d(p_A(c), p_A(c'))`` (Euclidean, cosine or correlation distance;
Kriegeskorte et al. 2008), and alignability is the Spearman correlation of the two RDMs' upper triangles

    RSA(A, B) = rho_S(vec(RDM_A), vec(RDM_B))                                                     (2)

with a permutation p-value (concept labels of one RDM shuffled, rows and columns together). Procrustes
disparity (``scipy.spatial.procrustes``: residual sum of squares after the best translation, scaling and
rotation of B's standardised prototypes onto A's) is a second, geometry-level measure (lower = more aligned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from babelscope.errors import BabelscopeError

METRICS = ("euclidean", "cosine", "correlation")


def shared_concepts(label_sets: Sequence[np.ndarray], min_count: int) -> list[str]:
    """Labels attested at least ``min_count`` times in every one of the label arrays (sorted)."""
    common: set[str] | None = None
    for labels in label_sets:
        values, counts = np.unique(labels, return_counts=True)
        frequent = {str(v) for v, c in zip(values, counts, strict=True) if c >= min_count}
        common = frequent if common is None else common & frequent
    return sorted(common or [])


def prototypes(X: np.ndarray, labels: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """(K, H) mean vector of each concept (equation 1)."""
    X = np.asarray(X, dtype=np.float64)
    out = np.empty((len(concepts), X.shape[1]))
    for k, concept in enumerate(concepts):
        rows = labels == concept
        if not rows.any():
            raise BabelscopeError(f"concept {concept!r} has no instances; pick concepts both sets attest")
        out[k] = X[rows].mean(axis=0)
    return out


def rdm(P: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Condensed representational dissimilarity matrix of the rows of ``P`` (``scipy.spatial.distance.pdist``)."""
    from scipy.spatial.distance import pdist

    if metric not in METRICS:
        raise BabelscopeError(f"RDM metric {metric!r}: use one of {', '.join(METRICS)}")
    return pdist(np.asarray(P, dtype=np.float64), metric=metric)


def rsa(rdm_a: np.ndarray, rdm_b: np.ndarray) -> float:
    """Spearman correlation of two condensed RDMs (equation 2)."""
    from scipy.stats import spearmanr

    if len(rdm_a) != len(rdm_b) or len(rdm_a) < 3:
        raise BabelscopeError(f"RSA needs two RDMs over the same >= 3 concepts (got {len(rdm_a)} and "
                              f"{len(rdm_b)} entries); lower --min-count or add data")
    if np.ptp(rdm_a) == 0 or np.ptp(rdm_b) == 0:  # a constant RDM ranks nothing: no correlation
        return float("nan")
    return float(spearmanr(rdm_a, rdm_b).statistic)


def rsa_test(rdm_a: np.ndarray, rdm_b: np.ndarray, n_perm: int = 1000, seed: int = 0) -> tuple[float, float]:
    """RSA and its one-sided permutation p-value (:func:`permutation_test`); ``(nan, nan)`` when an RDM is
    constant (no ranking, no correlation)."""
    rho = rsa(rdm_a, rdm_b)
    return rho, permutation_test(rdm_a, rdm_b, n_perm, seed, two_sided=False)


def permutation_test(d_a: np.ndarray, d_b: np.ndarray, n_perm: int = 1000, seed: int = 0, *,
                     two_sided: bool = False, ranks: bool = True) -> float:
    """Permutation p-value of the correlation of two condensed distance matrices over the same items, permuting
    the items of ``d_b`` (rows and columns together: the entries of a distance matrix are not independent).

    ``(1 + #{r_perm >= r}) / (1 + n_perm)`` (one-sided, RSA) or with ``|r|`` (two-sided, the Mantel test).
    ``ranks``: Spearman (ranks computed once; permuting items only moves entries, and their ranks with them),
    else Pearson. NaN when ``n_perm <= 0`` or the correlation is undefined (a constant matrix). The one test
    behind :func:`rsa_test` and :func:`babelscope.syntax.typology.mantel`.
    """
    from scipy.spatial.distance import squareform
    from scipy.stats import rankdata

    a, b = np.asarray(d_a, dtype=np.float64), np.asarray(d_b, dtype=np.float64)
    if ranks:
        a, b = rankdata(a), rankdata(b)
    a = a - a.mean()
    b0 = b - b.mean()
    if n_perm <= 0 or not np.linalg.norm(a) > 0 or not np.linalg.norm(b0) > 0:
        return float("nan")
    a /= np.linalg.norm(a)
    r = float(a @ b0 / np.linalg.norm(b0))
    square = squareform(b)
    k = square.shape[0]
    iu = np.triu_indices(k, 1)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        perm = rng.permutation(k)
        rb = square[np.ix_(perm, perm)][iu]
        rb = rb - rb.mean()
        r_perm = float(a @ rb / np.linalg.norm(rb))
        hits += (abs(r_perm) >= abs(r) - 1e-12) if two_sided else (r_perm >= r - 1e-12)
    return (1 + hits) / (1 + n_perm)


def procrustes_disparity(P_a: np.ndarray, P_b: np.ndarray) -> float:
    """Procrustes disparity of two (K, H) prototype sets over the same concepts (0 = same geometry), as
    ``scipy.spatial.procrustes``: centre both, scale to unit Frobenius norm, then ``1 - (sum of singular values
    of A^T B)^2``. The singular values come from the K x H matrix ``R_a B`` (thin QR ``A^T = Q_a R_a``), not
    the H x H product, so wide hidden states cost little."""
    A = np.asarray(P_a, dtype=np.float64)
    B = np.asarray(P_b, dtype=np.float64)
    if A.shape != B.shape or A.shape[0] < 2:
        raise BabelscopeError(f"Procrustes needs two prototype sets of the same shape with >= 2 concepts "
                              f"(got {A.shape} and {B.shape})")
    A, B = A - A.mean(axis=0), B - B.mean(axis=0)
    na, nb = np.linalg.norm(A), np.linalg.norm(B)
    if na == 0 or nb == 0:
        raise BabelscopeError("Procrustes: all prototypes are identical; nothing to compare")
    A, B = A / na, B / nb
    _, R = np.linalg.qr(A.T)
    nuclear = np.linalg.svd(R @ B, compute_uv=False).sum()
    return float(max(0.0, 1.0 - nuclear ** 2))


def alignability(X_a, y_a, X_b, y_b, *, min_count: int = 20, metric: str = "euclidean", n_perm: int = 1000,
                 seed: int = 0) -> dict[str, float]:
    """RSA (with p-value) and Procrustes disparity between two languages' concept prototypes."""
    concepts = shared_concepts([y_a, y_b], min_count)
    if len(concepts) < 3:
        raise BabelscopeError(f"only {len(concepts)} concepts are attested >= {min_count} times in both sets; "
                              "RSA needs 3 or more: lower --min-count or use more sentences")
    P_a, P_b = prototypes(X_a, y_a, concepts), prototypes(X_b, y_b, concepts)
    rho, p = rsa_test(rdm(P_a, metric), rdm(P_b, metric), n_perm=n_perm, seed=seed)
    return {"rsa": rho, "p_value": p, "procrustes": procrustes_disparity(P_a, P_b), "concepts": len(concepts)}


def split_half(X, labels, sent_ids, *, min_count: int = 20, metric: str = "euclidean", seed: int = 0) -> float:
    """Within-language ceiling: RSA between prototypes from two halves of the sentences (split by sent_id),
    over concepts attested ``min_count // 2`` times in each half."""
    from babelscope.syntax.represent import split_by_sentence

    half = split_by_sentence(sent_ids, 0.5, seed)
    concepts = shared_concepts([labels[half], labels[~half]], max(1, min_count // 2))
    if len(concepts) < 3:
        return float("nan")
    P1 = prototypes(X[half], labels[half], concepts)
    P2 = prototypes(X[~half], labels[~half], concepts)
    return rsa(rdm(P1, metric), rdm(P2, metric))


def alignability_matrices(sets: dict[str, Any], *, min_count: int = 20, metric: str = "euclidean",
                          n_perm: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`alignability` of every pair of languages (``sets``: language -> instances with ``X`` and
    ``labels``): symmetric ``rsa`` (diagonal 1), ``p_value``, ``procrustes`` and ``concepts`` matrices; a pair
    with too few shared concepts stays NaN."""
    langs = list(sets)
    n = len(langs)
    out = {k: np.full((n, n), np.nan) for k in ("rsa", "p_value", "procrustes", "concepts")}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = sets[langs[i]], sets[langs[j]]
            try:
                res = alignability(a.X, a.labels, b.X, b.labels, min_count=min_count, metric=metric,
                                   n_perm=n_perm, seed=seed)
            except BabelscopeError:
                continue  # too few shared concepts: left as NaN and counted in the results
            for k in out:
                out[k][i, j] = out[k][j, i] = res[k]
    np.fill_diagonal(out["rsa"], 1.0)
    return out


def layer_alignability(sets: dict[str, Any], *, min_count: int = 20, metric: str = "euclidean", n_perm: int = 0,
                       seed: int = 0, ceilings: bool = True) -> dict[str, Any]:
    """One layer's :func:`alignability_matrices` on the raw vectors (``raw``) and on vectors standardised with
    statistics pooled over every language (``std``), and (``ceilings``) each language's :func:`split_half`
    ceiling on both (``split_half``, ``split_half_std``, in the order of ``sets``)."""
    from babelscope.syntax import represent

    mean, std = represent.standardizer(list(sets.values()))
    std_sets = {k: represent.standardize(v, mean, std) for k, v in sets.items()}
    kw = {"min_count": min_count, "metric": metric}
    out = {"raw": alignability_matrices(sets, **kw, n_perm=n_perm, seed=seed),
           "std": alignability_matrices(std_sets, **kw, n_perm=n_perm, seed=seed)}
    if ceilings:
        out["split_half"] = [split_half(s.X, s.labels, s.sent_ids, **kw, seed=seed) for s in sets.values()]
        out["split_half_std"] = [split_half(s.X, s.labels, s.sent_ids, **kw, seed=seed) for s in std_sets.values()]
    return out
