"""Forward passes that only push loss positions through the LM head.

`loss_hidden_states` runs the decoder trunk and gathers the hidden states at the loss positions;
the objective engine then applies the LM head chunk by chunk. Prompt positions never reach a
[tokens, vocab] logits tensor, for the teacher or the student.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from harness.modeling.batching import TrainBatch


def decoder_trunk(model: nn.Module) -> nn.Module:
    """The transformer body (embeddings + layers + final norm) of a causal LM, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk = base.get_decoder() if hasattr(base, "get_decoder") else None
    if trunk is None or trunk is base:
        trunk = getattr(base, "model", None)
    if trunk is None:
        raise TypeError(f"{type(base).__name__} exposes no decoder trunk (get_decoder()/model); cannot gather hidden states")
    return trunk


def lm_head(model: nn.Module) -> nn.Linear:
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected an nn.Linear LM head, got {type(head).__name__}")
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if cfg is not None and getattr(cfg, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"models with {attr} need the head transform applied in the loss; not supported yet")
    return head


def loss_hidden_states(model: nn.Module, batch: TrainBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Hidden states [N, H] at the batch's loss positions."""
    trunk = decoder_trunk(model)
    device = batch.input_ids.device
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        out = trunk(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[batch.loss_rows, batch.loss_cols]


def full_logits_at_loss_positions(model: nn.Module, batch: TrainBatch) -> torch.Tensor:
    """Reference path for tests: the model's own forward, logits gathered at loss positions."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    return out.logits[batch.loss_rows, batch.loss_cols]


class HeadSlice(nn.Module):
    """The first `columns` output rows of an LM head, as a view: gradients reach the full weight.

    Used only when teacher and student heads differ in size but share one tokenizer (the extra rows
    are padding), after `check_vocab_compat(..., allow_head_slice=True)` approved it.
    """

    def __init__(self, head: nn.Linear, columns: int):
        super().__init__()
        self.head = head
        self.columns = columns

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight[: self.columns]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.head.bias is None else self.head.bias[: self.columns]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


def sliced_head(head: nn.Linear, columns: int | None) -> nn.Module:
    return head if columns is None or columns == head.weight.shape[0] else HeadSlice(head, columns)
