"""Small helpers shared by the built-in objectives (not part of the plugin contract)."""

from __future__ import annotations

from torch import Tensor

from harness.errors import ObjectiveError
from objectives import divergences as D
from objectives.base import LossChunk


def student_logp(chunk: LossChunk) -> Tensor:
    """log p_S at every position, [N, V], in at least fp32 (carries the graph)."""
    return chunk.student_logprobs()


def teacher_logp(chunk: LossChunk, objective_name: str) -> Tensor:
    """log p_T at every position, [N, V]; a clear error if the chunk has no teacher logits."""
    if chunk.teacher_logits is None:
        raise ObjectiveError(f"objective {objective_name!r} needs full teacher logits, the chunk has none")
    return chunk.teacher_logprobs()


def cross_entropy(chunk: LossChunk) -> Tensor:
    """−log p_S(target) at every position, [N]."""
    return -D.token_logprob(student_logp(chunk), chunk.targets)
