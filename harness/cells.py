"""Cell identity: which student, trained how, on which task. One type for the suite (which plans and
runs cells) and the report (which reads them back), so both agree on what a cell is.

A cell is (task, objective label, sweep value, seed), plus the task's teacher tag when a suite has
per-task or prepared teachers. Its id names its results directory, results/NAME/cells/<cell_id>/,
so the id format is a storage format: changing it would orphan every existing result.
This module imports nothing from the harness, so the report may use it without the suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BASELINE_LABELS = {"student_init": "Student (init)", "teacher": "Teacher"}


@dataclass
class CellSpec:
    cell_id: str
    kind: str  # "trained" | "baseline"
    task: str
    objective: str  # objective name, or "teacher" / "student_init" for baselines
    label: str  # objective display label ("" when a loaded record does not say)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    sweep: dict[str, Any] = field(default_factory=dict)
    teacher: str = ""  # the task's teacher tag, set when the suite has per-task or prepared teachers

    @property
    def is_baseline(self) -> bool:
        return self.kind == "baseline"

    def as_dict(self) -> dict[str, Any]:
        """The plan.json entry (cell_task rebuilds the spec from it with `CellSpec(**entry)`)."""
        d = {k: getattr(self, k) for k in _SPEC_FIELDS}
        if not d["teacher"]:
            del d["teacher"]  # single-teacher suites keep their plan.json as before
        return d

    def record(self) -> dict[str, Any]:
        """The identity fields of cell.json, in the order (and under the names) results have always used."""
        return {"cell_id": self.cell_id, "kind": self.kind, "objective": self.objective, "label": self.label,
                "objective_params": self.params, "task": self.task, "seed": self.seed, "sweep": self.sweep}

    @staticmethod
    def fields_of_record(cell_id: str, data: dict[str, Any], label: str | None = None) -> dict[str, Any]:
        """The spec fields of a cell.json written by any version: absent fields get the values older
        results imply (a trained cell; the seed from the id's `__s<seed>` suffix)."""
        seed = data.get("seed")
        if seed is None:
            tail = cell_id.rsplit("__", 1)[-1]
            seed = int(tail[1:]) if tail[:1] == "s" and tail[1:].isdigit() else 0
        return {"cell_id": cell_id, "kind": str(data.get("kind", "trained")), "task": str(data.get("task", "")),
                "objective": str(data.get("objective", "")), "label": label or "",
                "params": dict(data.get("objective_params") or {}), "seed": int(seed),
                "sweep": dict(data.get("sweep") or {}), "teacher": str(data.get("teacher") or "")}


_SPEC_FIELDS = ("cell_id", "kind", "task", "objective", "label", "params", "seed", "sweep", "teacher")


def task_prefix(task: str, teacher_tag: str) -> str:
    """The id part naming the task (and its teacher, when the teacher is part of what a cell measures)."""
    return f"{task}__T={teacher_tag}" if teacher_tag else task


def baseline_cell(task: str, baseline: str, teacher_tag: str = "") -> CellSpec:
    return CellSpec(f"{task_prefix(task, teacher_tag)}__{baseline}", "baseline", task, baseline,
                    BASELINE_LABELS.get(baseline, baseline), teacher=teacher_tag)


def trained_cell(task: str, objective: str, label: str, params: dict[str, Any], sweep: dict[str, Any], seed: int,
                 teacher_tag: str = "") -> CellSpec:
    tag = "".join(f"__{k}={v}" for k, v in sweep.items())
    return CellSpec(f"{task_prefix(task, teacher_tag)}__{label}{tag}__s{seed}", "trained", task, objective, label,
                    {**params, **sweep}, seed, sweep, teacher=teacher_tag)
