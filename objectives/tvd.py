"""``tvd``: total variation distance on student-generated sequences.

loss_t = ½ Σ_v |p_T(v) − p_S(v)|, a bounded, symmetric divergence (in [0, 1]).
Reference: Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation"
(f-DISTILL), ACL 2023.
"""

from __future__ import annotations

from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class TVD(Objective):
    """Total variation distance between teacher and student next-token distributions."""

    name = "tvd"
    description = "Total variation ½·Σ|p_T − p_S| on student-generated responses (f-DISTILL)."
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.tvd(chunk.teacher_logprobs(), chunk.student_logprobs())

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return 0.5 * (R.probs(teacher_logits) - R.probs(student_logits)).abs().sum(-1)
