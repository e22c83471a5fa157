"""The objective registry: registration, discovery of built-ins and plugins, lookup and listing.

Built-in modules of this package are imported lazily on first lookup; third-party objectives
arrive through the ``distill_bench.objectives`` entry-point group or ``load_plugin_file(path)``.
A broken third-party plugin produces a ``PluginLoadWarning`` naming it instead of breaking the
listing.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import threading
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.errors import ObjectiveError
from objectives.contract import Objective, SequenceSource, TeacherSignal
from objectives.params import format_params_error

ENTRY_POINT_GROUP = "distill_bench.objectives"

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginLoadWarning",
    "build_objective",
    "describe_all",
    "discover",
    "get_objective",
    "list_objectives",
    "load_plugin_file",
    "register_objective",
    "unregister_objective",
]


class PluginLoadWarning(UserWarning):
    """A third-party objective plugin could not be loaded; it is skipped."""


_REGISTRY: dict[str, type[Objective]] = {}
_LOCK = threading.RLock()
_BUILTINS_LOADED = False
_ENTRY_POINTS_SCANNED = False
_ENTRY_POINTS_LOADED: set[tuple[str, str]] = set()  # (name, value)
_ENTRY_POINTS_FAILED: set[tuple[str, str]] = set()
_PLUGIN_FILES: dict[Path, list[type[Objective]]] = {}
# Modules of this package that hold machinery, not objectives.
_INFRA_MODULES = {"base", "contract", "params", "registry", "reference", "engine", "divergences", "conformance"}


def _check_objective_class(cls: Any) -> None:
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ObjectiveError(f"{where}: @register_objective needs a subclass of Objective")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ObjectiveError(f"{where}: set a non-empty class attribute `name` (no spaces around)")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ObjectiveError(f"objective {name!r} ({where}) does not implement: {missing}")
    params = cls.Params
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise ObjectiveError(f"objective {name!r}: `Params` must be a pydantic BaseModel subclass")
    if params.model_config.get("extra") != "forbid":
        raise ObjectiveError(
            f"objective {name!r}: Params must reject unknown keys; derive it from "
            "objectives.base.ObjectiveParams or set model_config = ConfigDict(extra='forbid')"
        )
    try:
        params()
    except ValidationError as exc:
        raise ObjectiveError(
            f"objective {name!r}: every parameter needs a valid default\n"
            + format_params_error(name, params, exc)
        ) from None
    if not isinstance(cls.source, SequenceSource) or not isinstance(cls.teacher_signal, TeacherSignal):
        raise ObjectiveError(
            f"objective {name!r}: `source` must be a SequenceSource and `teacher_signal` a TeacherSignal"
        )


def register_objective(cls: type[Objective] | None = None, *, override: bool = False) -> Any:
    """Class decorator registering an objective under ``cls.name``.

    Use as ``@register_objective`` or ``@register_objective(override=True)``. A name already taken
    by a different class is an ``ObjectiveError`` unless ``override=True`` (re-executing the same
    definition, e.g. a module reload, silently replaces it).
    """

    def decorate(klass: type[Objective]) -> type[Objective]:
        _check_objective_class(klass)
        with _LOCK:
            existing = _REGISTRY.get(klass.name)
            same_definition = existing is not None and (
                existing is klass
                or (existing.__module__, existing.__qualname__) == (klass.__module__, klass.__qualname__)
            )
            if existing is not None and not same_definition and not override:
                raise ObjectiveError(
                    f"objective name {klass.name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; "
                    f"cannot register {klass.__module__}.{klass.__qualname__} under the same name "
                    "(rename it, or use @register_objective(override=True) to replace it on purpose)"
                )
            _REGISTRY[klass.name] = klass
        return klass

    return decorate(cls) if cls is not None else decorate


def unregister_objective(name: str) -> None:
    """Remove an objective from the registry (for tests and plugin reloading)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    package = importlib.import_module(__package__ or "objectives")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _INFRA_MODULES:
            continue
        # A broken built-in is a bug in this repository: let it raise.
        importlib.import_module(f"{package.__name__}.{info.name}")
    _BUILTINS_LOADED = True


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points(retry_failed: bool) -> None:
    global _ENTRY_POINTS_SCANNED
    for ep in _entry_points():
        key = (ep.name, ep.value)
        if key in _ENTRY_POINTS_LOADED or (key in _ENTRY_POINTS_FAILED and not retry_failed):
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        try:
            loaded = ep.load()  # importing a module registers its decorated classes
            if isinstance(loaded, type) and issubclass(loaded, Objective):
                if _REGISTRY.get(getattr(loaded, "name", None)) is not loaded:
                    register_objective(loaded)
        except Exception as exc:  # noqa: BLE001 - any plugin failure must not break the listing
            _ENTRY_POINTS_FAILED.add(key)
            warnings.warn(
                f"skipping objective plugin {ep.name!r} ({ep.value}, from {dist}): "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=3,
            )
        else:
            _ENTRY_POINTS_FAILED.discard(key)
            _ENTRY_POINTS_LOADED.add(key)
    _ENTRY_POINTS_SCANNED = True


def discover(refresh: bool = False) -> None:
    """Import built-in objective modules and entry-point plugins (once, or again with ``refresh``).

    ``refresh=True`` rescans the entry points (e.g. after installing a plugin into a running
    process) and retries those that failed before.
    """
    with _LOCK:
        _load_builtins()
        if refresh:
            importlib.invalidate_caches()
        if refresh or not _ENTRY_POINTS_SCANNED:
            _load_entry_points(retry_failed=refresh)


def load_plugin_file(path: str | Path) -> list[type[Objective]]:
    """Import a single ``.py`` file that defines (and registers) objectives; return them.

    Loading the same file twice is a no-op. Errors raise ``ObjectiveError`` naming the file,
    because the user asked for this file explicitly.
    """
    path = Path(path).expanduser().resolve()
    with _LOCK:
        if path in _PLUGIN_FILES:
            return list(_PLUGIN_FILES[path])
        if not path.is_file() or path.suffix != ".py":
            raise ObjectiveError(f"objective plugin file {str(path)!r} does not exist or is not a .py file")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module_name = f"distill_bench_plugin_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ObjectiveError(f"cannot import objective plugin file {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        before = dict(_REGISTRY)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ObjectiveError(
                f"objective plugin file {str(path)!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        added = [c for n, c in _REGISTRY.items() if before.get(n) is not c]
        if not added:
            warnings.warn(
                f"objective plugin file {str(path)!r} registered no objective "
                "(decorate the class with @register_objective)",
                PluginLoadWarning,
                stacklevel=2,
            )
        _PLUGIN_FILES[path] = added
        return list(added)


def list_objectives() -> list[type[Objective]]:
    """All registered objective classes, sorted by name (runs discovery on first use)."""
    discover()
    with _LOCK:
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_objective(name: str) -> type[Objective]:
    """The objective class registered as ``name``; ``ObjectiveError`` with a hint if unknown."""
    discover()
    with _LOCK:
        cls = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if cls is not None:
        return cls
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ObjectiveError(
        f"unknown objective {name!r}.{hint} Known objectives: {', '.join(known)}. "
        "Third-party objectives register through the "
        f"{ENTRY_POINT_GROUP!r} entry-point group or a plugin file."
    )


def build_objective(name: str, params: Mapping[str, Any] | None = None) -> Objective:
    """Instantiate objective ``name`` with validated ``params`` (errors name the field and range)."""
    return get_objective(name)(params)


def describe_all() -> list[dict[str, Any]]:
    """``describe()`` rows of every registered objective, sorted by name (for the CLI listing).

    An objective whose ``describe()`` fails (a broken plugin) gets a minimal row with an ``error``
    field and a ``PluginLoadWarning``, so one bad plugin cannot break the listing.
    """
    rows = []
    for cls in list_objectives():
        try:
            rows.append(cls.describe())
        except Exception as exc:  # noqa: BLE001
            warnings.warn(
                f"objective {cls.name!r} ({cls.__module__}) cannot describe itself: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            rows.append({"name": cls.name, "description": getattr(cls, "description", ""), "module": cls.__module__,
                         "params": [], "error": f"{type(exc).__name__}: {exc}"})
    return rows


