"""``sft``: supervised fine-tuning on ground-truth responses (the no-teacher baseline).

loss_t = −log p_S(y_t), y = ground-truth response tokens.
"""

from __future__ import annotations

from torch import Tensor

from objectives._common import cross_entropy
from objectives.base import LossChunk, Objective, SequenceSource, TeacherSignal, register_objective


@register_objective
class SFT(Objective):
    """Cross-entropy on the dataset's reference responses."""

    name = "sft"
    description = "Cross-entropy on ground-truth responses; no teacher (baseline)."
    source = SequenceSource.GROUND_TRUTH
    teacher_signal = TeacherSignal.NONE

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return cross_entropy(chunk)
