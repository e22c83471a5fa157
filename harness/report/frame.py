"""The leaderboard as one long (tidy) pandas DataFrame: the CSV export and the analysis entry point.

One row per (section, leaderboard row, task, metric[, seed]); see results/README.md, "CSV export".
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report.metrics import COST_KEYS, DIAGNOSTICS, STABILITY_KEYS
from harness.report.table import Leaderboard

COLUMNS = [
    "section", "row", "objective", "kind", "sweep", "task", "metric", "seed", "value", "ci_lo", "ci_hi",
    "ci_method", "n", "unit", "best", "delta_vs_sft", "delta_ci_lo", "delta_ci_hi", "p_bootstrap", "p_mcnemar",
    "significant",
]

_COST_UNITS = {"optimizer_steps": "steps", "prompts_seen": "prompts", "peak_memory_bytes": "bytes"}


def _nan_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def to_frame(board: Leaderboard) -> pd.DataFrame:
    records: list[dict] = []
    for row in board.rows:
        base = {"row": row.label, "objective": row.objective, "kind": row.kind, "sweep": row.sweep_text}
        for spec in board.metrics:  # columns without data in any row are skipped below anyway
            iv = board.main[(row.label, spec.key)]
            if not math.isfinite(iv.mean):
                continue
            rec = {
                **base, "section": "main", "task": spec.task, "metric": spec.metric, "value": iv.mean,
                "ci_lo": _nan_none(iv.lo), "ci_hi": _nan_none(iv.hi), "ci_method": iv.method, "n": iv.n,
                "unit": "%", "best": (row.label, spec.key) in board.best,
            }
            comp = board.deltas.get((row.label, spec.key))
            if comp is not None:
                rec.update(
                    delta_vs_sft=comp.delta,
                    delta_ci_lo=comp.boot.lo if comp.boot else None,
                    delta_ci_hi=comp.boot.hi if comp.boot else None,
                    p_bootstrap=comp.boot.p_value if comp.boot else None,
                    p_mcnemar=_nan_none(comp.mcnemar_p),
                    significant=comp.significant,
                )
            records.append(rec)
            for seed, value in sorted(board.per_seed[(row.label, spec.key)].items()):
                records.append({**base, "section": "per_seed", "task": spec.task, "metric": spec.metric,
                                "seed": seed, "value": value, "unit": "%"})
        for section, table, keys in (("cost", board.cost, COST_KEYS), ("stability", board.stability, STABILITY_KEYS)):
            for task in board.tasks + ["all"]:
                values = table.get((row.label, task))
                if values is None:
                    continue
                for key, _, _ in keys:
                    if math.isfinite(values.get(key, math.nan)):
                        unit = _COST_UNITS.get(key, "s" if key.endswith("_s") else "tokens" if key.endswith("tokens") else "")
                        records.append({**base, "section": section, "task": task, "metric": key,
                                        "value": values[key], "unit": unit if section == "cost" else ""})
        for task in board.tasks:
            diag = board.diagnostics.get((row.label, task))
            if diag is None:
                continue
            for spec in DIAGNOSTICS:
                iv = diag[spec.key]
                if math.isfinite(iv.mean):
                    records.append({**base, "section": "diagnostics", "task": task, "metric": spec.key,
                                    "value": iv.mean, "ci_lo": _nan_none(iv.lo), "ci_hi": _nan_none(iv.hi),
                                    "ci_method": iv.method, "n": iv.n})
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["n"] = frame["n"].astype("Int64")
    return frame


def to_csv(frame: pd.DataFrame) -> str:
    """Deterministic CSV text: fixed float format, '\\n' line ends, no index."""
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")
