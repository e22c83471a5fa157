"""``skew_rkl``: skew reverse KL on student-generated sequences.

loss_t = KL(p_S || α·p_S + (1−α)·p_T); α = 0 is reverse KL.
Reference: Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
ICML 2024.
"""

from __future__ import annotations

from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective
from objectives.skew_kl import SKEW_DIRECTION_MAX_ALPHA, SkewParams


@register_objective
class SkewRKL(Objective):
    """Reverse KL to a student/teacher mixture."""

    name = "skew_rkl"
    description = "Skew reverse KL(p_S || α·p_S + (1−α)·p_T) on student-generated responses (DistiLLM)."
    Params = SkewParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: SkewParams

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        # With a small skew the loss keeps the reverse KL's asymmetry; a large α makes the
        # mixture dominate and the asymmetry fades, so no direction is claimed then.
        return "reverse" if self.params.alpha <= SKEW_DIRECTION_MAX_ALPHA else None

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.skew_rkl(chunk.teacher_logprobs(), chunk.student_logprobs(), self.params.alpha)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        a, ps, pt = self.params.alpha, R.probs(student_logits), R.probs(teacher_logits)
        return R.kl(ps, a * ps + (1 - a) * pt)
