"""``Objective.needs()``: one declaration of sources and teacher needs that every caller asks.

The case that used to go wrong: an objective whose source mix moves with training progress. Asking
``source_mix(0.0)`` (the pipeline) or ``source_mix(0.5)`` (the cost estimate) missed a source the
mix only uses late in training.
"""

from __future__ import annotations

import pytest

from harness.config import SuiteConfig
from harness.cells import CellSpec
from harness.suite import estimate_cost
from objectives import conformance as C
from objectives.base import (
    Objective,
    SequenceSource,
    TeacherSignal,
    expected_source_mix,
    list_objectives,
    register_objective,
    unregister_objective,
)

GT, TEACHER, STUDENT = SequenceSource.GROUND_TRUTH, SequenceSource.TEACHER, SequenceSource.STUDENT


class SwitchAt07(Objective):
    """Cross-entropy on ground truth until progress 0.7, then on teacher-generated sequences."""

    name = "test_switch_at_07"
    description = "switches source at progress 0.7"
    source = GT
    teacher_signal = TeacherSignal.NONE

    def source_mix(self, progress):
        return {GT: 1.0} if progress < 0.7 else {TEACHER: 1.0}

    def per_token_loss(self, chunk, sched):
        return -chunk.student_target_logprobs()

    def reference_loss(self, student_logits, teacher_logits, targets, sched, rows):
        import torch

        return -torch.log(torch.softmax(student_logits, -1)[torch.arange(len(targets)), targets])


class ForgetsTheTeacher(SwitchAt07):
    """Declares its sources itself, and leaves out the one it switches to."""

    name = "test_forgets_teacher"

    def sequence_sources(self):
        return (GT,)


def test_a_late_source_switch_is_in_the_needs() -> None:
    obj = SwitchAt07()
    assert TEACHER not in obj.source_mix(0.0) and TEACHER not in obj.source_mix(0.5)  # what the old samples saw
    needs = obj.needs()
    assert needs.sources == (GT, TEACHER)  # the declared source first
    assert needs.teacher_generation and needs.loads_teacher  # the pipeline loads the teacher to generate
    assert needs.teacher_signal is TeacherSignal.NONE and needs.teacher_model == "teacher"
    assert SwitchAt07.describe()["sources"] == ["ground_truth", "teacher"]


def test_expected_mix_is_the_mean_over_the_run() -> None:
    # 11 steps: progress k/10, the teacher from k = 7 on (4 of 11 steps)
    mix = expected_source_mix(SwitchAt07(), 11)
    assert mix == pytest.approx({GT: 7 / 11, TEACHER: 4 / 11})
    assert expected_source_mix(SwitchAt07(), 1) == {GT: 1.0}  # one step: progress 0


def test_cost_estimate_counts_the_late_teacher_rollouts() -> None:
    register_objective(SwitchAt07)
    try:
        cfg = SuiteConfig.model_validate({
            "name": "u", "teacher": {"name": "some/model"}, "student": {"derive_from": "teacher", "keep_layers": [0, 1]},
            "tasks": [{"name": "gsm8k", "train_limit": 44}], "objectives": [{"name": SwitchAt07.name}],
            "train": {"batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 10}})
        cell = CellSpec(cell_id="c", kind="trained", task="gsm8k", objective=SwitchAt07.name, label="switch")
        est = estimate_cost(cfg, cell, 44)
        steps = est["optimizer_steps"]
        teacher_steps = sum(1 for k in range(steps) if k / max(steps - 1, 1) >= 0.7)
        assert 0 < teacher_steps < steps
        assert est["max_rollout_tokens"] == int(steps * 4 * 10 * teacher_steps / steps)
    finally:
        unregister_objective(SwitchAt07.name)


def test_kit_fails_a_sources_declaration_that_misses_the_mix() -> None:
    assert C.check_contract(SwitchAt07()).status == "pass"
    result = C.check_contract(ForgetsTheTeacher())
    assert result.status == "fail" and "['teacher']" in result.detail, result


def test_builtins_expected_mix_equals_their_constant_mix() -> None:
    """The dry-run cost estimate of every built-in is what the old 0.5 sample gave (their mixes do not move)."""
    for cls in list_objectives():
        if not cls.__module__.startswith("objectives."):
            continue
        for params in ({}, {"lmbda": 0.3, "seq_kd": True} if cls.name == "gkd" else {}):
            obj = cls(params)
            assert expected_source_mix(obj, 37) == obj.source_mix(0.5), cls.name
            assert set(obj.needs().sources) == set(obj.source_mix(0.5)), cls.name
