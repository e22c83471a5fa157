"""Row-weight helpers shared by the contract-v2 objectives (not part of the plugin contract).

Every helper is a pure function of the rows' values and ids, never of their order, so weights
computed over a step's rows gathered from many micro-batches and processes equal the weights of
one big batch (the conformance kit checks this with shuffled rows).
"""

from __future__ import annotations

import torch
from torch import Tensor


def quantile(values: Tensor, q: float) -> Tensor:
    """The q-quantile of ``values`` (linear interpolation; order-independent)."""
    return torch.quantile(values.double(), q)


def grouped_quantile(values: Tensor, groups: Tensor, q: float) -> Tensor:
    """For each row, the q-quantile of ``values`` over the rows sharing its group id: [N]."""
    out = torch.empty_like(values, dtype=torch.float64)
    for g in torch.unique(groups):
        mask = groups == g
        out[mask] = torch.quantile(values[mask].double(), q)
    return out


def grouped_mean(values: Tensor, groups: Tensor) -> Tensor:
    """For each row, the mean of ``values`` over the rows sharing its group id: [N]."""
    uniq, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, values.double())
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values, dtype=torch.float64))
    return (sums / counts)[inverse]


def segment_keys(seq_id: Tensor, segment_id: Tensor) -> Tensor:
    """One id per (sequence, segment) pair."""
    return seq_id.long() * (int(segment_id.max()) + 1 if segment_id.numel() else 1) + segment_id.long()
