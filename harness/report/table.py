"""Aggregate finished cells into leaderboard rows: headline metrics with CIs, deltas vs SFT with paired
tests, best-per-column marks, cost, stability and diagnostics.

Rows are objective labels (a sweep value gets its own row, e.g. `veto (beta_start=0.3)`) plus the
baselines "Student (init)" and "Teacher"; columns are task metrics. A row's value for a column is
the mean over seeds of the evaluator's aggregate; its 95% CI is a t-interval over seeds when there
are ≥2 seeds, else a percentile bootstrap over the examples of the one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.report.load import Cell, Results
from harness.report.metrics import COST_KEYS, DIAGNOSTICS, STABILITY_KEYS, MetricSpec, Scores, metric_specs
from harness.report.stats import (
    NAN_INTERVAL,
    Interval,
    PairedResult,
    bootstrap_mean_ci,
    grad_norm_spikes,
    mcnemar_exact,
    mean_ci_t,
    paired_bootstrap,
)

SIGNIFICANCE = 0.05
SFT_OBJECTIVE = "sft"
DISPLAY_DIGITS = 1  # percent columns are shown to one decimal; "best" ties are judged at this precision


@dataclass
class Row:
    """One leaderboard row and the cells behind it."""

    label: str
    base_label: str
    objective: str
    kind: str
    sweep: dict[str, Any]
    params: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.kind == "baseline"

    def cells_for(self, task: str) -> dict[int, Cell]:
        """seed -> cell for one task (the first cell wins if a seed repeats)."""
        out: dict[int, Cell] = {}
        for c in sorted(self.cells, key=lambda c: c.cell_id):
            if c.task == task:
                out.setdefault(c.seed, c)
        return out

    def seeds(self) -> list[int]:
        return sorted({c.seed for c in self.cells})

    @property
    def sweep_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.sweep.items()))


@dataclass(frozen=True)
class Comparison:
    """A row minus the SFT row on one metric (percentage points)."""

    delta: float
    boot: PairedResult | None  # paired bootstrap over shared example ids, None without per-example data
    mcnemar_p: float  # nan unless the metric is binary
    mcnemar_b: int
    mcnemar_c: int

    @property
    def p_value(self) -> float:
        """The test that decides the † mark: McNemar for binary outcomes, else the paired bootstrap."""
        if math.isfinite(self.mcnemar_p):
            return self.mcnemar_p
        return self.boot.p_value if self.boot is not None else math.nan

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < SIGNIFICANCE


@dataclass
class Leaderboard:
    """Everything the renderers print, computed once."""

    rows: list[Row]
    tasks: list[str]
    metrics: list[MetricSpec]  # only columns with data in some row
    main: dict[tuple[str, str], Interval]  # (row label, metric key) -> percent
    per_seed: dict[tuple[str, str], dict[int, float]]  # (row label, metric key) -> seed -> percent
    sft_label: str | None
    deltas: dict[tuple[str, str], Comparison]
    best: set[tuple[str, str]]
    cost: dict[tuple[str, str], dict[str, float]]  # (row label, task | "all") -> key -> value
    stability: dict[tuple[str, str], dict[str, float]]
    diagnostics: dict[tuple[str, str], dict[str, Interval]]  # (row label, task) -> diag key -> interval

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


# ----------------------------------------------------------------------------- rows


def build_rows(results: Results) -> list[Row]:
    """Group cells into rows in a stable order: Student (init), objectives (suite order, each followed
    by its sweep rows), other baselines, Teacher last."""
    rows: dict[str, Row] = {}
    for c in results.cells:
        row = rows.get(c.row_label)
        if row is None:
            row = rows[c.row_label] = Row(c.row_label, c.base_label, c.objective, c.kind, c.sweep, c.params)
        row.cells.append(c)

    suite_order = []
    for o in (results.suite or {}).get("objectives", []) or []:
        if isinstance(o, dict):
            suite_order.append(str(o.get("label") or o.get("name")))

    def key(r: Row) -> tuple:
        if r.is_baseline:
            group = 0 if r.objective == "student_init" else (3 if r.objective == "teacher" else 2)
            return (group, 0, r.label, ())
        pos = suite_order.index(r.base_label) if r.base_label in suite_order else len(suite_order)
        return (1, pos, r.base_label, _sweep_sort_key(r.sweep))

    return sorted(rows.values(), key=key)


def _sweep_sort_key(sweep: dict[str, Any]) -> tuple:
    # Un-swept row first, then by parameter and numeric value (so 0.3 < 1.0 < 10).
    items = []
    for k, v in sorted(sweep.items()):
        num = v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        items.append((k, (0, float(num), "") if num is not None else (1, 0.0, str(v))))
    return (len(items) > 0, tuple(items))


# ----------------------------------------------------------------------------- metric values


def per_example_scores(cell: Cell, spec: MetricSpec) -> Scores | None:
    rows = cell.records(spec.task)
    if rows is None:
        return None
    return spec.per_example(rows)


def seed_value(cell: Cell, spec: MetricSpec) -> float:
    """The evaluator's aggregate (fraction); falls back to the per-example mean when it is absent."""
    value = cell.metric(spec.task, spec.metric)
    if math.isfinite(value):
        return value
    scores = per_example_scores(cell, spec)
    return float(np.mean(list(scores.values()))) if scores else math.nan


def aggregate_metric(row: Row, spec: MetricSpec) -> tuple[Interval, dict[int, float]]:
    """Mean and 95% CI in percent for one row and column, plus the per-seed values."""
    by_seed = {s: seed_value(c, spec) for s, c in row.cells_for(spec.task).items()}
    finite = {s: v for s, v in by_seed.items() if math.isfinite(v)}
    if not finite:
        return NAN_INTERVAL, {}
    if len(finite) >= 2:
        return mean_ci_t(list(finite.values())).scaled(spec.scale), {s: v * spec.scale for s, v in finite.items()}
    (seed, value), = finite.items()
    scores = per_example_scores(row.cells_for(spec.task)[seed], spec)
    if scores:
        interval = bootstrap_mean_ci([scores[k] for k in sorted(scores)], point=value)
    else:
        interval = Interval(value, math.nan, math.nan, 1, "single")
    return interval.scaled(spec.scale), {seed: value * spec.scale}


# ----------------------------------------------------------------------------- paired tests


def seed_pairs(a: dict[int, Cell], b: dict[int, Cell]) -> list[tuple[Cell, Cell]]:
    """Seed pairs for a paired test of `a` against `b`.

    A one-seed side (a deterministic baseline, or a one-seed sweep row) pairs with every seed of the
    other, matching the delta's point estimate, which averages all of the other side's seeds.
    Otherwise identical seeds pair and a seed without a partner is left out of the test.
    """
    if len(a) == 1 and len(b) >= 1:
        (ca,) = a.values()
        return [(ca, b[s]) for s in sorted(b)]
    if len(b) == 1 and len(a) >= 1:
        (cb,) = b.values()
        return [(a[s], cb) for s in sorted(a)]
    return [(a[s], b[s]) for s in sorted(set(a) & set(b))]


def compare(row: Row, ref: Row, spec: MetricSpec, delta: float) -> Comparison:
    """Paired bootstrap (and McNemar for binary outcomes) of `row - ref` over shared example ids."""
    pairs = seed_pairs(row.cells_for(spec.task), ref.cells_for(spec.task))
    score_pairs = []
    for ca, cb in pairs:
        sa, sb = per_example_scores(ca, spec), per_example_scores(cb, spec)
        if sa and sb:
            score_pairs.append((sa, sb))
    if not score_pairs:
        return Comparison(delta, None, math.nan, 0, 0)
    # Examples shared by every pair, so each resampled example carries all its seed pairs.
    ids = sorted(set.intersection(*(set(sa) & set(sb) for sa, sb in score_pairs)))
    if not ids:
        return Comparison(delta, None, math.nan, 0, 0)
    a = np.array([[sa[i] for sa, _ in score_pairs] for i in ids])
    b = np.array([[sb[i] for _, sb in score_pairs] for i in ids])
    boot = paired_bootstrap((a - b) * spec.scale)
    p_mc, n_b, n_c = math.nan, 0, 0
    if spec.binary:
        n_b = int(np.count_nonzero((a >= 0.5) & (b < 0.5)))
        n_c = int(np.count_nonzero((a < 0.5) & (b >= 0.5)))
        p_mc = mcnemar_exact(n_b, n_c)
    return Comparison(delta, boot, p_mc, n_b, n_c)


# ----------------------------------------------------------------------------- cost / stability


def _cell_stability(cell: Cell) -> dict[str, float]:
    """Recomputed from telemetry when present (one spike rule for every objective), else cell.json."""
    stored = cell.data.get("stability") or {}
    telemetry = cell.telemetry
    if not telemetry:
        return {k: _num(stored.get(k)) for k, _, _ in STABILITY_KEYS}
    norms = [_num(t.get("grad_norm")) for t in telemetry]
    finite = [g for g in norms if math.isfinite(g)]
    nonfinite = sum(
        1
        for t, g in zip(telemetry, norms)
        if t.get("nonfinite") or not math.isfinite(g) or not math.isfinite(_num(t.get("loss", 0.0)))
    )
    return {
        "grad_norm_max": max(finite) if finite else math.nan,
        "grad_norm_spikes": float(grad_norm_spikes(norms)),
        "nonfinite_steps": float(nonfinite),
    }


def _summarise(
    row: Row, tasks: list[str], keys: tuple[tuple[str, str, str], ...], values_of
) -> dict[tuple[str, str], dict[str, float]]:
    """Per task: mean over seeds ("max" keys: max); "all": sum over tasks ("max" keys: max)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        cells = list(row.cells_for(task).values())
        if not cells:
            continue
        vals = [values_of(c) for c in cells]
        agg = {}
        for key, _, how in keys:
            xs = [v[key] for v in vals if math.isfinite(v.get(key, math.nan))]
            agg[key] = (max(xs) if how == "max" else float(np.mean(xs))) if xs else math.nan
        per_task[task] = agg
        out[(row.label, task)] = agg
    if per_task:
        total = {}
        for key, _, how in keys:
            xs = [a[key] for a in per_task.values() if math.isfinite(a[key])]
            total[key] = (max(xs) if how == "max" else float(sum(xs))) if xs else math.nan
        out[(row.label, "all")] = total
    return out


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- build


def build_leaderboard(results: Results) -> Leaderboard:
    rows = build_rows(results)
    tasks = results.tasks()
    main: dict[tuple[str, str], Interval] = {}
    per_seed: dict[tuple[str, str], dict[int, float]] = {}
    specs = metric_specs(results)
    for row in rows:
        for spec in specs:
            interval, seeds = aggregate_metric(row, spec)
            main[(row.label, spec.key)] = interval
            per_seed[(row.label, spec.key)] = seeds
    metrics = [s for s in specs if any(math.isfinite(main[(r.label, s.key)].mean) for r in rows)]

    sft = next((r for r in rows if r.objective == SFT_OBJECTIVE and not r.sweep and not r.is_baseline), None)
    deltas: dict[tuple[str, str], Comparison] = {}
    if sft is not None:
        for row in rows:
            if row is sft:
                continue
            for spec in metrics:
                mine, ref = main[(row.label, spec.key)], main[(sft.label, spec.key)]
                if math.isfinite(mine.mean) and math.isfinite(ref.mean):
                    deltas[(row.label, spec.key)] = compare(row, sft, spec, mine.mean - ref.mean)

    best: set[tuple[str, str]] = set()
    for spec in metrics:
        shown = {
            r.label: round(main[(r.label, spec.key)].mean, DISPLAY_DIGITS)
            for r in rows
            if not r.is_baseline and math.isfinite(main[(r.label, spec.key)].mean)
        }
        if shown:
            top = max(shown.values())
            best |= {(label, spec.key) for label, v in shown.items() if v == top}

    cost: dict[tuple[str, str], dict[str, float]] = {}
    stability: dict[tuple[str, str], dict[str, float]] = {}
    diagnostics: dict[tuple[str, str], dict[str, Interval]] = {}
    for row in rows:
        cost.update(
            _summarise(row, tasks, COST_KEYS, lambda c: {k: _num((c.data.get("cost") or {}).get(k)) for k, _, _ in COST_KEYS})
        )
        if not row.is_baseline:
            stability.update(_summarise(row, tasks, STABILITY_KEYS, _cell_stability))
        for task in tasks:
            cells = row.cells_for(task)
            if not cells:
                continue
            diag = {}
            for spec in DIAGNOSTICS:
                values = [c.metric("diagnostics", spec.key) for c in cells.values()]
                diag[spec.key] = mean_ci_t(values)
            if any(math.isfinite(i.mean) for i in diag.values()):
                diagnostics[(row.label, task)] = diag

    return Leaderboard(
        rows=rows,
        tasks=tasks,
        metrics=metrics,
        main=main,
        per_seed=per_seed,
        sft_label=sft.label if sft else None,
        deltas=deltas,
        best=best,
        cost=cost,
        stability=stability,
        diagnostics=diagnostics,
    )
