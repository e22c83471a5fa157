"""objectives.divergences against hand-computed values, edge cases (−inf, underflow, bf16) and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from objectives import divergences as D
from objectives.conformance import single_threaded

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    with single_threaded():
        yield

P = [0.5, 0.5]
Q = [0.25, 0.75]


def lp(probs: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log-probabilities of one position, shape [1, V]."""
    return torch.tensor([probs], dtype=dtype).log()


def kl(p: list[float], q: list[float]) -> float:
    """KL(p||q) by hand."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# --- hand-computed tiny examples ------------------------------------------------------------
def test_forward_and_reverse_kl_hand_values() -> None:
    # teacher P = [.5, .5], student Q = [.25, .75]
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert D.forward_kl(lp(P), lp(Q)).item() == pytest.approx(fkl, abs=1e-12)
    assert D.reverse_kl(lp(P), lp(Q)).item() == pytest.approx(rkl, abs=1e-12)
    assert fkl == pytest.approx(0.1438410362, abs=1e-9)  # ½·ln 2 + ½·ln(2/3)
    assert rkl == pytest.approx(0.1308120353, abs=1e-9)  # ¼·ln ½ + ¾·ln(3/2)
    assert D.kl_divergence(lp(Q), lp(P)).item() == pytest.approx(rkl, abs=1e-12)


def test_tvd_and_entropy_hand_values() -> None:
    assert D.tvd(lp(P), lp(Q)).item() == pytest.approx(0.25, abs=1e-12)
    assert D.entropy(lp(P)).item() == pytest.approx(math.log(2), abs=1e-12)
    h_q = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert D.entropy(lp(Q)).item() == pytest.approx(h_q, abs=1e-12)


def test_skew_kl_hand_values() -> None:
    # skew KL: KL(T || .1 T + .9 S) = KL([.5,.5] || [.275, .725])
    assert D.skew_kl(lp(P), lp(Q), 0.1).item() == pytest.approx(kl(P, [0.275, 0.725]), abs=1e-12)
    # skew reverse KL: KL(S || .1 S + .9 T) = KL([.25,.75] || [.475, .525])
    assert D.skew_rkl(lp(P), lp(Q), 0.1).item() == pytest.approx(kl(Q, [0.475, 0.525]), abs=1e-12)
    # alpha = 0 is exactly the plain KL
    assert torch.equal(D.skew_kl(lp(P), lp(Q), 0.0), D.forward_kl(lp(P), lp(Q)))
    assert torch.equal(D.skew_rkl(lp(P), lp(Q), 0.0), D.reverse_kl(lp(P), lp(Q)))


def test_generalized_jsd_hand_value_and_normalization() -> None:
    # beta = .5: M = [.375, .625]; JSD = .5 KL(T||M) + .5 KL(S||M); normalized by .25
    m = [0.375, 0.625]
    jsd = 0.5 * kl(P, m) + 0.5 * kl(Q, m)
    assert D.generalized_jsd(lp(P), lp(Q), 0.5).item() == pytest.approx(jsd / 0.25, abs=1e-12)
    # beta = .2: M = .2 T + .8 S = [.3, .7]
    m = [0.3, 0.7]
    jsd = 0.2 * kl(P, m) + 0.8 * kl(Q, m)
    assert D.generalized_jsd(lp(P), lp(Q), 0.2).item() == pytest.approx(jsd / (0.2 * 0.8), abs=1e-12)


def test_generalized_jsd_endpoints_are_exactly_the_kls() -> None:
    t, s = torch.randn(5, 17).log_softmax(-1), torch.randn(5, 17).log_softmax(-1)
    assert torch.equal(D.generalized_jsd(t, s, 0.0), D.forward_kl(t, s))
    assert torch.equal(D.generalized_jsd(t, s, 1.0), D.reverse_kl(t, s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generalized_jsd_is_continuous_at_the_endpoints(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 33, generator=g).to(dtype).log_softmax(-1)
    s = torch.randn(8, 33, generator=g).to(dtype).log_softmax(-1)
    for end, sign in ((0.0, 1.0), (1.0, -1.0)):
        ref = D.generalized_jsd(t, s, end).double()
        epsilons = (1e-3, 1e-4, 1e-5, 1e-6)
        gaps = [float((D.generalized_jsd(t, s, end + sign * eps).double() - ref).abs().max()) for eps in epsilons]
        for a, b in zip(gaps, gaps[1:]):
            assert b < 0.2 * a + 1e-6, gaps  # shrinks ~linearly: continuous, accurate near the end
        assert gaps[-1] < 1e-3 * float(ref.max())


def test_invalid_mixture_weights_are_rejected() -> None:
    with pytest.raises(ValueError):
        D.generalized_jsd(lp(P), lp(Q), 1.5)
    with pytest.raises(ValueError):
        D.skew_kl(lp(P), lp(Q), 1.0)


# --- zeros, -inf and underflow -----------------------------------------------------------------
def test_identical_distributions_give_exact_zero_and_zero_gradient() -> None:
    z = (torch.randn(6, 50) * 4).requires_grad_()
    fns = [
        D.forward_kl,
        D.reverse_kl,
        lambda a, b: D.generalized_jsd(a, b, 0.3),
        lambda a, b: D.skew_kl(a, b, 0.1),
        lambda a, b: D.skew_rkl(a, b, 0.1),
        D.tvd,
    ]
    for fn in fns:
        s_lp = torch.log_softmax(z, -1)
        value = fn(s_lp.detach().clone(), s_lp)
        (grad,) = torch.autograd.grad(value.sum(), z)
        assert float(value.detach().abs().max()) < 1e-6
        assert float(grad.abs().max()) < 1e-6
    s_lp = torch.log_softmax(z, -1)
    assert torch.equal(D.forward_kl(s_lp.detach(), s_lp), torch.zeros(6))


def test_zero_probability_tokens_contribute_nothing_and_keep_gradients_finite() -> None:
    # teacher puts no mass on token 1 (logit -inf): KL([1, 0] || [.5, .5]) = log 2
    t = torch.tensor([[0.0, float("-inf")]]).log_softmax(-1)
    z = torch.zeros(1, 2, requires_grad=True)
    value = D.forward_kl(t, torch.log_softmax(z, -1))
    assert value.item() == pytest.approx(math.log(2), abs=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), z)
    assert torch.allclose(grad, torch.tensor([[-0.5, 0.5]]), atol=1e-6)
    # a masked student token (-inf logit) with zero teacher mass: finite value and gradient
    zs = torch.tensor([[0.3, float("-inf"), -0.2]], requires_grad=True)
    tt = torch.tensor([[0.1, float("-inf"), 0.4]]).log_softmax(-1)
    for fn in (D.forward_kl, D.reverse_kl, lambda a, b: D.generalized_jsd(a, b, 0.5), D.tvd,
               lambda a, b: D.skew_kl(a, b, 0.1), lambda a, b: D.skew_rkl(a, b, 0.1)):
        v = fn(tt, torch.log_softmax(zs, -1))
        (g,) = torch.autograd.grad(v.sum(), zs)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()
    assert D.entropy(torch.tensor([[0.0, float("-inf")]]).log_softmax(-1)).item() == 0.0


def test_underflowing_probability_does_not_drop_mass() -> None:
    # P = [1, e^-200] underflows to p = 0 in fp32; KL(P || [.5, .5]) is still log 2.
    p_lp = torch.tensor([[0.0, -200.0]]).log_softmax(-1)
    q_lp = torch.tensor([[0.5, 0.5]]).log()
    assert D.kl_divergence(p_lp, q_lp).item() == pytest.approx(math.log(2), abs=1e-6)


def test_large_log_ratio_branch_matches_fp64() -> None:
    # q/p up to e^60 exercises the branch that avoids expm1 overflow.
    t = torch.tensor([[0.0, -60.0, -30.0, 2.0]])
    s = torch.tensor([[0.0, 5.0, -1.0, 1.0]])
    for fn in (D.forward_kl, D.reverse_kl, lambda a, b: D.generalized_jsd(a, b, 0.7)):
        got = fn(t.log_softmax(-1), s.log_softmax(-1))
        want = fn(t.double().log_softmax(-1), s.double().log_softmax(-1))
        assert torch.allclose(got.double(), want, rtol=1e-5)
    want = sum(pi * (a - b) for pi, a, b in zip(t.double().softmax(-1)[0], t.double().log_softmax(-1)[0], s.double().log_softmax(-1)[0]))
    assert D.forward_kl(t.log_softmax(-1), s.log_softmax(-1)).item() == pytest.approx(float(want), rel=1e-5)


def test_zero_student_mass_under_teacher_mass_is_huge_but_finite() -> None:
    t = torch.tensor([[0.0, 0.0]]).log_softmax(-1)
    s = torch.tensor([[0.0, float("-inf")]]).log_softmax(-1)
    value = D.forward_kl(t, s)
    assert torch.isfinite(value).all() and value.item() > 1e20


# --- bf16 ------------------------------------------------------------------------------------------
def test_bf16_inputs_are_upcast_and_never_negative() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(128, 2048, generator=g) * 3
    fns = {
        "fkl": D.forward_kl,
        "rkl": D.reverse_kl,
        "jsd": lambda a, b: D.generalized_jsd(a, b, 0.5),
        "jsd_small_beta": lambda a, b: D.generalized_jsd(a, b, 1e-3),
        "skew": lambda a, b: D.skew_kl(a, b, 0.1),
        "skew_r": lambda a, b: D.skew_rkl(a, b, 0.1),
        "tvd": D.tvd,
    }
    for noise in (0.0, 1e-3, 1e-2):
        t16 = (base + noise * torch.randn(128, 2048, generator=g)).bfloat16()
        s16 = base.bfloat16()
        # log-softmax in bf16 (what a careless caller might pass) and upcast inside
        t_lp16, s_lp16 = torch.log_softmax(t16, -1), torch.log_softmax(s16, -1)
        for name, fn in fns.items():
            v = fn(t_lp16, s_lp16)
            assert v.dtype == torch.float32, name
            assert torch.isfinite(v).all(), name
            assert float(v.min()) >= 0.0, (name, noise, float(v.min()))
    assert D.entropy(torch.log_softmax(base.bfloat16(), -1)).dtype == torch.float32
    assert D.log_probs(base.bfloat16()).dtype == torch.float32


# --- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn",
    [
        D.forward_kl,
        D.reverse_kl,
        lambda a, b: D.generalized_jsd(a, b, 0.25),
        lambda a, b: D.skew_kl(a, b, 0.2),
        lambda a, b: D.skew_rkl(a, b, 0.2),
        D.tvd,
    ],
    ids=["fkl", "rkl", "jsd", "skew_kl", "skew_rkl", "tvd"],
)
def test_gradcheck_in_both_arguments(fn) -> None:
    g = torch.Generator().manual_seed(2)
    for scale in (1.0, 8.0, 40.0):  # 40: large log ratios (the overflow-safe branch)
        zt = (torch.randn(3, 7, generator=g, dtype=torch.float64) * scale).requires_grad_()
        zs = (torch.randn(3, 7, generator=g, dtype=torch.float64) * scale).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: fn(a.log_softmax(-1), b.log_softmax(-1)), (zt, zs))


def test_kl_gradient_is_p_student_minus_p_teacher() -> None:
    z = torch.randn(4, 9, requires_grad=True)
    t = torch.randn(4, 9).log_softmax(-1)
    (g,) = torch.autograd.grad(D.forward_kl(t, z.log_softmax(-1)).sum(), z)
    assert torch.allclose(g, z.softmax(-1) - t.exp(), atol=1e-6)


def test_token_logprob() -> None:
    logp = lp([0.1, 0.2, 0.7], torch.float32).repeat(2, 1)
    got = D.token_logprob(logp, torch.tensor([2, 0]))
    assert torch.allclose(got, torch.tensor([math.log(0.7), math.log(0.1)]))
