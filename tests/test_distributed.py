"""Two CPU processes (gloo) with the same global batch give the same run as one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from harness.io import read_jsonl

WORKER = Path(__file__).resolve().parent / "dist_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, model_dir: Path, run_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           f"--master_port={_free_port()}", str(WORKER), str(model_dir), str(run_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    _launch(1, tiny_model_dir, tmp_path / "p1")
    _launch(2, tiny_model_dir, tmp_path / "p2")
    one = read_jsonl(tmp_path / "p1" / "telemetry.jsonl")
    two = read_jsonl(tmp_path / "p2" / "telemetry.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
        assert a["loss_tokens"] == b["loss_tokens"]
    w1 = torch.load(tmp_path / "p1" / "final_state.pt")
    w2 = torch.load(tmp_path / "p2" / "final_state.pt")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
