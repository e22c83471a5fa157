"""Scale-out policy without a GPU: each rank's device, process group before model load, one
generation call per step, bf16-rollout selection, and the checkpoint interval policy."""

from __future__ import annotations

import pytest
import torch

from harness.training import distributed as D
from harness.training.checkpoint_policy import CheckpointPolicy
from harness.training.loop import generation_batch_size, resolve_rollout_precision, train
from tests.training_helpers import make_examples, make_setup, run_config


# -- devices and the process group ------------------------------------------------------------------
def test_each_rank_gets_its_own_gpu():
    assert D.rank_device(0, use_cuda=False, cuda_count=0) == torch.device("cpu")
    assert [D.rank_device(r, True, 8) for r in range(8)] == [torch.device("cuda", r) for r in range(8)]
    with pytest.raises(RuntimeError, match="nproc_per_node 4"):
        D.rank_device(4, True, 4)  # a 5th process on a 4-GPU node would share a GPU


@pytest.fixture
def fake_rank_on_gpu_1(monkeypatch):
    """A single-process launch with LOCAL_RANK=1 on a machine that pretends to have 2 GPUs."""
    monkeypatch.setattr(D, "_CONTEXT", None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: pinned.append(torch.device(dev)))
    yield pinned
    D._CONTEXT = None  # monkeypatch restores the previous context; never leak the fake one


def test_models_load_onto_the_rank_device_after_the_process_group(fake_rank_on_gpu_1, monkeypatch, tiny_model_dir):
    """`run_training` initializes distribution before loading, and both models go to cuda:1."""
    import harness.modeling
    from harness import pipeline as runner

    loads = []

    class Stop(Exception):
        pass

    def fake_load_model(spec, *, teacher=None, dtype=torch.float32, device="cpu"):
        loads.append((device, D._CONTEXT is not None))
        raise Stop

    monkeypatch.setattr(harness.modeling, "load_model", fake_load_model)
    cfg = run_config(tiny_model_dir, "supervised_kd")
    with pytest.raises(Stop):
        runner.run_training(cfg, tiny_model_dir / "unused", progress=False)
    assert loads == [("cuda:1", True)], "the first model load happens on this rank's GPU, group already set up"
    assert fake_rank_on_gpu_1 == [torch.device("cuda", 1)]
    assert runner.pick_device() == torch.device("cuda", 1)


def test_eval_loads_onto_the_rank_device_with_the_teacher_in_the_suites_dtype(fake_rank_on_gpu_1, monkeypatch,
                                                                             tiny_model_dir, tmp_path):
    """`distill-bench eval` under a launcher: the group first, every model on this rank's GPU, and the
    teacher (diagnostics) in bf16 as a suite cell holds it, so `eval` and `run` compute the same teacher KL."""
    import yaml

    import harness.modeling
    from harness import pipeline
    from harness.cli import main

    loads = []

    class Stop(Exception):
        pass

    def fake_load_model(spec, *, teacher=None, dtype=torch.float32, device="cpu"):
        loads.append((dtype, device, D._CONTEXT is not None))
        return object(), object()

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(harness.modeling, "load_model", fake_load_model)
    monkeypatch.setattr(pipeline, "evaluate_cell", stop)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"teacher": {"name": str(tiny_model_dir)}}))
    with pytest.raises(Stop):
        main(["eval", str(tiny_model_dir), "--tasks", "gsm8k", "--config", str(config), "--output-dir",
              str(tmp_path / "out"), "--no-progress"])
    assert loads == [(torch.float32, "cuda:1", True), (torch.bfloat16, "cuda:1", True)]
    assert pipeline.teacher_dtype(torch.device("cpu")) == torch.float32


# -- generation batch and rollout precision -------------------------------------------------------------
def test_generation_batch_is_the_process_share_unless_bounded():
    tc = run_config(".", batch_size=16, micro_batch_size=4).train
    assert generation_batch_size(tc, 1) == 16 and generation_batch_size(tc, 2) == 8
    tc = run_config(".", batch_size=16, micro_batch_size=4, generation_batch_size=6).train
    assert generation_batch_size(tc, 1) == 6 and generation_batch_size(tc, 4) == 4


def test_rollout_precision_auto_is_bf16_only_on_cuda():
    assert resolve_rollout_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_rollout_precision("auto", torch.device("cpu")) == "same"
    assert resolve_rollout_precision("same", torch.device("cuda", 0)) == "same"
    assert resolve_rollout_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("gen_batch,calls_per_step", [(None, 1), (4, 2)])
def test_one_generation_call_per_step_not_per_micro_batch(tiny_model_dir, tmp_path, gen_batch, calls_per_step):
    setup = make_setup(tiny_model_dir)
    sizes = []
    original = type(setup.student).generate

    def counting_generate(self, *args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    setup.student.generate = counting_generate.__get__(setup.student)
    cfg = run_config(tiny_model_dir, "onpolicy_fkl", batch_size=8, micro_batch_size=2, generation_batch_size=gen_batch)
    train(cfg, tmp_path / "r", setup, max_steps=2, progress=False)
    assert len(sizes) == 2 * calls_per_step and sum(sizes) == 2 * 8


# -- checkpoint interval policy ------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_policy_steps_time_and_interruptions():
    clock = FakeClock()
    p = CheckpointPolicy(3, None, start_step=0, clock=clock)
    assert [p.due(s) for s in (1, 2, 3)] == [False, False, True]
    p.saved(3)
    assert not p.due(5) and p.due(6) and p.due(4, interrupted=True)

    p = CheckpointPolicy(None, 60.0, start_step=10, clock=clock)  # resumed at step 10
    clock.t += 59
    assert not p.due(500)
    clock.t += 1
    assert p.due(11)
    p.saved(11)
    assert not p.due(12)
    assert not CheckpointPolicy(None, None, start_step=0, clock=clock).due(10**6)
    assert CheckpointPolicy(None, None, start_step=0).describe() == "only when interrupted"


def test_short_run_writes_no_checkpoint_and_final_model_has_no_optimizer_state(tiny_model_dir, tmp_path):
    cfg = run_config(tiny_model_dir, "sft", checkpoint_every=None, checkpoint_every_s=1800)
    train(cfg, tmp_path / "r", make_setup(tiny_model_dir), max_steps=3, progress=False)
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["model", "telemetry.jsonl", "train_summary.json"], names
    assert not list((tmp_path / "r" / "model").glob("*.pt")), "weights only: no optimizer state"
    # Interrupted (as Ctrl-C would: stop_after_step takes the same branch): a checkpoint, resumable.
    r = train(cfg, tmp_path / "i", make_setup(tiny_model_dir), max_steps=3, progress=False, stop_after_step=1)
    assert r.steps == 1 and (tmp_path / "i" / "checkpoint" / "optim.pt").is_file()


def test_step_interval_replaces_the_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """Every 2 steps of 5: checkpoints after steps 2 and 4 (the 4 replaces the 2), none at the end."""
    import json

    import harness.training.loop as L

    seen = []
    real = L.save_checkpoint

    def spy(run_dir, model, optimizer, scheduler, state, **kwargs):
        seen.append(state.step)
        return real(run_dir, model, optimizer, scheduler, state, **kwargs)

    monkeypatch.setattr(L, "save_checkpoint", spy)
    cfg = run_config(tiny_model_dir, "sft", checkpoint_every=2, checkpoint_every_s=None)
    setup = make_setup(tiny_model_dir, examples=make_examples(20))  # 5 steps of 4
    r = train(cfg, tmp_path / "r", setup, max_steps=5, progress=False, save_model=False)
    assert r.steps == 5 and seen == [2, 4]
    kept = sorted(p.name for p in (tmp_path / "r").iterdir() if "checkpoint" in p.name)
    assert kept == ["checkpoint"], kept  # no .old or temp dirs left behind
    assert json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())["step"] == 4
