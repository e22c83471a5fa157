"""Launch the training stage's multi-process (data-parallel) path for one run, from inside a process.

A suite cell that asks for N GPUs (or `processes: N`) trains exactly as
`torchrun --nproc_per_node N -m harness.cli train RUN.yaml` would: same stage, same gradient sum
across processes. This is the one place that spawns that launcher, so a change of launcher
(e.g. Accelerate DDP) only has to change this function.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.config import RunConfig, dump_yaml
from harness.errors import DistillBenchError
from harness.io import atomic_write_text

RUN_CONFIG_NAME = "run.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_data_parallel(run_cfg: RunConfig, run_dir: Path, processes: int,
                        timeout_s: float | None = None) -> tuple[dict[str, Any], Path]:
    """Train `run_cfg` data-parallel over `processes` local processes into `run_dir` (resuming
    from its checkpoint like any `train`); return (train summary, final HF model directory).

    The processes inherit this process's environment, so under Ray they see exactly the GPUs the
    task was given (CUDA_VISIBLE_DEVICES); on CPU they use gloo.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / RUN_CONFIG_NAME
    atomic_write_text(cfg_path, dump_yaml(run_cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "harness.cli", "train", str(cfg_path), "--output-dir", str(run_dir), "--no-progress"]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        # Not a DistillBenchError: a crashed process group may be transient (lost GPU, OOM-killer),
        # so the executor's error-retry budget applies.
        raise RuntimeError(f"data-parallel training ({processes} processes) exited with status {proc.returncode}: "
                           f"{proc.stderr[-3000:]}")
    from harness.training.loop import MODEL_DIRNAME, SUMMARY_FILENAME

    summary_path = run_dir / SUMMARY_FILENAME
    model_dir = run_dir / MODEL_DIRNAME
    if not summary_path.is_file() or not model_dir.is_dir():
        raise DistillBenchError(f"data-parallel training in {run_dir} ended without train_summary.json and model/")
    return json.loads(summary_path.read_text()), model_dir
