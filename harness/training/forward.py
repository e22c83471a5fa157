"""Re-export of `harness.modeling.forward` (the loss-position forward pass moved to the model API so
evaluation can use it without importing the training stage)."""

from harness.modeling.forward import (  # noqa: F401
    HeadSlice,
    decoder_trunk,
    full_logits_at_loss_positions,
    lm_head,
    loss_hidden_states,
    sliced_head,
)
