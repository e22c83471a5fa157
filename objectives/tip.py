"""``tip``: on-policy distillation on selected tokens — uncertain ones and overconfident ones (TIP).

Rows are typed on two axes computed without gradient (``token_stats``): student entropy H_t and
teacher–student divergence d_t = KL(p_S || p_T). A row is kept (weight 1, else 0) when
  * high entropy:   H_t ≥ the (1 − entropy_top_fraction)-quantile of H, or
  * overconfident:  H_t ≤ the overconfident_entropy_quantile-quantile of H and
                    d_t ≥ the (1 − divergence_top_fraction)-quantile of d
(``select`` picks either region or their union); quantiles over the whole optimizer step or per
sequence (``quantile_scope``). Kept rows get the on-policy divergence loss; weight-0 rows are
skipped in the gradient pass (memory and time). The loss stays normalized by all loss tokens.
Reference: Xu et al., "TIP: Token Importance in On-Policy Distillation", arXiv:2604.14084, 2026.

The abstract names the two regions but not the exact thresholds or sampling rule (it mentions
"entropy-based sampling" at 50% retention): here the rule is a deterministic quantile threshold,
with every threshold a parameter; treat results as this harness's reading of TIP.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from objectives import divergences as D
from objectives._rows import grouped_quantile, quantile
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


class TIPParams(ObjectiveParams):
    select: Literal["union", "entropy", "overconfident"] = Field(
        "union", description="which token regions to train on: high entropy, overconfident, or both")
    entropy_top_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of rows kept by high student entropy")
    overconfident_entropy_quantile: float = Field(
        0.5, gt=0.0, le=1.0, description="'low entropy' = at or below this quantile of student entropy")
    divergence_top_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="'high divergence' = the top share of rows by KL(p_S||p_T)")
    quantile_scope: Literal["step", "sequence"] = Field(
        "step", description="quantiles over all rows of the optimizer step, or per sequence")
    divergence: Literal["reverse", "forward"] = Field(
        "reverse", description="loss on kept rows: KL(p_S||p_T) (reverse) or KL(p_T||p_S) (forward)")


@register_objective
class TIP(Objective):
    """On-policy KL restricted to high-entropy and low-entropy/high-divergence tokens."""

    name = "tip"
    description = ("On-policy KL on selected tokens: high student entropy, plus low-entropy/high-divergence "
                   "'overconfident' ones; thresholds as quantiles (Xu et al. 2026).")
    Params = TIPParams
    source = SequenceSource.STUDENT
    teacher_signal = TeacherSignal.FULL_LOGITS
    params: TIPParams

    @property
    def divergence_direction(self) -> str | None:  # type: ignore[override]
        return self.params.divergence

    def token_stats(self, chunk: LossChunk, sched: dict[str, float]) -> dict[str, Tensor]:
        ls, lt = chunk.student_logprobs().detach(), chunk.teacher_logprobs()
        return {"entropy": D.entropy(ls), "divergence": D.reverse_kl(lt, ls)}

    def _q(self, values: Tensor, seq_id: Tensor, q: float) -> Tensor:
        if self.params.quantile_scope == "sequence":
            return grouped_quantile(values, seq_id, q)
        return quantile(values, q)

    def row_weights(self, stats: dict[str, Tensor], seq_id: Tensor, segment_id: Tensor) -> Tensor:
        p = self.params
        ent, div = stats["entropy"].double(), stats["divergence"].double()
        high = ent >= self._q(ent, seq_id, 1.0 - p.entropy_top_fraction)
        over = (ent <= self._q(ent, seq_id, p.overconfident_entropy_quantile)) & (
            div >= self._q(div, seq_id, 1.0 - p.divergence_top_fraction))
        keep = {"union": high | over, "entropy": high, "overconfident": over}[p.select]
        return keep.to(torch.float32)

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
        ls, lt = chunk.student_logprobs(), chunk.teacher_logprobs()
        return D.reverse_kl(lt, ls) if self.params.divergence == "reverse" else D.forward_kl(lt, ls)

    def reference_loss(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       sched: dict[str, float], rows: RowInfo) -> Tensor:
        # the token selection is a row weight applied by the engine, outside per_token_loss
        ps, pt = R.probs(student_logits), R.probs(teacher_logits)
        return R.kl(ps, pt) if self.params.divergence == "reverse" else R.kl(pt, ps)
