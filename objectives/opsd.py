"""``opsd``: on-policy self-distillation — the model with a privileged reference solution teaches itself.

The student samples y ~ p_θ(·|x) from the question x alone; the teacher is the SAME model given the
question plus a verified solution y* (``teacher_prompt``), scoring the same tokens y:
    loss_t = D(p_θ(·|x, y*, y<t) || p_θ(·|x, y<t))   (reverse KL by default), teacher under no_grad.
Reference: Zhao et al., "Self-Distilled Reasoner: On-Policy Self-Distillation for Large Language
Models", arXiv:2601.18734, 2026.

Choices the abstract leaves open, exposed as parameters: the divergence (``divergence``), whether the
teacher is the live model (the paper's "single model in two contexts"; default) or a frozen copy of
the initial student (``teacher``), and the wording that inserts the solution (``privileged_template``;
{prompt} = the student's user message, {solution} = the task's reference response). The privileged
context here is the dataset's reference response (GSM8K: the worked answer), not a separately
verified trace.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from torch import Tensor

from harness.errors import ObjectiveError
from objectives import divergences as D
from objectives import reference as R
from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    RowInfo,
    SequenceSource,
    TeacherSignal,
    register_objective,
)

DEFAULT_TEMPLATE = ("{prompt}\n\nA verified reference solution (for you only):\n{solution}\n\n"
                    "Now write your own solution.")


class OPSDParams(ObjectiveParams):
    divergence: Literal["reverse", "forward", "jsd"] = Field(
        "reverse", description="reverse: KL(p_S||p_T); forward: KL(p_T||p_S); jsd: generalized JSD at jsd_beta")
    jsd_beta: float = Field(0.5, gt=0.0, lt=1.0, description="mixture weight of the teacher for divergence=jsd")
    teacher: Literal["self_live", "self_frozen"] = Field(
        "self_live", description="self_live: the current student under no_grad; self_frozen: a copy of the initial student")
    privileged_template: str = Field(DEFAULT_TEMPLATE, description="teacher's user message; fields {prompt}, {solution}")

    @field_validator("privileged_template")
    @classmethod
    def _has_fields(cls, v: str) -> str:
        for name in ("{prompt}", "{solution}"):
            if name not in v:
                raise ValueError(f"must contain {name} (the teacher needs the question and the solution)")
        return v


@register_objective
class OPSD(Objective):
    """Per-token divergence between the model with and without a privileged solution in its prompt."""

    name = "opsd"
    description = ("On-policy self-distillation: the student with the reference solution in its prompt teaches "
                   "itself without it, per-token KL on its own rollouts (Zhao et al. 2026).")
    Params = OPSDParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: OPSDParams

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        return {"reverse": "reverse", "forward": "forward"}.get(self.params.divergence)

    def teacher_model(self) -> Literal["teacher", "self_frozen", "self_live"]:
        return self.params.teacher

    def teacher_prompt(self, example: Any) -> str | None:
        solution = getattr(example, "response", None)
        if not solution:
            raise ObjectiveError(
                f"objective {self.name!r} needs each example's reference response as privileged context; "
                f"example {getattr(example, 'id', '?')} has none (use a task with reference solutions, e.g. gsm8k)")
        return self.params.privileged_template.replace("{prompt}", example.prompt).replace("{solution}", solution)

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        ls, lt = chunk.student_logprobs(), chunk.teacher_logprobs()
        if self.params.divergence == "reverse":
            return D.reverse_kl(lt, ls)
        if self.params.divergence == "forward":
            return D.forward_kl(lt, ls)
        return D.generalized_jsd(lt, ls, self.params.jsd_beta)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        ps, pt = R.probs(student_logits), R.probs(teacher_logits)
        if self.params.divergence == "reverse":
            return R.kl(ps, pt)
        if self.params.divergence == "forward":
            return R.kl(pt, ps)
        return R.normalized_jsd(pt, ps, self.params.jsd_beta)
