"""Behaviour of each built-in objective on tiny hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import ObjectiveError
from objectives import divergences as D
from objectives.base import LossChunk, SequenceSource, TeacherSignal, build_objective, get_objective
from objectives.conformance import single_threaded
from objectives.engine import make_loss_chunk

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    with single_threaded():
        yield


def chunk_for(name: str, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, **params) -> tuple:
    obj = build_objective(name, params)
    return obj, make_loss_chunk(obj, s, t, y)


def probs_logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


# --- sources and signals ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, source, signal",
    [
        ("sft", SequenceSource.GROUND_TRUTH, TeacherSignal.NONE),
        ("seqkd", SequenceSource.TEACHER, TeacherSignal.NONE),
        ("supervised_kd", SequenceSource.GROUND_TRUTH, TeacherSignal.FULL_LOGITS),
        ("onpolicy_fkl", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("onpolicy_rkl", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("veto", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("skew_kl", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("skew_rkl", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("tvd", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
        ("onpolicy_pg", SequenceSource.STUDENT, TeacherSignal.FULL_LOGITS),
    ],
)
def test_sources_and_signals(name: str, source: SequenceSource, signal: TeacherSignal) -> None:
    obj = build_objective(name, {})
    assert obj.source_mix(0.0) == {source: 1.0} == obj.source_mix(1.0)
    assert obj.required_teacher_signal() is signal


def test_gkd_source_mix() -> None:
    S, G, T = SequenceSource.STUDENT, SequenceSource.GROUND_TRUTH, SequenceSource.TEACHER
    assert build_objective("gkd", {}).source_mix(0.3) == {S: 0.5, G: 0.5}
    assert build_objective("gkd", {"lmbda": 0.8, "seq_kd": True}).source_mix(0.3) == pytest.approx({S: 0.8, T: 0.2})
    assert build_objective("gkd", {"lmbda": 1.0}).source_mix(0.0) == {S: 1.0}
    assert build_objective("gkd", {"lmbda": 0.0}).source_mix(0.0) == {G: 1.0}


def test_onpolicy_pg_signal_depends_on_baseline() -> None:
    assert build_objective("onpolicy_pg", {"baseline": "none"}).required_teacher_signal() is TeacherSignal.SAMPLED_LOGPROBS
    assert get_objective("onpolicy_pg").teacher_signal is TeacherSignal.FULL_LOGITS


# --- hand-computed values ---------------------------------------------------------------------------
def test_cross_entropy_objectives() -> None:
    s = probs_logits([0.25, 0.75], [0.5, 0.5])
    y = torch.tensor([1, 0])
    for name in ("sft", "seqkd"):
        obj, chunk = chunk_for(name, s, None, y)
        assert chunk.teacher_logits is None
        assert torch.allclose(obj.per_token_loss(chunk, {}), torch.tensor([-math.log(0.75), math.log(2)], dtype=torch.float64))


def test_kl_objectives_hand_values() -> None:
    t = probs_logits([0.5, 0.5])
    s = probs_logits([0.25, 0.75])
    y = torch.tensor([0])
    fkl = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    rkl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    expected = {
        "supervised_kd": fkl,
        "onpolicy_fkl": fkl,
        "onpolicy_rkl": rkl,
        "tvd": 0.25,
        "skew_kl": 0.5 * math.log(0.5 / 0.275) + 0.5 * math.log(0.5 / 0.725),
        "skew_rkl": 0.25 * math.log(0.25 / 0.475) + 0.75 * math.log(0.75 / 0.525),
    }
    for name, value in expected.items():
        obj, chunk = chunk_for(name, s, t, y)
        assert obj.per_token_loss(chunk, {}).item() == pytest.approx(value, abs=1e-12), name
    m = [0.375, 0.625]
    jsd = (0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
           + 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))) / 0.25
    obj, chunk = chunk_for("gkd", s, t, y)
    assert obj.per_token_loss(chunk, {}).item() == pytest.approx(jsd, abs=1e-12)
    obj, chunk = chunk_for("gkd", s, t, y, beta=0.0)
    assert obj.per_token_loss(chunk, {}).item() == pytest.approx(fkl, abs=1e-12)
    obj, chunk = chunk_for("gkd", s, t, y, beta=1.0)
    assert obj.per_token_loss(chunk, {}).item() == pytest.approx(rkl, abs=1e-12)


def test_veto_hand_value() -> None:
    # beta = 1: q ∝ p_T · p_S = [.5·.25, .5·.75] → [.25, .75] = p_S, so the forward loss is 0;
    # beta = 0.5: q ∝ [.5·.5, .5·√.75]
    t, s, y = probs_logits([0.5, 0.5]), probs_logits([0.25, 0.75]), torch.tensor([0])
    obj, chunk = chunk_for("veto", s, t, y)
    assert obj.per_token_loss(chunk, {"beta": 1.0}).item() == pytest.approx(0.0, abs=1e-12)
    w = [0.5 * math.sqrt(0.25), 0.5 * math.sqrt(0.75)]
    q = [w[0] / sum(w), w[1] / sum(w)]
    fwd = sum(a * math.log(a / b) for a, b in zip(q, [0.25, 0.75]))
    rev = sum(b * math.log(b / a) for a, b in zip(q, [0.25, 0.75]))
    assert obj.per_token_loss(chunk, {"beta": 0.5}).item() == pytest.approx(fwd, abs=1e-12)
    obj_r, chunk_r = chunk_for("veto", s, t, y, direction="reverse")
    assert obj_r.per_token_loss(chunk_r, {"beta": 0.5}).item() == pytest.approx(rev, abs=1e-12)
    # no sched value: beta_start is used
    assert obj.per_token_loss(chunk, {}).item() == pytest.approx(obj.per_token_loss(chunk, {"beta": 0.8}).item())


# --- Veto -----------------------------------------------------------------------------------------------
def test_veto_schedule_endpoints_and_shapes() -> None:
    lin = build_objective("veto", {"beta_start": 0.8, "beta_end": 0.0})
    assert lin.schedule(0, 11) == {"beta": 0.8}
    assert lin.schedule(10, 11) == {"beta": 0.0}
    assert lin.schedule(5, 11)["beta"] == pytest.approx(0.4)
    assert lin.schedule(50, 11) == {"beta": 0.0}
    assert lin.schedule(0, 1) == {"beta": 0.8}
    cos = build_objective("veto", {"beta_start": 2.0, "beta_end": 0.5, "beta_schedule": "cosine"})
    assert cos.schedule(0, 5) == {"beta": 2.0}
    assert cos.schedule(4, 5) == {"beta": 0.5}
    assert cos.schedule(2, 5)["beta"] == pytest.approx(1.25)
    assert cos.schedule(1, 5)["beta"] > 1.25 + 0.3  # cosine stays high longer than linear early on
    const = build_objective("veto", {"beta_start": 0.3, "beta_end": 0.9, "beta_schedule": "constant"})
    assert {const.schedule(i, 7)["beta"] for i in range(7)} == {0.3}
    up = build_objective("veto", {"beta_start": 0.1, "beta_end": 0.3})
    assert up.schedule(9, 10) == {"beta": 0.3}  # exactly beta_end, no rounding drift


def test_veto_direction_and_fixed_point_depend_on_beta() -> None:
    assert build_objective("veto", {}).divergence_direction == "forward"
    assert build_objective("veto", {"direction": "reverse"}).divergence_direction == "reverse"
    assert build_objective("veto", {"beta_end": 0.2}).divergence_direction is None
    assert build_objective("veto", {"beta_schedule": "constant"}).divergence_direction is None
    veto = build_objective("veto", {})
    assert veto.teacher_is_fixed_point({"beta": 0.0}) and not veto.teacher_is_fixed_point({"beta": 0.5})


def test_veto_beta0_is_exactly_plain_kl() -> None:
    s0, t, y = torch.randn(6, 13), torch.randn(6, 13), torch.randint(0, 13, (6,))
    for direction, plain in (("forward", "onpolicy_fkl"), ("reverse", "onpolicy_rkl")):
        veto = build_objective("veto", {"direction": direction})
        s1, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
        a = veto.per_token_loss(make_loss_chunk(veto, s1, t, y), {"beta": 0.0})
        other = build_objective(plain, {})
        b = other.per_token_loss(make_loss_chunk(other, s2, t, y), {})
        assert torch.equal(a, b)
        assert torch.equal(torch.autograd.grad(a.sum(), s1)[0], torch.autograd.grad(b.sum(), s2)[0])


@pytest.mark.parametrize("beta", [0.3, 0.8, 2.5])
def test_veto_gradients(beta: float) -> None:
    s = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 11, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.long)
    q = torch.softmax(torch.log_softmax(t, -1) + beta * torch.log_softmax(s, -1).detach(), -1)
    fwd = build_objective("veto", {"direction": "forward"})
    (g,) = torch.autograd.grad(fwd.per_token_loss(make_loss_chunk(fwd, s, t, y), {"beta": beta}).sum(), s)
    assert torch.allclose(g, torch.softmax(s, -1).detach() - q, atol=1e-12)  # p_S − q
    # reverse: KL(p_S || q) with q constant
    rev = build_objective("veto", {"direction": "reverse"})
    (g_r,) = torch.autograd.grad(rev.per_token_loss(make_loss_chunk(rev, s, t, y), {"beta": beta}).sum(), s)
    ps = torch.softmax(s, -1)
    expected = torch.autograd.grad((ps * (ps.log() - q.log())).sum(), s)[0]
    assert torch.allclose(g_r, expected, atol=1e-12)


def test_veto_rejects_out_of_range_beta_but_allows_beta_above_one() -> None:
    assert build_objective("veto", {"beta_start": 3.0}).params.beta_start == 3.0
    with pytest.raises(ObjectiveError, match="beta_start"):
        build_objective("veto", {"beta_start": -0.1})


# --- on-policy policy gradient ---------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["closed_form", "none"])
def test_onpolicy_pg_expected_gradient_is_reverse_kl_gradient(baseline: str) -> None:
    """Σ_y p_S(y) ∇loss(y) == ∇ KL(p_S||p_T), by exact enumeration of the sampled token."""
    n, v = 3, 6
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(n, v, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    obj = build_objective("onpolicy_pg", {"baseline": baseline})
    ps = torch.softmax(s, -1).detach()
    expected_grad = torch.zeros_like(s)
    for token in range(v):
        y = torch.full((n,), token)
        loss = obj.per_token_loss(make_loss_chunk(obj, s, t, y), {})
        (grad,) = torch.autograd.grad(loss.sum(), s)
        expected_grad += ps[:, token : token + 1] * grad
    rkl = D.reverse_kl(torch.log_softmax(t, -1), torch.log_softmax(s, -1))
    (rkl_grad,) = torch.autograd.grad(rkl.sum(), s)
    assert torch.allclose(expected_grad, rkl_grad, atol=1e-10)


def test_onpolicy_pg_closed_form_baseline_reduces_variance() -> None:
    n, v = 4, 8
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(n, v, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    ps = torch.softmax(s, -1).detach()

    def second_moment(baseline: str) -> float:
        obj = build_objective("onpolicy_pg", {"baseline": baseline})
        total = 0.0
        for token in range(v):
            loss = obj.per_token_loss(make_loss_chunk(obj, s, t, torch.full((n,), token)), {})
            (grad,) = torch.autograd.grad(loss.sum(), s)
            total += float((ps[:, token] * (grad**2).sum(-1)).sum())
        return total

    assert second_moment("closed_form") < second_moment("none")


def test_onpolicy_pg_without_baseline_needs_only_sampled_logprobs() -> None:
    obj = build_objective("onpolicy_pg", {"baseline": "none"})
    s = torch.randn(3, 5, requires_grad=True)
    y = torch.tensor([1, 4, 0])
    t_lp = torch.tensor([-1.0, -2.0, -0.5])
    chunk = make_loss_chunk(obj, s, None, y, teacher_target_logprobs=t_lp)
    assert chunk.teacher_logits is None and chunk.teacher_target_logprobs is not None
    loss = obj.per_token_loss(chunk, {})
    ls_y = torch.log_softmax(s, -1).gather(-1, y[:, None])[:, 0]
    assert torch.allclose(loss, -(t_lp - ls_y.detach()) * ls_y)
    with pytest.raises(ObjectiveError, match="teacher_target_logprobs"):
        obj.per_token_loss(LossChunk(s, None, y, None), {})


def test_onpolicy_pg_zero_when_student_equals_teacher() -> None:
    obj = build_objective("onpolicy_pg", {})
    s = torch.randn(4, 9, requires_grad=True)
    loss = obj.per_token_loss(make_loss_chunk(obj, s, s.detach().clone(), torch.randint(0, 9, (4,))), {})
    (g,) = torch.autograd.grad(loss.sum(), s)
    assert float(loss.detach().abs().max()) == 0.0 and float(g.abs().max()) == 0.0


def test_missing_teacher_logits_is_a_clear_error() -> None:
    obj = build_objective("onpolicy_rkl", {})
    with pytest.raises(ObjectiveError, match="needs full teacher logits"):
        obj.per_token_loss(LossChunk(torch.zeros(2, 3), None, torch.tensor([0, 1])), {})
    with pytest.raises(ObjectiveError, match="needs full teacher logits"):
        make_loss_chunk(obj, torch.zeros(2, 3), None, torch.tensor([0, 1]))
