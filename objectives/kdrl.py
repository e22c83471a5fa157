"""``kdrl``: a GRPO-style task-reward term and reverse KL to the teacher in one policy-gradient loss.

For each prompt the stage samples a group of ``n_samples`` rollouts, scores them with the task's
reward (GSM8K answer match, HumanEval sandboxed tests) and gives every token of rollout i the
group-normalized advantage A_i. With ρ_t = p_θ(y_t) / p_behaviour(y_t):
    loss_t = −min(ρ_t·A_i, clip(ρ_t, 1−ε, 1+ε)·A_i) + β · KL_t
where KL_t estimates KL(p_θ || p_T) at position t:
    full: Σ_v p_θ(v) (log p_θ(v) − log p_T(v))         (exact; needs the teacher's full logits)
    k2:   ½ (log p_θ(y_t) − log p_T(y_t))²              (sampled token only)
    k3:   exp(log p_T(y_t) − log p_θ(y_t)) − (log p_T(y_t) − log p_θ(y_t)) − 1
Reference: Xu et al., "KDRL: Post-Training Reasoning LLMs via Unified Knowledge Distillation and
Reinforcement Learning", arXiv:2506.02208, 2025.

The abstract says the paper compares KL approximations, KL coefficients and reward-guided KD
strategies without naming the winners here: the estimator, β and the clip range are parameters;
reward-guided KD masking is not implemented. In this stage the policy is updated once per rollout
batch, so ρ_t = 1 in value (its gradient is ∇log p_θ); the clip matters only with
``rollout_precision: bf16`` (behaviour log-probs are the fp32 student's, see harness/training/rows.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
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


class KDRLParams(ObjectiveParams):
    n_samples: int = Field(4, ge=2, le=64, description="rollouts per prompt (the GRPO group)")
    kl_coef: float = Field(0.1, ge=0.0, le=100.0, description="β: weight of the reverse-KL term")
    kl_estimator: Literal["full", "k2", "k3"] = Field(
        "full", description="full: exact reverse KL (full teacher logits); k2/k3: sampled-token estimators")
    clip_eps: float = Field(0.2, gt=0.0, lt=1.0, description="ε of the PPO/GRPO ratio clip")


def clipped_surrogate(logp: Tensor, behaviour: Tensor, advantage: Tensor, lo: float, hi: float) -> Tensor:
    """−min(ρ·A, clip(ρ, lo, hi)·A) with ρ = exp(logp − behaviour) (behaviour and A constant)."""
    ratio = torch.exp(logp - behaviour.detach())
    adv = advantage.detach().to(logp.dtype)
    return -torch.minimum(ratio * adv, ratio.clamp(lo, hi) * adv)


def require_rows(chunk: LossChunk, name: str) -> tuple[Tensor, Tensor]:
    if chunk.advantage is None or chunk.behaviour_logprobs is None:
        raise ObjectiveError(f"objective {name!r} needs per-row advantages and behaviour log-probs "
                             "(the training stage provides them from the task reward)")
    return chunk.advantage, chunk.behaviour_logprobs


@register_objective
class KDRL(Objective):
    """GRPO clipped surrogate on the task reward plus β × reverse KL to the teacher."""

    name = "kdrl"
    description = ("GRPO-style task-reward policy gradient (group-normalized advantages, clipped ratio) plus "
                   "β·reverse KL to the teacher, in one loss (Xu et al. 2025).")
    Params = KDRLParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    nonnegative_loss = False
    params: KDRLParams

    def required_teacher_signal(self) -> TeacherSignal:
        return TeacherSignal.FULL_LOGITS if self.params.kl_estimator == "full" else TeacherSignal.SAMPLED_LOGPROBS

    def n_samples(self) -> int:
        return self.params.n_samples

    def uses_reward(self) -> bool:
        return True

    def uses_behaviour_logprobs(self) -> bool:
        return True

    def teacher_is_fixed_point(self, sched: dict[str, float]) -> bool:
        return False  # the reward term moves the student even when it matches the teacher

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        advantage, behaviour = require_rows(chunk, self.name)
        ls = chunk.student_logprobs()
        ls_y = D.token_logprob(ls, chunk.targets)
        eps = self.params.clip_eps
        pg = clipped_surrogate(ls_y, behaviour, advantage, 1.0 - eps, 1.0 + eps)
        if self.params.kl_estimator == "full":
            kl = D.reverse_kl(chunk.teacher_logprobs(), ls)
        else:
            if chunk.teacher_target_logprobs is None:
                raise ObjectiveError(f"objective {self.name!r} needs teacher log-probs of the sampled tokens")
            log_ratio = D.upcast(chunk.teacher_target_logprobs) - ls_y  # log p_T(y) − log p_θ(y)
            kl = 0.5 * log_ratio.square() if self.params.kl_estimator == "k2" else torch.expm1(log_ratio) - log_ratio
        return pg + self.params.kl_coef * kl

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        ps, pt = R.probs(student_logits), R.probs(teacher_logits)
        lps_y, lpt_y = torch.log(R.at_targets(ps, targets)), torch.log(R.at_targets(pt, targets))
        pg = R.ppo_clip(lps_y, rows.behaviour_logprobs, rows.advantage, self.params.clip_eps)
        est = self.params.kl_estimator
        if est == "full":
            kl = R.kl(ps, pt)
        elif est == "k2":
            kl = 0.5 * (lps_y - lpt_y) ** 2
        else:
            kl = torch.exp(lpt_y - lps_y) - (lpt_y - lps_y) - 1
        return pg + self.params.kl_coef * kl
