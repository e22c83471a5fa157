"""`distill-bench run SUITE --executor ray`: every cell a Ray task; the driver commits results.

The driver (this module) plans nothing new: it takes the suite's unfinished cells, submits them
longest-first (`suite.longest_first`) as tasks that declare the resources of `ray:` in the suite,
shows one progress bar, and is the only writer of each cell's commit point (cell.json), which
makes "exactly one result per cell" hold whatever Ray retries. Two budgets bound the retries:
- a lost worker or node: Ray resubmits the task (`ray.max_retries`); the retry resumes from the
  cell's last checkpoint (cell_task explains where checkpoints live);
- an error of the cell itself: the driver resubmits it `ray.error_retries` times (a transient
  fault may pass), then records the cell as failed and the rest of the suite goes on. Errors of
  the user's input (DistillBenchError: configuration, data, non-finite abort) fail at once.
The worker side is harness.cell_task.
"""

from __future__ import annotations

import hashlib
import importlib.util
import secrets
import socket
import traceback
from pathlib import Path
from typing import Any

from harness.cell_task import PROBE_NAME, CellTaskSpec, run_baseline_summaries_task, run_cell_task
from harness.config import CellResources, SuiteConfig
from harness.errors import ConfigError, DistillBenchError
from harness.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

INSTALL_HINT = 'pip install -e ".[ray]"  (or: pip install "ray>=2.9")'


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def check_ray_available() -> None:
    """Refuse `--executor ray` before any work when Ray is not installed."""
    if not ray_installed():
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}")


def cell_resources(cfg: SuiteConfig, cell) -> tuple[CellResources, str]:
    """The resources a cell asks for and the config field they come from (for error messages)."""
    if cell.kind == "baseline":
        return cfg.ray.baseline, "ray.baseline"
    if cell.label in cfg.ray.per_objective:
        return cfg.ray.per_objective[cell.label], f"ray.per_objective.{cell.label}"
    return cfg.ray.trained, "ray.trained"


def task_options(res: CellResources, cluster_gpus: float) -> dict[str, Any]:
    """Ray resource options; `num_gpus: auto` is 1 GPU on a cluster that has GPUs, else none."""
    gpus = (1.0 if cluster_gpus > 0 else 0.0) if res.num_gpus == "auto" else float(res.num_gpus)
    opts: dict[str, Any] = {"num_cpus": float(res.num_cpus), "num_gpus": gpus}
    if res.memory_gb is not None:
        opts["memory"] = int(res.memory_gb * 1024**3)
    return opts


def task_processes(res: CellResources, opts: dict[str, Any]) -> int:
    if res.processes is not None:
        return res.processes
    return int(opts["num_gpus"]) if opts["num_gpus"] > 1 else 1


def check_feasible(requests: dict[str, dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """A task no node can hold would wait forever: refuse it up front, naming the field."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    for field_name, opts in requests.items():
        need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts.get("memory", 0)}
        if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v) for node in alive):
            continue
        biggest = {k: max((node.get(k, 0.0) for node in alive), default=0.0) for k in need}
        raise ConfigError(
            f"{field_name}: a cell asks for {opts['num_cpus']:g} CPUs, {opts['num_gpus']:g} GPUs"
            + (f", {opts['memory'] / 1024**3:.1f} GiB memory" if opts.get("memory") else "")
            + f" but the largest node of this Ray cluster has {biggest['CPU']:g} CPUs, {biggest['GPU']:g} GPUs, "
            f"{biggest['memory'] / 1024**3:.1f} GiB memory; lower {field_name} (e.g. {field_name}.num_gpus=auto) "
            "or add a node that large")


def run_on_ray(runner, cells: list, *, address: str | None = None, plugins: list[str] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run `cells` (already planned and snapshotted by the caller) on a Ray cluster; return
    {"done": [...], "failed": {cell_id: error}, "skipped": n}. Connects to `address` (`auto`,
    `ray://host:10001`, RAY_ADDRESS, or a new local cluster when None); a cluster this call starts,
    it also stops. An already initialized Ray (tests, notebooks) is used as is."""
    import ray
    from tqdm.auto import tqdm

    from harness.suite import longest_first

    cfg: SuiteConfig = runner.cfg
    todo = [c for c in cells if not runner.is_done(c)]
    skipped = len(cells) - len(todo)
    if skipped:
        print(f"{skipped} finished cells skipped (results in {runner.results_dir / 'cells'})")
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
        started_here = True
    try:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        plans = {}
        requests = {}
        for c in todo:
            res, field_name = cell_resources(cfg, c)
            opts = task_options(res, cluster_gpus)
            plans[c.cell_id] = (opts, task_processes(res, opts) if c.kind == "trained" else 1)
            requests[field_name] = opts
        check_feasible(requests, ray.nodes())

        spec = _task_spec(runner, plugins or [])
        outcome: dict[str, Any] = {"done": [], "failed": {}, "skipped": skipped}
        bar = tqdm(total=len(todo), desc=f"suite {cfg.name} (ray)", unit="cell", disable=not progress)
        by_ref: dict[Any, Any] = {}
        try:
            summaries_ref, summaries_pending = _baseline_summaries_ref(runner, todo, spec, cluster_gpus)
            remote_cell = ray.remote(run_cell_task)
            errors: dict[str, int] = {}

            def submit(cell) -> None:
                opts, processes = plans[cell.cell_id]
                arg = summaries_ref if _needs_summaries(cfg, cell) else None
                ref = remote_cell.options(**opts, max_retries=cfg.ray.max_retries, retry_exceptions=False,
                                          name=f"cell:{cell.cell_id}").remote(spec, cell.as_dict(), processes, arg)
                by_ref[ref] = cell

            for cell in longest_first(cfg, todo):
                submit(cell)
            while by_ref:
                waiting = list(by_ref) + ([summaries_ref] if summaries_pending else [])
                ready, _ = ray.wait(waiting, num_returns=1)
                if summaries_pending and ready[0] == summaries_ref:
                    # Kept beside the results like the local executor's; a failure reaches the
                    # DialogSum cells, which depend on this object, as their own error.
                    summaries_pending = False
                    try:
                        atomic_write_json(runner.baseline_outputs_path(), ray.get(summaries_ref))
                    except Exception as exc:  # noqa: BLE001
                        print(f"DialogSum baseline summaries failed: {exc}")
                    continue
                cell = by_ref.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - every task failure is classified below
                    error, retry = _classify(exc, errors.get(cell.cell_id, 0), cfg)
                    if retry:
                        errors[cell.cell_id] = errors.get(cell.cell_id, 0) + 1
                        print(f"cell {cell.cell_id} raised an error; retrying ({errors[cell.cell_id]}/"
                              f"{cfg.ray.error_retries}): {error.splitlines()[-1] if error else ''}")
                        submit(cell)
                        continue
                    _commit_failed(runner, cell, error, errors.get(cell.cell_id, 0))
                    outcome["failed"][cell.cell_id] = error
                else:
                    commit_result(runner, cell, result)
                    outcome["done"].append(cell.cell_id)
                bar.update(1)
                bar.set_postfix_str(cell.cell_id)
        except KeyboardInterrupt:
            # Cancelling (not killing) raises KeyboardInterrupt inside each task: training writes
            # a checkpoint and stops, so rerunning the command resumes every cell.
            for ref in list(by_ref):
                ray.cancel(ref, force=False)
            raise
        finally:
            bar.close()
        return outcome
    finally:
        (runner.results_dir / PROBE_NAME).unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def commit_result(runner, cell, result: dict[str, Any]) -> None:
    """Write a finished cell: its returned files (return storage) first, cell.json last."""
    cdir = runner.cell_dir(cell)
    for rel, data in sorted((result.get("files") or {}).items()):
        target = (cdir / rel).resolve()
        if cdir.resolve() not in target.parents or rel == "cell.json":
            raise ValueError(f"cell {cell.cell_id} returned a file outside its directory, or its cell.json: {rel!r}")
        atomic_write_bytes(target, data)
    runner.commit_cell(cell, result["record"])


def _commit_failed(runner, cell, error: str, error_retries: int) -> None:
    cdir = runner.cell_dir(cell)
    attempts = []
    if (cdir / "attempts.jsonl").exists():
        from harness.io import read_jsonl

        attempts = read_jsonl(cdir / "attempts.jsonl")
    record = {"schema_version": 1, "cell_id": cell.cell_id, "kind": cell.kind, "objective": cell.objective,
              "label": cell.label, "objective_params": cell.params, "task": cell.task, "seed": cell.seed,
              "sweep": cell.sweep, "status": "failed", "error": error,
              "executor": {"name": "ray", "error_retries": error_retries, "attempts": attempts}}
    runner.commit_cell(cell, record)


def _classify(exc: BaseException, error_retries_used: int, cfg: SuiteConfig) -> tuple[str, bool]:
    """(message, retry?) for a task that ended in an exception."""
    from ray.exceptions import RayTaskError, TaskCancelledError

    if isinstance(exc, TaskCancelledError):
        raise KeyboardInterrupt
    if isinstance(exc, RayTaskError):
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        message = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).strip().splitlines()[-1]
        if isinstance(cause, DistillBenchError):
            return message, False  # the input is wrong: the same input fails again
        return message, error_retries_used < cfg.ray.error_retries
    # WorkerCrashedError / NodeDiedError / OutOfMemoryError after Ray's own retries.
    lost = f"worker lost {cfg.ray.max_retries + 1} times (ray.max_retries={cfg.ray.max_retries})"
    return f"{type(exc).__name__}: {lost}: " + "".join(traceback.format_exception_only(exc)).strip()[-1000:], False


def _needs_summaries(cfg: SuiteConfig, cell) -> bool:
    return cell.task == "dialogsum" and cfg.eval.dialogsum.baseline != "references"


def _baseline_summaries_ref(runner, todo: list, spec: CellTaskSpec, cluster_gpus: float):
    """(object, pending): the DialogSum baseline summaries every DialogSum cell takes as its
    argument (Ray starts those cells once it exists), read from results/ when present, else
    generated by one task (pending: the driver writes the file when it is ready)."""
    import ray

    if not any(_needs_summaries(runner.cfg, c) for c in todo):
        return None, False
    path = runner.baseline_outputs_path()
    if path.exists():
        return ray.put(read_json(path)), False
    opts = task_options(runner.cfg.ray.baseline, cluster_gpus)
    ref = ray.remote(run_baseline_summaries_task).options(
        **opts, max_retries=runner.cfg.ray.max_retries, name="dialogsum-baseline-summaries").remote(spec)
    return ref, True


def _task_spec(runner, plugins: list[str]) -> CellTaskSpec:
    """Plain data for every task, and the probe file that tells a worker whether it shares results/."""
    results_root = runner.results_dir.parent.resolve()
    token = secrets.token_hex(16)
    atomic_write_text(runner.results_dir / PROBE_NAME, token)
    key = hashlib.sha256(f"{socket.gethostname()}:{runner.results_dir.resolve()}".encode()).hexdigest()[:16]
    return CellTaskSpec(suite=runner.cfg.model_dump(mode="json"), results_root=str(results_root),
                        storage=runner.cfg.ray.storage, probe_token=token, scratch_root=runner.cfg.ray.scratch_dir,
                        scratch_key=key, plugins=[str(Path(p).resolve()) for p in plugins],
                        data_dir=str(runner.data_dir) if runner.data_dir else None)


