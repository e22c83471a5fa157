"""Building blocks of the objectives' reference formulas (``Objective.reference_loss``).

A reference formula restates an objective's per-token loss in the plainest way (softmax, log, sum;
no log-sum-exp tricks) and shares no code with ``objectives.divergences``, so a bug in the
optimized math cannot hide in its own check. The conformance kit calls references on fp64 inputs,
where the naive forms are accurate; they are not meant for training.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["at_targets", "kl", "normalized_jsd", "ppo_clip", "probs"]


def probs(logits: Tensor) -> Tensor:
    """softmax over the vocabulary: [N, V] -> [N, V]."""
    return torch.softmax(logits, -1)


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p || q) = Σ_v p (log p − log q) per row: [N, V] x [N, V] -> [N]."""
    return (p * (torch.log(p) - torch.log(q))).sum(-1)


def at_targets(values: Tensor, targets: Tensor) -> Tensor:
    """values[i, targets[i]] for every row i: [N, V] -> [N]."""
    return values[torch.arange(len(targets)), targets]


def normalized_jsd(pt: Tensor, ps: Tensor, beta: float) -> Tensor:
    """(β·KL(p_T||M) + (1−β)·KL(p_S||M)) / (β(1−β)) with M = β·p_T + (1−β)·p_S, for 0 < β < 1."""
    m = beta * pt + (1 - beta) * ps
    return (beta * kl(pt, m) + (1 - beta) * kl(ps, m)) / (beta * (1 - beta))


def ppo_clip(logp_y: Tensor, anchor: Tensor, advantage: Tensor, eps: float) -> Tensor:
    """−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) with ρ = p(y) / p_anchor(y) (the anchor held constant)."""
    ratio = torch.exp(logp_y) / torch.exp(anchor.detach())
    return -torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage)
