"""``jeffreys``: an example third-party distill-bench objective (symmetrized KL).

loss_t = w·KL(p_T || p_S) + (1 − w)·KL(p_S || p_T), on student-generated sequences.
w = 1 is forward KL, w = 0 reverse KL, w = 0.5 half the Jeffreys divergence.
Reference: Jeffreys, "An invariant form for the prior probability in estimation problems", 1946.

The objective reuses distill-bench's shared divergence math and the chunk's log-probabilities
(``chunk.student_logprobs()`` / ``chunk.teacher_logprobs()``), so it gets the fp32-safe numerics and
works unchanged in the dense and chunked loss paths. ``reference_loss`` restates the loss plainly
for distill-bench's conformance kit, which fails an objective without one.

It also shows one contract-v2 hook pair: with ``keep_top_entropy`` < 1, ``token_stats`` records the
student's entropy per row (no gradient) and ``row_weights`` keeps only the most uncertain share of
the optimizer step's rows (weight 1, the others 0 and skipped). At the default 1.0 the hooks are
off (``uses_row_weights``) and the stage runs the plain v1 path.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from objectives import divergences as D
from objectives import reference as R
from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    RowInfo,
    SequenceSource,
    TeacherSignal,
    register_objective,
)

__all__ = ["Jeffreys", "JeffreysParams"]


class JeffreysParams(ObjectiveParams):
    forward_weight: float = Field(0.5, ge=0.0, le=1.0, description="weight w of KL(p_T||p_S); 1 − w goes to KL(p_S||p_T)")
    keep_top_entropy: float = Field(1.0, gt=0.0, le=1.0, description="train only on this share of rows, by student entropy")


@register_objective
class Jeffreys(Objective):
    """Weighted sum of forward and reverse KL between teacher and student."""

    name = "jeffreys"
    description = "w·KL(p_T||p_S) + (1−w)·KL(p_S||p_T) on student-generated responses (example plugin)."
    Params = JeffreysParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: JeffreysParams

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        return {1.0: "forward", 0.0: "reverse"}.get(self.params.forward_weight)

    # -- contract v2 (optional): weights from detached per-row statistics ---------------------
    def uses_row_weights(self) -> bool:
        return self.params.keep_top_entropy < 1.0

    def token_stats(self, chunk: LossChunk, sched: dict[str, float]) -> dict[str, Tensor]:
        return {"entropy": D.entropy(chunk.student_logprobs().detach())}

    def row_weights(self, stats: dict[str, Tensor], seq_id: Tensor, segment_id: Tensor) -> Tensor:
        # called once per optimizer step over ALL its rows: a whole-step quantile is safe here
        threshold = torch.quantile(stats["entropy"].double(), 1.0 - self.params.keep_top_entropy)
        return (stats["entropy"].double() >= threshold).float()

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        ls, lt = chunk.student_logprobs(), chunk.teacher_logprobs()  # teacher: guaranteed by FULL_LOGITS
        w = self.params.forward_weight
        return w * D.forward_kl(lt, ls) + (1.0 - w) * D.reverse_kl(lt, ls)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        """The same loss written plainly (softmax, log, sum), checked against ``per_token_loss`` by the kit."""
        ps, pt = R.probs(student_logits), R.probs(teacher_logits)
        w = self.params.forward_weight
        return w * R.kl(pt, ps) + (1 - w) * R.kl(ps, pt)
