"""What the leaderboard shows: the headline metric columns and how each is read per example.

A column is an aggregate key in `cell.json` metrics (a fraction) plus a function turning the
per-example rows of `eval/<task>.jsonl` into one score per example id; the latter feeds the
single-seed bootstrap and the paired tests against SFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.report.stats import pass_at_k

Records = list[dict[str, Any]]
Scores = dict[str, float]

VERDICT_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # "malformed" is left out: a judge failure, not a verdict


def _gsm8k_correct(rows: Records) -> Scores:
    # correct None: no gold answer, excluded from the accuracy's denominator (eval_runner._eval_gsm8k)
    return {str(r["id"]): 1.0 if r.get("correct") else 0.0 for r in rows if "id" in r and r.get("correct") is not None}


def _pass_at(k: int) -> Callable[[Records], Scores]:
    def scores(rows: Records) -> Scores:
        out: Scores = {}
        for r in rows:
            if "id" not in r:
                continue
            passed = r.get("passed") or []
            n = int(r["n"]) if r.get("n") is not None else len(passed)
            c = int(r["c"]) if r.get("c") is not None else sum(bool(p) for p in passed)
            value = pass_at_k(n, c, k)
            if math.isfinite(value):
                out[str(r["id"])] = value
        return out

    return scores


def _verdict(rows: Records) -> Scores:
    """Per-item judge score: the evaluator's `score` (win 1, tie 0.5, loss 0, averaged over both orders in
    `order: both` mode) when recorded, else mapped from `verdict`; malformed items are left out, as in
    the evaluator's win_rate."""
    out: Scores = {}
    for r in rows:
        if "id" not in r:
            continue
        score = r.get("score")
        if not isinstance(score, (int, float)) and isinstance(r.get("judge"), dict):
            score = r["judge"].get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
            out[str(r["id"])] = float(score)
        elif r.get("verdict") in VERDICT_SCORE:
            out[str(r["id"])] = VERDICT_SCORE[r["verdict"]]
    return out


def _field(name: str) -> Callable[[Records], Scores]:
    def scores(rows: Records) -> Scores:
        out: Scores = {}
        for r in rows:
            v = r.get(name)
            if "id" in r and isinstance(v, (int, float)) and math.isfinite(v):
                out[str(r["id"])] = float(v)
        return out

    return scores


@dataclass(frozen=True)
class MetricSpec:
    """One headline column: higher is better, shown in percent."""

    key: str  # stable id used in the CSV, e.g. "gsm8k/accuracy"
    task: str
    metric: str  # aggregate key in cell.json metrics[task]
    label: str  # column header
    per_example: Callable[[Records], Scores]
    binary: bool = False  # per-example outcomes are 0/1: McNemar applies

    @property
    def scale(self) -> float:
        return 100.0


MAIN_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("gsm8k/accuracy", "gsm8k", "accuracy", "GSM8K acc", _gsm8k_correct, binary=True),
    MetricSpec("humaneval/pass@1", "humaneval", "pass@1", "HumanEval pass@1", _pass_at(1)),
    MetricSpec("humaneval/pass@10", "humaneval", "pass@10", "HumanEval pass@10", _pass_at(10)),
    MetricSpec("dialogsum/win_rate", "dialogsum", "win_rate", "DialogSum win-rate", _verdict),
    MetricSpec("dialogsum/rougeL", "dialogsum", "rougeL", "DialogSum ROUGE-L", _field("rougeL")),
)


@dataclass(frozen=True)
class DiagSpec:
    """A diagnostic (not a headline score): raw units, direction only as a hint in the header."""

    key: str
    label: str
    direction: str  # "↓", "↑" or "" (neither is better per se)
    digits: int


DIAGNOSTICS: tuple[DiagSpec, ...] = (
    DiagSpec("teacher_kl", "Teacher KL", "↓", 3),
    DiagSpec("ref_ce", "Ref CE", "↓", 3),
    DiagSpec("distinct_1", "Distinct-1", "↑", 3),
    DiagSpec("distinct_2", "Distinct-2", "↑", 3),
    DiagSpec("self_bleu", "Self-BLEU", "↓", 3),
    DiagSpec("mean_length", "Mean length", "", 1),
)

# Cost columns summed over tasks (mean over seeds within a task); `max` ones take the maximum.
COST_KEYS: tuple[tuple[str, str, str], ...] = (
    ("optimizer_steps", "Steps", "sum"),
    ("prompts_seen", "Prompts", "sum"),
    ("generated_tokens", "Generated tok", "sum"),
    ("teacher_forward_tokens", "Teacher fwd tok", "sum"),
    ("student_forward_tokens", "Student fwd tok", "sum"),
    ("wall_time_s", "Wall time", "sum"),
    ("train_wall_time_s", "Train time", "sum"),
    ("eval_wall_time_s", "Eval time", "sum"),
    ("peak_memory_bytes", "Peak memory", "max"),
)

STABILITY_KEYS: tuple[tuple[str, str, str], ...] = (
    ("grad_norm_max", "Grad-norm max", "max"),
    ("grad_norm_spikes", "Spikes", "sum"),
    ("nonfinite_steps", "Non-finite steps", "sum"),
)
