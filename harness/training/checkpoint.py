"""Atomic, verified training checkpoints: model, optimizer, scheduler, RNG states, data position,
telemetry rows.

A checkpoint is a directory written under a temporary name and renamed into place, so a run killed
at any instant leaves either the previous checkpoint or the new one, never a torn one. Each holds a
`manifest.json` (CRC-32 and size of every file, written last) that is checked before a resume: a
damaged checkpoint (bit rot, a truncated file, edited state) is discarded and the previous good one
used, or the run restarts from step 0, and the reason is returned for the run's record. The
checkpoint also carries a copy of telemetry.jsonl up to its step, so a resume restores exactly the
rows that belong to it even when the live file was torn mid-line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import ConfigError
from harness.io import atomic_write_bytes, atomic_write_json, disk_error, read_json, remove_temporaries

CHECKPOINT_DIRNAME = "checkpoint"
OLD_DIRNAME = CHECKPOINT_DIRNAME + ".old"
MANIFEST = "manifest.json"
TELEMETRY_COPY = "telemetry.jsonl"
TMP_PREFIX = ".checkpoint-"
REQUIRED_FILES = ("model.pt", "optim.pt", "state.json")
# Present only in checkpoints of sharded runs (harness/training/sharded_checkpoint.py); named here
# so that each format recognizes the other and refuses it instead of discarding it as damaged.
SHARDED_MARKER = "sharded.json"


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


# torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...",
# "PytorchStreamWriter failed writing file ..."), not an OSError; these substrings identify it.
_TORCH_WRITE_FAILURES = ("unexpected pos", "failed writing", "file write failed", "No space left")


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, state: TrainState,
                    telemetry_path: Path | None = None) -> Path:
    """Write `run_dir/checkpoint` atomically (tmp dir + rename; the old one is removed last).

    `telemetry_path`: the live telemetry.jsonl, copied in so a resume can restore its rows exactly.
    A write that fails for lack of space or permission raises DiskError (path, bytes needed, how to
    resume) and leaves the previous checkpoint as it was.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphans(run_dir)
    final = run_dir / CHECKPOINT_DIRNAME
    trainable = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    needed = sum(t.numel() * t.element_size() for t in trainable.values()) * 3  # weights + two Adam moments
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=TMP_PREFIX))
    try:
        torch.save(trainable, tmp / "model.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "optim.pt")
        atomic_write_json(tmp / "state.json", state.to_json())
        if telemetry_path is not None and Path(telemetry_path).is_file():
            atomic_write_bytes(tmp / TELEMETRY_COPY, Path(telemetry_path).read_bytes())
        atomic_write_json(tmp / MANIFEST, {"step": state.step, "files": _digest_files(tmp)})
        fsync_dir(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        resume = f"rerun the same command; training resumes from the previous checkpoint in {final}"
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise disk_error(tmp, exc, needed, resume) from exc
        if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
            raise disk_error(tmp, exc, needed, resume) from exc
        raise
    return commit_checkpoint(run_dir, tmp)


def commit_checkpoint(run_dir: Path, tmp: Path) -> Path:
    """Put the complete checkpoint written in `tmp` in place of `run_dir/checkpoint`.

    The previous one is renamed to `.old` first and removed last, so a kill between any two
    operations leaves a complete checkpoint under one of the two names (load_latest tries both).
    Shared by the sharded format (sharded_checkpoint.py), whose rank 0 alone calls it."""
    final = run_dir / CHECKPOINT_DIRNAME
    old = run_dir / OLD_DIRNAME
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def _digest_files(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            out[p.name] = file_digest(p)
    return out


def file_digest(path: Path) -> dict[str, Any]:
    """A manifest entry: the file's checksum and size (both formats' manifests, sharded_checkpoint.py too)."""
    return {CHECKSUM: file_checksum(path), "bytes": path.stat().st_size}


# CRC-32, not a cryptographic hash: the threat is accidental damage (bit rot, torn or edited files),
# which it detects with probability 1 - 2^-32, and it runs ~2.3x faster than sha256 here
# (397-458 vs 148-199 MiB/s), which matters at ~1.1 GiB per checkpoint of the smoke student.
CHECKSUM = "crc32"


def file_checksum(path: Path) -> str:
    crc = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def verify_checkpoint(path: Path) -> str | None:
    """None when `path` is a complete checkpoint whose files match its manifest, else why not."""
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None if _state_readable(path) else "state.json unreadable"  # pre-manifest checkpoint: see load_latest
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "manifest.json unreadable"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"manifest.json does not list {name}"
    for name, meta in files.items():
        p = path / name
        if not p.is_file():
            return f"missing {name}"
        if p.stat().st_size != meta.get("bytes"):
            return f"{name} has {p.stat().st_size} bytes, manifest says {meta.get('bytes')}"
        if file_checksum(p) != meta.get(CHECKSUM):
            return f"{name} does not match its {CHECKSUM} checksum in manifest.json"
    return None if _state_readable(path) else "state.json unreadable"


def _state_readable(path: Path) -> bool:
    try:
        TrainState(**read_json(path / "state.json"))
        return True
    except (OSError, ValueError, TypeError):
        return False


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes verify_checkpoint (a crash between the two renames leaves only `.old`)."""
    for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
        cand = run_dir / name
        if cand.is_dir() and verify_checkpoint(cand) is None:
            return cand
    return None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> TrainState:
    # Both blobs are read before anything is applied, so a file that fails to load leaves the
    # model untouched and the caller can fall back to another checkpoint or to step 0.
    weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    blob = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    state = TrainState(**read_json(path / "state.json"))
    model.load_state_dict(weights)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return state


@dataclass
class Resumed:
    """What `load_latest` found: the state (None: start at step 0), the checkpoint used, what happened."""

    state: TrainState | None
    path: Path | None
    events: list[str]
    telemetry: bytes | None = None  # the telemetry rows that belong to the state (restore these)


def load_latest(run_dir: Path, model: torch.nn.Module, optimizer, scheduler,
                live_telemetry: Path | None = None, owner: bool = True) -> Resumed:
    """Load the newest good checkpoint into model/optimizer/scheduler; discard damaged ones.

    Every discarded checkpoint adds an event (and a stderr line) saying which and why. A checkpoint
    without a telemetry copy (written before manifests existed) is usable only when the live
    telemetry still holds the rows its state counts; otherwise steps and telemetry would silently
    diverge, so it is discarded too. Only the `owner` (the main process) deletes anything.
    """
    events: list[str] = []
    if owner:
        remove_orphans(run_dir)
    problem = resume_format_problem(run_dir, sharded=False)
    if problem:
        raise ConfigError(problem)
    for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
        cand = run_dir / name
        if not cand.exists():
            continue
        why = verify_checkpoint(cand)
        telemetry = None
        if why is None:
            state_json = read_json(cand / "state.json")
            if (cand / TELEMETRY_COPY).is_file():
                telemetry = (cand / TELEMETRY_COPY).read_bytes()
                rows = count_rows(telemetry)
                if rows != state_json["telemetry_rows"]:
                    why = f"its telemetry copy has {rows} rows, its state {state_json['telemetry_rows']}"
            elif live_telemetry is not None:
                have = count_rows(live_telemetry.read_bytes()) if live_telemetry.is_file() else 0
                if have < state_json["telemetry_rows"]:
                    why = (f"telemetry.jsonl has {have} intact rows but the checkpoint counts "
                           f"{state_json['telemetry_rows']} (torn or truncated)")
        if why is None:
            try:
                state = load_checkpoint(cand, model, optimizer, scheduler)
            except Exception as exc:  # noqa: BLE001 - any unloadable file means this checkpoint is unusable
                why = f"does not load ({type(exc).__name__}: {str(exc)[:120]})"
            else:
                if owner and name == CHECKPOINT_DIRNAME and (run_dir / OLD_DIRNAME).exists():
                    shutil.rmtree(run_dir / OLD_DIRNAME)  # superseded by the good newer one
                if events:
                    events.append(f"resumed from {name} at step {state.step}")
                return Resumed(state, cand, events, telemetry)
        msg = f"checkpoint {cand} damaged: {why}; discarded"
        print(f"warning: {msg}", file=sys.stderr)
        events.append(msg)
        if owner:
            shutil.rmtree(cand, ignore_errors=True)
    if events:
        events.append("no usable checkpoint left: training restarts from step 0")
        print(f"warning: {events[-1]} in {run_dir}", file=sys.stderr)
    return Resumed(None, None, events, None)


def resume_format_problem(run_dir: Path, *, sharded: bool) -> str | None:
    """Why the resume checkpoint in `run_dir` cannot be used by a run with(out) `train.sharding: fsdp`.

    A sharded checkpoint holds each rank's slice of the weights and optimizer state and an unsharded
    one the whole of both; neither can be loaded as the other. It is not damaged either, so it is
    refused with the fix rather than discarded (that would throw away the run's progress). Cheap: it
    reads directory entries only, so callers ask before loading any model.
    """
    for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
        cand = Path(run_dir) / name
        if not cand.is_dir():
            continue
        is_sharded = (cand / SHARDED_MARKER).is_file()
        is_unsharded = not is_sharded and any((cand / f).is_file() for f in ("model.pt", "optim.pt"))
        if is_sharded and not sharded:
            return (f"{cand} is the resume checkpoint of a sharded run (train.sharding: fsdp) and this run is "
                    "not sharded: rerun with train.sharding=fsdp under torchrun (the process count may differ), "
                    f"or delete {cand} to start over")
        if is_unsharded and sharded:
            return (f"{cand} is the resume checkpoint of an unsharded run and this run sets train.sharding: fsdp: "
                    f"rerun with train.sharding=none to resume it, or delete {cand} to start over sharded")
    return None


def count_rows(data: bytes) -> int:
    """Complete, parseable JSON rows at the head of a JSONL byte string (stops at the first bad line)."""
    n = 0
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is empty or a torn write
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            break
        n += 1
    return n


def remove_orphans(run_dir: Path) -> list[Path]:
    """Remove temp dirs of checkpoint / final-model writes killed midway, and temp files of atomic
    writes. The caller owns `run_dir` (a lock or a single process), so nothing here is in flight."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in list(run_dir.glob(TMP_PREFIX + "*")) + list(run_dir.glob(".model-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed + remove_temporaries(run_dir)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
