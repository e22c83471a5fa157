"""Prompt rendering: a task prompt as the model sees it."""

from __future__ import annotations

from typing import Any


def render_chat_prompt(tokenizer: Any, prompt: str, use_chat_template: bool = True) -> str:
    """The prompt as one user turn in the tokenizer's chat template, ready for the assistant's reply.

    Falls back to the raw prompt when chat templating is off or the tokenizer has no template
    (base models), so the same code serves instruct and base checkpoints.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def prompt_renderer(task_def: Any, tokenizer: Any):
    """Example -> rendered prompt text (chat template applied when the task says so).

    Training, rollouts and evaluation all render through this one function, so a task's prompt is
    the same wherever it is used.
    """
    return lambda ex: render_chat_prompt(tokenizer, ex.prompt, use_chat_template=task_def.use_chat_template)
