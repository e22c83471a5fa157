"""The contract between the evaluation driver and a task's scoring module, and the protocol record.

A task's YAML names its scoring module (`scorer: package.module`). The module provides:

    score(ctx: ScoreContext) -> tuple[dict, list[dict]]        required: (aggregate, per-example rows)
    generation_overrides(eval_cfg) -> dict                     optional: eval-config values that override
                                                               the YAML's `generation:` (keys of GenerationDefaults)
    baseline_source(eval_cfg) -> "teacher" | "student_init" | "references"
                                                               optional, with `needs.baseline_outputs`: whose
                                                               outputs `ctx.baseline_outputs` holds (default teacher;
                                                               "references" means none are generated)
    RULES_FILES: tuple[Path, ...]                              optional: data files that drive scoring (regexes,
                                                               judge prompts); their contents are hashed into the protocol
    reward(examples, completions) -> list[float]               optional: a training reward for contract-v2 objectives
                                                               (looked up by harness.task_rewards)
    preflight_problems(options, eval_source, data_dir, where) -> [(problem, fix)]
                                                               optional: what the task's `eval.<task>` options need
                                                               beyond its sources, checked before any model loads

The driver generates (`ctx.outputs`, n per prompt, prompt-major, with `ctx.params`), the module
scores. Under a process group every rank calls `score` with the same context; per-example work that
costs (running code, asking a judge) goes through `ctx.shards.map` so each rank does its share, and
work that cannot be split through `ctx.shards.on_writer`; only rank 0 writes what `score` returns.
The recorded protocol is built here from what ran: the resolved task definition, the generation
settings used, the rules files' hashes, and the scorer's own additions.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.data.taskdef import TaskDef
from harness.errors import ConfigError
from harness.generation import GenerationOutput, GenerationParams
from harness.ranks import Shards


@dataclass
class ScoreContext:
    """Everything a scoring module may use; built by the evaluation driver for one task."""

    task: TaskDef
    task_cfg: Any  # harness.config.TaskConfig (limit, sources)
    eval_cfg: Any  # harness.config.EvalConfig
    examples: list
    prompts: list[str]
    outputs: list[GenerationOutput]
    params: GenerationParams
    model: Any
    tokenizer: Any
    data_dir: Path | None
    seed: int = 0
    baseline_outputs: dict[str, str] | None = None  # example id -> the baseline model's output text
    baseline_name: str | None = None  # which model wrote them (recorded in the protocol)
    is_baseline_model: bool = False  # the evaluated model is the one that wrote the baseline outputs
    extra: dict[str, Any] = field(default_factory=dict)
    shards: Shards = field(default_factory=Shards)  # this process's share of the work (one process: all of it)

    def samples(self, i: int) -> list[GenerationOutput]:
        """The `params.n` outputs of prompt i."""
        n = self.params.n
        return self.outputs[i * n : (i + 1) * n]


def load_scorer(task: TaskDef) -> ModuleType:
    """The task's scoring module; a clear error naming the YAML field when it cannot be used."""
    try:
        module = importlib.import_module(task.scorer)
    except ImportError as exc:
        raise ConfigError(f"task {task.name!r}: scorer {task.scorer!r} cannot be imported ({exc}); set `scorer:` in the "
                          "task YAML to an importable module that defines score(ctx)") from None
    if not callable(getattr(module, "score", None)):
        raise ConfigError(f"task {task.name!r}: scorer module {task.scorer!r} defines no score(ctx) function")
    return module


def generation_params(task: TaskDef, eval_cfg: Any, seed: int = 0) -> GenerationParams:
    """Decoding for `task`: its YAML `generation:` + `stop:`, overridden by the scorer's eval-config values.

    Sampling uses the cell's seed; greedy decoding does not depend on it and records seed 0.
    """
    scorer = load_scorer(task)
    gen = task.generation.model_dump()
    override = getattr(scorer, "generation_overrides", None)
    if override is not None:
        extra = dict(override(eval_cfg))
        unknown = set(extra) - set(gen)
        if unknown:
            raise ConfigError(f"task {task.name!r}: scorer overrides unknown generation keys {sorted(unknown)}")
        gen.update(extra)
    return GenerationParams(max_new_tokens=gen["max_new_tokens"], temperature=gen["temperature"], top_p=gen["top_p"],
                            stop=tuple(task.stop), n=gen["n"], seed=seed if gen["temperature"] > 0 else 0)


def baseline_source(task: TaskDef, eval_cfg: Any) -> str | None:
    """Whose outputs the task's scorer compares against, or None when it needs none."""
    if not task.needs.baseline_outputs:
        return None
    fn = getattr(load_scorer(task), "baseline_source", None)
    return fn(eval_cfg) if fn is not None else "teacher"


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def protocol_record(task: TaskDef, params: GenerationParams, **extra: Any) -> dict[str, Any]:
    """The protocol that ran, serialized from its inputs, with one hash over all of them.

    `definition` is the resolved task (every YAML field after validation and defaults), `decoding`
    the generation settings actually passed to the backend, `rules_files` the hashes of the data
    files the scorer reads. Edit any of them and the recorded protocol (and its hash) changes.
    """
    scorer = load_scorer(task)
    rules = {}
    for path in getattr(scorer, "RULES_FILES", ()):
        path = Path(path)
        rules[path.name] = _sha(path.read_bytes())
    definition = task.model_dump(mode="json")
    record = {
        "task": task.name,
        "scorer": task.scorer,
        "definition": definition,
        "definition_hash": _sha(json.dumps(definition, sort_keys=True)),
        "decoding": params.as_dict(),
        "rules_files": rules,
        **extra,
    }
    record["protocol_hash"] = _sha(json.dumps({k: v for k, v in record.items() if k != "protocol_hash"},
                                              sort_keys=True, default=str))
    return record
