"""Distillation objectives: one module per objective plus the shared machinery.

- ``objectives.contract``: the plugin contract (``Objective``, ``LossChunk``, ``Needs``);
  ``objectives.params``: parameter validation; ``objectives.registry``: discovery and lookup;
  ``objectives.base`` re-exports all three for plugins.
- ``objectives.reference``: plain building blocks of each objective's ``reference_loss``.
- ``objectives.divergences``: per-position divergence math on fp32 log-probabilities.
- ``objectives.engine``: dense and chunked (memory-bounded) loss paths.
- ``objectives.conformance``: a check kit that plugin authors run against their objective.

Built-in objective modules are imported lazily by the registry, so importing this package is cheap.
"""

from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    SequenceSource,
    TeacherSignal,
    build_objective,
    describe_all,
    get_objective,
    list_objectives,
    register_objective,
)

__all__ = [
    "LossChunk",
    "Objective",
    "ObjectiveParams",
    "SequenceSource",
    "TeacherSignal",
    "build_objective",
    "describe_all",
    "get_objective",
    "list_objectives",
    "register_objective",
]
