"""Token sequences -> padded batches with exact loss positions.

A training sequence is `prompt_ids + completion_ids`. Loss positions are the completion tokens only.
The prediction for token j comes from the hidden state at j-1, so for every completion token at
padded column j we gather hidden column j-1 and use token j as the target. Padding never enters a
loss position, and because positions are taken from the per-sequence lengths (not from comparing
ids with pad_id), an EOS that equals the pad token is still trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch


@dataclass(frozen=True)
class TokenSequence:
    """One training sequence; `completion_ids` carry the loss."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class TrainBatch:
    """A padded batch and the coordinates of its loss positions.

    input_ids, attention_mask, position_ids: [B, L]
    loss_rows, loss_cols: [N] coordinates of the hidden states that predict the completion tokens
    targets: [N] the completion tokens themselves
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    loss_rows: torch.Tensor
    loss_cols: torch.Tensor
    targets: torch.Tensor

    @property
    def n_loss_tokens(self) -> int:
        return int(self.targets.numel())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> "TrainBatch":
        return TrainBatch(*(t.to(device) for t in (
            self.input_ids, self.attention_mask, self.position_ids, self.loss_rows, self.loss_cols, self.targets
        )))


def collate(seqs: Sequence[TokenSequence], pad_id: int, padding_side: Literal["left", "right"] = "right") -> TrainBatch:
    """Pad sequences into one batch; padding side changes layout, never the loss positions' content."""
    if not seqs:
        raise ValueError("cannot collate an empty list of sequences")
    width = max(s.length for s in seqs)
    bsz = len(seqs)
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for b, s in enumerate(seqs):
        if not s.prompt_ids:
            raise ValueError("a training sequence needs at least one prompt token to predict its first completion token")
        ids = list(s.prompt_ids) + list(s.completion_ids)
        start = width - len(ids) if padding_side == "left" else 0
        input_ids[b, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[b, start : start + len(ids)] = 1
        first = start + len(s.prompt_ids)
        for j in range(first, first + len(s.completion_ids)):
            rows.append(b)
            cols.append(j - 1)
            targets.append(ids[j - start])
    # Positions count real tokens only, so a left-padded sequence sees the same positions as unpadded.
    position_ids = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        loss_rows=torch.tensor(rows, dtype=torch.long),
        loss_cols=torch.tensor(cols, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
    )
