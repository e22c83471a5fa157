"""Compatibility module: the names plugins have always imported from ``objectives.base``.

The contract lives in ``objectives.contract``, parameter handling in ``objectives.params`` and the
registry in ``objectives.registry``; this module only re-exports them so that existing plugins
(``from objectives.base import Objective, register_objective, ...``) keep working unchanged.
New code may import from either place; both give the very same objects.
"""

from __future__ import annotations

from objectives import registry as _registry_module
from objectives.contract import (
    DivergenceDirection,
    LossChunk,
    Needs,
    Objective,
    RowInfo,
    SequenceSource,
    TeacherSignal,
    expected_source_mix,
    schedule_progress,
)
from objectives.params import NoParams, ObjectiveParams, format_params_error, params_summary
from objectives.registry import (
    ENTRY_POINT_GROUP,
    PluginLoadWarning,
    build_objective,
    describe_all,
    discover,
    get_objective,
    list_objectives,
    load_plugin_file,
    register_objective,
    unregister_objective,
)

# The registry's bookkeeping sets, shared objects (tests clear them to re-run plugin discovery).
_ENTRY_POINTS_LOADED = _registry_module._ENTRY_POINTS_LOADED
_ENTRY_POINTS_FAILED = _registry_module._ENTRY_POINTS_FAILED

__all__ = [
    "ENTRY_POINT_GROUP",
    "DivergenceDirection",
    "LossChunk",
    "Needs",
    "NoParams",
    "Objective",
    "RowInfo",
    "ObjectiveParams",
    "PluginLoadWarning",
    "SequenceSource",
    "TeacherSignal",
    "build_objective",
    "describe_all",
    "discover",
    "expected_source_mix",
    "format_params_error",
    "get_objective",
    "list_objectives",
    "load_plugin_file",
    "params_summary",
    "register_objective",
    "schedule_progress",
    "unregister_objective",
]
