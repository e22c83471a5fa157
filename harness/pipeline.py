"""The one pipeline: load a checked teacher/student pair, prepare sequences, train a cell, evaluate a cell.

`distill-bench train`, `distill-bench eval` and `distill-bench run` (the suite runner) all call
these functions, so a suite cell is exactly a `train` followed by an `eval`. Argument parsing stays
in `harness.cli`; training lives in `harness.training`, evaluation in `harness.eval_runner` and
the task scorers: this module is the only one that uses both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import EvalConfig, ModelSpec, RunConfig, TaskConfig
from harness.paths import cache_dir, data_dir as resolve_data_dir
from harness.training.loop import TrainingSetup, TrainResult, train
from objectives.base import build_objective


@dataclass
class LoadedPair:
    """Teacher and student with one shared, checked tokenizer."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: Any
    teacher_dir: Path | None
    student_dir: Path
    logit_columns: int | None = None  # compare only this many logit columns (heads of different size)


def pick_device() -> torch.device:
    """This process's device. Under `torchrun` / `accelerate launch` this initializes the process
    group first, so each rank loads its models straight onto its own GPU (never all onto cuda:0)."""
    from harness.training.distributed import init_distributed

    return init_distributed().device


def teacher_dtype(device: torch.device) -> torch.dtype:
    """A teacher is only read (never trained): bf16 on CUDA halves its memory, as the suite's cells,
    the training stage and `distill-bench eval` all hold it; fp32 on CPU, where bf16 matmuls are not
    reliably faster and the CPU references were computed in fp32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_pair(teacher_spec: ModelSpec, student_spec: ModelSpec, *, need_teacher: bool = True,
              teacher: torch.nn.Module | None = None, allow_head_slice: bool = False) -> LoadedPair:
    """Load (or reuse) the teacher and load a fresh student; refuse mismatched vocabularies up front."""
    from harness.modeling import check_vocab_compat, load_model, resolve_model_dir

    device = pick_device()
    teacher_dir = resolve_model_dir(teacher_spec)
    student_dir = resolve_model_dir(student_spec, teacher=teacher_spec)
    student, s_tok = load_model(student_spec, teacher=teacher_spec, dtype=torch.float32, device=str(device))
    t_tok = None
    columns = None
    if need_teacher or teacher is not None:
        if teacher is None:
            teacher, t_tok = load_model(teacher_spec, dtype=teacher_dtype(device), device=str(device))
        else:
            from transformers import AutoTokenizer

            t_tok = AutoTokenizer.from_pretrained(teacher_dir)
        columns = check_vocab_compat(t_tok, s_tok, teacher, student, allow_head_slice=allow_head_slice)
        heads = {m.get_output_embeddings().weight.shape[0] for m in (teacher, student)}
        if heads == {columns}:
            columns = None  # heads already agree: no slicing
    if student_spec.lora is not None:
        student = _apply_lora(student, student_spec)
    return LoadedPair(teacher if need_teacher else None, student, s_tok, teacher_dir, student_dir, columns)


def _apply_lora(model, spec: ModelSpec):
    from peft import LoraConfig, get_peft_model

    lc = spec.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))


def teacher_cache_file(teacher_dir: Path | None, task: str) -> Path:
    key = hashlib.sha256(str(teacher_dir).encode()).hexdigest()[:16]
    return cache_dir() / "teacher_generations" / f"{task}-{key}.jsonl"


def build_setup(cfg: RunConfig, pair: LoadedPair, *, limit: int | None = None) -> TrainingSetup:
    from harness.data import get_task, load_examples, prompt_renderer

    task_def = get_task(cfg.task.name)
    examples = load_examples(task_def, "train", source=cfg.task.train_source,
                             limit=limit or cfg.task.train_limit, data_dir=resolve_data_dir(cfg.data_dir), seed=cfg.seed)
    return TrainingSetup(
        teacher=pair.teacher, student=pair.student, tokenizer=pair.tokenizer, examples=examples,
        render_prompt=prompt_renderer(task_def, pair.tokenizer), stop=tuple(task_def.stop),
        teacher_key=str(pair.teacher_dir), teacher_cache_path=teacher_cache_file(pair.teacher_dir, cfg.task.name),
        logit_columns=pair.logit_columns, reward=_task_reward(cfg),
    )


def _task_reward(cfg: RunConfig):
    """The task's reward function when the objective trains on one (contract v2), else None."""
    from harness.task_rewards import check_reward_available, task_reward

    objective = build_objective(cfg.objective.name, cfg.objective.params)
    check_reward_available(objective, cfg.task.name)
    return task_reward(cfg.task.name) if objective.uses_reward() else None


def run_training(cfg: RunConfig, run_dir: Path, *, max_steps: int | None = None, limit: int | None = None,
                 progress: bool = True, teacher: torch.nn.Module | None = None, stop_after_step: int | None = None,
                 save_model: bool = True) -> TrainResult:
    """`distill-bench train`: load, train (resuming if a checkpoint exists), save an HF checkpoint."""
    from harness.training.distributed import init_distributed

    dist = init_distributed()  # before any model load: it picks this rank's device
    objective = build_objective(cfg.objective.name, cfg.objective.params)
    from harness.task_rewards import check_reward_available

    check_reward_available(objective, cfg.task.name)  # before loading any model
    from harness.training.sharding import check_sharding

    check_sharding(cfg.train.sharding, objective.needs(), dist.world_size, contract_v2=objective.uses_contract_v2())
    from harness.errors import ConfigError
    from harness.training.checkpoint import resume_format_problem

    problem = resume_format_problem(Path(run_dir), sharded=cfg.train.sharding == "fsdp")  # before any model load
    if problem:
        raise ConfigError(problem)
    # the teacher model is loaded for its signal (not when the student teaches itself) or to generate
    need_teacher = objective.needs().loads_teacher
    pair = load_pair(cfg.teacher, cfg.student, need_teacher=need_teacher, teacher=teacher,
                     allow_head_slice=cfg.allow_head_slice)
    setup = build_setup(cfg, pair, limit=limit)
    return train(cfg, run_dir, setup, max_steps=max_steps, progress=progress, stop_after_step=stop_after_step,
                 save_model=save_model, dist=dist)


def evaluate_cell(model, tokenizer, task_cfgs: list[TaskConfig], eval_cfg: EvalConfig, out_dir: Path, *,
                  data_dir: Path | None, teacher=None, baseline_outputs=None, progress: bool = True, seed: int = 0,
                  baseline_name: str | None = None, logit_columns: int | None = None,
                  weights_from_checkpoint: bool = False, is_baseline_model: bool = False, dist=None) -> dict[str, Any]:
    """`distill-bench eval` and a suite cell's evaluation: every task's protocol, records and diagnostics.

    Under `torchrun` / `accelerate launch` (`dist`: the process group, default this process's) every
    rank calls this with the same model: each evaluates its share, rank 0 writes the files."""
    from harness.eval_runner import evaluate_model

    return evaluate_model(model, tokenizer, task_cfgs, eval_cfg, out_dir, data_dir=data_dir, teacher=teacher,
                          baseline_outputs=baseline_outputs, progress=progress, seed=seed, baseline_name=baseline_name,
                          logit_columns=logit_columns, weights_from_checkpoint=weights_from_checkpoint,
                          is_baseline_model=is_baseline_model, shards=eval_shards(dist))


def eval_shards(dist=None):
    """The evaluation's split over the process group (`harness.ranks`); one process outside torchrun."""
    from harness.ranks import Shards
    from harness.training.distributed import init_distributed

    return Shards(dist or init_distributed())


def baseline_source(task_name: str, eval_cfg: EvalConfig) -> str | None:
    """Whose outputs the task compares against ("teacher", "student_init", "references", "model"), or None."""
    from harness.data import get_task
    from harness.tasks.contract import baseline_source as source

    return source(get_task(task_name), eval_cfg)


def baseline_outputs(model, tokenizer, task_cfg: TaskConfig, eval_cfg: EvalConfig, data_dir: Path | None,
                     progress: bool = True, dist=None) -> dict[str, str]:
    """A baseline model's outputs on the task's eval prompts (example id -> text); under a process
    group every rank calls this, each generates its share, every rank gets all of them."""
    from harness.eval_runner import generate_baseline_outputs

    return generate_baseline_outputs(model, tokenizer, task_cfg, eval_cfg, data_dir, progress=progress,
                                     shards=eval_shards(dist))
