"""Task definitions (harness/tasks/*.yaml) and example loaders for every source format.

Public API (see DESIGN.md, section Data):

    Example                      dataclass: id, fields, prompt, response, references, answer, meta
    get_task(name) -> TaskDef    a registered task (built-in YAML, entry point or --plugin), validated
    task_names(), describe_tasks(), register_task(...), load_task_file(path)   the task registry
    prompt_renderer(task, tokenizer) -> (Example -> prompt text)
    load_examples(task, split, source=None, limit=None, data_dir=None, seed=0) -> list[Example]
    render_chat_prompt(tokenizer, prompt, use_chat_template=True) -> str
"""

from harness.data.chat import prompt_renderer, render_chat_prompt
from harness.data.examples import (
    Example,
    extract_reference_answer,
    load_examples,
    normalize_number,
    resolve_source,
    source_available,
)
from harness.data.readers import read_records
from harness.data.registry import describe_tasks, get_task, load_task_file, register_task, task_names
from harness.data.taskdef import AnswerSpec, GenerationDefaults, MetricDecl, SourceDef, TaskDef, TaskNeeds

__all__ = [
    "AnswerSpec",
    "Example",
    "MetricDecl",
    "TaskNeeds",
    "describe_tasks",
    "load_task_file",
    "prompt_renderer",
    "register_task",
    "GenerationDefaults",
    "SourceDef",
    "TaskDef",
    "extract_reference_answer",
    "get_task",
    "load_examples",
    "normalize_number",
    "read_records",
    "render_chat_prompt",
    "resolve_source",
    "source_available",
    "task_names",
]
