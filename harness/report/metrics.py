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


def _binary(name: str) -> Callable[[Records], Scores]:
    # A row whose field is None was not scored (e.g. GSM8K without a gold answer): left out, as in the
    # evaluator's denominator.
    def scores(rows: Records) -> Scores:
        return {str(r["id"]): 1.0 if r.get(name) else 0.0 for r in rows if "id" in r and r.get(name) is not None}

    return scores


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
    kind: str = "field"  # how rows become scores: field | pass_at | verdict (a judge's verdicts get a bar plot)

    @property
    def scale(self) -> float:
        return 100.0


def spec_from_declaration(task: str, decl: dict[str, Any]) -> MetricSpec:
    """A column from a task's metric declaration (`metrics:` in its YAML, recorded in every protocol)."""
    kind = decl.get("per_example", "field")
    if kind == "pass_at":
        per_example = _pass_at(int(decl["k"]))
    elif kind == "verdict":
        per_example = _verdict
    elif decl.get("binary"):
        per_example = _binary(str(decl["field"]))
    else:
        per_example = _field(str(decl["field"]))
    name = str(decl["name"])
    return MetricSpec(f"{task}/{name}", task, name, str(decl.get("label") or f"{task} {name}"), per_example,
                      binary=bool(decl.get("binary")), kind=kind)


# Results written before protocols recorded the task definition carry no metric declarations: these
# are the built-in tasks' declarations of that time (the same as their YAMLs'), so old results keep
# their columns. New results are read from what they recorded.
LEGACY_DECLARATIONS: dict[str, list[dict[str, Any]]] = {
    "gsm8k": [{"name": "accuracy", "label": "GSM8K acc", "per_example": "field", "field": "correct", "binary": True}],
    "humaneval": [{"name": "pass@1", "label": "HumanEval pass@1", "per_example": "pass_at", "k": 1},
                  {"name": "pass@10", "label": "HumanEval pass@10", "per_example": "pass_at", "k": 10}],
    "dialogsum": [{"name": "win_rate", "label": "DialogSum win-rate", "per_example": "verdict"},
                  {"name": "rougeL", "label": "DialogSum ROUGE-L", "per_example": "field", "field": "rougeL"}],
}

MAIN_METRICS: tuple[MetricSpec, ...] = tuple(
    spec_from_declaration(task, d) for task, decls in LEGACY_DECLARATIONS.items() for d in decls
)


def recorded_declarations(results: Any, task: str) -> list[dict[str, Any]] | None:
    """The metric declarations recorded in the first of the task's cells that has them."""
    for cell in sorted(results.cells, key=lambda c: c.cell_id):
        if cell.task != task:
            continue
        agg = cell.eval_aggregate(task)
        definition = ((agg or {}).get("protocol") or {}).get("definition") if isinstance(agg, dict) else None
        if isinstance(definition, dict) and isinstance(definition.get("metrics"), list):
            return definition["metrics"]
    return None


def metric_specs(results: Any) -> tuple[MetricSpec, ...]:
    """The headline columns of these results: per task (in the results' task order), what it declared."""
    out: list[MetricSpec] = []
    for task in results.tasks():
        decls = recorded_declarations(results, task)
        for d in decls if decls is not None else LEGACY_DECLARATIONS.get(task, []):
            out.append(spec_from_declaration(task, d))
    return tuple(out)


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
