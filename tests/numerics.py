"""Tolerances for the tests' float comparisons, derived from the float format and the computation (never tuned on
one CPU, so they hold on any x86 CPU, BLAS kernel and thread count).

Two runs of the same float32 computation in a different order (another BLAS blocking, thread count, batch
layout or process split) differ by rounding only. A sum of ``n`` terms in any order is off by at most
``γ_n · Σ|terms|`` with ``γ_n = n·u / (1 − n·u)`` and ``u = eps / 2`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §4.2); chaining ``depth`` such reductions adds their bounds (to first order).
The bound is relative to the magnitude of the *terms*, not of the result: an element that is near 0 by
cancellation can be wrong in every digit. So an element-wise comparison gets an absolute part scaled to the
tensor (its largest magnitude stands in for the terms' scale) as well as a relative part, both the same bound.
"""

from __future__ import annotations

import torch

U32 = torch.finfo(torch.float32).eps / 2  # unit roundoff of float32, 5.96e-8


def gamma(n: int, u: float = U32) -> float:
    """Higham's γ_n: the relative error bound of a sum or dot product of ``n`` terms."""
    return n * u / (1 - n * u)


def f32_bound(n: int, depth: int) -> float:
    """Relative bound for a float32 result built by ``depth`` chained reductions of at most ``n`` terms each."""
    return depth * gamma(n)


# The tiny test models (tests/conftest.py build_tiny): vocabulary 400 and at most 512 tokens per comparison are
# the longest reductions (hidden 32, FFN 64); a forward through 3 blocks is at most 16 chained reductions (q, k,
# v, scores, values, o, gate/up, down per block, the norms and the head), a backward doubles that.
TINY_N = 512
TINY_FORWARD = f32_bound(TINY_N, 16)  # 4.9e-4
TINY_BACKWARD = f32_bound(TINY_N, 32)  # 9.8e-4


def assert_close_scaled(actual, expected, tol: float) -> None:
    """Element-wise ``|a − e| ≤ tol·|e| + tol·max|e|``: a relative bound plus one relative to the tensor's scale
    (for elements near 0 by cancellation, see the module docstring)."""
    actual, expected = (x if isinstance(x, torch.Tensor) else torch.tensor(x) for x in (actual, expected))
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)
