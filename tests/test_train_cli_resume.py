"""`distill-bench train` killed mid-run (SIGKILL or SIGINT) and rerun ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent


def _write_config(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        rows = [{"question": f"What is {i} plus {i + 2}?", "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}"}
                for i in range(24)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "teacher": {"name": str(model_dir)}, "student": {"name": str(model_dir)},
        "task": {"name": "gsm8k", "train_source": f"file:{data}"},
        "objective": {"name": "onpolicy_rkl"},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 8,
                  "max_prompt_tokens": 64, "max_response_tokens": 32, "temperature": 1.0, "top_p": 1.0,
                  "checkpoint_every": 1},
        "seed": 3, "output_dir": str(out),
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "train", str(cfg), "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    state = run_dir / "checkpoint" / "state.json"
    while time.time() < deadline:
        if state.exists():
            try:
                if json.loads(state.read_text())["step"] >= step:
                    return
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for a checkpoint")


def _final(run_dir: Path):
    return load_file(run_dir / "model" / "model.safetensors")


def _telemetry(run_dir: Path) -> list[tuple]:
    rows = [json.loads(l) for l in (run_dir / "telemetry.jsonl").read_text().splitlines() if l.strip()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_identical_weights(tiny_model_dir, tmp_path, sig):
    ref_dir = tmp_path / "reference"
    subprocess.run(_cmd(_write_config(tmp_path, tiny_model_dir, ref_dir)), env=_env(), check=True,
                   capture_output=True, timeout=300)

    run_dir = tmp_path / "killed"
    cfg = _write_config(tmp_path, tiny_model_dir, run_dir)
    proc = subprocess.Popen(_cmd(cfg), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, 2, proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0, "the run was interrupted before finishing"
    assert not (run_dir / "model").exists()

    done = subprocess.run(_cmd(cfg), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= 2 and summary["optimizer_steps"] == 6
    a, b = _final(ref_dir), _final(run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert _telemetry(ref_dir) == _telemetry(run_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_like_ctrl_c_checkpoints_the_step_in_flight(tiny_model_dir, tmp_path, sig):
    """A scheduler's SIGTERM (preemption, time limit; torchrun forwards it to its workers) is handled as
    Ctrl-C: the step in flight ends in a checkpoint, though the interval is far away, and a rerun resumes."""
    run_dir = tmp_path / "run"
    cfg_path = _write_config(tmp_path, tiny_model_dir, run_dir)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update(checkpoint_every=1000, epochs=3)  # 18 steps, none of them a checkpoint step
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(_cmd(cfg_path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    telemetry = run_dir / "telemetry.jsonl"
    deadline = time.time() + 240
    while not (telemetry.exists() and telemetry.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, "training ended or stalled before its first step"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0, "the run stopped early"
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert 1 <= state["step"] < 18, "checkpointed at the interruption, not at an interval step"

    done = subprocess.run(_cmd(cfg_path), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == state["step"] and summary["optimizer_steps"] == 18


def _torchrun(cfg: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", f"--master_port={port}",
            "-m", "harness.cli", "train", str(cfg), "--no-progress"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_two_process_run_resumes_to_the_uninterrupted_weights(tiny_model_dir, tmp_path):
    """Data parallel (2 gloo processes, on-policy rollouts sampled per rank): the whole torchrun group
    SIGKILLed after a checkpoint and relaunched ends where an uninterrupted 2-process run ends."""
    psutil = pytest.importorskip("psutil")  # installed with accelerate
    env = {**_env(), "MASTER_ADDR": "127.0.0.1"}
    ref_dir = tmp_path / "reference"
    ref = subprocess.run(_torchrun(_write_config(tmp_path, tiny_model_dir, ref_dir), _free_port()), env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run_dir = tmp_path / "killed"
    cfg = _write_config(tmp_path, tiny_model_dir, run_dir)
    proc = subprocess.Popen(_torchrun(cfg, _free_port()), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_step(run_dir, 2, proc)
    # The launcher and both ranks at once, as a lost node or a scancel would. torchrun starts its workers
    # in sessions of their own, so a process-group kill would miss them: kill the whole process tree.
    launcher = psutil.Process(proc.pid)
    group = [launcher, *launcher.children(recursive=True)]
    assert len(group) >= 3, "the launcher and its two ranks"
    for p in group:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(group, timeout=60)
    proc.wait(timeout=60)
    assert not (run_dir / "model").exists(), "killed before it finished"
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["step"] < 6

    done = subprocess.run(_torchrun(cfg, _free_port()), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= 2 and summary["optimizer_steps"] == 6 and summary["world_size"] == 2
    a, b = _final(ref_dir), _final(run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert _telemetry(ref_dir) == _telemetry(run_dir)
