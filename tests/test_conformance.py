"""The conformance kit passes every registered objective and catches deliberately broken ones."""

from __future__ import annotations

import pytest
import torch

from harness.errors import ObjectiveError
from objectives import conformance as C
from objectives import divergences as D
from objectives.base import (
    LossChunk,
    Objective,
    SequenceSource,
    TeacherSignal,
    get_objective,
    list_objectives,
)
from objectives.conformance import single_threaded
from objectives.gkd import GKD
from objectives.veto import Veto

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    with single_threaded():
        yield

# Every registered objective (built-ins and installed plugins), except test-only ones that other
# test modules register on purpose (e.g. objectives that return NaN).
ALL = [cls.name for cls in list_objectives() if not cls.__module__.rsplit(".", 1)[-1].startswith("test_")]


@pytest.mark.parametrize("name", ALL)
def test_registered_objective_is_conformant(name: str) -> None:
    results = C.assert_conformant(name)
    by_name = {r.name: r for r in results}
    assert by_name["chunked_matches_dense"].status == "pass"
    assert by_name["chunked_memory"].status == "pass"
    assert by_name["reference_gradient"].status == "pass"  # every objective carries its reference
    # a task-reward term (kdrl, rlad) moves the student even where it equals the teacher
    if get_objective(name).teacher_signal is not TeacherSignal.NONE and not get_objective(name)().uses_reward():
        assert by_name["zero_at_match"].status == "pass"


@pytest.mark.parametrize(
    "name, params",
    [
        ("veto", {"direction": "reverse"}),
        ("veto", {"beta_start": 2.0, "beta_end": 0.5, "beta_schedule": "cosine"}),
        ("gkd", {"beta": 0.0, "lmbda": 1.0}),
        ("gkd", {"beta": 1.0, "seq_kd": True}),
        ("gkd", {"beta": 0.9}),
        ("onpolicy_pg", {"baseline": "none"}),
        ("skew_kl", {"alpha": 0.0}),
        ("skew_rkl", {"alpha": 0.5}),
        ("skew_kl", {"alpha": 0.9}),
    ],
)
def test_parameter_variants_are_conformant(name: str, params: dict) -> None:
    C.assert_conformant(name, params, memory=False)


def test_directions_are_checked_where_they_apply() -> None:
    expectations = {"onpolicy_fkl": "forward", "supervised_kd": "forward", "skew_kl": "forward",
                    "onpolicy_rkl": "reverse", "skew_rkl": "reverse", "veto": "forward"}
    for name, direction in expectations.items():
        obj = get_objective(name)()
        assert obj.divergence_direction == direction
        result = C.check_direction(obj)
        assert result.status == "pass" and result.detail.startswith(direction), result
    assert C.check_direction(get_objective("veto")({"direction": "reverse"})).status == "pass"
    assert C.check_direction(get_objective("gkd")({"beta": 1.0})).status == "pass"
    assert C.check_direction(get_objective("tvd")()).status == "skip"


# --- the kit must fail broken objectives ---------------------------------------------------------------
def _lp(chunk: LossChunk) -> tuple[torch.Tensor, torch.Tensor]:
    assert chunk.teacher_logits is not None
    return D.log_probs(chunk.teacher_logits), D.log_probs(chunk.student_logits)


class _Base(Objective):
    description = "broken on purpose"
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS


class BatchMean(_Base):
    """Mixes rows: every position gets the chunk's mean loss scaled by chunk size."""

    name = "broken_batch_mean"

    def per_token_loss(self, chunk, sched):
        per = D.forward_kl(*_lp(chunk))
        return per / per.detach().mean().clamp_min(1e-3)


class Bf16Math(_Base):
    """Computes in bf16 internally."""

    name = "broken_bf16"

    def per_token_loss(self, chunk, sched):
        t = torch.log_softmax(chunk.teacher_logits.bfloat16(), -1)
        s = torch.log_softmax(chunk.student_logits.bfloat16(), -1)
        return (t.exp() * (t - s)).sum(-1).float()


class WrongDirection(_Base):
    """Claims forward but computes reverse KL."""

    name = "broken_direction"
    divergence_direction = "forward"

    def per_token_loss(self, chunk, sched):
        return D.reverse_kl(*_lp(chunk))


class Offset(_Base):
    """Not zero at the teacher."""

    name = "broken_offset"

    def per_token_loss(self, chunk, sched):
        return D.forward_kl(*_lp(chunk)) + 0.1 * torch.log_softmax(chunk.student_logits, -1)[:, 0].exp()


class BadMix(_Base):
    name = "broken_mix"

    def source_mix(self, progress):
        return {SequenceSource.STUDENT: 0.5, SequenceSource.TEACHER: 0.4}

    def per_token_loss(self, chunk, sched):
        return D.forward_kl(*_lp(chunk))


class NaiveNegative(_Base):
    """Naive Σ p(log p − log q) in fp32 on upcast bf16 logits: can dip below zero."""

    name = "broken_naive"

    def per_token_loss(self, chunk, sched):
        t, s = _lp(chunk)
        return (t.exp() * (t - s)).sum(-1)


class VetoWithoutStopGrad(Veto):
    """Lets the gradient flow through the target q."""

    name = "broken_veto"

    def target_logp(self, teacher_lp, student_lp, beta):
        return torch.log_softmax(teacher_lp + beta * student_lp, -1)


class GKDSwappedBeta(GKD):
    """The other β convention: β weighs the student in the mixture (M = (1−β)·p_T + β·p_S)."""

    name = "broken_gkd_beta"

    def per_token_loss(self, chunk, sched):
        return D.generalized_jsd(chunk.teacher_logprobs(), chunk.student_logprobs(), 1.0 - self.params.beta)


def _status(results: list[C.CheckResult]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_kit_catches_row_mixing() -> None:
    status = _status(C.run_conformance(BatchMean, memory=False))
    assert status["accumulation"] == "fail"
    assert status["chunked_matches_dense"] == "fail"


def test_kit_catches_bf16_math() -> None:
    assert C.check_bf16(Bf16Math()).status == "fail"


def test_kit_catches_a_wrong_direction_and_nonzero_optimum() -> None:
    assert C.check_direction(WrongDirection()).status == "fail"
    assert C.check_zero_at_match(Offset()).status == "fail"


def test_kit_catches_a_bad_source_mix() -> None:
    result = C.check_contract(BadMix())
    assert result.status == "fail" and "sum to 1" in result.detail


def test_kit_catches_a_wrong_gradient_against_the_reference() -> None:
    result = C.check_reference(WrongDirection(), reference=get_objective("onpolicy_fkl")().reference_loss)
    assert result.status == "fail" and "differs" in result.detail, result


def test_kit_fails_an_objective_without_a_reference_formula() -> None:
    """No reference is a failure, not a skip: a new objective cannot slip through unchecked."""
    result = C.check_reference(WrongDirection())
    assert result.status == "fail" and "declares no reference formula" in result.detail, result
    with pytest.raises(AssertionError, match="reference_gradient"):
        C.assert_conformant(WrongDirection, memory=False)


def test_reference_argument_is_a_clear_error() -> None:
    with pytest.raises(ObjectiveError, match="reference_loss"):
        C.assert_conformant("onpolicy_fkl", reference=lambda *a: None)


def test_every_builtin_carries_its_reference_and_its_own_checks() -> None:
    builtins = [c for c in list_objectives() if c.__module__.startswith("objectives.")]
    assert len(builtins) >= 16
    assert all(cls().has_reference() for cls in builtins), [c.name for c in builtins if not c().has_reference()]
    extra = {r.name for r in C.run_conformance("veto", memory=False)} - {r.name for r in C.run_conformance("tvd", memory=False)}
    assert extra == {"veto_beta0_equals_kl", "veto_forward_gradient"}
    assert "gkd_continuity" in {r.name for r in C.run_conformance("gkd", memory=False)}


def test_kit_catches_the_other_gkd_beta_convention() -> None:
    status = _status(C.run_conformance(GKDSwappedBeta, {"beta": 0.2}, memory=False))
    assert status["reference_gradient"] == "fail"  # GKD's own reference, inherited, keeps TRL's convention
    assert status["gkd_continuity"] == "fail"  # its β = 0 end is reverse KL, not forward


def test_kit_catches_veto_without_stop_gradient() -> None:
    broken = VetoWithoutStopGrad()
    checks = {check.__name__: check for check in broken.conformance_checks()}  # inherited from Veto
    assert checks["check_forward_gradient"](broken).status == "fail"
    assert C.check_reference(broken).status == "fail"  # Veto's own reference keeps the stop-gradient


def test_naive_kl_formula_goes_negative_and_the_kit_catches_it() -> None:
    # Documents why divergences.py uses the termwise-nonnegative form: on nearly identical
    # distributions the naive fp32 sum Σ p(log p − log q) comes out slightly negative.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(256, 2048, generator=g) * 3
    t = (base + 1e-4 * torch.randn(256, 2048, generator=g)).bfloat16().float().log_softmax(-1)
    s = base.bfloat16().float().log_softmax(-1)
    naive = (t.exp() * (t - s)).sum(-1)
    assert float(naive.min()) < 0
    assert float(D.forward_kl(t, s).min()) >= 0
    result = C.check_bf16(NaiveNegative())
    assert result.status == "fail" and "negative loss" in result.detail, result


def test_kit_catches_an_engine_that_does_not_save_memory(monkeypatch) -> None:
    def fake_chunked(objective, sched, hidden, head, t_hidden, t_head, targets, chunk_size=1024, **kw):
        from objectives.engine import dense_loss

        return dense_loss(objective, sched, head(hidden), t_head(t_hidden).detach(), targets)

    monkeypatch.setattr(C, "chunked_loss", fake_chunked)
    result = C.check_chunked_memory(get_objective("onpolicy_fkl")())
    assert result.status == "fail", result


def test_crashing_objective_is_a_failed_check_not_an_exception() -> None:
    class Crash(_Base):
        name = "broken_crash"

        def per_token_loss(self, chunk, sched):
            raise RuntimeError("kaboom")

    results = C.run_conformance(Crash, memory=False)
    assert any(r.status == "fail" and "kaboom" in r.detail for r in results)
    with pytest.raises(AssertionError, match="kaboom"):
        C.assert_conformant(Crash, memory=False)


def test_check_result_rendering() -> None:
    assert str(C.CheckResult("x", "fail", "why")) == "[FAIL] x: why"
    assert not C.CheckResult("x", "skip").failed
