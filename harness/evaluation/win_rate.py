"""Pairwise win rate of a student's summaries against a baseline's, decided by a `Judge`.

Position bias is controlled either by a seeded random order per example (`order="random"`) or by
judging both orders and averaging (`order="both"`, each order counts half). Verdicts are mapped
back to the student's point of view: win / tie / loss / malformed.

Scoring choice: an item scores 1 for a win, 0.5 for a tie, 0 for a loss (averaged over the two
orders in "both" mode, where an order with a malformed verdict is dropped). Items whose every
verdict is malformed are excluded and counted in `malformed`. win_rate is the mean item score over
the remaining N items, i.e. (wins + ties/2) / N in "random" mode; win_rate_se is the standard error
of that mean from the per-item scores, sqrt(mean((s - p)^2) / N), which is sqrt(p(1-p)/N) when
there are no ties.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Literal, Mapping, Sequence

from harness.evaluation.judges import Judge, Verdict

Outcome = Literal["win", "tie", "loss", "malformed"]
_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def outcome_for_student(verdict: Verdict, student_is_a: bool) -> Outcome:
    """Translate an A/B verdict into the student's win/tie/loss."""
    if verdict == "tie":
        return "tie"
    if verdict not in ("A", "B"):
        return "malformed"
    return "win" if (verdict == "A") == student_is_a else "loss"


def pairwise_win_rate(
    items: Sequence[Mapping[str, Any]],
    judge: Judge,
    order: Literal["random", "both"] = "random",
    seed: int = 0,
    map_items: Callable[[Callable[[list], list], list], list] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge every item; returns (aggregate, rows).

    Each item needs `dialogue`, `output` (student) and `baseline_output`; `id` and `references`
    (passed to the judge, needed by `RougeJudge`) are optional.
    Aggregate: win_rate, win_rate_se, wins, ties, losses, malformed, n (all items), n_judged, protocol.
    Rows: {id, output, baseline_output, verdict, score, judgements: [{student_position, verdict}]}.
    `map_items(fn, items)`: how the judge calls are run (default `fn(items)`); the evaluation passes
    `harness.ranks.Shards.map` so each process of a group judges its share. The positions are drawn
    first, in item order, so they do not depend on who judges which item.
    """
    if order not in ("random", "both"):
        raise ValueError(f"order must be 'random' or 'both', got {order!r}")
    rng = random.Random(seed)
    placed = [(item, [rng.random() < 0.5] if order == "random" else [True, False])  # True: the student is A
              for item in items]

    def verdicts(share: list) -> list[list]:
        out = []
        for item, positions in share:
            student, baseline = item["output"], item["baseline_output"]
            out.append([judge.judge(item["dialogue"], *((student, baseline) if student_is_a else (baseline, student)),
                                    references=tuple(item.get("references") or ())) for student_is_a in positions])
        return out

    judged = map_items(verdicts, placed) if map_items is not None else verdicts(placed)
    rows: list[dict[str, Any]] = []
    for idx, ((item, positions), item_verdicts) in enumerate(zip(placed, judged)):
        judgements, scores = [], []
        for student_is_a, verdict in zip(positions, item_verdicts):
            outcome = outcome_for_student(verdict, student_is_a)
            judgements.append(
                {"student_position": "A" if student_is_a else "B", "verdict": verdict, "outcome": outcome})
            if outcome != "malformed":
                scores.append(_SCORE[outcome])
        score = sum(scores) / len(scores) if scores else None
        rows.append({
            "id": item.get("id", str(idx)),
            "output": item["output"],
            "baseline_output": item["baseline_output"],
            "verdict": _item_outcome(score),
            "score": score,
            "judgements": judgements,
        })
    return _aggregate(rows, order, seed, judge), rows


def self_comparison(
    items: Sequence[Mapping[str, Any]], order: Literal["random", "both"] = "random", seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The baseline model against its own summaries: every item is a tie by construction (the
    protocol), so the judge is not asked. Same aggregate and row shape as `pairwise_win_rate`;
    the protocol says the judge was not called and how many outputs were byte-identical."""
    rows = [{
        "id": item.get("id", str(idx)), "output": item["output"], "baseline_output": item["baseline_output"],
        "verdict": "tie", "score": 0.5, "judgements": [],
    } for idx, item in enumerate(items)]
    agg = _aggregate(rows, order, seed, None)
    agg["protocol"]["judge"] = "not called: the baseline model compared with its own summaries scores 50% by construction"
    agg["protocol"]["self_comparison"] = True
    agg["protocol"]["identical_outputs"] = sum(1 for r in rows if r["output"] == r["baseline_output"])
    return agg, rows


def _item_outcome(score: float | None) -> Outcome:
    if score is None:
        return "malformed"
    return "win" if score > 0.5 else "loss" if score < 0.5 else "tie"


def _aggregate(rows: list[dict[str, Any]], order: str, seed: int, judge: Judge | None) -> dict[str, Any]:
    scores = [r["score"] for r in rows if r["score"] is not None]
    n = len(scores)
    p = sum(scores) / n if n else float("nan")
    se = math.sqrt(sum((s - p) ** 2 for s in scores) / n / n) if n else float("nan")
    counts = {k: sum(1 for r in rows if r["verdict"] == k) for k in ("win", "tie", "loss", "malformed")}
    describe = getattr(judge, "describe", None)
    return {
        "win_rate": p,
        "win_rate_se": se,
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "malformed": counts["malformed"],
        "n": len(rows),
        "n_judged": n,
        "protocol": {
            "order": order,
            "seed": seed,
            "tie_counts_half": True,
            "malformed_excluded": True,
            "judge": describe() if callable(describe) else type(judge).__name__,
        },
    }
