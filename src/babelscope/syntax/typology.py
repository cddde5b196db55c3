"""Typological distance from URIEL syntax features, Mantel tests, and what predicts syntactic distance.

* Features: the 103 URIEL syntax features (Littell et al. 2017) shipped as ``data/embedded/syntax/
  uriel_syntax.tsv`` (written once with lang2vec 1.1.2, CC BY-SA 4.0; see NOTICE.md). ``knn`` (default) has
  missing WALS values predicted by k-nearest neighbours, as lang2vec's ``syntax_knn``; ``wals`` keeps gaps.
* Typological distance: cosine distance between two languages' feature vectors (lang2vec's ``syntactic``
  distance); with ``wals``, over the features both languages have.
* Mantel test (Mantel 1967): Spearman correlation of two distance matrices' upper triangles, p-value from
  permuting the languages of one matrix (rows and columns together), since the entries are not independent.
* Xu et al. (2022), Sec. 5: a gradient-boosting regressor predicts the syntactic distance of a language pair
  from the per-feature differences ``|f_A - f_B|``; its impurity importances say which typological features
  the distances follow.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from babelscope.errors import BabelscopeError


@functools.cache
def _table() -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    src = resources.files("babelscope.data").joinpath("embedded/syntax/uriel_syntax.tsv")
    with src.open(encoding="utf-8") as fh:
        lines = [line.rstrip("\n").split("\t") for line in fh if not line.startswith("#")]
    names = lines[0][2:]
    rows = {(r[0], r[1]): np.asarray([np.nan if v == "--" else float(v) for v in r[2:]]) for r in lines[1:]}
    return names, rows


def feature_names() -> list[str]:
    return list(_table()[0])


def uriel_code(lang: str) -> str:
    """URIEL's ISO 639-3 code for a Babelscope language code (``cmn-Hant`` -> ``cmn``, ``por-BR`` -> ``por``)."""
    from babelscope.data.languages import resolve_language

    return resolve_language(lang).iso639_3


def syntax_features(langs: Sequence[str], source: str = "knn") -> np.ndarray:
    """(n_langs, 103) URIEL syntax features (NaN = missing, only with ``source="wals"``)."""
    if source not in ("knn", "wals"):
        raise BabelscopeError(f"typology source {source!r}: use knn or wals")
    _, rows = _table()
    out = []
    for lang in langs:
        code = uriel_code(lang)
        if (code, source) not in rows:
            have = sorted({c for c, _ in rows})
            raise BabelscopeError(f"no URIEL syntax features for {lang} ({code}) in the embedded table; it has "
                                  f"{', '.join(have)}")
        out.append(rows[(code, source)])
    return np.vstack(out)


def typological_distance(F: np.ndarray) -> np.ndarray:
    """Cosine distance between feature rows, over the features both rows have."""
    n = len(F)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            ok = np.isfinite(F[i]) & np.isfinite(F[j])
            a, b = F[i, ok], F[j, ok]
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            D[i, j] = D[j, i] = 1.0 - float(a @ b / denom) if denom > 0 else np.nan
    return D


def mantel(D1: np.ndarray, D2: np.ndarray, n_perm: int = 9999, seed: int = 0,
           method: str = "spearman") -> tuple[float, float]:
    """Mantel correlation of two square distance matrices (over the languages whose rows both define), and its two-sided
    permutation p-value ``(1 + #{|r_perm| >= |r|}) / (1 + n_perm)``, permuting the languages of ``D2``
    (:func:`babelscope.syntax.rsa.permutation_test`, the same test as RSA's). ``(nan, nan)`` when a matrix is
    constant."""
    from scipy.stats import pearsonr, spearmanr

    from babelscope.syntax.rsa import permutation_test

    D1, D2 = np.asarray(D1, dtype=float), np.asarray(D2, dtype=float)
    n = D1.shape[0]
    if D1.shape != D2.shape or D1.shape != (n, n) or n < 3:
        raise BabelscopeError(f"Mantel test needs two square matrices over the same >= 3 languages "
                              f"(got {D1.shape} and {D2.shape})")
    iu = np.triu_indices(n, 1)
    if not (np.isfinite(D1[iu]).all() and np.isfinite(D2[iu]).all()):
        keep = [i for i in range(n) if np.isfinite(D1[i, np.arange(n) != i]).all()
                and np.isfinite(D2[i, np.arange(n) != i]).all()]
        return mantel(D1[np.ix_(keep, keep)], D2[np.ix_(keep, keep)], n_perm, seed, method)
    a, b = D1[iu], D2[iu]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    r = float((spearmanr(a, b) if method == "spearman" else pearsonr(a, b)).statistic)
    return r, permutation_test(a, b, n_perm, seed, two_sided=True, ranks=method == "spearman")


def pair_features(F: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``|f_A - f_B|`` for every language pair (rows) and the pairs' indices (missing -> 0.5, "unknown")."""
    pairs = [(i, j) for i in range(len(F)) for j in range(i + 1, len(F))]
    X = np.asarray([np.abs(F[i] - F[j]) for i, j in pairs])
    return np.where(np.isfinite(X), X, 0.5), pairs


def feature_importance(F: np.ndarray, D: np.ndarray, names: Sequence[str], seed: int = 0,
                       n_estimators: int = 200) -> tuple[list[dict], float]:
    """Fit ``GradientBoostingRegressor`` from pair feature differences to the pair distances in ``D``;
    return features sorted by importance and the in-sample R^2."""
    from sklearn.ensemble import GradientBoostingRegressor

    X, pairs = pair_features(F)
    y = np.asarray([D[i, j] for i, j in pairs])
    ok = np.isfinite(y)
    if ok.sum() < 4:
        raise BabelscopeError("feature importances need at least 4 language pairs with a distance")
    model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=2, learning_rate=0.05,
                                      subsample=0.8, random_state=seed).fit(X[ok], y[ok])
    order = np.argsort(-model.feature_importances_)
    rows = [{"feature": names[k], "importance": float(model.feature_importances_[k])}
            for k in order if model.feature_importances_[k] > 0]
    return rows, float(model.score(X[ok], y[ok]))


def otdd_links(langs: Sequence[str], mats: dict[str, np.ndarray], typo_langs: Sequence[str], source: str = "knn",
               n_perm: int = 999, seed: int = 0) -> tuple[dict[str, Any], list[dict], np.ndarray | None]:
    """What ties the OTDD matrices (``mats["otdd_raw"]``, ``mats["otdd_std"]`` over ``langs``) to typology, over
    the languages with features (``typo_langs``, at least 3): the Mantel test of each against the typological
    distance, and with 4 or more the gradient-boosting importances of the features for the standardised one
    (Xu et al. 2022, Sec. 5). Returns the links, the importances and the typological distance over ``langs``
    (NaN for languages without features; ``None`` under 3 languages)."""
    if len(typo_langs) < 3:
        return {}, [], None
    langs = list(langs)
    n = len(langs)
    links: dict[str, Any] = {}
    importance: list[dict] = []
    idx = [langs.index(lang) for lang in typo_langs]
    F = syntax_features(typo_langs, source)
    T = typological_distance(F)
    full_T = np.full((n, n), np.nan)
    full_T[np.ix_(idx, idx)] = T
    for variant in ("raw", "std"):
        sub_D = mats[f"otdd_{variant}"][np.ix_(idx, idx)]
        r, p = mantel(sub_D, T, n_perm=n_perm, seed=seed)
        links[f"mantel_otdd_{variant}_vs_typology"] = {"r": r, "p": p, "languages": len(idx)}
    if len(typo_langs) >= 4:
        importance, r2 = feature_importance(F, mats["otdd_std"][np.ix_(idx, idx)], feature_names(), seed=seed)
        links["gbr_r2_in_sample"] = r2
    return links, importance, full_T
