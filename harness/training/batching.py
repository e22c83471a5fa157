"""Micro-batching for the training stage.

Sequences, padded batches and their loss positions are the model API's (`harness.modeling.batching`):
evaluation's teacher-forced diagnostics build the same batches without importing the training stage.
They are re-exported here so existing imports keep working.
"""

from __future__ import annotations

from typing import Sequence

from harness.modeling.batching import TokenSequence, TrainBatch, collate

__all__ = ["TokenSequence", "TrainBatch", "collate", "split_micro_batches"]


def split_micro_batches(seqs: Sequence[TokenSequence], micro_batch_size: int) -> list[list[TokenSequence]]:
    """Consecutive chunks of at most `micro_batch_size` sequences."""
    return [list(seqs[i : i + micro_batch_size]) for i in range(0, len(seqs), micro_batch_size)]
