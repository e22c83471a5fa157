"""``sod``: step-wise on-policy distillation — distillation strength reweighted per step by its divergence.

The completion is split into steps at ``step_delimiter`` (contract v2 segments). Each token's
divergence d_t = KL(p_S || p_T) is computed without gradient (``token_stats``); a step's divergence
is the mean over its tokens, D_s. Steps the student has drifted far from the teacher on get less
weight, so misleading teacher signal after an early error is attenuated while well-aligned steps
keep dense guidance:
    w_s = exp(−D_s / temperature)            (weighting = "exp")
    w_s = 1 / (1 + D_s / temperature)        (weighting = "inverse")
then (``normalize``) rescaled so the mean weight over the step's rows is 1 (the update size stays
comparable to plain on-policy KL), and capped at ``max_weight``. loss_t = w_{s(t)} · KL(p_S||p_T).
Reference: Zhong et al., "SOD: Step-wise On-policy Distillation for Small Language Model Agents",
arXiv:2605.07725, 2026.

ADAPTATION: the paper's steps are tool-call steps of tool-integrated reasoning; this harness has
no tools, so steps are text reasoning steps split at a delimiter (default: newline). The weighting
function's form is not given in the abstract: both forms above and every constant are parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from objectives import divergences as D
from objectives._rows import grouped_mean, segment_keys
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


class SODParams(ObjectiveParams):
    step_delimiter: str = Field("\n", min_length=1, description="text that ends a reasoning step")
    weighting: Literal["exp", "inverse"] = Field("exp", description="w = exp(−D/τ) or 1/(1 + D/τ)")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="τ: the step divergence (nats) scale")
    normalize: bool = Field(True, description="rescale weights to mean 1 over the optimizer step's rows")
    max_weight: float = Field(5.0, gt=0.0, le=100.0, description="cap on a step's weight after normalization")


@register_objective
class SOD(Objective):
    """Reverse KL per token, weighted per reasoning step by a decreasing function of the step's divergence."""

    name = "sod"
    description = ("Step-wise on-policy distillation: reverse KL weighted per step by exp(−step divergence/τ); "
                   "steps are text reasoning steps split at a delimiter, an adaptation of the paper's tool-call "
                   "steps (Zhong et al. 2026).")
    Params = SODParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    divergence_direction = "reverse"
    params: SODParams

    def segment_delimiter(self) -> str | None:
        return self.params.step_delimiter

    def token_stats(self, chunk: LossChunk, sched: dict[str, float]) -> dict[str, Tensor]:
        ls, lt = chunk.student_logprobs().detach(), chunk.teacher_logprobs()
        return {"divergence": D.reverse_kl(lt, ls)}

    def row_weights(self, stats: dict[str, Tensor], seq_id: Tensor, segment_id: Tensor) -> Tensor:
        p = self.params
        step_div = grouped_mean(stats["divergence"], segment_keys(seq_id, segment_id)).clamp_min(0)
        w = torch.exp(-step_div / p.temperature) if p.weighting == "exp" else 1.0 / (1.0 + step_div / p.temperature)
        if p.normalize and w.numel():
            w = w / w.mean()
        return w.clamp_max(p.max_weight).to(torch.float32)

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        return D.reverse_kl(chunk.teacher_logprobs(), chunk.student_logprobs())

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        # the step weights are applied by the engine, outside per_token_loss
        return R.kl(R.probs(student_logits), R.probs(teacher_logits))  # KL(p_S || p_T)
