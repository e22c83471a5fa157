"""Compatibility module: the names plugins have always imported from ``objectives.base``.

The contract lives in ``objectives.contract``, parameter handling in ``objectives.params`` and the
registry in ``objectives.registry``; this module only re-exports them so that existing plugins
(``from objectives.base import Objective, register_objective, ...``) keep working unchanged.
New code may import from either place; both give the very same objects.
"""

from __future__ import annotations

# Star imports re-export exactly each module's __all__, so this list cannot drift from them.
from objectives import contract as _contract
from objectives import params as _params
from objectives import registry as _registry
from objectives.contract import *  # noqa: F403
from objectives.params import *  # noqa: F403
from objectives.registry import *  # noqa: F403

# The registry's bookkeeping sets, the same objects (tests clear them to re-run plugin discovery).
_ENTRY_POINTS_LOADED = _registry._ENTRY_POINTS_LOADED
_ENTRY_POINTS_FAILED = _registry._ENTRY_POINTS_FAILED

__all__ = [*_contract.__all__, *_params.__all__, *_registry.__all__]
