"""Which teacher each task distils from, and teacher preparation (SFT on the task first).

The paper distils from a teacher fine-tuned on each task. A suite names a teacher per task
(`tasks[].teacher`, default the suite's `teacher`) and may declare `teacher_prep`: the training
stage's own `sft` on the task's training split, LoRA or full. A prepared teacher is keyed by the
content hash of everything that determines it (base model, its revision and resolved checkpoint,
the prep settings, and the training examples themselves), written once under
`<cache>/prepared_teachers/<task>-<hash>/` (resumable like any `train` run) and reused by every
cell of the task, every shard and every later run; its provenance goes into each cell.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ModelSpec, RunConfig, SuiteConfig, TaskConfig
from harness.io import atomic_write_json, read_json
from harness.paths import cache_dir

PREPARED_DIRNAME = "prepared_teachers"


def base_teacher(cfg: SuiteConfig, task: TaskConfig) -> ModelSpec:
    """The task's teacher before any preparation."""
    return task.teacher if task.teacher is not None else cfg.teacher


def uses_task_teachers(cfg: SuiteConfig) -> bool:
    """Does any cell's teacher differ from the suite's single base teacher? (Then cell ids name it.)"""
    return cfg.teacher_prep is not None or any(t.teacher is not None for t in cfg.tasks)


def teacher_tag(cfg: SuiteConfig, task: TaskConfig) -> str:
    """A short, path-safe name of the task's teacher for cell ids: `Qwen2-7B-Instruct+sft-lora`."""
    name = base_teacher(cfg, task).label().rstrip("/").split("/")[-1]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "teacher"
    if cfg.teacher_prep is not None:
        tag += "+sft" + ("-lora" if cfg.teacher_prep.lora is not None else "")
    return tag


@dataclass
class TaskTeacher:
    spec: ModelSpec  # what to load: the base teacher, or the prepared checkpoint directory
    base: ModelSpec
    provenance: dict[str, Any]


def prep_key(cfg: SuiteConfig, task: TaskConfig, examples_digest: str, base_dir: Path) -> str:
    """Content hash of a preparation's inputs (the same inputs always map to the same prepared teacher)."""
    prep = cfg.teacher_prep
    assert prep is not None
    payload = {
        "base": base_teacher(cfg, task).model_dump(mode="json"), "base_dir": str(base_dir),
        # Sharding changes how the work is spread over processes, not what is trained (like the process
        # count, which is not part of the key either), so it shares the unsharded preparation's key.
        "prep": prep.model_dump(mode="json", exclude={"train": {"sharding"}}), "task": task.name, "examples": examples_digest,
        "allow_head_slice": cfg.allow_head_slice,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _examples_digest(task: TaskConfig, data_dir: Path | None, seed: int) -> str:
    from harness.data import get_task, load_examples

    examples = load_examples(get_task(task.name), "train", source=task.train_source, limit=task.train_limit,
                             data_dir=data_dir, seed=seed)
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.prompt, ex.response], ensure_ascii=False).encode())
    return h.hexdigest()


def _prepare(cfg: SuiteConfig, task: TaskConfig, base: ModelSpec, base_dir: Path, key: str, data_dir: Path | None,
             train_dir: Path, provenance_file: Path, progress: bool) -> None:
    from harness.pipeline import run_training
    from harness.training.distributed import init_distributed

    prep = cfg.teacher_prep
    assert prep is not None
    # The teacher trains as the stage's "student" with `sft` (no teacher signal is needed).
    run_cfg = RunConfig(teacher=base, student=base.model_copy(update={"lora": prep.lora}),
                        task=task.model_copy(update={"teacher": None}),
                        objective={"name": prep.objective, "label": "teacher_prep"}, train=prep.train,
                        seed=prep.seed, output_dir=str(train_dir), data_dir=str(data_dir) if data_dir else None,
                        allow_head_slice=cfg.allow_head_slice)
    result = run_training(run_cfg, train_dir, progress=progress, save_model=True)
    summary = result.summary
    del result
    if init_distributed().is_main:
        # Written last: its presence means the prepared checkpoint is complete (an interrupted
        # preparation resumes from its checkpoint on the next run).
        atomic_write_json(provenance_file, {
            "base": base.model_dump(mode="json", exclude_none=True), "base_dir": str(base_dir),
            "method": prep.objective, "lora": prep.lora.model_dump(mode="json") if prep.lora else None,
            "train": prep.train.model_dump(mode="json"), "seed": prep.seed, "task": task.name,
            "train_source": task.train_source, "train_limit": task.train_limit, "key": key,
            "model_dir": str(train_dir / "model"),
            "optimizer_steps": summary.get("optimizer_steps"), "prompts_seen": summary.get("prompts_seen"),
        })


def _prepare_once(out: Path, provenance_file: Path, prepare) -> None:
    """Run `prepare` unless another process has finished (or is finishing) the same preparation.

    Two suites, shards or Ray workers may need one teacher at once: the first takes an exclusive
    lock and trains; the others wait on it (flock: released even if the holder is killed) and then
    find the provenance file and reuse the checkpoint. Inside one torchrun job every rank trains
    together, so rank 0 alone takes the lock and tells the other ranks whether to train.
    """
    from harness.locks import FileLock
    from harness.training.distributed import init_distributed

    dist = init_distributed()
    lock = FileLock(out.parent / ".locks" / f"{out.name}.lock", what=f"the preparation of {out.name}")
    if dist.is_main:
        lock.acquire(wait=True, on_wait=lambda msg: print(f"teacher prep: {msg}", file=sys.stderr, flush=True))
    try:
        if dist.broadcast_object(not provenance_file.is_file()):
            prepare()
        dist.barrier()  # no rank reads the provenance before rank 0 has written it
    finally:
        lock.release()


def task_teacher(cfg: SuiteConfig, task: TaskConfig, data_dir: Path | None, *, progress: bool = True) -> TaskTeacher:
    """The teacher the task's cells distil from, preparing (or reusing) it first when the suite says so."""
    base = base_teacher(cfg, task)
    if cfg.teacher_prep is None:
        return TaskTeacher(base, base, {"model": base.model_dump(mode="json", exclude_none=True), "prepared": None})
    from harness.modeling import resolve_model_dir

    prep = cfg.teacher_prep
    base_dir = resolve_model_dir(base)
    key = prep_key(cfg, task, _examples_digest(task, data_dir, prep.seed), base_dir)
    out = cache_dir() / PREPARED_DIRNAME / f"{task.name}-{key}"
    train_dir = out / "train"
    provenance_file = out / "provenance.json"
    from harness.training.distributed import init_distributed

    # Rank 0's view for every rank (they must all take the same path). A finished preparation is
    # reused without the lock, so a read-only shared cache of prepared teachers still works.
    if not init_distributed().broadcast_object(provenance_file.is_file()):
        _prepare_once(out, provenance_file, lambda: _prepare(cfg, task, base, base_dir, key, data_dir, train_dir,
                                                            provenance_file, progress))
    provenance = read_json(provenance_file)
    spec = ModelSpec(name=provenance["model_dir"])
    return TaskTeacher(spec, base, {"model": spec.model_dump(mode="json", exclude_none=True), "prepared": provenance})
