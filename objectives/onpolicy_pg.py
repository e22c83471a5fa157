"""``onpolicy_pg``: sampled-token reverse-KL policy gradient with a closed-form baseline (vOPD).

On student samples y_t, with stop-gradient reward and baseline:
    r_t = log p_T(y_t) − log p_S(y_t)
    b_t = E_{y~p_S}[log p_T(y) − log p_S(y)] = −KL(p_S || p_T)   (closed form, this position)
    loss_t = −(r_t − b_t) · log p_S(y_t)
E_{y_t~p_S}[∇loss_t] = ∇ KL(p_S || p_T): the same expected gradient as exact reverse KL, but each
token only needs log p_T(y_t) (with ``baseline: none``) or one teacher forward (closed form).
The per-token value is a surrogate, not a divergence, and can be negative.
Reference: Oh et al., "KL for a KL: On-Policy Distillation with Control Variate Baseline" (vOPD),
arXiv:2605.07865, 2026.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
import torch
from torch import Tensor

from harness.errors import ObjectiveError
from objectives import divergences as D
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


class OnPolicyPGParams(ObjectiveParams):
    baseline: Literal["closed_form", "none"] = Field(
        "closed_form",
        description="closed_form: b_t = −KL(p_S||p_T) (needs full teacher logits); none: b_t = 0 "
        "(needs only log p_T of the sampled tokens)",
    )


@register_objective
class OnPolicyPG(Objective):
    """REINFORCE on the per-token log-ratio reward, variance-reduced by the per-position value."""

    name = "onpolicy_pg"
    description = "Sampled-token reverse-KL policy gradient with closed-form baseline −KL(p_S||p_T) (vOPD)."
    Params = OnPolicyPGParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    nonnegative_loss = False
    params: OnPolicyPGParams

    def required_teacher_signal(self) -> TeacherSignal:
        if self.params.baseline == "none":
            return TeacherSignal.SAMPLED_LOGPROBS
        return TeacherSignal.FULL_LOGITS

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        ls = chunk.student_logprobs()
        ls_y = D.token_logprob(ls, chunk.targets)
        if self.params.baseline == "closed_form":
            lt = chunk.teacher_logprobs()
            lt_y = D.token_logprob(lt, chunk.targets)
            baseline = -D.reverse_kl(lt, ls.detach())
        else:
            if chunk.teacher_target_logprobs is None:
                raise ObjectiveError(f"objective {self.name!r} needs teacher_target_logprobs in the chunk")
            lt_y = D.upcast(chunk.teacher_target_logprobs)
            baseline = 0.0
        advantage = (lt_y - ls_y).detach() - baseline
        return -advantage * ls_y

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        ps, pt = R.probs(student_logits), R.probs(teacher_logits)
        log_ps_y, log_pt_y = torch.log(R.at_targets(ps, targets)), torch.log(R.at_targets(pt, targets))
        baseline = -R.kl(ps, pt).detach() if self.params.baseline == "closed_form" else 0.0
        reward = (log_pt_y - log_ps_y).detach()
        return -(reward - baseline) * log_ps_y  # REINFORCE: −(r − b)·log p_S(y)
