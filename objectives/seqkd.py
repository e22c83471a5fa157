"""``seqkd``: sequence-level knowledge distillation.

loss_t = −log p_S(y_t), y ~ teacher (teacher-generated responses replace the references).
Reference: Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016.
"""

from __future__ import annotations

from torch import Tensor

from objectives._common import cross_entropy
from objectives.base import LossChunk, Objective, SequenceSource, TeacherSignal, register_objective


@register_objective
class SeqKD(Objective):
    """Cross-entropy on teacher-generated sequences (only the teacher's samples are used)."""

    name = "seqkd"
    description = "Cross-entropy on teacher-generated responses (sequence-level KD, Kim & Rush 2016)."
    source = SequenceSource.TEACHER
    teacher_signal = TeacherSignal.NONE

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return cross_entropy(chunk)
