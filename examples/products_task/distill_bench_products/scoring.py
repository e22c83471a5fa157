"""Scoring for `products`: the last integer of the reply, against the product and the teacher's.

`ctx.baseline_outputs` holds the teacher's replies to the same prompts (the task declares
`needs.baseline_outputs`); agreement counts examples where both final answers exist and match.
"""

from __future__ import annotations

import re
from typing import Any

_INT = re.compile(r"-?\d+")


def final_number(text: str | None) -> str | None:
    """The last integer in the text (commas inside numbers dropped), or None."""
    found = _INT.findall((text or "").replace(",", ""))
    return str(int(found[-1])) if found else None


def score(ctx) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    teacher = ctx.baseline_outputs or {}
    rows = []
    for ex, out in zip(ctx.examples, ctx.outputs):
        pred = final_number(out.text)
        t_text = teacher.get(ex.id)
        t_pred = final_number(t_text) if t_text is not None else None
        rows.append({"id": ex.id, "output": out.text, "extracted": pred, "target": ex.references[0],
                     "correct": pred == ex.references[0], "teacher_output": t_text, "teacher_extracted": t_pred,
                     "agrees": pred is not None and pred == t_pred, "output_tokens": len(out.token_ids)})
    n = len(rows)

    def frac(key: str) -> float:
        return sum(bool(r[key]) for r in rows) / n if n else float("nan")

    agg = {"accuracy": frac("correct"), "n": n,
           "agreement": frac("agrees") if teacher else None,
           "teacher_accuracy": (sum(r["teacher_extracted"] == r["target"] for r in rows) / n) if teacher and n else None,
           "mean_length": sum(r["output_tokens"] for r in rows) / n if n else None,
           "protocol": {"answer": "last integer in the reply", "baseline_model": ctx.baseline_name}}
    return agg, rows
