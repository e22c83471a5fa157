"""`train.sharding: fsdp`: config refusals, and 2 CPU processes (gloo, FSDP2) train the 1-process weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import RunConfig, SuiteConfig, TeacherPrepConfig, TrainConfig


def _run_cfg(model_dir: Path, data: Path, **train) -> dict:
    return {
        "teacher": {"name": str(model_dir)}, "student": {"name": str(model_dir)},
        "task": {"name": "gsm8k", "train_source": f"file:{data}", "train_limit": 8},
        "objective": {"name": "sft"},
        # grad_clip below the step's gradient norm, so clipping over DTensor gradients is exercised;
        # micro_batch_size 1: 2 micro-batches per rank, so the no-sync accumulation path runs too.
        "train": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "micro_batch_size": 1, "max_prompt_tokens": 96,
                  "max_response_tokens": 24, "precision": "fp32", "grad_clip": 0.05, **train},
    }


def test_fsdp_refused_for_rollout_objectives_and_lora(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    base = _run_cfg(tmp_path / "m", tmp_path / "d.jsonl", sharding="fsdp")
    RunConfig.model_validate(base)  # sft: accepted
    on_policy = {**base, "objective": {"name": "gkd"}}
    with pytest.raises(ValueError, match=r"train\.sharding: fsdp supports objectives trained on ground-truth"):
        RunConfig.model_validate(on_policy)
    with pytest.raises(ValueError, match=r"LoRA is the one-GPU route"):
        RunConfig.model_validate({**base, "student": {"name": "x", "lora": {"r": 4, "alpha": 8}}})
    with pytest.raises(ValueError, match=r"teacher_prep\.train\.sharding: fsdp is for full fine-tuning"):
        TeacherPrepConfig.model_validate({"lora": {"r": 4, "alpha": 8}, "train": {"sharding": "fsdp"}})
    assert TeacherPrepConfig.model_validate({"train": {"sharding": "fsdp"}}).train.sharding == "fsdp"


def test_fsdp_refused_for_suite_students(tmp_path):
    suite = {"name": "s", "teacher": {"name": "t"}, "student": {"name": "s"}, "tasks": [{"name": "gsm8k"}],
             "objectives": [{"name": "sft"}], "train": {"sharding": "fsdp"}}
    with pytest.raises(ValueError, match=r"train\.sharding: fsdp is not supported for a suite's students"):
        SuiteConfig.model_validate(suite)


def test_fsdp_needs_two_processes():
    from harness.training.sharding import check_sharding
    from objectives.base import build_objective

    with pytest.raises(ValueError, match=r"train\.sharding: fsdp shards over processes but this run has 1"):
        check_sharding("fsdp", build_objective("sft", {}).needs(), 1)
    check_sharding("none", build_objective("gkd", {}).needs(), 1)  # the default never refuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: list[str], cfg: Path, out: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [*launcher, "-m", "harness.cli", "train", str(cfg), *overrides, "--output-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.integration
def test_two_process_fsdp_trains_the_one_process_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"})
                            + "\n" for i in range(8)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_run_cfg(tiny_model_dir, data)))
    # The 1-process reference trains in this process (same code as `distill-bench train`, one
    # interpreter start less); the sharded run needs its own 2-process group.
    from harness.config import load_run_config
    from harness.pipeline import run_training

    run_training(load_run_config(cfg, []), tmp_path / "p1", progress=False)
    _train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            f"--master_port={_free_port()}"], cfg, tmp_path / "p2", "train.sharding=fsdp")

    init = load_file(tiny_model_dir / "model.safetensors")
    one, two = (load_file(tmp_path / p / "model" / "model.safetensors") for p in ("p1", "p2"))
    # A normal HF checkpoint with every tensor of the 1-process one (tied head included as saved there).
    assert sorted(one) == sorted(two) and len(one) > 10
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    # Measured: 2 steps at lr 1e-2 move weights by 1.5e-2, the runs differ by 2.9e-7 (gradients summed in
    # another order: 2 ranks x 2 micro-batches vs 4). Tolerance 1e-5: float rounding, ~1000x below the move.
    assert moved > 1e-3, moved
    assert diff < 1e-5, (diff, moved)

    summary = json.loads((tmp_path / "p2" / "train_summary.json").read_text())
    layout = summary["sharding"]
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 2
    # Recorded inside the run by each rank: it held about half the parameters, never all of them.
    assert len(layout["local_params_per_rank"]) == 2
    assert all(0 < n < layout["full_params"] for n in layout["local_params_per_rank"]), layout
    assert sum(layout["local_params_per_rank"]) == layout["full_params"], layout
    assert layout["full_params"] == sum(t.numel() for k, t in init.items() if k != "lm_head.weight")
    # The clipping threshold was below the step's norm, so the clipped path ran in both runs alike.
    rows = {p: [json.loads(r) for r in (tmp_path / p / "telemetry.jsonl").read_text().splitlines()] for p in ("p1", "p2")}
    assert len(rows["p2"]) == 2 and all(r["grad_norm"] > 0.05 for r in rows["p2"]), rows
    for a, b in zip(rows["p1"], rows["p2"]):  # the global norm over DTensor shards is the full gradient's norm
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_unsharded_default_keeps_older_results_and_prepared_teachers_valid(tmp_path):
    from harness.suite import snapshot_conflicts
    from harness.teachers import prep_key

    assert TrainConfig().sharding is None and TrainConfig(sharding="none").sharding is None
    suite = {"name": "s", "teacher": {"name": "t"}, "student": {"name": "s"}, "tasks": [{"name": "gsm8k"}],
             "objectives": [{"name": "sft"}], "teacher_prep": {}}
    cfg = SuiteConfig.model_validate(suite)
    now = cfg.model_dump(mode="json")
    before = json.loads(json.dumps(now))  # a snapshot written before `train.sharding` existed
    del before["train"]["sharding"], before["teacher_prep"]["train"]["sharding"]
    assert snapshot_conflicts(before, now) == []
    # How a preparation is spread over processes is not what it trains: same cache key either way.
    sharded = cfg.model_copy(update={"teacher_prep": TeacherPrepConfig.model_validate({"train": {"sharding": "fsdp"}})})
    assert prep_key(cfg, cfg.tasks[0], "d", tmp_path) == prep_key(sharded, sharded.tasks[0], "d", tmp_path)
