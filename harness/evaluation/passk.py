"""Unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")."""

from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct.

    pass@k = 1 - C(n-c, k) / C(n, k), computed as the product prod_{i=n-c+1}^{n} (1 - k/i), which
    never forms huge binomials (stable for n in the thousands).
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if n < 0 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@k is undefined for k={k} > n={n} samples per problem")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (each problem weighted equally)."""
    if len(ns) != len(cs):
        raise ValueError(f"ns and cs differ in length: {len(ns)} vs {len(cs)}")
    if not ns:
        raise ValueError("no problems to average pass@k over")
    return sum(pass_at_k(n, c, k) for n, c in zip(ns, cs)) / len(ns)
