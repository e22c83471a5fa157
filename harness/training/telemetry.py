"""Per-step stability telemetry (JSONL beside the checkpoint) and peak-memory tracking."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import torch

from harness.io import append_jsonl, atomic_write_bytes, atomic_write_jsonl, iter_jsonl

TELEMETRY_FILENAME = "telemetry.jsonl"


class TelemetryLog:
    """Append-only JSONL of step rows. On resume it is cut back to the checkpoint's row count, so
    steps replayed after a crash are not duplicated."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / TELEMETRY_FILENAME
        self.rows = 0

    def truncate_to(self, n_rows: int) -> None:
        rows = list(iter_jsonl(self.path))[:n_rows] if self.path.exists() else []
        atomic_write_jsonl(self.path, rows)
        self.rows = len(rows)

    def restore(self, saved: bytes | None, n_rows: int) -> None:
        """Make the file hold exactly the `n_rows` rows of the resumed state: the checkpoint's own
        copy when it has one (exact even if the live file was torn), else the live file's first
        `n_rows` intact rows (the checkpoint loader checked there are that many)."""
        if saved is not None:
            atomic_write_bytes(self.path, saved)
            self.rows = n_rows
            return
        rows = []
        if self.path.exists() and n_rows:
            for line in self.path.read_bytes().split(b"\n")[:-1]:
                if len(rows) == n_rows:
                    break
                if line.strip():
                    rows.append(json.loads(line))
        atomic_write_jsonl(self.path, rows)
        self.rows = len(rows)

    def append(self, row: dict) -> None:
        append_jsonl(self.path, {k: _finite_or_none(v) for k, v in row.items()})
        self.rows += 1


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


class PeakMemory:
    """Peak memory of the training section: CUDA max allocated, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.05):
        self.device = device
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            try:
                with open("/proc/self/statm") as fh:
                    rss = int(fh.read().split()[1]) * page
                self.peak = max(self.peak, rss)
            except OSError:
                return
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
