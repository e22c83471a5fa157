"""Examples: raw records from any source -> `Example`s with prompts, responses, references, answers."""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from harness.data.packaged import load_packaged
from harness.data.readers import read_records
from harness.data.registry import get_task
from harness.data.taskdef import SPLITS, SourceDef, TaskDef, template_fields
from harness.errors import DataError, HubUnavailableError
from harness.hub import hub_unreachable_reason

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One task example.

    `prompt` is the user message (task template applied, no chat template yet). Training uses
    `response`; evaluation uses `references` and, for GSM8K, `answer` (the normalized final
    number). Both are filled whenever the source has them.
    """

    id: str
    fields: dict[str, Any]
    prompt: str
    response: str | None = None
    references: list[str] = field(default_factory=list)
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- answers


def normalize_number(text: str) -> str:
    """`$1,234.50.` -> `1234.50`: the form GSM8K answers are compared in."""
    s = text.strip().replace(",", "").replace("$", "").strip()
    s = s.rstrip(".").strip()
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def extract_reference_answer(text: str, regex: str) -> str | None:
    m = re.search(regex, text, flags=re.MULTILINE)
    return normalize_number(m.group(1)) if m else None


# ----------------------------------------------------------------------------- building examples


def fill_template(template: str, fields: dict[str, Any], where: str) -> str:
    """Replace `{name}` placeholders; literal braces elsewhere in the template are left alone."""
    missing = [f for f in template_fields(template) if f not in fields]
    if missing:
        raise DataError(f"{where}: records lack field(s) {missing} used by the prompt template {template!r}; "
                        f"they have {sorted(fields)}")
    return re.sub(r"\{(\w+)\}", lambda m: str(fields[m.group(1)]), template)


def _present(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    return value is not None and str(value).strip() != ""


def build_example(task: TaskDef, source_name: str, source: SourceDef, split: str, index: int, raw: dict[str, Any]) -> Example:
    fields = {source.fields.get(k, k): v for k, v in raw.items()}
    where = f"task {task.name}, source {source_name}, {split} record {index}"
    prompt = fill_template(task.template_for(source), fields, where)
    response = next((str(fields[f]) for f in source.response_fields if _present(fields, f)), None)
    if split == "train" and response is None:
        raise DataError(f"{where}: no training response in fields {source.response_fields}; has {sorted(fields)}")
    # Kept as given, duplicates included: grouped Hub rows and the local file then agree exactly.
    references = [str(fields[f]) for f in source.reference_fields if _present(fields, f)]
    answer = None
    if task.answer is not None:
        answer_field = source.answer_field or task.answer.field
        if _present(fields, answer_field):
            answer = extract_reference_answer(str(fields[answer_field]), task.answer.regex)
    ex_id = str(fields[source.id_field]) if source.id_field and _present(fields, source.id_field) else f"{source_name}-{split}-{index}"
    meta: dict[str, Any] = {k: fields[f] for k, f in source.meta_fields.items() if f in fields}
    meta.update(source=source_name, synthetic=source.synthetic)
    return Example(id=ex_id, fields=fields, prompt=prompt, response=response, references=references, answer=answer, meta=meta)


def group_examples(examples: list[Example], key: str) -> list[Example]:
    """Merge examples sharing `fields[key]` (whitespace-normalized): one example, all references.

    DialogSum's Hub test split repeats each dialogue once per reference summary; scoring 1,500
    rows would count each dialogue three times against a single reference each.
    """
    merged: dict[str, Example] = {}
    for ex in examples:
        k = " ".join(str(ex.fields.get(key, ex.id)).split())
        if k not in merged:
            merged[k] = ex
            ex.meta["n_rows"] = 1
            continue
        first = merged[k]
        first.meta["n_rows"] += 1
        first.references.extend(ex.references)
    return list(merged.values())


# ----------------------------------------------------------------------------- sources


def _hub_alternatives(task: TaskDef, split: str) -> str:
    local = [n for n in task.sources_for(split) if task.sources[n].kind == "local"]
    packaged = [n for n in task.sources_for(split) if task.sources[n].kind == "packaged"]
    parts = []
    if local:
        parts.append(f"point --data-dir / ${paths.DATA_DIR_ENV} at a data directory (sources {local})")
    if packaged:
        parts.append(f"use a packaged offline source ({packaged})")
    parts.append("or give `file:<path>` to a local file")
    return "Use local data instead: " + ", ".join(parts)


def _hub_rows(hub_id: str, config: str | None, hub_split: str) -> list[dict[str, Any]]:
    """Rows of a Hub dataset split via `datasets` (a separate function so tests can stand in for it)."""
    import datasets

    return list(datasets.load_dataset(hub_id, config, split=hub_split))


def _load_hub(task: TaskDef, name: str, source: SourceDef, split: str) -> list[dict[str, Any]]:
    hub_split = source.splits[split]
    reason = hub_unreachable_reason()
    if reason is None:
        return _hub_rows(source.hub_id, source.hub_config, hub_split)
    # Offline: a dataset downloaded earlier may still be in the datasets cache.
    import datasets.config

    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        return _hub_rows(source.hub_id, source.hub_config, hub_split)
    except Exception:
        raise HubUnavailableError(
            f"task {task.name} source {name!r} is the Hub dataset {source.hub_id!r}, but {reason} and it is not "
            f"in the local datasets cache. {_hub_alternatives(task, split)}"
        ) from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _local_path(task: TaskDef, name: str, source: SourceDef, split: str, data_dir: Path | None) -> Path:
    rel = source.splits[split]
    if data_dir is None:
        raise DataError(
            f"task {task.name} source {name!r} reads {rel!r} from the data directory, but none is configured: "
            f"set ${paths.DATA_DIR_ENV} or pass --data-dir, or use a packaged source "
            f"({[n for n in task.sources_for(split) if task.sources[n].kind == 'packaged']})"
        )
    path = data_dir / rel
    if not path.is_file():
        raise DataError(
            f"task {task.name} source {name!r}: file {path} not found in data directory {data_dir}; "
            f"set ${paths.DATA_DIR_ENV} or --data-dir to a directory holding {rel}, or use a packaged source"
        )
    return path


def source_available(task: TaskDef, name: str, split: str, data_dir: Path | None) -> str | None:
    """None if source `name` can serve `split` here; otherwise why not (used by `auto`)."""
    source = task.sources[name]
    if split not in source.splits:
        return f"no {split} split"
    if source.kind == "local":
        if data_dir is None:
            return "no data directory configured"
        path = data_dir / source.splits[split]
        return None if path.is_file() else f"{path} not found"
    if source.kind == "hub":
        return hub_unreachable_reason()
    return None  # packaged: the loader itself reports a missing package


def resolve_source(task: TaskDef, split: str, source: str | None, data_dir: Path | None) -> str:
    """The concrete source name for `source` (None/`auto` picks the first available in the YAML's order)."""
    if source not in (None, "auto"):
        return source
    reasons = []
    for name in task.auto.get(split, []):
        why = source_available(task, name, split, data_dir)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    raise DataError(
        f"task {task.name}: no source for split {split!r} is available ({'; '.join(reasons) or 'none listed'}). "
        f"Set ${paths.DATA_DIR_ENV} or --data-dir, or name a source explicitly"
    )


def _file_schema(task: TaskDef, path: Path, records: list[dict[str, Any]], split: str) -> tuple[str, SourceDef]:
    """The first `file_schemas` source whose fields the file's records have."""
    columns = set(records[0]) if records else set()
    for name in task.file_schemas:
        src = task.sources[name]
        canon = {src.fields.get(c, c) for c in columns}
        needed = set(template_fields(task.template_for(src)))
        if split == "train" and src.response_fields:
            if not canon & set(src.response_fields):
                continue
        if needed <= canon:
            return name, src
    layouts = {n: template_fields(task.template_for(task.sources[n])) for n in task.file_schemas}
    raise DataError(f"{path}: columns {sorted(columns)} match no known {task.name} layout; expected one of {layouts}")


def _raw_records(task: TaskDef, split: str, source: str, data_dir: Path | None) -> tuple[str, SourceDef, list[dict[str, Any]]]:
    if source.startswith("file:"):
        path = Path(os.path.expanduser(source[len("file:"):]))
        if not path.is_file():
            raise DataError(f"data file {path} (from source {source!r}) does not exist; give an existing path after `file:`")
        records = read_records(path)
        name, src = _file_schema(task, path, records, split)
        return f"file:{path.name}", src, records
    if source not in task.sources:
        raise DataError(f"task {task.name} has no source {source!r}; known: {sorted(task.sources)}, `auto` or `file:<path>`")
    src = task.sources[source]
    if split not in src.splits:
        raise DataError(f"task {task.name} source {source!r} has no {split!r} split; it has {sorted(src.splits)}")
    if src.kind == "local":
        return source, src, read_records(_local_path(task, source, src, split, data_dir), src.format)
    if src.kind == "hub":
        return source, src, _load_hub(task, source, src, split)
    return source, src, load_packaged(src.loader or "", src.splits[split], src.options)


def load_examples(
    task: TaskDef | str,
    split: str,
    source: str | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[Example]:
    """Examples of `task` for `split` ("train" or "eval"), shuffled with `seed` and cut to `limit`.

    `source` is a source name from the task YAML, `file:<path>`, or None/`auto` (the YAML's
    preference order: local data dir, packaged, Hub). `data_dir` overrides the configured data
    directory (see harness.paths.data_dir). The same arguments always give the same list; pass
    the same seed for every training seed when evaluating, so all cells see the same eval set.
    Eval examples of a task with `eval_group_by` are merged (DialogSum: one per dialogue).
    """
    task_def = get_task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    ddir = paths.data_dir(data_dir)
    name = resolve_source(task_def, split, source, ddir)
    label, src, records = _raw_records(task_def, split, name, ddir)
    if source in (None, "auto"):
        log.info("task %s %s: using source %s%s", task_def.name, split, label, " (synthetic)" if src.synthetic else "")
    examples = [build_example(task_def, label, src, split, i, r) for i, r in enumerate(records)]
    group_by = task_def.eval_group_by if label.startswith("file:") else src.group_by
    if split == "eval" and group_by:
        examples = group_examples(examples, group_by)
    if not examples:
        raise DataError(f"task {task_def.name} source {label!r} has no {split} examples")
    random.Random(seed).shuffle(examples)
    return examples[:limit] if limit is not None else examples
