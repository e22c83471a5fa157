"""``sft``: supervised fine-tuning on ground-truth responses (the no-teacher baseline).

loss_t = −log p_S(y_t), y = ground-truth response tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives import reference as R
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, register_objective


@register_objective
class SFT(Objective):
    """Cross-entropy on the dataset's reference responses."""

    name = "sft"
    description = "Cross-entropy on ground-truth responses; no teacher (baseline)."
    source = SequenceSource.GROUND_TRUTH
    teacher_signal = TeacherSignal.NONE

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return -chunk.student_target_logprobs()

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        return -torch.log(R.at_targets(R.probs(student_logits), targets))  # −log p_S(y)
