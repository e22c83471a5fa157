"""Per-position divergence math, written once and shared by the dense and chunked loss paths.

Every function takes log-probabilities of shape [N, V] (already log-softmaxed) and returns one
value per position, shape [N]. Inputs below fp32 (bf16, fp16) are upcast to fp32; fp64 stays fp64
(used by reference checks). Conventions: ``teacher_logp`` = log p_T, ``student_logp`` = log p_S.

Numerics (why the formulas look the way they do):

* KL(P||Q) of two normalized distributions is the direct sum Σ p·(log p − log q), one fused
  row dot product (the loss path is memory-bound; this is ~4 passes over [N, V] where a termwise
  form costs ~15). It is exactly 0 when P = Q bitwise; rows of nearly equal distributions (e.g.
  upcast bf16) can round a last bit below 0, so every per-position value is clamped at 0.
* Mixtures (skew KL, JSD): KL(P||M) = −Σ p·log(M/P), and log(M/P) is never formed as
  log M − log P by subtraction: it is logaddexp(log w, log(1−w) + log(O/P)), accurate to its own
  size even when the mixture weight is tiny. The rounding error of the sum is then ~eps times
  the value's scale, which keeps the β(1−β)-normalized JSD accurate near β = 0 and β = 1
  (tested against fp64 down to β = 1e-6).
* The plain KL has an analytic backward and recomputes p and q there, so the dense path does
  not keep [N, V] intermediates alive until backward.
* −inf log-probabilities (masked tokens) are clamped at −1e30: exp() gives exactly 0 and no
  inf − inf or 0·inf reaches a value or a gradient. A consequence: KL(P||Q) with q = 0 where
  p > 0 is a huge finite number (~1e30·p), not inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "entropy",
    "forward_kl",
    "generalized_jsd",
    "kl_divergence",
    "log_probs",
    "mixture_kl",
    "reverse_kl",
    "skew_kl",
    "skew_rkl",
    "token_logprob",
    "tvd",
    "upcast",
]

_NEG_LOGP = -1e30  # stands in for -inf: exp() is exactly 0, differences stay finite


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (bf16/fp16 → fp32; fp32/fp64 unchanged)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _safe_logp(logp: Tensor) -> Tensor:
    return upcast(logp).clamp_min(_NEG_LOGP)


def log_probs(logits: Tensor) -> Tensor:
    """log-softmax over the last dimension, computed in at least fp32."""
    return torch.log_softmax(upcast(logits), dim=-1)


def token_logprob(logp: Tensor, targets: Tensor) -> Tensor:
    """log p(target) at each position: [N, V], [N] → [N]."""
    return upcast(logp).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a·b per row, [N, V] × [N, V] → [N], without an [N, V] product temporary.

    (linalg.vecdot measured 1.3x faster than (a * b).sum(-1) and 4x faster than a batched GEMV
    on [64, 49152] fp32 rows, one CPU thread.)
    """
    return torch.linalg.vecdot(a, b)


class _KL(torch.autograd.Function):
    """KL(P||Q) = Σ p·(log p − log q) per position for log-probabilities, with an analytic backward.

    Saves only its inputs and recomputes p and q in backward, so the dense path does not keep
    [N, V] intermediates alive until backward.
    """

    @staticmethod
    def forward(ctx, p_logp: Tensor, q_logp: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(p_logp, q_logp)
        lp = p_logp.clamp_min(_NEG_LOGP)  # −inf (masked token): p = 0 and no 0·inf below
        return row_dot(lp.exp(), lp - q_logp.clamp_min(_NEG_LOGP))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        p_logp, q_logp = ctx.saved_tensors
        need_p, need_q = ctx.needs_input_grad
        g = grad.unsqueeze(-1)
        g_lp = g_lq = None
        if need_p:  # ∂/∂lp = p·(lp − lq + 1); the constant +p vanishes in log-softmax's backward
            lp = p_logp.clamp_min(_NEG_LOGP)
            g_lp = (lp - q_logp.clamp_min(_NEG_LOGP)).add_(1.0).mul_(lp.exp()).mul_(g)
        if need_q:  # the usual case (P is the teacher): ∂/∂lq = −p, written as q − p (equal after
            # log-softmax's backward, and exactly 0 when P = Q bitwise)
            g_lq = q_logp.exp().sub_(p_logp.exp()).mul_(g)
        return g_lp, g_lq


def kl_divergence(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """KL(P || Q) = Σ p (log p − log q) per position, ≥ 0."""
    return _KL.apply(upcast(p_logp), upcast(q_logp)).clamp_min(0)


def forward_kl(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """KL(p_T || p_S) = Σ p_T (log p_T − log p_S): mass-covering (punishes missed teacher mass)."""
    return kl_divergence(teacher_logp, student_logp)


def reverse_kl(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """KL(p_S || p_T) = Σ p_S (log p_S − log p_T): mode-seeking (punishes extra student mass)."""
    return kl_divergence(student_logp, teacher_logp)


def mixture_kl(p_logp: Tensor, other_logp: Tensor, weight: float) -> Tensor:
    """KL(P || M) with M = weight·P + (1 − weight)·O, for weight in [0, 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"mixture weight must be in [0, 1), got {weight}")
    if weight == 0.0:
        return kl_divergence(p_logp, other_logp)  # exactly the plain KL
    lp, lo = _safe_logp(p_logp), _safe_logp(other_logp)
    log_w, log_1mw = math.log(weight), math.log1p(-weight)
    # log(M/P) = log(w + (1-w)·O/P), accurate even when w or 1-w is tiny.
    log_ratio = torch.logaddexp(lp.new_tensor(log_w), log_1mw + (lo - lp))
    # KL(P||M) = −Σ p·log(M/P). Each term is accurate to its own size (the log ratio is never a
    # difference of two large logs), so the rounding error is ~eps·Σ p·|log(M/P)|, which is
    # O(eps·(1 − w)): small next to the value even after the JSD divides it by a mixture weight.
    return (-row_dot(lp.exp(), log_ratio)).clamp_min(0)


def skew_kl(teacher_logp: Tensor, student_logp: Tensor, alpha: float) -> Tensor:
    """Skew KL (DistiLLM): KL(p_T || α·p_T + (1−α)·p_S); α = 0 is forward KL."""
    return mixture_kl(teacher_logp, student_logp, alpha)


def skew_rkl(teacher_logp: Tensor, student_logp: Tensor, alpha: float) -> Tensor:
    """Skew reverse KL (DistiLLM): KL(p_S || α·p_S + (1−α)·p_T); α = 0 is reverse KL."""
    return mixture_kl(student_logp, teacher_logp, alpha)


def generalized_jsd(teacher_logp: Tensor, student_logp: Tensor, beta: float) -> Tensor:
    """Generalized JSD (TRL/GKD convention) normalized by β(1−β) so it is continuous in β.

    With M = β·p_T + (1−β)·p_S:  JSD_β = β·KL(p_T||M) + (1−β)·KL(p_S||M), and this returns
    JSD_β / (β(1−β)) = KL(p_T||M)/(1−β) + KL(p_S||M)/β.
    β = 0 gives exactly KL(p_T||p_S) (forward), β = 1 exactly KL(p_S||p_T) (reverse), which are the
    limits of the normalized value.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(teacher_logp, student_logp)
    if beta == 1.0:
        return reverse_kl(teacher_logp, student_logp)
    kl_t = mixture_kl(teacher_logp, student_logp, beta)  # M = β·T + (1−β)·S
    kl_s = mixture_kl(student_logp, teacher_logp, 1.0 - beta)  # same M, seen from S
    return kl_t / (1.0 - beta) + kl_s / beta


def tvd(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """Total variation distance ½ Σ |p_T − p_S| per position, in [0, 1]."""
    diff = _safe_logp(teacher_logp).exp() - _safe_logp(student_logp).exp()
    return 0.5 * diff.abs().sum(-1)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy −Σ p log p per position (nats), ≥ 0."""
    lp = _safe_logp(logp)
    return (-row_dot(lp.exp(), lp)).clamp_min(0)
