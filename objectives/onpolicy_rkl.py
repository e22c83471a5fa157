"""``onpolicy_rkl``: exact full-vocabulary reverse KL on student-generated sequences.

loss_t = KL(p_S || p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v)), y ~ student.
The exact per-position sum (not a sampled estimate): zero-variance gradient at each position.
References: Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024;
Agarwal et al. (GKD), ICLR 2024 — the λ = 1, β = 1 corner.
"""

from __future__ import annotations

from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class OnPolicyRKL(Objective):
    """Mode-seeking KL to the teacher on the student's own rollouts, summed over the vocabulary."""

    name = "onpolicy_rkl"
    description = "Exact reverse KL(p_S || p_T), full vocabulary, on student-generated responses."
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    divergence_direction = "reverse"

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.reverse_kl(chunk.teacher_logprobs(), chunk.student_logprobs())

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return R.kl(R.probs(student_logits), R.probs(teacher_logits))  # KL(p_S || p_T)
