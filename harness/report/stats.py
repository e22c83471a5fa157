"""Statistics for the leaderboard, in plain numpy/math (scipy is not a dependency).

Everything here is deterministic: bootstraps draw from a fixed-seed `numpy.random.default_rng`, so a
report rebuilt from the same results is byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_BOOT = 2000  # resamples; the percentile CI's Monte-Carlo error is ~0.1 points at this size
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval; `method` says how the interval was made."""

    mean: float
    lo: float
    hi: float
    n: int  # seeds for "t"/"single", examples for "bootstrap"
    method: str  # "t" | "bootstrap" | "single" (one value, no interval) | "none" (no data)

    @property
    def has_ci(self) -> bool:
        return self.method in ("t", "bootstrap") and math.isfinite(self.lo) and math.isfinite(self.hi)

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.mean * factor, self.lo * factor, self.hi * factor, self.n, self.method)


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, 0, "none")


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison `a - b` over shared example ids (pooled over paired seeds)."""

    delta: float
    lo: float
    hi: float
    p_value: float
    n_examples: int
    n_pairs: int


# ----------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz, as in Numerical Recipes)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc_reg(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast only on one side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with `df` degrees of freedom."""
    tail = 0.5 * betainc_reg(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (bisection on `t_cdf`; ~1e-12 accurate, plenty for CIs)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # t(1) at 0.9999 is ~3000: grow the bracket instead of guessing it
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- intervals


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci_t(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval over seeds: mean ± t_{(1+level)/2, n-1} · s/√n (not clipped to the metric range)."""
    arr = _finite(values)
    n = arr.size
    if n == 0:
        return NAN_INTERVAL
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, "single")
    half = t_quantile(0.5 + level / 2.0, n - 1) * float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t")


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0, point: float | None = None
) -> Interval:
    """Percentile bootstrap CI of the mean over examples (used when a row has a single seed).

    `point` overrides the reported point estimate (the evaluator's own aggregate), so the headline
    number is always the one in cell.json while the interval comes from the per-example records.
    """
    arr = _finite(values)
    n = arr.size
    if n == 0:
        return NAN_INTERVAL
    mean = float(arr.mean()) if point is None else float(point)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = arr[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(lo), float(hi), n, "bootstrap")


def paired_bootstrap(
    diffs: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> PairedResult:
    """Paired bootstrap of the mean difference, resampling examples.

    `diffs` is [n_examples, n_pairs]: the per-example difference a - b for each seed pair. Whole
    examples are resampled (all their seed pairs together), so pooling seeds does not pretend that
    the same prompt under two seeds is two independent observations. Two-sided p-value:
    2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)) with the +1 correction, capped at 1.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim == 1:
        d = d[:, None]
    per_example = d.mean(axis=1)
    n = per_example.size
    if n == 0:
        return PairedResult(math.nan, math.nan, math.nan, math.nan, 0, d.shape[1] if d.ndim == 2 else 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = per_example[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    p_le = (np.count_nonzero(boots <= 0) + 1) / (n_boot + 1)
    p_ge = (np.count_nonzero(boots >= 0) + 1) / (n_boot + 1)
    p = min(1.0, 2.0 * min(p_le, p_ge))
    return PairedResult(float(per_example.mean()), float(lo), float(hi), float(p), n, d.shape[1])


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for discordant counts b (a right, b wrong) and c (the reverse).

    Under H0 the discordant pairs split Binomial(b + c, 1/2); the two-sided p-value doubles the
    smaller tail, capped at 1. Example: b=10, c=2 gives 2 · 79/4096 = 0.0386.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # Sum in exact integers, divide once: no underflow for large n.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / (2**n))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples with c correct (Chen et al., 2021); nan when n < k."""
    if n < k or n <= 0:
        return math.nan
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ----------------------------------------------------------------------------- stability


SPIKE_FACTOR = 3.0
SPIKE_WINDOW = 50
SPIKE_MIN_HISTORY = 5


def grad_norm_spikes(
    grad_norms: Sequence[float],
    factor: float = SPIKE_FACTOR,
    window: int = SPIKE_WINDOW,
    min_history: int = SPIKE_MIN_HISTORY,
) -> int:
    """Count spike steps: grad norm > `factor` × median of the previous `window` finite grad norms.

    A trailing median (not mean + 3σ) is used because it is scale-free and a single earlier spike
    does not inflate the threshold; the trailing window follows the natural decay of grad norms over
    training. Steps with fewer than `min_history` finite predecessors are never spikes. Non-finite
    steps are counted separately (they are not spikes and are skipped in the history).
    """
    history: list[float] = []
    spikes = 0
    for g in grad_norms:
        if g is None or not math.isfinite(g):
            continue
        if len(history) >= min_history:
            med = float(np.median(history[-window:]))
            if g > factor * med:
                spikes += 1
        history.append(float(g))
    return spikes
