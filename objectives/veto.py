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
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from objectives import conformance as kit
from objectives import divergences as D
from objectives import reference as R
from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    RowInfo,
    SequenceSource,
    TeacherSignal,
    get_objective,
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
        ls = chunk.student_logprobs()
        lq = self.target_logp(chunk.teacher_logprobs(), ls, beta)
        if self.params.direction == "forward":
            return D.kl_divergence(lq, ls)
        return D.kl_divergence(ls, lq)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        beta = sched.get("beta", self.params.beta_start)
        ps = R.probs(student_logits)
        q = R.probs(torch.log(R.probs(teacher_logits)) + beta * torch.log(ps).detach())  # q ∝ p_T·p_S^β
        return R.kl(q, ps) if self.params.direction == "forward" else R.kl(ps, q)

    def conformance_checks(self) -> list[Callable[[Objective], Any]]:
        return [check_beta0_equals_kl, check_forward_gradient]


# -- checks of properties only Veto has (run by objectives.conformance after the generic ones) --------
def _variant(obj: Objective, **update: Any) -> Objective:
    return type(obj)(obj.params.model_copy(update=update))


def check_beta0_equals_kl(obj: Objective) -> kit.CheckResult:
    """Veto at β = 0 is exactly onpolicy_fkl (forward) / onpolicy_rkl (reverse): loss and gradient."""
    name = "veto_beta0_equals_kl"

    def run() -> kit.CheckResult:
        n, v = 10, 31
        s0, t, y = kit.synthetic_case(n, v, 71)
        problems = []
        for direction, plain_name in (("forward", "onpolicy_fkl"), ("reverse", "onpolicy_rkl")):
            veto = _variant(obj, direction=direction)
            plain = get_objective(plain_name)()
            s1, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
            a = kit.per_token(veto, {"beta": 0.0}, s1, t, y)
            b = kit.per_token(plain, {}, s2, t, y)
            (ga,) = torch.autograd.grad(a.sum(), s1)
            (gb,) = torch.autograd.grad(b.sum(), s2)
            if not torch.equal(a, b):
                problems.append(f"{direction}: loss differs from {plain_name} by {kit.max_diff(a, b):.3g}")
            if not torch.equal(ga, gb):
                problems.append(f"{direction}: gradient differs from {plain_name} by {kit.max_diff(ga, gb):.3g}")
        return kit.outcome(name, problems)

    return kit.guarded(name, run)


def check_forward_gradient(obj: Objective) -> kit.CheckResult:
    """Forward Veto: d(Σ loss)/d(student logits) = p_S − q with q = softmax(log p_T + β log p_S)."""
    name = "veto_forward_gradient"

    def run() -> kit.CheckResult:
        veto = _variant(obj, direction="forward")
        n, v = 10, 31
        s, t, y = kit.synthetic_case(n, v, 81)
        s.requires_grad_()
        problems = []
        for beta in (0.0, 0.5, 0.8, 1.7):
            loss = kit.per_token(veto, {"beta": beta}, s, t, y)
            (g,) = torch.autograd.grad(loss.sum(), s)
            with torch.no_grad():
                ls = torch.log_softmax(s.double(), -1)
                q = torch.softmax(torch.log_softmax(t.double(), -1) + beta * ls, -1)
                expected = ls.exp() - q
            if not kit.all_close(g, expected, 1e-5, 1e-6):
                problems.append(f"beta={beta}: gradient differs from p_S − q by {kit.max_diff(g, expected):.3g}")
        return kit.outcome(name, problems)

    return kit.guarded(name, run)
