"""Task rewards for training objectives (contract v2): ``reward(examples, completions) -> [float]``.

A neutral module between the task definitions and the scorers: the training stage must not import
evaluation code, so the pipeline looks a task's reward up here and hands the function to the stage
(``TrainingSetup.reward``). The rewards reuse the evaluation scorers, so a training reward and the
benchmark metric can never disagree:
- gsm8k: 1.0 when the completion's extracted final answer equals the reference answer, else 0.0;
- humaneval: 1.0 when the completion passes the problem's tests in the confined sandbox, else 0.0.
Other tasks have no reward; an objective that needs one is refused before training starts.

Each reward lives in its task's scoring module (`reward(examples, completions)`, e.g.
harness/tasks/gsm8k.py); this module only looks it up, so a plugin task gets a reward by defining one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.errors import ConfigError

RewardFn = Callable[[Sequence[Any], Sequence[str]], list[float]]


def task_reward(task_name: str) -> RewardFn | None:
    """The reward function of a task (its scoring module's `reward`), or None when it defines none."""
    from harness.data import get_task
    from harness.tasks.contract import load_scorer

    return getattr(load_scorer(get_task(task_name)), "reward", None)


def check_reward_available(objective: Any, task_name: str, field: str = "task.name") -> None:
    """Refuse, before any work, an objective that needs a task reward on a task without one."""
    uses = getattr(objective, "uses_reward", None)
    if callable(uses) and uses() and task_reward(task_name) is None:
        from harness.data import task_names

        with_reward = [t for t in task_names() if task_reward(t) is not None]
        raise ConfigError(
            f"{field}: objective {objective.name!r} trains on a task reward, but task {task_name!r} has none "
            f"(tasks with rewards: {', '.join(sorted(with_reward))}); pick one of those tasks or another objective, "
            "or give the task's scoring module a `reward(examples, completions)` function"
        )
