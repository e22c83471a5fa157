"""``veto``: on-policy distillation toward an adaptive geometric target (Veto).

Target (constant w.r.t. gradients):  log q = log_softmax(log p_T + β · stopgrad(log p_S)),
i.e. q ∝ p_T · p_S^β, a geometric bridge between teacher and student in logit space.

* direction = "forward": loss_t = KL(q || p_S). Gradient w.r.t. student logits is p_S − q: where the
  student gives a token almost no mass, q is small too, so the exploding forward-KL gradient on
  low-confidence tokens is "vetoed".
* direction = "reverse": loss_t = KL(p_S || q) with q held constant; β acts as a decisiveness knob.

β is scheduled from ``beta_start`` to ``beta_end`` (linear / cosine / constant); at β = 0 the
objective is exactly on-policy forward (resp. reverse) KL. y ~ student.
Reference: Jang et al., "Stable On-Policy Distillation through Adaptive Target Reformulation",
arXiv:2601.07155, 2026.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from objectives import divergences as D
from objectives._common import student_logp, teacher_logp
from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    SequenceSource,
    TeacherSignal,
    register_objective,
    schedule_progress,
)


class VetoParams(ObjectiveParams):
    direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(q || p_S); reverse: KL(p_S || q), q constant"
    )
    beta_start: float = Field(0.8, ge=0.0, le=10.0, description="β at the first optimizer step")
    beta_end: float = Field(0.0, ge=0.0, le=10.0, description="β at the last optimizer step")
    beta_schedule: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="how β moves from beta_start to beta_end (constant: stays at beta_start)"
    )


@register_objective
class Veto(Objective):
    """KL between the student and the geometric target q ∝ p_T · p_S^β (β scheduled)."""

    name = "veto"
    description = "KL to the target q ∝ p_T·p_S^β (stop-grad), β scheduled; on student rollouts (Jang et al. 2026)."
    Params = VetoParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: VetoParams

    def beta_at(self, progress: float) -> float:
        """β at training progress in [0, 1]: exactly beta_start at 0 and beta_end at 1."""
        p, start, end = min(max(progress, 0.0), 1.0), self.params.beta_start, self.params.beta_end
        if self.params.beta_schedule == "constant":
            return start
        if self.params.beta_schedule == "linear":
            return (1.0 - p) * start + p * end
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))

    def schedule(self, step: int, total_steps: int) -> dict[str, float]:
        return {"beta": self.beta_at(schedule_progress(step, total_steps))}

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        # Plain forward/reverse KL only once β reaches 0 at the end of the schedule.
        return self.params.direction if self.beta_at(1.0) == 0.0 else None

    def teacher_is_fixed_point(self, sched: dict[str, float]) -> bool:
        # For β > 0 the fixed point is p_S ∝ p_T^(1/(1−β)), a sharpened teacher, not p_T.
        return float(sched.get("beta", self.params.beta_start)) == 0.0

    def target_logp(self, teacher_lp: Tensor, student_lp: Tensor, beta: float) -> Tensor:
        """log q = log_softmax(log p_T + β·stopgrad(log p_S)); exactly log p_T at β = 0."""
        if beta == 0.0:
            return teacher_lp
        return torch.log_softmax(teacher_lp + beta * student_lp.detach(), dim=-1)

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        beta = float(sched.get("beta", self.params.beta_start))
        ls = student_logp(chunk)
        lq = self.target_logp(teacher_logp(chunk, self.name), ls, beta)
        if self.params.direction == "forward":
            return D.kl_divergence(lq, ls)
        return D.kl_divergence(ls, lq)
