"""Unit tests of the report's statistics (numpy/math only, no scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.report.stats import (
    betainc_reg,
    bootstrap_mean_ci,
    grad_norm_spikes,
    mcnemar_exact,
    mean_ci_t,
    paired_bootstrap,
    pass_at_k,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    "df, expected",
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725), (1000, 1.9623391)],
)
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_symmetry_and_beta_edges() -> None:
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-1.5, 3) + t_cdf(1.5, 3) == pytest.approx(1.0)
    assert t_cdf(-1.5, 3) == pytest.approx(0.1152919, abs=1e-6)
    assert betainc_reg(2.0, 3.0, 0.0) == 0.0 and betainc_reg(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) = x (uniform)
    assert betainc_reg(1.0, 1.0, 0.37) == pytest.approx(0.37)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764451, abs=1e-6)


def test_mcnemar_exact_known_values() -> None:
    # b=10, c=2: 2 * sum_{i<=2} C(12, i) / 2^12 = 2 * 79 / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=5e-5)
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0  # capped
    assert mcnemar_exact(8, 0) == pytest.approx(2 / 256)
    assert 0.0 < mcnemar_exact(600, 400) < 1e-9  # large n: exact integers, no underflow to nonsense


def test_mean_ci_t_two_seeds() -> None:
    iv = mean_ci_t([0.7, 0.6])
    half = 12.7062047 * 0.0707106781 / math.sqrt(2)
    assert iv.method == "t" and iv.n == 2
    assert iv.mean == pytest.approx(0.65)
    assert iv.lo == pytest.approx(0.65 - half, abs=1e-6) and iv.hi == pytest.approx(0.65 + half, abs=1e-6)
    single = mean_ci_t([0.5, float("nan")])
    assert single.method == "single" and not single.has_ci and single.mean == 0.5
    assert mean_ci_t([]).method == "none"


def test_bootstrap_ci_deterministic_and_covers_mean() -> None:
    values = [1.0] * 30 + [0.0] * 70
    a, b = bootstrap_mean_ci(values), bootstrap_mean_ci(values)
    assert a == b
    assert a.method == "bootstrap" and a.lo < 0.3 < a.hi
    assert 0.18 < a.lo < 0.25 and 0.35 < a.hi < 0.42
    assert bootstrap_mean_ci(values, point=0.31).mean == 0.31


def test_paired_bootstrap_sign_and_p() -> None:
    rng = np.random.default_rng(1)
    better = rng.normal(0.5, 1.0, size=(200, 2))
    res = paired_bootstrap(better)
    assert res.delta > 0 and res.lo > 0 and res.p_value < 0.01 and res.n_pairs == 2
    worse = paired_bootstrap(-better)
    assert worse.delta < 0 and worse.hi < 0
    null = paired_bootstrap(np.zeros(50))
    assert null.delta == 0 and null.p_value == 1.0


def test_pass_at_k() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 5, 10) == 1.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)
    assert math.isnan(pass_at_k(5, 1, 10))


def test_grad_norm_spikes() -> None:
    assert grad_norm_spikes([1.0] * 10) == 0
    assert grad_norm_spikes([1.0] * 6 + [3.5] + [1.0] * 3) == 1
    assert grad_norm_spikes([5.0, 1.0, 1.0]) == 0  # too little history
    assert grad_norm_spikes([1.0] * 6 + [float("nan"), float("inf"), 2.9]) == 0  # non-finite skipped, 2.9 < 3x
