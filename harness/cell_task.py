"""What one Ray task does on its worker: run one suite cell and hand its result to the driver.

The task never writes cell.json: the driver is the only writer of a cell's commit point, so a
task that Ray retries, or a lost attempt that still finishes, can never commit a result twice.
Storage (README "Scaling out"):
- shared: the worker reaches the driver's results directory (same path on a shared filesystem);
  it trains and evaluates in the cell's own directory there, so a retry on any node resumes from
  the cell's last checkpoint;
- return: it works in a node-local scratch directory and returns the cell's files with the
  record; the driver writes them atomically. A retry resumes from the checkpoint only when it
  lands on the same node (elsewhere the cell starts over).
This module imports no Ray: it is plain code that a Ray task calls.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cells import CellSpec
from harness.errors import ConfigError

PROBE_NAME = ".storage_probe"
ATTEMPTS_NAME = "attempts.jsonl"

# The teacher of the last suite this worker process ran, reused by its next cell (Ray reuses worker
# processes); the local executor shares one teacher across cells in the same way.
_TEACHER: dict[str, Any] = {}


@dataclass
class CellTaskSpec:
    """Everything a worker needs, as plain data (the worker validates the suite again)."""

    suite: dict[str, Any]  # SuiteConfig as JSON
    results_root: str  # the driver's --results-dir
    storage: str  # "auto" | "shared" | "return"
    probe_token: str
    scratch_root: str | None
    scratch_key: str  # names this results directory inside the scratch root
    plugins: list[str] = field(default_factory=list)
    data_dir: str | None = None


def run_cell_task(spec: CellTaskSpec, cell: dict[str, Any], processes: int,
                  baseline_outputs: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    """Train and evaluate one cell; return {"record", "storage", "files" (return storage only)}."""
    from harness.io import append_jsonl, read_jsonl

    runner, shared = _runner(spec)
    cell_obj = CellSpec(**cell)
    cdir = runner.cell_dir(cell_obj)
    attempts_file = cdir / ATTEMPTS_NAME
    previous = read_jsonl(attempts_file) if attempts_file.exists() else []
    append_jsonl(attempts_file, {"attempt": len(previous) + 1, "pid": os.getpid(), "node": socket.gethostname(),
                                 "started_at": time.time(), "storage": "shared" if shared else "return"})
    try:
        record = runner.compute_cell(cell_obj, baseline_outputs=baseline_outputs, processes=processes)
    finally:
        _keep_teacher(runner)
    summary_file = cdir / "train" / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    record["executor"] = {"name": "ray", "storage": "shared" if shared else "return", "processes": processes,
                          "resumed_from_step": summary.get("resumed_from_step"),
                          "attempts": read_jsonl(attempts_file)}
    result: dict[str, Any] = {"record": record, "storage": "shared" if shared else "return"}
    if not shared:
        result["files"] = pack_cell_files(cdir, keep_models=runner.cfg.keep_models)
        # The driver now holds everything; a scratch copy would only fill the node's disk.
        shutil.rmtree(cdir, ignore_errors=True)
    return result


def run_baseline_outputs_task(spec: CellTaskSpec, tasks: list[str]) -> dict[str, dict[str, str]]:
    """The baseline outputs of the tasks that compare against them ({task: {example id: text}}),
    generated once per suite run and shared by every cell."""
    runner, _ = _runner(spec)
    try:
        return {task: runner.generate_baseline_outputs(task) for task in tasks}
    finally:
        _keep_teacher(runner)


def pack_cell_files(cdir: Path, *, keep_models: bool) -> dict[str, bytes]:
    """The cell directory's files by relative path, without resume state (checkpoints) and without
    the trained model unless the suite keeps models."""
    files: dict[str, bytes] = {}
    for path in sorted(cdir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(cdir)
        top = rel.parts[:2]
        if rel.name.startswith(".") or any(p.startswith((".checkpoint", "checkpoint")) for p in rel.parts):
            continue
        if not keep_models and top == ("train", "model"):
            continue
        files[rel.as_posix()] = path.read_bytes()
    return files


def _runner(spec: CellTaskSpec):
    """A SuiteRunner over the shared results root or this node's scratch root, and which one it is."""
    from harness.config import SuiteConfig
    from harness.suite import SuiteRunner

    _prepare_worker(spec.plugins)
    cfg = SuiteConfig.model_validate(spec.suite)
    shared = storage_is_shared(spec, cfg.name)
    root = Path(spec.results_root) if shared else scratch_dir(spec)
    runner = SuiteRunner(cfg, root, data_dir=spec.data_dir, progress=False)
    key = json.dumps(cfg.teacher.model_dump(mode="json"), sort_keys=True)
    if key in _TEACHER:
        runner._teacher, runner._teacher_tok = _TEACHER[key]
    return runner, shared


def _keep_teacher(runner) -> None:
    if runner._teacher is not None:
        _TEACHER.clear()
        _TEACHER[json.dumps(runner.cfg.teacher.model_dump(mode="json"), sort_keys=True)] = (runner._teacher,
                                                                                            runner._teacher_tok)


def storage_is_shared(spec: CellTaskSpec, suite_name: str) -> bool:
    """Shared when this worker sees the driver's probe file (same path, same token)."""
    if spec.storage == "return":
        return False
    probe = Path(spec.results_root) / suite_name / PROBE_NAME
    try:
        reachable = probe.read_text().strip() == spec.probe_token
    except OSError:
        reachable = False
    if spec.storage == "shared" and not reachable:
        raise ConfigError(f"ray.storage is `shared` but node {socket.gethostname()} cannot reach the results directory "
                          f"{Path(spec.results_root) / suite_name}: mount it at the same path on every node, or set "
                          "ray.storage=return (workers send results to the driver)")
    return reachable


def scratch_dir(spec: CellTaskSpec) -> Path:
    base = Path(spec.scratch_root) if spec.scratch_root else Path(tempfile.gettempdir())
    return base / "distill-bench-ray" / spec.scratch_key


def _prepare_worker(plugins: list[str]) -> None:
    """Objective plugins the driver loaded from files, and quiet library progress bars (the driver
    shows the only bar)."""
    from objectives.base import load_plugin_file

    for f in plugins:
        load_plugin_file(f)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
