"""When the training stage writes a resume checkpoint: the interval policy (what is written and
how atomically lives in `checkpoint.py`).

A checkpoint costs the model weights plus the optimizer state (AdamW: two fp32 moments, so ~3x the
fp32 weights), about 8 GB for a 0.5B student. It buys back the work done since the previous one when
the process is killed, so it is worth writing only once that work reaches an interval the user
chose: N optimizer steps, T seconds of training, or whichever comes first. A run shorter than the
interval writes nothing unless it is interrupted (Ctrl-C or SIGTERM, or `stop_after_step` in tests), and the
final step writes none of its own: the final model and summary supersede it.
"""

from __future__ import annotations

import time
from typing import Callable


class CheckpointPolicy:
    """Decides, after each optimizer step, whether a checkpoint is due."""

    def __init__(self, every_steps: int | None, every_s: float | None, *, start_step: int,
                 clock: Callable[[], float] = time.monotonic):
        self.every_steps = every_steps
        self.every_s = every_s
        self._clock = clock
        # A resumed run counts from its checkpoint: the work before it is already protected.
        self._last_step = start_step
        self._last_time = clock()

    def due(self, step: int, *, interrupted: bool = False) -> bool:
        """Whether to checkpoint after `step` optimizer steps (interruptions always do)."""
        if interrupted:
            return True
        if self.every_steps is not None and step - self._last_step >= self.every_steps:
            return True
        return self.every_s is not None and self._clock() - self._last_time >= self.every_s

    def saved(self, step: int) -> None:
        """Restart both intervals after a checkpoint was written at `step`."""
        self._last_step = step
        self._last_time = self._clock()

    def describe(self) -> str:
        parts = ([f"every {self.every_steps} steps"] if self.every_steps is not None else []) + \
                ([f"every {self.every_s:g} s"] if self.every_s is not None else [])
        return " or ".join(parts) or "only when interrupted"
