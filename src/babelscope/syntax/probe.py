"""Linear probes for relations and POS tags, and the cross-lingual probe transfer matrix.

A probe is multinomial logistic regression on standardised vectors (scikit-learn), trained on the instances of
the training sentences and scored on the held-out sentences, split by ``sent_id`` so that on a parallel
treebank (PUD) a probe is never tested on translations of its training sentences. The transfer matrix entry
``T[A, B]`` is the accuracy on B's test sentences of the probe trained on A's training sentences (labels that A
never saw count as errors). It is a proxy for the transfer measure of Xu et al. (2022), the zero-shot
labelled attachment score of a parser fine-tuned on A and tested on B.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_probe(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 300, seed: int = 0) -> Any:
    """A fitted ``StandardScaler -> LogisticRegression`` pipeline."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(X, dtype=np.float64), y)
    return model


def accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose predicted label is the gold one."""
    if len(y) == 0:
        return float("nan")
    return float((model.predict(np.asarray(X, dtype=np.float64)) == y).mean())


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most frequent label."""
    values, counts = np.unique(y_train, return_counts=True)
    return float((y_test == values[counts.argmax()]).mean()) if len(y_test) else float("nan")


def transfer_matrix(train: dict[str, tuple[np.ndarray, np.ndarray]], test: dict[str, tuple[np.ndarray, np.ndarray]],
                    **kw: Any) -> tuple[list[str], np.ndarray]:
    """``T[i, j]`` = accuracy on language j's test set of the probe fitted on language i's training set."""
    langs = list(train)
    T = np.zeros((len(langs), len(langs)))
    for i, a in enumerate(langs):
        model = fit_probe(*train[a], **kw)
        for j, b in enumerate(langs):
            T[i, j] = accuracy(model, *test[b])
    return langs, T
