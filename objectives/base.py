"""The objective plugin contract and the objective registry.

An objective is a class that says *where training sequences come from* (``source`` /
``source_mix``), *what it needs from the teacher* (``teacher_signal``), *which values it schedules
over training* (``schedule``) and *the loss at each position* (``per_token_loss``). Everything else
(batching, rollouts, chunking, reduction, accumulation) is the harness's job, so objectives are
compared on equal footing.

Registry: built-in modules of this package are imported lazily on first lookup; third-party
objectives arrive through the ``distill_bench.objectives`` entry-point group or
``load_plugin_file(path)``. A broken third-party plugin produces a ``PluginLoadWarning`` naming it
instead of breaking the listing.
"""

from __future__ import annotations

import abc
import difflib
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import threading
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from harness.errors import ObjectiveError

ENTRY_POINT_GROUP = "distill_bench.objectives"

__all__ = [
    "ENTRY_POINT_GROUP",
    "LossChunk",
    "NoParams",
    "Objective",
    "RowInfo",
    "ObjectiveParams",
    "PluginLoadWarning",
    "SequenceSource",
    "TeacherSignal",
    "build_objective",
    "describe_all",
    "discover",
    "get_objective",
    "list_objectives",
    "load_plugin_file",
    "register_objective",
    "schedule_progress",
    "unregister_objective",
]


class SequenceSource(str, Enum):
    """Who wrote the tokens the loss is computed on."""

    GROUND_TRUTH = "ground_truth"
    TEACHER = "teacher"
    STUDENT = "student"


class TeacherSignal(str, Enum):
    """What the loss needs from the teacher at each loss position."""

    NONE = "none"
    FULL_LOGITS = "full_logits"
    SAMPLED_LOGPROBS = "sampled_logprobs"  # only log p_T(target token)


DivergenceDirection = Literal["forward", "reverse"]


@dataclass
class LossChunk:
    """The inputs of ``Objective.per_token_loss`` for N loss positions.

    Every row is a loss position (padding and prompt positions were removed by the caller).
    ``student_logits`` is fp32 (or fp64 in reference checks) and carries the graph;
    ``teacher_logits`` is present only for ``TeacherSignal.FULL_LOGITS`` and never requires grad;
    ``teacher_target_logprobs`` (log p_T(targets)) only for ``TeacherSignal.SAMPLED_LOGPROBS``.
    """

    student_logits: Tensor  # [N, V]
    teacher_logits: Tensor | None  # [N, V]
    targets: Tensor  # [N] long: the token at each loss position
    teacher_target_logprobs: Tensor | None = None  # [N]
    # Contract v2 (all detached, None unless the objective uses the matching hook; see RowInfo).
    seq_id: Tensor | None = None  # [N] long: global sequence index within the optimizer step
    segment_id: Tensor | None = None  # [N] long: segment index within its sequence (delimiter-split)
    weight: Tensor | None = None  # [N]: the row weight from ``row_weights`` (the engine applies it)
    advantage: Tensor | None = None  # [N]: the sequence's group-normalized task-reward advantage
    behaviour_logprobs: Tensor | None = None  # [N]: log p(target) under the rollout policy
    _student_logp: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _teacher_logp: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return int(self.targets.shape[0])

    def student_logprobs(self) -> Tensor:
        """log_softmax(student_logits) [N, V] in >= fp32, carrying the graph; computed once per chunk.

        Objectives should prefer this to their own log_softmax: the engine reuses the same tensor
        for its telemetry (entropy, teacher KL), which saves two full-vocabulary passes per chunk.
        """
        if self._student_logp is None:
            from objectives.divergences import log_probs  # divergences imports nothing from here

            self._student_logp = log_probs(self.student_logits)
        return self._student_logp

    def teacher_logprobs(self) -> Tensor | None:
        """log_softmax(teacher_logits) [N, V] (no graph), computed once; None without teacher logits."""
        if self.teacher_logits is None:
            return None
        if self._teacher_logp is None:
            from objectives.divergences import log_probs

            self._teacher_logp = log_probs(self.teacher_logits.detach())
        return self._teacher_logp


@dataclass
class RowInfo:
    """Per-row side information of contract v2 for N loss positions (every tensor [N], detached).

    The engine slices it per chunk into the ``LossChunk`` fields of the same names. ``weight``
    multiplies ``per_token_loss`` (None: no multiplication at all, the v1 arithmetic); rows of
    weight 0 may be skipped in the gradient pass.
    """

    seq_id: Tensor | None = None
    segment_id: Tensor | None = None
    weight: Tensor | None = None
    advantage: Tensor | None = None
    behaviour_logprobs: Tensor | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("seq_id", "segment_id", "weight", "advantage", "behaviour_logprobs")

    def select(self, index: slice | Tensor) -> "RowInfo":
        return RowInfo(**{f: (None if getattr(self, f) is None else getattr(self, f)[index]) for f in self.FIELDS})


class ObjectiveParams(BaseModel):
    """Base class for objective parameters: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(ObjectiveParams):
    """Parameters of an objective that has none."""


def schedule_progress(step: int, total_steps: int) -> float:
    """Training progress in [0, 1]: 0 at step 0 and exactly 1 at the last step (total_steps - 1)."""
    progress = step / max(total_steps - 1, 1)
    return min(max(progress, 0.0), 1.0)


class Objective(abc.ABC):
    """Base class of every distillation objective.

    Subclasses set the class attributes and implement ``per_token_loss``; decorate them with
    ``@register_objective``. Instances hold validated ``params`` (an instance of ``Params``).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[ObjectiveParams]] = NoParams
    source: ClassVar[SequenceSource] = SequenceSource.GROUND_TRUTH
    teacher_signal: ClassVar[TeacherSignal] = TeacherSignal.NONE
    # Direction of the teacher/student divergence minimized at the end of the schedule; the
    # conformance kit checks it on constructed distributions. None: not applicable/symmetric.
    divergence_direction: ClassVar[DivergenceDirection | None] = None
    # False for estimators (e.g. policy-gradient surrogates) whose per-token value may be < 0.
    nonnegative_loss: ClassVar[bool] = True

    def __init__(self, params: ObjectiveParams | Mapping[str, Any] | None = None) -> None:
        self.params = _validate_params(type(self), params)

    # -- what the training stage asks -------------------------------------------------------
    def required_teacher_signal(self) -> TeacherSignal:
        """Teacher signal needed with these params (the class attribute is the default)."""
        return self.teacher_signal

    def source_mix(self, progress: float) -> dict[SequenceSource, float]:
        """Probability of each sequence source at training ``progress`` in [0, 1] (sums to 1).

        The stage draws each batch's source from this with its own seeded RNG.
        """
        return {self.source: 1.0}

    def schedule(self, step: int, total_steps: int) -> dict[str, float]:
        """Scheduled scalar values for ``step`` (e.g. ``{"beta": 0.6}``), logged to telemetry."""
        return {}

    @abc.abstractmethod
    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        """Loss at each of the ``chunk.n_tokens`` positions: a [N] float tensor (sum-reduced later).

        Must be a per-row function (no statistics across rows) so chunking and gradient
        accumulation do not change the result.
        """

    def teacher_is_fixed_point(self, sched: dict[str, float]) -> bool:
        """Whether student == teacher gives zero loss and zero gradient under ``sched``."""
        return self.required_teacher_signal() is not TeacherSignal.NONE

    # -- contract v2: optional hooks (the defaults keep the v1 behaviour and arithmetic) ---------
    def token_stats(self, chunk: LossChunk, sched: dict[str, float]) -> dict[str, Tensor]:
        """Detached per-row statistics ``{name: [N]}`` (entropy, divergence, ...) for ``row_weights``.

        Runs under no_grad in a pass before the gradient pass; ``chunk.seq_id``/``segment_id`` are set.
        """
        return {}

    def row_weights(self, stats: dict[str, Tensor], seq_id: Tensor, segment_id: Tensor) -> Tensor:
        """Weights [N] for ALL rows of one optimizer step (every micro-batch and process at once).

        ``stats`` holds ``token_stats`` concatenated over the step, so weights may use sequence,
        segment or whole-step quantiles; rows arrive in an unspecified order, so use ``seq_id``
        and ``segment_id`` rather than positions. Only called when ``uses_row_weights()``.
        """
        raise NotImplementedError

    def uses_row_weights(self) -> bool:
        """Whether the stage runs the statistics pass and ``row_weights`` (default: hook overridden)."""
        return type(self).row_weights is not Objective.row_weights

    def segment_delimiter(self) -> str | None:
        """Text that ends a segment (e.g. a reasoning step) in the completion; None: one segment."""
        return None

    def n_samples(self) -> int:
        """Rollouts per prompt (a group); > 1 only with the student as sequence source."""
        return 1

    def uses_reward(self) -> bool:
        """Whether rows need ``advantage`` (the task's reward, group-normalized): needs a task reward."""
        return False

    def uses_behaviour_logprobs(self) -> bool:
        """Whether rows need ``behaviour_logprobs`` (log p of the sampled token under the rollout policy)."""
        return False

    def teacher_prompt(self, example: Any) -> str | None:
        """The user message the teacher sees instead of the student's (None: the same prompt).

        The teacher scores exactly the student's completion tokens; only its prompt differs.
        """
        return None

    def teacher_model(self) -> Literal["teacher", "self_frozen", "self_live"]:
        """Who teaches: the configured teacher, a frozen copy of the initial student, or the
        current student itself under no_grad."""
        return "teacher"

    def uses_contract_v2(self) -> bool:
        """Whether any v2 hook is active (the stage then takes its v2 path; else v1, unchanged)."""
        return (self.uses_row_weights() or self.n_samples() > 1 or self.uses_reward()
                or self.uses_behaviour_logprobs() or type(self).teacher_prompt is not Objective.teacher_prompt
                or self.teacher_model() != "teacher")

    # -- description ---------------------------------------------------------------------------
    def params_dict(self) -> dict[str, Any]:
        """Parameters as JSON-ready values (for cell.json)."""
        return self.params.model_dump(mode="json")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """A JSON-ready summary for the CLI listing: name, description, sources, signal, params."""
        default = cls()
        sources: list[str] = []
        for progress in (0.0, 0.5, 1.0):
            for src in default.source_mix(progress):
                if src.value not in sources:
                    sources.append(src.value)
        return {
            "name": cls.name,
            "description": cls.description,
            "source": cls.source.value,
            "sources": sources,
            "teacher_signal": default.required_teacher_signal().value,
            "divergence_direction": default.divergence_direction,
            "module": cls.__module__,
            "params": params_summary(cls.Params),
            "hooks": default.active_hooks(),
        }

    def active_hooks(self) -> list[str]:
        """Names of the contract-v2 hooks this instance uses (for the listing)."""
        hooks = []
        if self.uses_row_weights():
            hooks.append("token_stats/row_weights")
        if self.segment_delimiter() is not None:
            hooks.append("segments")
        if self.n_samples() > 1:
            hooks.append(f"n_samples={self.n_samples()}")
        if self.uses_reward():
            hooks.append("reward")
        if self.uses_behaviour_logprobs():
            hooks.append("behaviour_logprobs")
        if type(self).teacher_prompt is not Objective.teacher_prompt:
            hooks.append("teacher_prompt")
        if self.teacher_model() != "teacher":
            hooks.append(f"teacher={self.teacher_model()}")
        return hooks

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------
# Parameter validation and description
# ---------------------------------------------------------------------------------------------
def _validate_params(cls: type[Objective], params: Any) -> ObjectiveParams:
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


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
class PluginLoadWarning(UserWarning):
    """A third-party objective plugin could not be loaded; it is skipped."""


_REGISTRY: dict[str, type[Objective]] = {}
_LOCK = threading.RLock()
_BUILTINS_LOADED = False
_ENTRY_POINTS_SCANNED = False
_ENTRY_POINTS_LOADED: set[tuple[str, str]] = set()  # (name, value)
_ENTRY_POINTS_FAILED: set[tuple[str, str]] = set()
_PLUGIN_FILES: dict[Path, list[type[Objective]]] = {}
# Modules of this package that hold machinery, not objectives.
_INFRA_MODULES = {"base", "engine", "divergences", "conformance"}


def _check_objective_class(cls: Any) -> None:
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ObjectiveError(f"{where}: @register_objective needs a subclass of Objective")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ObjectiveError(f"{where}: set a non-empty class attribute `name` (no spaces around)")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ObjectiveError(f"objective {name!r} ({where}) does not implement: {missing}")
    params = cls.Params
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise ObjectiveError(f"objective {name!r}: `Params` must be a pydantic BaseModel subclass")
    if params.model_config.get("extra") != "forbid":
        raise ObjectiveError(
            f"objective {name!r}: Params must reject unknown keys; derive it from "
            "objectives.base.ObjectiveParams or set model_config = ConfigDict(extra='forbid')"
        )
    try:
        params()
    except ValidationError as exc:
        raise ObjectiveError(
            f"objective {name!r}: every parameter needs a valid default\n"
            + format_params_error(name, params, exc)
        ) from None
    if not isinstance(cls.source, SequenceSource) or not isinstance(cls.teacher_signal, TeacherSignal):
        raise ObjectiveError(
            f"objective {name!r}: `source` must be a SequenceSource and `teacher_signal` a TeacherSignal"
        )


def register_objective(cls: type[Objective] | None = None, *, override: bool = False) -> Any:
    """Class decorator registering an objective under ``cls.name``.

    Use as ``@register_objective`` or ``@register_objective(override=True)``. A name already taken
    by a different class is an ``ObjectiveError`` unless ``override=True`` (re-executing the same
    definition, e.g. a module reload, silently replaces it).
    """

    def decorate(klass: type[Objective]) -> type[Objective]:
        _check_objective_class(klass)
        with _LOCK:
            existing = _REGISTRY.get(klass.name)
            same_definition = existing is not None and (
                existing is klass
                or (existing.__module__, existing.__qualname__) == (klass.__module__, klass.__qualname__)
            )
            if existing is not None and not same_definition and not override:
                raise ObjectiveError(
                    f"objective name {klass.name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; "
                    f"cannot register {klass.__module__}.{klass.__qualname__} under the same name "
                    "(rename it, or use @register_objective(override=True) to replace it on purpose)"
                )
            _REGISTRY[klass.name] = klass
        return klass

    return decorate(cls) if cls is not None else decorate


def unregister_objective(name: str) -> None:
    """Remove an objective from the registry (for tests and plugin reloading)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    package = importlib.import_module(__package__ or "objectives")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _INFRA_MODULES:
            continue
        # A broken built-in is a bug in this repository: let it raise.
        importlib.import_module(f"{package.__name__}.{info.name}")
    _BUILTINS_LOADED = True


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points(retry_failed: bool) -> None:
    global _ENTRY_POINTS_SCANNED
    for ep in _entry_points():
        key = (ep.name, ep.value)
        if key in _ENTRY_POINTS_LOADED or (key in _ENTRY_POINTS_FAILED and not retry_failed):
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        try:
            loaded = ep.load()  # importing a module registers its decorated classes
            if isinstance(loaded, type) and issubclass(loaded, Objective):
                if _REGISTRY.get(getattr(loaded, "name", None)) is not loaded:
                    register_objective(loaded)
        except Exception as exc:  # noqa: BLE001 - any plugin failure must not break the listing
            _ENTRY_POINTS_FAILED.add(key)
            warnings.warn(
                f"skipping objective plugin {ep.name!r} ({ep.value}, from {dist}): "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=3,
            )
        else:
            _ENTRY_POINTS_FAILED.discard(key)
            _ENTRY_POINTS_LOADED.add(key)
    _ENTRY_POINTS_SCANNED = True


def discover(refresh: bool = False) -> None:
    """Import built-in objective modules and entry-point plugins (once, or again with ``refresh``).

    ``refresh=True`` rescans the entry points (e.g. after installing a plugin into a running
    process) and retries those that failed before.
    """
    with _LOCK:
        _load_builtins()
        if refresh:
            importlib.invalidate_caches()
        if refresh or not _ENTRY_POINTS_SCANNED:
            _load_entry_points(retry_failed=refresh)


def load_plugin_file(path: str | Path) -> list[type[Objective]]:
    """Import a single ``.py`` file that defines (and registers) objectives; return them.

    Loading the same file twice is a no-op. Errors raise ``ObjectiveError`` naming the file,
    because the user asked for this file explicitly.
    """
    path = Path(path).expanduser().resolve()
    with _LOCK:
        if path in _PLUGIN_FILES:
            return list(_PLUGIN_FILES[path])
        if not path.is_file() or path.suffix != ".py":
            raise ObjectiveError(f"objective plugin file {str(path)!r} does not exist or is not a .py file")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module_name = f"distill_bench_plugin_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ObjectiveError(f"cannot import objective plugin file {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        before = dict(_REGISTRY)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ObjectiveError(
                f"objective plugin file {str(path)!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        added = [c for n, c in _REGISTRY.items() if before.get(n) is not c]
        if not added:
            warnings.warn(
                f"objective plugin file {str(path)!r} registered no objective "
                "(decorate the class with @register_objective)",
                PluginLoadWarning,
                stacklevel=2,
            )
        _PLUGIN_FILES[path] = added
        return list(added)


def list_objectives() -> list[type[Objective]]:
    """All registered objective classes, sorted by name (runs discovery on first use)."""
    discover()
    with _LOCK:
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_objective(name: str) -> type[Objective]:
    """The objective class registered as ``name``; ``ObjectiveError`` with a hint if unknown."""
    discover()
    with _LOCK:
        cls = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if cls is not None:
        return cls
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ObjectiveError(
        f"unknown objective {name!r}.{hint} Known objectives: {', '.join(known)}. "
        "Third-party objectives register through the "
        f"{ENTRY_POINT_GROUP!r} entry-point group or a plugin file."
    )


def build_objective(name: str, params: Mapping[str, Any] | None = None) -> Objective:
    """Instantiate objective ``name`` with validated ``params`` (errors name the field and range)."""
    return get_objective(name)(params)


def describe_all() -> list[dict[str, Any]]:
    """``describe()`` rows of every registered objective, sorted by name (for the CLI listing).

    An objective whose ``describe()`` fails (a broken plugin) gets a minimal row with an ``error``
    field and a ``PluginLoadWarning``, so one bad plugin cannot break the listing.
    """
    rows = []
    for cls in list_objectives():
        try:
            rows.append(cls.describe())
        except Exception as exc:  # noqa: BLE001
            warnings.warn(
                f"objective {cls.name!r} ({cls.__module__}) cannot describe itself: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            rows.append({"name": cls.name, "description": getattr(cls, "description", ""), "module": cls.__module__,
                         "params": [], "error": f"{type(exc).__name__}: {exc}"})
    return rows

