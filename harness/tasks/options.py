"""The built-in tasks' evaluation options: what `eval.gsm8k`, `eval.humaneval` and `eval.dialogsum`
may set in a suite. Each task's YAML names its model here (`options: harness.tasks.options:...`);
a plugin task names its own. harness.config validates `eval.<task>` against it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config import ModelSpec, StrictModel


class HumanEvalOptions(StrictModel):
    n_samples: int = Field(10, ge=1)
    k: list[int] = [1, 10]
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(768, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _k_le_n(self) -> "HumanEvalOptions":
        bad = [k for k in self.k if k > self.n_samples or k < 1]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= n_samples ({self.n_samples}); got k={bad}: raise n_samples or drop k")
        return self


class JudgeOptions(StrictModel):
    kind: Literal["rouge", "hf_model", "openai"] = "rouge"
    model: ModelSpec | None = None
    base_url: str | None = None
    api_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    order: Literal["random", "both"] = "random"
    seed: int = 0

    @model_validator(mode="after")
    def _complete(self) -> "JudgeOptions":
        if self.kind == "hf_model" and self.model is None:
            raise ValueError("judge kind `hf_model` needs `model`")
        if self.kind == "openai" and (not self.base_url or not self.api_model):
            raise ValueError("judge kind `openai` needs `base_url` and `api_model`")
        return self


class DialogSumOptions(StrictModel):
    max_new_tokens: int = Field(128, ge=1)
    baseline: Literal["teacher", "student_init", "references", "model"] = Field(
        "teacher", description="who writes the summaries the judge compares against: the task's teacher (prepared, "
                               "when the suite prepares teachers), the un-distilled student, the first reference, "
                               "or `model` (the explicit `baseline_model`)")
    baseline_model: ModelSpec | None = Field(None, description="the baseline's model when `baseline: model`")
    judge: JudgeOptions = JudgeOptions()

    @model_validator(mode="after")
    def _baseline_model(self) -> "DialogSumOptions":
        if (self.baseline == "model") != (self.baseline_model is not None):
            raise ValueError("give `baseline_model` exactly when `baseline: model` (an explicit model writes the "
                             "baseline summaries)")
        if self.baseline_model is not None and self.baseline_model.derive_from is not None:
            raise ValueError("`baseline_model` needs a `name` (a model to load), not `derive_from`")
        return self


class GSM8KOptions(StrictModel):
    max_new_tokens: int = Field(512, ge=1)
    protocols: list[Literal["paper", "lm_eval"]] = ["paper"]
    lm_eval_num_fewshot: int = Field(5, ge=0)
    # None: lm-eval's own budget for its gsm8k task (256 tokens), i.e. its protocol unchanged; a
    # number caps it (quick runs and tests, where an untrained model never emits a stop sequence).
    lm_eval_max_gen_toks: int | None = Field(None, ge=1)
