"""Objective parameters: the ``ObjectiveParams`` base class, validation with errors that name the
field and its allowed range, and the one-row-per-parameter summary the CLI listing shows.

Kept apart from the contract so that the rules for *parameters* (pydantic, ranges, did-you-mean
hints) can be read and changed without touching what an objective *is*.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import ObjectiveError

__all__ = ["NoParams", "ObjectiveParams", "format_params_error", "params_summary", "validate_params"]


class ObjectiveParams(BaseModel):
    """Base class for objective parameters: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(ObjectiveParams):
    """Parameters of an objective that has none."""


def validate_params(cls: Any, params: Any) -> ObjectiveParams:
    """``params`` (None, a mapping or a model) validated against ``cls.Params`` of objective class ``cls``."""
    model = cls.Params
    if params is None:
        params = {}
    if isinstance(params, model):
        return params
    if isinstance(params, BaseModel):
        params = params.model_dump()
    if not isinstance(params, Mapping):
        raise ObjectiveError(
            f"objective {cls.name!r}: params must be a mapping of parameter names to values, "
            f"got {type(params).__name__}"
        )
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ObjectiveError(format_params_error(cls.name, model, exc)) from None


def _field_range(field: Any) -> str | None:
    bounds = {}
    for meta in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                bounds[attr] = getattr(meta, attr)
    if not bounds:
        return None
    bounds = {k: f"{v:g}" if isinstance(v, (int, float)) else str(v) for k, v in bounds.items()}
    lo = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else "(-inf"
    hi = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else "inf)"
    return f"{lo}, {hi}"


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def params_summary(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One row per parameter: name, type, default, range (e.g. "[0, 1]") and description."""
    rows = []
    for fname, field in model.model_fields.items():
        rows.append(
            {
                "name": fname,
                "type": _type_name(field.annotation),
                "default": field.default,
                "range": _field_range(field),
                "description": field.description or "",
            }
        )
    return rows


def format_params_error(objective_name: str, model: type[BaseModel], exc: ValidationError) -> str:
    """Turn a pydantic error into one line per field: path, problem, given value, allowed range."""
    known = list(model.model_fields)
    lines = [f"invalid params for objective {objective_name!r}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<params>"
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            lines.append(
                f"  {path}: unknown parameter{did_you_mean} "
                f"(allowed: {', '.join(known) or 'none'})"
            )
            continue
        msg = f"  {path}: {err['msg']} (got {err.get('input')!r}"
        field = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        if field is not None:
            rng = _field_range(field)
            if rng:
                msg += f"; allowed range {rng}"
            elif typing.get_origin(field.annotation) is Literal:
                msg += f"; allowed values {_type_name(field.annotation)}"
        lines.append(msg + ")")
    return "\n".join(lines)

