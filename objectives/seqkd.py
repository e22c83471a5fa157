"""``seqkd``: sequence-level knowledge distillation.

loss_t = −log p_S(y_t), y ~ teacher (teacher-generated responses replace the references).
Reference: Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016.
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class SeqKD(Objective):
    """Cross-entropy on teacher-generated sequences (only the teacher's samples are used)."""

    name = "seqkd"
    description = "Cross-entropy on teacher-generated responses (sequence-level KD, Kim & Rush 2016)."
    source = SequenceSource.TEACHER
    teacher_signal = TeacherSignal.NONE

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return -chunk.student_target_logprobs()

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return -torch.log(R.at_targets(R.probs(student_logits), targets))  # −log p_S(y)
