"""``supervised_kd``: token-level KD on ground-truth sequences (word-level KD).

loss_t = KL(p_T(·|y_<t) || p_S(·|y_<t)) = Σ_v p_T(v) (log p_T(v) − log p_S(v)), y = ground truth.
Reference: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (temperature 1).
"""

from __future__ import annotations

from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class SupervisedKD(Objective):
    """Forward KL to the teacher's full distribution on ground-truth prefixes."""

    name = "supervised_kd"
    description = "Forward KL(p_T || p_S) over the full vocabulary on ground-truth responses."
    source = SequenceSource.GROUND_TRUTH
    teacher_signal = TeacherSignal.FULL_LOGITS
    divergence_direction = "forward"

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.forward_kl(chunk.teacher_logprobs(), chunk.student_logprobs())

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return R.kl(R.probs(teacher_logits), R.probs(student_logits))  # KL(p_T || p_S)
