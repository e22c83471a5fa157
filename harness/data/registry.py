"""The task registry: every task the harness knows, the twin of the objective registry.

A task is one YAML (validated into a `TaskDef`) naming one scoring module. Tasks come from:

- built-ins: `harness/tasks/<name>.yaml` (scorers `harness/tasks/<name>.py`);
- installed packages: entry points in group `distill_bench.tasks` whose object is a path to a task
  YAML (str or Path), a `TaskDef`, or a list of those;
- `--plugin FILE.yaml` on the command line (`load_task_file`), or `register_task` from Python.

Code that needs something of a task (its metrics, whether it needs a baseline's outputs, a judge,
a sandbox) reads it from the definition; it never branches on the task's name.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.data.taskdef import TaskDef, _load_yaml, parse_task
from harness.errors import ConfigError

ENTRY_POINT_GROUP = "distill_bench.tasks"

_LOCK = threading.RLock()
_PLUGINS: dict[str, tuple[TaskDef, str]] = {}  # name -> (definition, origin) for non-built-in tasks
_ENTRY_POINTS_SCANNED = False


class TaskPluginWarning(UserWarning):
    """An installed task plugin failed to load; the rest of the registry still works."""


def _builtin_root():
    return importlib.resources.files("harness").joinpath("tasks")


def builtin_task_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _builtin_root().iterdir() if p.name.endswith(".yaml"))


def _load_builtin(name: str) -> TaskDef | None:
    resource = _builtin_root().joinpath(f"{name}.yaml")
    if not resource.is_file():
        return None
    where = f"harness/tasks/{name}.yaml"
    task = parse_task(_load_yaml(resource.read_text(encoding="utf-8"), where), where)
    if task.name != name:
        raise ConfigError(f"{where} declares name {task.name!r}; they must match")
    return task


def _parse_file(path: Path) -> TaskDef:
    if not path.is_file():
        raise ConfigError(f"task file {str(path)!r} does not exist; pass the path to a task .yaml")
    return parse_task(_load_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))


def register_task(task: TaskDef | str | os.PathLike, *, origin: str = "python") -> TaskDef:
    """Add a task (a TaskDef or a path to its YAML). Refuses a name already taken by another definition."""
    if not isinstance(task, TaskDef):
        origin = str(task) if origin == "python" else origin
        task = _parse_file(Path(os.path.expanduser(str(task))))
    with _LOCK:
        if task.name in builtin_task_names():
            raise ConfigError(f"task {task.name!r} from {origin} would shadow the built-in task; rename it")
        old = _PLUGINS.get(task.name)
        if old is not None and old[0] != task:
            raise ConfigError(f"task {task.name!r} from {origin} is already registered from {old[1]}; rename one of them")
        _PLUGINS[task.name] = (task, origin)
    return task


def load_task_file(path: str | os.PathLike) -> TaskDef:
    """`--plugin my_task.yaml`: register the task defined in that file."""
    return register_task(Path(os.path.expanduser(str(path))).resolve(), origin=str(path))


def _discover() -> None:
    """Load entry-point tasks once; a broken plugin warns instead of breaking every command."""
    global _ENTRY_POINTS_SCANNED
    with _LOCK:
        if _ENTRY_POINTS_SCANNED:
            return
        _ENTRY_POINTS_SCANNED = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
            try:
                loaded = ep.load()
                for item in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
                    register_task(item, origin=f"entry point {ep.name!r} of {dist}")
            except Exception as exc:  # noqa: BLE001 - one bad plugin must not break the others
                warnings.warn(f"task plugin {ep.name!r} ({ep.value}, from {dist}) failed to load: "
                              f"{type(exc).__name__}: {exc}", TaskPluginWarning, stacklevel=2)


def task_names() -> list[str]:
    """Every registered task: built-ins, then plugins, each sorted."""
    _discover()
    with _LOCK:
        plugins = sorted(_PLUGINS)
    return builtin_task_names() + [n for n in plugins if n not in builtin_task_names()]


def get_task(name: str | os.PathLike) -> TaskDef:
    """The task registered as `name`, or a task YAML given by path."""
    text = str(name)
    if text.endswith((".yaml", ".yml")) and Path(os.path.expanduser(text)).is_file():
        return _parse_file(Path(os.path.expanduser(text)))
    builtin = _load_builtin(text) if "/" not in text and "\\" not in text else None
    if builtin is not None:
        return builtin
    _discover()
    with _LOCK:
        hit = _PLUGINS.get(text)
    if hit is None:
        import difflib

        known = task_names()
        close = difflib.get_close_matches(text, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown task {text!r}; known: {', '.join(known)}{hint}. A plugin task needs its package "
                          f"installed (entry point group `{ENTRY_POINT_GROUP}`) or `--plugin TASK.yaml`")
    return hit[0]


def task_options_model(name: str) -> type | None:
    """The pydantic model of a task's `eval.<task>` settings (its YAML's `options: module:Class`), or None."""
    import importlib

    task = get_task(name)
    if task.options is None:
        return None
    module, _, attr = task.options.partition(":")
    try:
        model = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task {name!r}: options {task.options!r} cannot be loaded ({exc}); set `options:` in the "
                          "task YAML to `module:Class` of an importable pydantic model, or remove it") from None
    return model


def task_origin(name: str) -> str:
    if name in builtin_task_names():
        return "built-in"
    _discover()
    with _LOCK:
        return _PLUGINS[name][1] if name in _PLUGINS else "unknown"


def describe_tasks() -> list[dict[str, Any]]:
    """One row per task for `distill-bench tasks`: sources per split, metrics, needs, scorer, origin."""
    rows = []
    for name in task_names():
        t = get_task(name)
        rows.append({
            "name": t.name, "description": t.description, "origin": task_origin(name), "scorer": t.scorer,
            "sources": {split: t.sources_for(split) for split in ("train", "eval")},
            "auto": {k: list(v) for k, v in t.auto.items()},
            "metrics": [m.name for m in t.metrics],
            "needs": [k for k, v in t.needs.model_dump().items() if v],
        })
    return rows
