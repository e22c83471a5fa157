"""Task definitions (harness/tasks/*.yaml) and example loaders for every source format.

Public API (see DESIGN.md, section Data):

    Example                      dataclass: id, fields, prompt, response, references, answer, meta
    get_task(name) -> TaskDef    validated task YAML
    load_examples(task, split, source=None, limit=None, data_dir=None, seed=0) -> list[Example]
    render_chat_prompt(tokenizer, prompt, use_chat_template=True) -> str
"""

from harness.data.chat import render_chat_prompt
from harness.data.examples import (
    Example,
    extract_reference_answer,
    load_examples,
    normalize_number,
    resolve_source,
    source_available,
)
from harness.data.readers import read_records
from harness.data.taskdef import AnswerSpec, GenerationDefaults, SourceDef, TaskDef, get_task, task_names

__all__ = [
    "AnswerSpec",
    "Example",
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
