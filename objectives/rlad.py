"""``rlad``: RL-aware distillation — a trust-region likelihood-ratio objective anchored to a
teacher/old-policy mixture (TRRD), next to the GRPO term, on grouped student rollouts.

With the group-normalized task-reward advantage A_i of rollout i, behaviour (old-policy)
log-probs log π_old(y_t) and the teacher's log p_T(y_t):
    π_anchor(y_t) = α·p_T(y_t) + (1 − α)·π_old(y_t)
    ρ_anchor = π_θ(y_t) / π_anchor(y_t),   ρ_old = π_θ(y_t) / π_old(y_t)
    loss_t = −min(ρ_old·A, clip(ρ_old, 1−ε, 1+ε)·A)               (GRPO; include_grpo_term)
             − λ · min(ρ_anchor·A, clip(ρ_anchor, 1−ε, 1+ε)·A)      (TRRD, replacing a KL regularizer)
so imitation is advantage-aware (the teacher pulls only in the direction the reward favours) and
bounded by the trust region around the mixture anchor.
Reference: Zhang et al., "Reinforcement-aware Knowledge Distillation for LLM Reasoning",
arXiv:2602.22495, 2026.

The abstract fixes the shape (PPO/GRPO ratio anchored to a teacher–old-policy mixture, trust
region, advantage-aware) but not the mixture weight, whether the GRPO term stays, or the
clip range: α (``teacher_mix``), ``include_grpo_term``, λ (``trrd_coef``) and ε are parameters.
Only log p_T of the sampled tokens is needed.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

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
from objectives.kdrl import clipped_surrogate, require_rows


class RLADParams(ObjectiveParams):
    n_samples: int = Field(4, ge=2, le=64, description="rollouts per prompt (the GRPO group)")
    teacher_mix: float = Field(0.5, ge=0.0, le=1.0, description="α: teacher share of the anchor mixture")
    trrd_coef: float = Field(1.0, ge=0.0, le=100.0, description="λ: weight of the anchored ratio term")
    include_grpo_term: bool = Field(True, description="also keep the plain GRPO term (ratio to the old policy)")
    clip_eps: float = Field(0.2, gt=0.0, lt=1.0, description="ε of both trust regions")


def anchor_logprob(teacher_lp_y: Tensor, behaviour_lp_y: Tensor, alpha: float) -> Tensor:
    """log(α·p_T(y) + (1 − α)·π_old(y)), computed stably in log space (constant w.r.t. θ)."""
    if alpha == 0.0:
        return behaviour_lp_y
    if alpha == 1.0:
        return teacher_lp_y
    return torch.logaddexp(teacher_lp_y + math.log(alpha), behaviour_lp_y + math.log1p(-alpha))


@register_objective
class RLAD(Objective):
    """GRPO + a clipped likelihood ratio to the teacher/old-policy mixture, both advantage-weighted."""

    name = "rlad"
    description = ("RL-aware distillation (TRRD): GRPO plus a trust-region ratio objective anchored to the "
                   "mixture α·p_T + (1−α)·π_old, advantage-weighted (Zhang et al. 2026).")
    Params = RLADParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.SAMPLED_LOGPROBS
    nonnegative_loss = False
    params: RLADParams

    def n_samples(self) -> int:
        return self.params.n_samples

    def uses_reward(self) -> bool:
        return True

    def uses_behaviour_logprobs(self) -> bool:
        return True

    def teacher_is_fixed_point(self, sched: dict[str, float]) -> bool:
        return False

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        advantage, behaviour = require_rows(chunk, self.name)
        p = self.params
        ls_y = D.token_logprob(chunk.student_logprobs(), chunk.targets)
        behaviour = D.upcast(behaviour).to(ls_y.dtype)
        t_y = D.upcast(chunk.teacher_target_logprobs).to(ls_y.dtype)
        lo, hi = 1.0 - p.clip_eps, 1.0 + p.clip_eps
        loss = p.trrd_coef * clipped_surrogate(ls_y, anchor_logprob(t_y, behaviour, p.teacher_mix), advantage, lo, hi)
        if p.include_grpo_term:
            loss = loss + clipped_surrogate(ls_y, behaviour, advantage, lo, hi)
        return loss

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        p = self.params
        lps_y = torch.log(R.at_targets(R.probs(student_logits), targets))
        pt_y = R.at_targets(R.probs(teacher_logits), targets)
        beh, adv = rows.behaviour_logprobs, rows.advantage
        anchor = torch.log(p.teacher_mix * pt_y + (1 - p.teacher_mix) * torch.exp(beh))  # log(α·p_T + (1−α)·π_old)
        out = p.trrd_coef * R.ppo_clip(lps_y, anchor, adv, p.clip_eps)
        if p.include_grpo_term:
            out = out + R.ppo_clip(lps_y, beh, adv, p.clip_eps)
        return out
