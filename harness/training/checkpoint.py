"""Atomic training checkpoints: model, optimizer, scheduler, RNG states, data position, telemetry offset.

A checkpoint is a directory written under a temporary name and renamed into place, so a run killed
at any instant leaves either the previous checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.io import atomic_write_json, read_json

CHECKPOINT_DIRNAME = "checkpoint"


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs."""

    step: int  # optimizer steps completed (also the data position: batches are indexed by step)
    telemetry_rows: int  # rows of telemetry.jsonl that belong to steps <= step
    nonfinite_steps: int
    nonfinite_in_row: int
    counters: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, state: TrainState) -> Path:
    """Write `run_dir/checkpoint` atomically (tmp dir + rename; the old one is removed last)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / CHECKPOINT_DIRNAME
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint-"))
    trainable = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(trainable, tmp / "model.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "optim.pt")
    atomic_write_json(tmp / "state.json", state.to_json())
    _fsync_dir(tmp)
    old = run_dir / (CHECKPOINT_DIRNAME + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (a crash between the two renames leaves only `.old`)."""
    for name in (CHECKPOINT_DIRNAME, CHECKPOINT_DIRNAME + ".old"):
        cand = run_dir / name
        if (cand / "state.json").is_file() and (cand / "model.pt").is_file() and (cand / "optim.pt").is_file():
            return cand
    return None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> TrainState:
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    blob = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainState(**read_json(path / "state.json"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
