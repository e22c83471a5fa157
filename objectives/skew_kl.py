"""``skew_kl``: skew forward KL on student-generated sequences.

loss_t = KL(p_T || α·p_T + (1−α)·p_S). Bounded by −log α, so a student that misses teacher mass
gets a large but finite loss; α = 0 is forward KL.
Reference: Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
ICML 2024.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

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


SKEW_DIRECTION_MAX_ALPHA = 0.1  # largest α for which a KL direction is claimed (checked by the kit)


class SkewParams(ObjectiveParams):
    alpha: float = Field(0.1, ge=0.0, lt=1.0, description="skew: weight of the first distribution in the mixture")


@register_objective
class SkewKL(Objective):
    """Forward KL to a teacher/student mixture."""

    name = "skew_kl"
    description = "Skew KL(p_T || α·p_T + (1−α)·p_S) on student-generated responses (DistiLLM)."
    Params = SkewParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: SkewParams

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        # With a small skew the loss keeps the forward KL's asymmetry; a large α makes the
        # mixture dominate and the asymmetry fades, so no direction is claimed then.
        return "forward" if self.params.alpha <= SKEW_DIRECTION_MAX_ALPHA else None

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.skew_kl(chunk.teacher_logprobs(), chunk.student_logprobs(), self.params.alpha)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        a, ps, pt = self.params.alpha, R.probs(student_logits), R.probs(teacher_logits)
        return R.kl(pt, a * pt + (1 - a) * ps)
