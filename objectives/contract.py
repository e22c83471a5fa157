"""The objective plugin contract: what an objective is and what the harness hands it.

An objective is a class that says *where training sequences come from* (``source`` /
``source_mix``), *what it needs from the teacher* (``teacher_signal``), *which values it schedules
over training* (``schedule``) and *the loss at each position* (``per_token_loss``). Everything else
(batching, rollouts, chunking, reduction, accumulation) is the harness's job, so objectives are
compared on equal footing. ``Objective.needs()`` sums those declarations up in one value that every
caller (training stage, pipeline, cost estimate, listing) asks instead of re-deriving it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal

from torch import Tensor

from harness.errors import ObjectiveError
from objectives.divergences import log_probs, token_logprob  # divergences imports nothing from here
from objectives.params import NoParams, ObjectiveParams, params_summary, validate_params

__all__ = [
    "DivergenceDirection",
    "LossChunk",
    "Needs",
    "PROGRESS_GRID",
    "Objective",
    "RowInfo",
    "SequenceSource",
    "TeacherSignal",
    "expected_source_mix",
    "schedule_progress",
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
            self._student_logp = log_probs(self.student_logits)
        return self._student_logp

    def student_target_logprobs(self) -> Tensor:
        """log p_S(target) at every position, [N] (carries the graph); the negative is cross-entropy."""
        return token_logprob(self.student_logprobs(), self.targets)

    def teacher_logprobs(self) -> Tensor:
        """log_softmax(teacher_logits) [N, V] (no graph), computed once per chunk.

        An ``ObjectiveError`` when the chunk has no teacher logits (an objective that reads them
        must declare ``TeacherSignal.FULL_LOGITS``).
        """
        if self.teacher_logits is None:
            raise ObjectiveError("per_token_loss needs full teacher logits (declare "
                                 "teacher_signal = TeacherSignal.FULL_LOGITS); the chunk has none")
        if self._teacher_logp is None:
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


def schedule_progress(step: int, total_steps: int) -> float:
    """Training progress in [0, 1]: 0 at step 0 and exactly 1 at the last step (total_steps - 1)."""
    progress = step / max(total_steps - 1, 1)
    return min(max(progress, 0.0), 1.0)


# Progress values at which an objective's ``source_mix`` is scanned when it does not declare its
# sources itself: steps of 0.001 catch any switch on a schedule of up to 1001 optimizer steps.
PROGRESS_GRID: tuple[float, ...] = tuple(i / 1000 for i in range(1001))

TeacherModel = Literal["teacher", "self_frozen", "self_live"]


@dataclass(frozen=True)
class Needs:
    """What an objective needs from the harness, over the whole training run (``Objective.needs()``).

    The one answer to "which sources and which teacher does this objective need": the training
    stage, the pipeline (which models to load), the cost estimate and the listing all read it.
    """

    sources: tuple[SequenceSource, ...]  # every source source_mix gives weight > 0 at some progress
    teacher_signal: TeacherSignal  # what per_token_loss reads from the teacher (with these params)
    teacher_model: TeacherModel  # who teaches: the configured teacher or the student itself

    @property
    def teacher_generation(self) -> bool:
        """Whether some batches are sequences generated by the configured teacher."""
        return SequenceSource.TEACHER in self.sources

    @property
    def student_rollouts(self) -> bool:
        """Whether some batches are sequences sampled from the student."""
        return SequenceSource.STUDENT in self.sources

    @property
    def loads_teacher(self) -> bool:
        """Whether the configured teacher model must be loaded: for its signal (unless the student
        teaches itself) or to generate sequences."""
        signal = self.teacher_signal is not TeacherSignal.NONE and self.teacher_model == "teacher"
        return signal or self.teacher_generation


def expected_source_mix(objective: "Objective", total_steps: int) -> dict[SequenceSource, float]:
    """The expected share of batches from each source over a run of ``total_steps`` optimizer steps.

    The stage draws step k's source from ``source_mix(schedule_progress(k, total_steps))``, so the
    expectation is the mean of those mixes. A mix that does not move is returned as it is (no
    float round-off from averaging equal values).
    """
    steps = max(int(total_steps), 1)
    mixes = [objective.source_mix(schedule_progress(k, steps)) for k in range(steps)]
    if all(m == mixes[0] for m in mixes):
        return dict(mixes[0])
    total: dict[SequenceSource, float] = {}
    for mix in mixes:
        for src, p in mix.items():
            total[src] = total.get(src, 0.0) + p
    return {src: p / steps for src, p in total.items()}


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
        self.params = validate_params(type(self), params)

    # -- what the training stage asks -------------------------------------------------------
    def required_teacher_signal(self) -> TeacherSignal:
        """Teacher signal needed with these params (the class attribute is the default)."""
        return self.teacher_signal

    def source_mix(self, progress: float) -> dict[SequenceSource, float]:
        """Probability of each sequence source at training ``progress`` in [0, 1] (sums to 1).

        The stage draws each batch's source from this with its own seeded RNG.
        """
        return {self.source: 1.0}

    def sequence_sources(self) -> tuple[SequenceSource, ...]:
        """Every source ``source_mix`` can give weight > 0 during training, ``source`` first.

        Default: ``(source,)`` when ``source_mix`` is not overridden, else the sources seen on
        ``PROGRESS_GRID``. An objective whose mix moves may override this to state the set exactly;
        the conformance kit checks the declaration covers the mix.
        """
        if type(self).source_mix is Objective.source_mix:
            return (self.source,)
        seen = {src for p in PROGRESS_GRID for src, w in self.source_mix(p).items() if w > 0}
        return tuple(sorted(seen, key=lambda src: (src != self.source, list(SequenceSource).index(src))))

    def needs(self) -> Needs:
        """Sources, teacher signal and teacher model of this objective with these params (see ``Needs``).

        Derived from the declarations above once per instance (params are immutable).
        """
        cached = self.__dict__.get("_needs")
        if cached is None:
            cached = Needs(sources=self.sequence_sources(), teacher_signal=self.required_teacher_signal(),
                           teacher_model=self.teacher_model())
            self.__dict__["_needs"] = cached
        return cached

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

    # -- what the conformance kit asks (objectives.conformance) ----------------------------------
    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        """The same per-token loss as ``per_token_loss``, restated plainly for the conformance kit: [N].

        Inputs are fp64 logits [N, V] (``teacher_logits`` always given), targets [N], the schedule
        and the rows' ``advantage`` / ``behaviour_logprobs`` (synthetic ones from the kit when the
        objective uses them). Write it with ``objectives.reference`` (softmax, log, sum), never with
        ``objectives.divergences``, so the kit compares two independent derivations of the loss and
        its gradient. Every objective must define it: the kit fails one that does not.
        """
        raise NotImplementedError(f"objective {self.name!r} defines no reference_loss")

    def has_reference(self) -> bool:
        """Whether this objective restates its loss in ``reference_loss`` (the kit requires it)."""
        return type(self).reference_loss is not Objective.reference_loss

    def conformance_checks(self) -> list[Callable[[Objective], Any]]:
        """Checks of properties only this objective has (e.g. "β = 0 is plain KL"), run by the kit
        after the generic ones: functions ``check(objective) -> objectives.conformance.CheckResult``.
        """
        return []

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

    def teacher_model(self) -> TeacherModel:
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
        needs = default.needs()
        return {
            "name": cls.name,
            "description": cls.description,
            "source": cls.source.value,
            "sources": [src.value for src in needs.sources],
            "teacher_signal": needs.teacher_signal.value,
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

