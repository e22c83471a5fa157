"""Task rewards for training objectives (contract v2): ``reward(examples, completions) -> [float]``.

A neutral module between the task definitions and the scorers: the training stage must not import
evaluation code, so the runner looks a task's reward up here and hands the function to the stage
(``TrainingSetup.reward``). The rewards reuse the evaluation scorers, so a training reward and the
benchmark metric can never disagree:
- gsm8k: 1.0 when the completion's extracted final answer equals the reference answer, else 0.0;
- humaneval: 1.0 when the completion passes the problem's tests in the confined sandbox, else 0.0.
Other tasks have no reward; an objective that needs one is refused before training starts.

One small function per task and one table, so the task registry (issue #13) can move each reward
next to its task definition.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from harness.errors import ConfigError

RewardFn = Callable[[Sequence[Any], Sequence[str]], list[float]]


def gsm8k_reward(examples: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """Answer match with the evaluation's extraction and exact-rational comparison."""
    from harness.evaluation.gsm8k import answers_match, extract_answer, normalize_number

    out = []
    for ex, text in zip(examples, completions, strict=True):
        target = getattr(ex, "answer", None)
        if target is None:
            raise ValueError(f"gsm8k example {getattr(ex, 'id', '?')} has no reference answer; cannot compute its reward")
        out.append(1.0 if answers_match(extract_answer(text), normalize_number(str(target))) else 0.0)
    return out


def humaneval_reward(examples: Sequence[Any], completions: Sequence[str], *, timeout_s: float = 5.0) -> list[float]:
    """Pass/fail of the problem's tests, run only in the evaluation's confined sandbox."""
    from harness.evaluation.humaneval import evaluate_humaneval

    problems, per_problem = [], []
    for ex, text in zip(examples, completions, strict=True):
        meta = getattr(ex, "meta", {}) or {}
        missing = [k for k in ("task_id", "code_prompt", "test", "entry_point") if k not in meta]
        if missing:
            raise ValueError(f"humaneval example {getattr(ex, 'id', '?')} lacks {missing}; cannot run its tests")
        # a unique id per completion: the same problem appears n_samples times in a group
        problems.append({"task_id": f"{meta['task_id']}#{len(problems)}", "prompt": meta["code_prompt"],
                         "test": meta["test"], "entry_point": meta["entry_point"]})
        per_problem.append([text])
    _, rows = evaluate_humaneval(problems, per_problem, k_list=(1,), timeout_s=timeout_s)
    return [1.0 if row["passed"][0] else 0.0 for row in rows]


TASK_REWARDS: dict[str, RewardFn] = {"gsm8k": gsm8k_reward, "humaneval": humaneval_reward}


def task_reward(task_name: str) -> RewardFn | None:
    """The reward function of a task, or None when the task defines none."""
    return TASK_REWARDS.get(task_name)


def check_reward_available(objective: Any, task_name: str, field: str = "task.name") -> None:
    """Refuse, before any work, an objective that needs a task reward on a task without one."""
    uses = getattr(objective, "uses_reward", None)
    if callable(uses) and uses() and task_name not in TASK_REWARDS:
        raise ConfigError(
            f"{field}: objective {objective.name!r} trains on a task reward, but task {task_name!r} has none "
            f"(tasks with rewards: {', '.join(sorted(TASK_REWARDS))}); pick one of those tasks or another objective"
        )
