"""Pairwise win rate: order handling, mapping back to the student, ties, malformed, SE."""

from __future__ import annotations

import math
from typing import Sequence

import pytest

from harness.evaluation.judges import RougeJudge, Verdict
from harness.evaluation.win_rate import outcome_for_student, pairwise_win_rate


class _QualityJudge:
    """Prefers the summary containing 'good'; records the order it was shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def judge(self, dialogue: str, summary_a: str, summary_b: str, references: Sequence[str] = ()) -> Verdict:
        self.calls.append((summary_a, summary_b))
        a, b = "good" in summary_a, "good" in summary_b
        return "tie" if a == b else ("A" if a else "B")


class _AlwaysA:
    def judge(self, dialogue, summary_a, summary_b, references=()) -> Verdict:
        return "A"


class _Scripted:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = list(verdicts)

    def judge(self, dialogue, summary_a, summary_b, references=()) -> Verdict:
        return self.verdicts.pop(0)


def _items(student: list[str], baseline: list[str]) -> list[dict]:
    return [{"id": f"d{i}", "dialogue": "D", "output": s, "baseline_output": b, "references": ["ref"]}
            for i, (s, b) in enumerate(zip(student, baseline))]


def test_outcome_mapping() -> None:
    assert outcome_for_student("A", student_is_a=True) == "win"
    assert outcome_for_student("A", student_is_a=False) == "loss"
    assert outcome_for_student("B", student_is_a=False) == "win"
    assert outcome_for_student("tie", student_is_a=True) == "tie"
    assert outcome_for_student("malformed", student_is_a=True) == "malformed"


def test_random_order_maps_back_to_student() -> None:
    items = _items(["good"] * 6 + ["bad"] * 2 + ["good"] * 2, ["bad"] * 6 + ["good"] * 2 + ["good"] * 2)
    judge = _QualityJudge()
    agg, rows = pairwise_win_rate(items, judge, order="random", seed=3)
    assert (agg["wins"], agg["losses"], agg["ties"], agg["malformed"]) == (6, 2, 2, 0)
    assert agg["win_rate"] == pytest.approx((6 + 2 / 2) / 10)
    assert [r["verdict"] for r in rows] == ["win"] * 6 + ["loss"] * 2 + ["tie"] * 2
    positions = [r["judgements"][0]["student_position"] for r in rows]
    assert set(positions) == {"A", "B"}  # the order really is randomised
    # same seed, same order; another seed, another order
    assert [r["judgements"][0]["student_position"] for r in pairwise_win_rate(items, _QualityJudge(), seed=3)[1]] \
        == positions
    assert [r["judgements"][0]["student_position"] for r in pairwise_win_rate(items, _QualityJudge(), seed=4)[1]] \
        != positions


def test_position_biased_judge_averages_out_in_both_orders() -> None:
    items = _items(["x"] * 4, ["y"] * 4)
    agg, rows = pairwise_win_rate(items, _AlwaysA(), order="both")
    # each item: a win in one order, a loss in the other -> 0.5, a tie
    assert agg["win_rate"] == 0.5 and agg["ties"] == 4 and agg["win_rate_se"] == 0.0
    assert all(len(r["judgements"]) == 2 for r in rows)


def test_both_orders_each_count_half() -> None:
    items = _items(["s1", "s2"], ["b1", "b2"])
    # item 1: win (A, student A) + tie -> 0.75 ; item 2: malformed + loss (A when student is B) -> 0.0
    judge = _Scripted(["A", "tie", "malformed", "A"])
    agg, rows = pairwise_win_rate(items, judge, order="both")
    assert [r["score"] for r in rows] == [0.75, 0.0]
    assert [r["verdict"] for r in rows] == ["win", "loss"]
    assert agg["win_rate"] == pytest.approx(0.375)


def test_malformed_excluded_and_counted() -> None:
    items = _items(["a", "b", "c", "d"], ["w", "x", "y", "z"])
    judge = _Scripted(["malformed", "tie", "tie", "malformed"])
    agg, rows = pairwise_win_rate(items, judge, order="random", seed=0)
    assert agg["malformed"] == 2 and agg["n"] == 4 and agg["n_judged"] == 2
    assert agg["win_rate"] == 0.5
    assert rows[0]["verdict"] == "malformed" and rows[0]["score"] is None


def test_standard_error_matches_binomial_formula() -> None:
    items = _items(["good"] * 7 + ["bad"] * 3, ["bad"] * 7 + ["good"] * 3)
    agg, _ = pairwise_win_rate(items, _QualityJudge(), order="random", seed=0)
    p = 0.7
    assert agg["win_rate"] == pytest.approx(p)
    assert agg["win_rate_se"] == pytest.approx(math.sqrt(p * (1 - p) / 10))


def test_all_malformed_is_nan_not_crash() -> None:
    agg, _ = pairwise_win_rate(_items(["a"], ["b"]), _Scripted(["malformed"]))
    assert math.isnan(agg["win_rate"]) and agg["malformed"] == 1


def test_with_rouge_judge_and_protocol() -> None:
    items = [{"id": "1", "dialogue": "D", "output": "the cat sat on the mat",
              "baseline_output": "dogs bark loudly", "references": ["the cat sat on a mat"]}]
    agg, rows = pairwise_win_rate(items, RougeJudge(), order="both")
    assert rows[0]["verdict"] == "win" and agg["win_rate"] == 1.0
    assert agg["protocol"]["judge"]["judge"] == "rouge" and agg["protocol"]["order"] == "both"


def test_bad_order_rejected() -> None:
    with pytest.raises(ValueError, match="order"):
        pairwise_win_rate([], _AlwaysA(), order="sometimes")  # type: ignore[arg-type]
