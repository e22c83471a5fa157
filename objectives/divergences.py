"""Per-position divergence math, written once and shared by the dense and chunked loss paths.

Every function takes log-probabilities of shape [N, V] (already log-softmaxed) and returns one
value per position, shape [N]. Inputs below fp32 (bf16, fp16) are upcast to fp32; fp64 stays fp64
(used by reference checks). Conventions: ``teacher_logp`` = log p_T, ``student_logp`` = log p_S.

Numerics (why the formulas look the way they do):

* KL(P||Q) is evaluated in its "generalized" form  Σ_v [q_v − p_v − p_v·log(q_v/p_v)], which equals
  Σ p log(p/q) because both distributions sum to one, but whose terms are ≥ 0 termwise: for p > 0
  the term is p·expm1(L) − p·L with L = log q − log p, and expm1(L) ≥ L survives rounding. The
  naive sum of mixed-sign terms comes out slightly negative in fp32 for nearly equal inputs
  (e.g. upcast bf16); this form cannot (beyond a last-bit rounding, removed by clamping the
  per-position value at 0). It is exactly 0, with exactly 0 gradient, when P = Q bitwise.
  For L > 20 the term is evaluated as q − p − p·L (expm1 would overflow). Where p = 0 the term
  is q (the p → 0 limit), so no q-mass is lost when p underflows.
* The KL has an analytic backward and recomputes its intermediates there, so the dense path does
  not keep a dozen [N, V] tensors alive until backward.
* −inf log-probabilities (masked tokens): exp() gives exactly 0; log ratios are masked where p = 0
  and clamped at −1e30 where q = 0, and mixture inputs are clamped at −1e30, so no inf − inf or
  0·inf reaches a gradient. A consequence: KL(P||Q) with q = 0 where p > 0 is a huge finite
  number (~1e30·p), not inf.
* Mixtures (skew KL, JSD) never form log M − log P by subtraction: log(M/P) is computed as
  logaddexp(log w, log(1−w) + log(O/P)), which stays accurate when the mixture weight is tiny.
  This is what keeps the β(1−β)-normalized JSD accurate near β = 0 and β = 1.
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
_EXPM1_SWITCH = 20.0  # above this, p*expm1(L) is evaluated as q - p (no overflow)


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


def _mass_and_ratio(lp: Tensor, lq: Tensor, log_ratio: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """p, the mask p > 0, and L = log(q/p) made finite (0 where p = 0, ≥ −1e30 elsewhere)."""
    p = lp.exp()  # −inf → exactly 0
    has_mass = p > 0
    L = lq - lp if log_ratio is None else log_ratio.clone()
    # L is nan/inf only where p = 0 (unused there) or q = 0 (KL infinite: keep it finite).
    L.masked_fill_(~has_mass, 0.0).clamp_min_(_NEG_LOGP)
    return p, has_mass, L


class _GeneralizedKL(torch.autograd.Function):
    """Σ_v [q − p − p·L] per position, L = log(q/p); value ≥ 0 termwise, analytic backward.

    Saves only its inputs and recomputes the rest in backward, and works in place where it can,
    so the dense path does not keep a dozen [N, V] intermediates alive.
    """

    @staticmethod
    def forward(ctx, p_logp: Tensor, q_logp: Tensor, log_ratio: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(p_logp, q_logp, log_ratio)
        p, has_mass, L = _mass_and_ratio(p_logp, q_logp, log_ratio)
        accurate = (L <= _EXPM1_SWITCH) & has_mass
        del has_mass
        # p>0, L moderate: p·expm1(L) − p·L (≥ 0 after rounding since expm1(L) ≥ L);
        # p>0, L large: q − p − p·L (expm1 would overflow); p = 0: q (then p·L = 0).
        # In-place steps keep the number of live [N, V] temporaries at four.
        term = L.clamp_max(_EXPM1_SWITCH).expm1_().mul_(p)
        q_minus_p = q_logp.exp().sub_(p)  # equals q where p = 0
        torch.where(accurate, term, q_minus_p, out=term)
        del q_minus_p
        term.addcmul_(p, L, value=-1.0)
        return term.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        p_logp, q_logp, log_ratio = ctx.saved_tensors
        need_p, need_q, need_r = ctx.needs_input_grad
        p, has_mass, L = _mass_and_ratio(p_logp, q_logp, log_ratio)
        g = grad.unsqueeze(-1)
        g_lp = g_lq = g_r = None
        if log_ratio is None:
            # L = lq − lp: ∂/∂lp = −p·L, ∂/∂lq = q − p (exactly 0 when P = Q bitwise).
            if need_p:
                g_lp = (p * L).mul_(-g)
            if need_q:
                g_lq = q_logp.exp().sub_(p).mul_(g)
            return g_lp, g_lq, None
        # L is an independent input (computed accurately by the caller). Per branch:
        #   p>0, moderate: term = p·expm1(L) − p·L → ∂lp = p·expm1(L) − p·L, ∂lq = 0, ∂L = p·expm1(L)
        #   p>0, large:    term = q − p − p·L      → ∂lp = −p − p·L,         ∂lq = q, ∂L = −p
        #   p = 0:         term = q                → ∂lp = 0,                ∂lq = q, ∂L = 0
        accurate = (L <= _EXPM1_SWITCH) & has_mass
        d_L = L.clamp_max(_EXPM1_SWITCH).expm1_().mul_(p)
        torch.where(accurate | ~has_mass, d_L, -p, out=d_L)
        if need_p:
            g_lp = d_L.addcmul(p, L, value=-1.0).mul_(g)
        if need_q:
            g_lq = q_logp.exp().masked_fill_(accurate, 0.0).mul_(g)
        if need_r:
            g_r = d_L.mul_(g)
        return g_lp, g_lq, g_r


def _generalized_kl(p_logp: Tensor, q_logp: Tensor, log_ratio: Tensor | None = None) -> Tensor:
    """Σ_v [q − p − p·L], L = log(q/p) (given accurately by the caller, or lq − lp); ≥ 0."""
    return _GeneralizedKL.apply(p_logp, q_logp, log_ratio).clamp_min(0)


def kl_divergence(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """KL(P || Q) = Σ p (log p − log q) per position, ≥ 0."""
    return _generalized_kl(upcast(p_logp), upcast(q_logp))


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
    log_m = torch.logaddexp(log_w + lp, log_1mw + lo)
    return _generalized_kl(lp, log_m, log_ratio)


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
    return (-(lp.exp() * lp)).sum(-1).clamp_min(0)
