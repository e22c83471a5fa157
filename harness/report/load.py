"""Read a results directory (or several shards of one) into memory, tolerating incomplete runs.

Only the files of the results layout are read (DESIGN.md, "Results layout"; results/README.md):
no config validation and no objective registry, so a report can be rebuilt anywhere from results
alone, including results written by objectives that are not installed here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import yaml

from harness.cells import BASELINE_LABELS, CellSpec
from harness.io import scan_jsonl

SCHEMA_VERSION = 1

PathLike = str | os.PathLike


@dataclass(kw_only=True)
class Cell(CellSpec):
    """One finished cell (status "done"): its identity (the `CellSpec` the suite planned, read back
    from cell.json) plus where its files are and what they hold."""

    dir: Path
    data: dict[str, Any]
    problems: list[str] = field(default_factory=list, repr=False, compare=False)  # unreadable files, for the caveats
    _records: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def loaded(cls, cell_id: str, dir: Path, data: dict[str, Any], label: str | None = None) -> "Cell":
        """`label`: the objective label (cell.json `label`, or recovered from cell_id + suite labels)."""
        return cls(**CellSpec.fields_of_record(cell_id, data, label), dir=dir, data=data)

    @property
    def base_label(self) -> str:
        """Row name without the sweep suffix: `label` (schema refinement) or the objective name."""
        if self.is_baseline:
            return BASELINE_LABELS.get(self.objective, self.objective)
        return str(self.label or self.data.get("label") or self.objective)

    @property
    def row_label(self) -> str:
        """Leaderboard row: e.g. `veto`, or `veto (beta_start=0.3)` for a sweep cell."""
        if not self.sweep:
            return self.base_label
        inner = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(self.sweep.items()))
        return f"{self.base_label} ({inner})"

    def metric(self, task: str, key: str) -> float:
        """An aggregate metric from cell.json (fraction), nan when absent."""
        metrics = self.data.get("metrics") or {}
        block = metrics.get(task) or {}
        if key not in block and isinstance(block.get("paper"), dict):
            block = block["paper"]  # GSM8K may be nested per protocol; the paper protocol is the headline
        return _to_float(block.get(key))

    def records(self, task: str | None = None) -> list[dict[str, Any]] | None:
        """Per-example rows of eval/<task>.jsonl (None when the file is absent)."""
        task = task or self.task
        if task not in self._records:
            self._records[task] = self._read_rows(self.dir / "eval" / f"{task}.jsonl")
        return self._records[task]

    def eval_aggregate(self, task: str | None = None) -> dict[str, Any] | None:
        path = self.dir / "eval" / f"{task or self.task}.json"
        return _read_json_or_none(path)

    @cached_property
    def telemetry(self) -> list[dict[str, Any]]:
        return self._read_rows(self.dir / "telemetry.jsonl") or []

    def _read_rows(self, path: Path) -> list[dict[str, Any]] | None:
        """JSONL rows, or None when absent or unreadable. Never silent: every skipped line (torn by a
        kill, malformed, not UTF-8) is noted in `problems` with its file and line, which the report
        prints in its caveats, so a cell whose statistics rest on fewer rows is marked."""
        if not path.is_file():
            return None
        try:
            rows, skipped = scan_jsonl(path)
        except OSError as exc:
            self.problems.append(f"{self.cell_id}: unreadable {path.relative_to(self.dir).as_posix()} ({type(exc).__name__})")
            return None
        for line in skipped:
            where = line.replace(str(path), path.relative_to(self.dir).as_posix(), 1)
            self.problems.append(f"{self.cell_id}: {where} (this cell's figures use the remaining rows)")
        return rows


@dataclass(frozen=True)
class MissingCell:
    """A planned or started cell without a usable result."""

    cell_id: str
    reason: str
    where: str  # shard-relative location, for the reader to find it


@dataclass
class Results:
    """Everything a report needs, merged over shards."""

    roots: list[Path]
    suite: dict[str, Any] | None
    environments: list[tuple[str, dict[str, Any]]]  # (shard name, environment.json), distinct ones only
    plan: list[dict[str, Any]]
    cells: list[Cell]
    missing: list[MissingCell]
    warnings: list[str] = field(default_factory=list)

    @property
    def suite_name(self) -> str | None:
        return str(self.suite.get("name")) if self.suite and self.suite.get("name") else None

    def tasks(self) -> list[str]:
        """Tasks present in the results: the suite's order, then any others by name."""
        present = {c.task for c in self.cells}
        suite_tasks = [t.get("name") for t in (self.suite or {}).get("tasks", []) if isinstance(t, dict)]
        ordered = list(dict.fromkeys(t for t in suite_tasks if isinstance(t, str)))
        return ordered + sorted(t for t in present if t not in ordered)


def load_results(results_dir: PathLike | Sequence[PathLike]) -> Results:
    """Load one results dir, or several shards/dirs of the same suite, merging their cells.

    Every `cells/<cell_id>/` found under the given dirs (at any depth, so `shard-*/cells/` layouts
    work too) is considered. A cell without cell.json, with unreadable JSON or with status != "done"
    is reported as missing, as is any cell named in plan.json that has no finished result. When the
    same cell_id is finished in two shards the first (in the order given, then path order) wins and
    a warning is recorded.
    """
    roots = _as_roots(results_dir)
    warnings: list[str] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"results directory {str(root)!r} does not exist")

    suite: dict[str, Any] | None = None
    environments: list[tuple[str, dict[str, Any]]] = []
    plan: list[dict[str, Any]] = []
    cells: dict[str, Cell] = {}
    incomplete: dict[str, MissingCell] = {}
    kept_where: dict[str, str] = {}

    for root in roots:
        for suite_path in _find(root, "suite.yaml"):
            loaded = _read_yaml_or_none(suite_path)
            if loaded is None:
                warnings.append(f"{_rel(suite_path, root)}: unreadable suite.yaml")
            elif suite is None:
                suite = loaded
            elif loaded.get("name") != suite.get("name"):
                warnings.append(f"{_rel(suite_path, root)}: suite {loaded.get('name')!r} differs from {suite.get('name')!r}")
        for env_path in _find(root, "environment.json"):
            env = _read_json_or_none(env_path)
            if isinstance(env, dict) and all(env != e for _, e in environments):
                environments.append((_shard_name(env_path.parent, root), env))
        for plan_path in _find(root, "plan.json"):
            entries = _read_json_or_none(plan_path)
            if isinstance(entries, dict):
                entries = entries.get("cells", [])
            for entry in entries or []:
                item = {"cell_id": entry} if isinstance(entry, str) else dict(entry)
                if item.get("cell_id") and all(p["cell_id"] != item["cell_id"] for p in plan):
                    plan.append(item)
        for cell_dir in sorted(p for p in root.glob("**/cells/*") if p.is_dir()):
            where = _rel(cell_dir, root) if len(roots) == 1 else f"{root.name}/{_rel(cell_dir, root)}"
            cell_json = cell_dir / "cell.json"
            if not cell_json.is_file():
                incomplete.setdefault(cell_dir.name, MissingCell(cell_dir.name, "no cell.json (not finished)", where))
                continue
            data = _read_json_or_none(cell_json)
            if not isinstance(data, dict):
                incomplete.setdefault(cell_dir.name, MissingCell(cell_dir.name, "unreadable cell.json", where))
                continue
            cell_id = str(data.get("cell_id") or cell_dir.name)
            if data.get("status") != "done":
                reason = f"status {data.get('status')!r}"
                if data.get("error"):  # a failed cell (Ray executor) says why
                    reason += f": {str(data['error']).strip().splitlines()[0][:300]}"
                incomplete.setdefault(cell_id, MissingCell(cell_id, reason, where))
                continue
            version = data.get("schema_version")
            if version != SCHEMA_VERSION:
                warnings.append(f"{where}: schema_version {version!r}, this report reads {SCHEMA_VERSION}")
            if cell_id in cells:
                warnings.append(f"{where}: duplicate finished cell {cell_id}; kept the one in {kept_where[cell_id]}")
                continue
            cells[cell_id] = Cell.loaded(cell_id, cell_dir, data, label=_label_of(cell_id, data, suite))
            kept_where[cell_id] = where

    missing = [m for cid, m in sorted(incomplete.items()) if cid not in cells]
    known = set(cells) | {m.cell_id for m in missing}
    for item in plan:
        if item["cell_id"] not in known:
            missing.append(MissingCell(item["cell_id"], "planned, never started", "-"))
    missing.sort(key=lambda m: m.cell_id)
    return Results(
        roots=roots,
        suite=suite,
        environments=environments,
        plan=plan,
        cells=[cells[k] for k in sorted(cells)],
        missing=missing,
        warnings=warnings,
    )


# ----------------------------------------------------------------------------- helpers


def _label_of(cell_id: str, data: dict[str, Any], suite: dict[str, Any] | None) -> str | None:
    """The objective's display label: cell.json `label`, else the cell_id's objective part when it names a
    suite label (two labelled variants of one objective share `objective` but not the label)."""
    if data.get("label"):
        return str(data["label"])
    labels = {str(o.get("label")) for o in (suite or {}).get("objectives", []) or [] if isinstance(o, dict) and o.get("label")}
    parts = cell_id.split("__")
    return parts[1] if len(parts) >= 3 and parts[1] in labels else None


def _as_roots(results_dir: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(results_dir, (str, os.PathLike)):
        return [Path(results_dir)]
    roots = [Path(p) for p in results_dir]
    if not roots:
        raise ValueError("give at least one results directory")
    return roots


def _find(root: Path, filename: str) -> list[Path]:
    """`root/filename` first, then shard copies below (never inside cells/)."""
    direct = root / filename
    found = [direct] if direct.is_file() else []
    found += sorted(p for p in root.glob(f"*/**/{filename}") if "cells" not in p.relative_to(root).parts)
    return found


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _shard_name(path: Path, root: Path) -> str:
    rel = _rel(path, root)
    return root.name if rel in ("", ".") else f"{root.name}/{rel}"


def _read_json_or_none(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):  # ValueError: bad JSON, and bytes that are not UTF-8
        return None


def _read_yaml_or_none(path: Path) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: bytes that are not UTF-8
        return None
    return loaded if isinstance(loaded, dict) else None


def _to_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)

