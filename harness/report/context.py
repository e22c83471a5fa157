"""The text around the tables: caveat banner, protocol summary and environment, from the results only."""

from __future__ import annotations

import json
import re
from typing import Any

from harness.report.load import Results

PAPER_TEACHER = "Qwen/Qwen2-7B-Instruct"
PAPER_STUDENT = "Qwen/Qwen2-0.5B-Instruct"


def is_pipeline_check(suite: dict[str, Any] | None) -> bool:
    """True for the smoke suite: by name, an explicit `pipeline_check: true`, or its description."""
    if not suite:
        return False
    name = str(suite.get("name", "")).lower()
    desc = str(suite.get("description", "")).lower()
    # Description phrases are matched narrowly so "unlike the smoke suite, ..." does not trigger it.
    return (
        name.startswith("smoke")
        or suite.get("pipeline_check") is True
        or re.search(r"\b(pipeline[- ]check|smoke[- ]test|not comparable to the paper)", desc) is not None
    )


def _model_name(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("name"):
            return str(spec["name"])
        if spec.get("derive_from"):
            layers = spec.get("keep_layers") or spec.get("drop_layers")
            how = "keep" if spec.get("keep_layers") else "drop"
            return f"{spec['derive_from']}[{how} {layers}]"
    return str(spec) if spec else "?"


def caveats(results: Results) -> list[str]:
    """Plain-language warnings shown at the top of every report (Markdown inline syntax allowed)."""
    out: list[str] = []
    suite = results.suite
    if suite is None:
        out.append("No `suite.yaml` found in the results: the protocol behind these numbers is unknown.")
    elif is_pipeline_check(suite):
        desc = str(suite.get("description", "")).strip()
        out.append(
            f"**Pipeline check, not a benchmark.** Suite `{suite.get('name')}` is a smoke suite: it checks that "
            "training, evaluation and reporting run end to end on tiny models and a handful of examples. "
            "Its numbers are **not comparable to the paper** and do not rank the objectives."
            + (f" Suite description: “{desc}”" if desc else "")
        )
    else:
        teacher, student = _model_name(suite.get("teacher")), _model_name(suite.get("student"))
        if (teacher, student) != (PAPER_TEACHER, PAPER_STUDENT):
            out.append(
                f"Teacher `{teacher}` → student `{student}` differs from the paper's "
                f"`{PAPER_TEACHER}` → `{PAPER_STUDENT}`: compare trends with the published block, not absolute numbers."
            )
    if results.missing:
        n_done = len(results.cells)
        out.append(
            f"{len(results.missing)} cell(s) missing or unfinished ({n_done} done): some rows average fewer seeds "
            "or lack columns; see *Missing cells*."
        )
    for w in results.warnings + [p for c in results.cells for p in c.problems]:
        out.append(f"Results warning: {w}")
    return out


def protocol_summary(results: Results) -> list[tuple[str, str]]:
    """(item, value) lines describing what was run, from suite.yaml and the evaluators' protocol records."""
    suite = results.suite or {}
    lines: list[tuple[str, str]] = []
    if suite:
        lines.append(("Suite", str(suite.get("name", "?"))))
        if suite.get("description"):
            lines.append(("Description", str(suite["description"]).strip()))
        lines.append(("Teacher", _model_name(suite.get("teacher"))))
        lines.append(("Student", _model_name(suite.get("student"))))
        tasks = []
        for t in suite.get("tasks", []) or []:
            if isinstance(t, dict):
                lim = [f"{k.split('_')[0]} {t[k]}" for k in ("train_limit", "eval_limit") if t.get(k) is not None]
                tasks.append(str(t.get("name")) + (f" ({', '.join(lim)})" if lim else ""))
        lines.append(("Tasks", "; ".join(tasks) or "?"))
        objs = []
        for o in suite.get("objectives", []) or []:
            if isinstance(o, dict):
                label = o.get("label") or o.get("name")
                params = o.get("params") or {}
                inner = ", ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
                objs.append(f"{label}" + (f" [{o.get('name')}]" if o.get("label") else "") + (f" ({inner})" if inner else ""))
        lines.append(("Objectives", "; ".join(objs) or "?"))
        lines.append(("Seeds", ", ".join(str(s) for s in suite.get("seeds", [0]))))
        for sw in suite.get("sweeps", []) or []:
            if isinstance(sw, dict):
                lines.append(("Sweep", f"{sw.get('objective')}: {sw.get('param')} ∈ {_short(sw.get('values'))}"))
        budget = suite.get("budget") or {}
        if budget:
            lines.append(("Budget held equal", str(budget.get("hold_equal", "?"))))
        train = suite.get("train") or {}
        keys = ("lr", "epochs", "max_steps", "batch_size", "micro_batch_size", "lr_schedule", "grad_clip",
                "temperature", "top_p", "max_new_tokens", "precision")
        if train:
            lines.append(("Training", ", ".join(f"{k}={_short(train[k])}" for k in keys if k in train)))
        ev = suite.get("eval") or {}
        if ev:
            lines.append(("Evaluation", _short(ev)))
    for task in results.tasks():
        cell = next((c for c in results.cells if c.task == task), None)
        agg = cell.eval_aggregate(task) if cell else None
        if isinstance(agg, dict) and agg.get("protocol") is not None:
            proto = agg["protocol"]
            if isinstance(proto, dict) and isinstance(proto.get("definition"), dict):
                # The full task definition is in the results; its hash identifies it here.
                proto = {k: v for k, v in proto.items() if k != "definition"}
            lines.append((f"Eval protocol ({task})", _short(proto)))
    planned = len(results.plan) or (len(results.cells) + len(results.missing))
    lines.append(("Cells", f"{len(results.cells)} done of {planned} planned"))
    return lines


def environment_rows(results: Results) -> list[tuple[str, str, str]]:
    """(shard, key, value) rows from environment.json, nested keys flattened with dots."""
    rows = []
    for shard, env in results.environments:
        for key, value in _flatten(env):
            rows.append((shard, key, value))
    return rows


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k in sorted(obj, key=str):
            out += _flatten(obj[k], f"{prefix}{k}.")
        return out
    return [(prefix[:-1], _short(obj, limit=200))]


def _short(value: Any, limit: int = 400) -> str:
    """Compact, deterministic rendering of a config value."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
