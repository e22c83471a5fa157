"""Glue between validated configs and the stages: load models and data, train, evaluate.

`distill-bench train` and `distill-bench eval` call in here; the suite runner reuses the same
functions so a suite cell is exactly a `train` followed by an `eval`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import EvalConfig, ModelSpec, RunConfig, TaskConfig, load_run_config, validate, apply_overrides
from harness.paths import cache_dir, data_dir as resolve_data_dir
from harness.training.loop import TrainingSetup, TrainResult, required_signal, train
from objectives.base import TeacherSignal, build_objective


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


def load_pair(teacher_spec: ModelSpec, student_spec: ModelSpec, *, need_teacher: bool = True,
              teacher: torch.nn.Module | None = None, allow_head_slice: bool = False) -> LoadedPair:
    """Load (or reuse) the teacher and load a fresh student; refuse mismatched vocabularies up front."""
    from harness.models import check_vocab_compat, load_model, resolve_model_dir

    device = pick_device()
    teacher_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher_dir = resolve_model_dir(teacher_spec)
    student_dir = resolve_model_dir(student_spec, teacher=teacher_spec)
    student, s_tok = load_model(student_spec, teacher=teacher_spec, dtype=torch.float32, device=str(device))
    t_tok = None
    columns = None
    if need_teacher or teacher is not None:
        if teacher is None:
            teacher, t_tok = load_model(teacher_spec, dtype=teacher_dtype, device=str(device))
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


def prompt_renderer(task_def, tokenizer):
    """Example -> rendered prompt text (chat template applied when the task says so)."""
    from harness.data import render_chat_prompt

    return lambda ex: render_chat_prompt(tokenizer, ex.prompt, use_chat_template=task_def.use_chat_template)


def task_stop_strings(task_def) -> tuple[str, ...]:
    return tuple(task_def.stop or ())


def teacher_cache_file(teacher_dir: Path | None, task: str) -> Path:
    key = hashlib.sha256(str(teacher_dir).encode()).hexdigest()[:16]
    return cache_dir() / "teacher_generations" / f"{task}-{key}.jsonl"


def build_setup(cfg: RunConfig, pair: LoadedPair, *, limit: int | None = None) -> TrainingSetup:
    from harness.data import get_task, load_examples

    task_def = get_task(cfg.task.name)
    examples = load_examples(task_def, "train", source=cfg.task.train_source,
                             limit=limit or cfg.task.train_limit, data_dir=resolve_data_dir(cfg.data_dir), seed=cfg.seed)
    return TrainingSetup(
        teacher=pair.teacher, student=pair.student, tokenizer=pair.tokenizer, examples=examples,
        render_prompt=prompt_renderer(task_def, pair.tokenizer), stop=task_stop_strings(task_def),
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
    # contract v2: a self-teaching objective (teacher_model() != "teacher") needs no teacher model
    needs_signal = required_signal(objective) != TeacherSignal.NONE and objective.teacher_model() == "teacher"
    need_teacher = needs_signal or _needs_teacher_generation(objective)
    pair = load_pair(cfg.teacher, cfg.student, need_teacher=need_teacher, teacher=teacher,
                     allow_head_slice=cfg.allow_head_slice)
    setup = build_setup(cfg, pair, limit=limit)
    return train(cfg, run_dir, setup, max_steps=max_steps, progress=progress, stop_after_step=stop_after_step,
                 save_model=save_model, dist=dist)


def _needs_teacher_generation(objective) -> bool:
    from objectives.base import SequenceSource

    mix = objective.source_mix(0.0)
    return any(src == SequenceSource.TEACHER and p > 0 for src, p in mix.items()) or objective.source == SequenceSource.TEACHER


def run_evaluation_cli(args) -> None:
    """`distill-bench eval MODEL --tasks ...`."""
    import yaml

    from harness.errors import ConfigError
    from harness.eval_runner import evaluate_model
    from harness.models import load_model

    raw: dict[str, Any] = {}
    if args.config:
        from harness.config import read_text_utf8, safe_load_yaml

        if not Path(args.config).is_file():
            raise ConfigError(f"--config {args.config!r} not found; pass the path to a YAML file")
        try:
            raw = safe_load_yaml(read_text_utf8(args.config, "--config")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {args.config} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {args.config} must hold a mapping at top level")
    raw = apply_overrides(raw, list(args.overrides))
    eval_cfg = validate(EvalConfig, raw.get("eval", {}), f"{args.config or '<cli>'}:eval")
    teacher_spec = validate(ModelSpec, raw["teacher"], "teacher") if raw.get("teacher") else None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    sources = {}
    for item in args.source:
        if "=" not in item:
            raise ConfigError(f"--source {item!r}: use TASK=SOURCE, e.g. gsm8k=file:data/test.jsonl")
        task, src = item.split("=", 1)
        sources[task.strip()] = src.strip()
    task_cfgs = [validate(TaskConfig, {"name": t, "eval_limit": args.limit, "eval_source": sources.get(t, "auto")},
                          f"--tasks {t}") for t in tasks]
    spec = validate(ModelSpec, {"name": args.model}, "model")
    device = pick_device()
    model, tok = load_model(spec, dtype=torch.float32, device=str(device))
    teacher = None
    if teacher_spec is not None:
        teacher, _ = load_model(teacher_spec, dtype=torch.float32, device=str(device))
    data_dir = resolve_data_dir(args.data_dir)
    baseline_outputs = None
    base_spec = None
    dialogsum = next((t for t in task_cfgs if t.name == "dialogsum"), None)
    if dialogsum is not None and eval_cfg.dialogsum.baseline != "references":
        from harness.eval_runner import generate_dialogsum_summaries

        base_spec = (validate(ModelSpec, {"name": args.baseline_model}, "--baseline-model") if args.baseline_model
                     else eval_cfg.dialogsum.baseline_model or teacher_spec)
        if base_spec is None:
            raise ConfigError("DialogSum win-rate needs a baseline: pass --baseline-model MODEL, a `teacher:` in --config, "
                              "or eval.dialogsum.baseline=references")
        base_model, base_tok = load_model(base_spec, dtype=torch.float32, device=str(device))
        baseline_outputs = {"dialogsum": generate_dialogsum_summaries(base_model, base_tok, dialogsum, eval_cfg, data_dir,
                                                                      progress=not args.no_progress)}
        del base_model
    results = evaluate_model(model, tok, task_cfgs, eval_cfg, Path(args.output_dir), data_dir=data_dir,
                             teacher=teacher, baseline_outputs=baseline_outputs, progress=not args.no_progress,
                             baseline_name=(base_spec.name or str(base_spec)) if base_spec is not None else None,
                             weights_from_checkpoint=True)
    import json

    print(json.dumps(results, indent=2, default=str))
