"""``onpolicy_fkl``: forward KL on student-generated sequences.

loss_t = KL(p_T || p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v)), y ~ student.
Reference: Agarwal et al., "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes" (GKD), ICLR 2024 — the λ = 1, β = 0 corner.
"""

from __future__ import annotations

from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class OnPolicyFKL(Objective):
    """Mass-covering KL to the teacher on the student's own rollouts."""

    name = "onpolicy_fkl"
    description = "Forward KL(p_T || p_S), full vocabulary, on student-generated responses."
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    divergence_direction = "forward"

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.forward_kl(chunk.teacher_logprobs(), chunk.student_logprobs())

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return R.kl(R.probs(teacher_logits), R.probs(student_logits))  # KL(p_T || p_S)
