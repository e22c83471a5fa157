"""Dense and chunked loss paths: the only code that turns an objective into a training loss.

Both paths return the same ``LossResult``: ``loss_sum`` is the *sum* of per-token losses (the
training stage divides by the global token count of the optimizer step, so gradient accumulation
and data parallelism give the same loss as one large batch).

``chunked_loss`` never holds [N, V] logits of both models at once, backward included: it is a
custom autograd function whose forward walks over position chunks, computes that chunk's logits,
the per-token loss and its gradient immediately, and keeps only the gradients w.r.t. the student
hidden states and the LM head; backward just scales them by the incoming gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import ObjectiveError, VocabMismatchError
from objectives import divergences as D
from objectives.base import LossChunk, Objective, RowInfo, TeacherSignal

__all__ = ["LossResult", "chunked_loss", "dense_loss", "make_loss_chunk", "row_token_stats"]


@dataclass
class LossResult:
    """Summed loss over the positions of one (micro-)batch plus no-grad statistics."""

    loss_sum: Tensor  # 0-dim, differentiable (unless computed under no_grad)
    n_tokens: int
    entropy_sum: float  # Σ student entropy (nats), no grad
    kl_sum: float  # Σ KL(p_T || p_S), no grad; nan when no teacher logits were available

    @property
    def loss_mean(self) -> float:
        """Mean per-token loss of this batch alone (for logging; training uses loss_sum)."""
        return float(self.loss_sum.detach()) / max(self.n_tokens, 1)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
def _check_vocab(student_vocab: int, teacher_vocab: int) -> None:
    if student_vocab != teacher_vocab:
        raise VocabMismatchError(
            f"student vocabulary has {student_vocab} entries but teacher vocabulary has "
            f"{teacher_vocab}; logit-level distillation needs identical vocabularies "
            "(use a teacher/student pair that shares a tokenizer and LM-head size)"
        )


def _check_targets(targets: Tensor, n: int, vocab: int) -> None:
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ObjectiveError(f"targets must have shape [{n}], got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ObjectiveError(f"targets must be an integer tensor, got {targets.dtype}")
    if n:
        lo, hi = torch.stack([targets.min(), targets.max()]).tolist()  # one device sync
        if lo < 0 or hi >= vocab:
            raise ObjectiveError(
                f"targets must be token ids in [0, {vocab}) (one per loss position, no ignore index); "
                f"got range [{lo}, {hi}]"
            )


def make_loss_chunk(
    objective: Objective,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    teacher_target_logprobs: Tensor | None = None,
    rows: RowInfo | None = None,
) -> LossChunk:
    """Build the ``LossChunk`` an objective sees: upcast to ≥ fp32, only the declared teacher signal.

    ``rows`` (contract v2) fills the chunk's detached seq_id / segment_id / weight / advantage /
    behaviour_logprobs; without it those stay None, exactly as in contract v1.

    An objective never receives a teacher signal it did not declare, so a plugin cannot silently
    depend on full teacher logits while the stage only provides sampled log-probabilities.
    """
    signal = objective.required_teacher_signal()
    s = D.upcast(student_logits)
    t_logits: Tensor | None = None
    t_lp: Tensor | None = None
    if signal is TeacherSignal.FULL_LOGITS:
        if teacher_logits is None:
            raise ObjectiveError(f"objective {objective.name!r} needs full teacher logits, none were given")
        t_logits = D.upcast(teacher_logits.detach())
    elif signal is TeacherSignal.SAMPLED_LOGPROBS:
        if teacher_target_logprobs is not None:
            t_lp = D.upcast(teacher_target_logprobs.detach())
        elif teacher_logits is not None:
            t_lp = D.token_logprob(D.log_probs(teacher_logits.detach()), targets)
        else:
            raise ObjectiveError(
                f"objective {objective.name!r} needs teacher log-probabilities of the target tokens, "
                "none were given"
            )
    chunk = LossChunk(student_logits=s, teacher_logits=t_logits, targets=targets.long(), teacher_target_logprobs=t_lp)
    if rows is not None:
        for name in RowInfo.FIELDS:
            value = getattr(rows, name)
            if value is not None:
                if value.shape != targets.shape:
                    raise ObjectiveError(f"row field {name} has shape {tuple(value.shape)}, expected {tuple(targets.shape)}")
                setattr(chunk, name, value.detach())
    return chunk


def _weighted(loss: Tensor, rows: RowInfo | None) -> Tensor:
    """per_token_loss × row weight; without weights the loss is returned untouched (v1 arithmetic)."""
    if rows is None or rows.weight is None:
        return loss
    return loss * rows.weight.detach().to(loss.dtype)


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """dtype for LM-head logits: the active autocast dtype if autocast is on, else the hidden dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _per_token(objective: Objective, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
    # Objectives compute in fp32 even when the caller runs under autocast.
    with torch.autocast(chunk.student_logits.device.type, enabled=False):
        loss = objective.per_token_loss(chunk, sched)
    if not isinstance(loss, Tensor) or loss.shape != (chunk.n_tokens,):
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ObjectiveError(
            f"objective {objective.name!r}: per_token_loss must return a [{chunk.n_tokens}] tensor "
            f"(one loss per position), got {shape}"
        )
    return loss


_STATS_BLOCK_ELEMS = 1 << 20  # rows per block so that one [rows, V] fp32 temporary is ≤ 4 MiB


@torch.no_grad()
def _stats(chunk: LossChunk, teacher_logits: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Σ student entropy and Σ KL(p_T||p_S) over the chunk's rows: per-step telemetry, no graph.

    Reuses the log-probabilities the objective already computed through ``LossChunk`` (the usual
    case) and computes the missing ones otherwise; works in row blocks to bound temporaries.
    """
    s_all = chunk._student_logp
    t_all = chunk._teacher_logp
    n, vocab = chunk.student_logits.shape
    rows = max(1, _STATS_BLOCK_ELEMS // max(vocab, 1))
    ent = torch.zeros((), dtype=torch.float64, device=chunk.student_logits.device)
    kl = torch.zeros_like(ent) if teacher_logits is not None else None
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        s_lp = s_all[block].detach() if s_all is not None else D.log_probs(chunk.student_logits[block].detach())
        ent += D.entropy(s_lp).sum(dtype=torch.float64)
        if kl is not None:
            t_lp = t_all[block] if t_all is not None else D.log_probs(teacher_logits[block].detach())
            kl += D.forward_kl(t_lp, s_lp).sum(dtype=torch.float64)
    return ent, kl


# ---------------------------------------------------------------------------------------------
# Dense path
# ---------------------------------------------------------------------------------------------
def dense_loss(
    objective: Objective,
    sched: dict[str, float],
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    teacher_target_logprobs: Tensor | None = None,
    rows: RowInfo | None = None,
) -> LossResult:
    """Loss from full [N, V] logits (N = loss positions). Reference path; memory O(N·V).

    ``rows.weight`` (contract v2) multiplies each row's loss; zero-weight rows still count in
    ``n_tokens`` (the stage normalizes by every loss position).

    ``teacher_logits`` may be None when the objective needs no teacher (or only sampled
    log-probabilities and ``teacher_target_logprobs`` is given).
    """
    if student_logits.dim() != 2:
        raise ObjectiveError(f"student_logits must be [N, V], got shape {tuple(student_logits.shape)}")
    n, vocab = student_logits.shape
    if teacher_logits is not None:
        _check_vocab(vocab, teacher_logits.shape[-1])
        if teacher_logits.shape[0] != n:
            raise ObjectiveError(f"teacher_logits has {teacher_logits.shape[0]} positions, student has {n}")
    _check_targets(targets, n, vocab)
    chunk = make_loss_chunk(objective, student_logits, teacher_logits, targets, teacher_target_logprobs, rows)
    loss_sum = _weighted(_per_token(objective, chunk, sched), rows).sum()
    ent, kl = _stats(chunk, teacher_logits)
    return LossResult(
        loss_sum=loss_sum,
        n_tokens=n,
        entropy_sum=float(ent),
        kl_sum=float(kl) if kl is not None else math.nan,
    )


# ---------------------------------------------------------------------------------------------
# Chunked path
# ---------------------------------------------------------------------------------------------
@dataclass
class _ChunkPlan:
    objective: Objective
    sched: dict[str, float]
    teacher_hidden: Tensor | None
    teacher_weight: Tensor | None  # already in teacher_compute_dtype
    teacher_bias: Tensor | None
    teacher_target_logprobs: Tensor | None
    student_compute_dtype: torch.dtype
    teacher_compute_dtype: torch.dtype | None
    targets: Tensor
    chunk_size: int
    need_hidden: bool
    need_weight: bool
    need_bias: bool
    rows: RowInfo | None = None
    entropy_sum: float = 0.0
    kl_sum: float = math.nan


def _run_chunks(
    plan: _ChunkPlan, hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loop over position chunks; return (loss_sum, grad_hidden, grad_weight, grad_bias)."""
    n = hidden.shape[0]
    compute_dtype = plan.student_compute_dtype
    # Head in the compute dtype; a no-op in the usual same-dtype case.
    w = weight.detach().to(compute_dtype)
    b = bias.detach().to(compute_dtype) if bias is not None else None
    any_grad = plan.need_hidden or plan.need_weight or plan.need_bias

    grad_hidden = torch.empty_like(hidden) if plan.need_hidden else None
    # Accumulate head gradients in fp32 in place: no [V, H] temporary per chunk.
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if plan.need_weight else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if plan.need_bias else None
    loss_total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    ent_total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    kl_total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    have_teacher_logits = plan.teacher_hidden is not None

    for start in range(0, n, plan.chunk_size):
        end = min(start + plan.chunk_size, n)
        h = hidden[start:end].detach()
        tgt = plan.targets[start:end]
        t_logits = None
        if have_teacher_logits:
            with torch.no_grad():
                th = plan.teacher_hidden[start:end].to(plan.teacher_compute_dtype)
                t_logits = D.upcast(F.linear(th, plan.teacher_weight, plan.teacher_bias))
        t_lp = plan.teacher_target_logprobs[start:end] if plan.teacher_target_logprobs is not None else None
        rows_c = plan.rows.select(slice(start, end)) if plan.rows is not None else None

        with torch.no_grad():
            logits = F.linear(h.to(compute_dtype), w, b)
        # fp32 leaf: the objective's graph lives only inside this chunk.
        logits32 = D.upcast(logits).detach().requires_grad_(any_grad)
        with torch.enable_grad():
            chunk = make_loss_chunk(plan.objective, logits32, t_logits, tgt, t_lp, rows_c)
            loss_c = _weighted(_per_token(plan.objective, chunk, plan.sched), rows_c).sum()
            if any_grad:
                if not loss_c.requires_grad:
                    raise ObjectiveError(
                        f"objective {plan.objective.name!r}: per_token_loss does not depend on student_logits"
                    )
                (g_logits,) = torch.autograd.grad(loss_c, logits32)
        loss_total += loss_c.detach().to(torch.float64)
        ent, kl = _stats(chunk, t_logits)
        ent_total += ent
        if kl is not None:
            kl_total += kl
        del chunk, t_logits, logits

        if any_grad:
            g = g_logits.to(compute_dtype)  # d loss / d logits, [C, V]
            del g_logits
            if grad_hidden is not None:
                grad_hidden[start:end] = (g @ w).to(grad_hidden.dtype)
            if grad_w is not None:
                hc = h.to(compute_dtype)
                if compute_dtype == torch.float32:
                    grad_w.addmm_(g.t(), hc)
                else:
                    grad_w += (g.t() @ hc).float()
            if grad_b is not None:
                grad_b += g.sum(0, dtype=torch.float32)
            del g
        del logits32

    plan.entropy_sum = float(ent_total)
    plan.kl_sum = float(kl_total) if have_teacher_logits else math.nan
    return (
        loss_total.to(torch.float32),
        grad_hidden,
        grad_w.to(weight.dtype) if grad_w is not None else None,
        grad_b.to(bias.dtype) if grad_b is not None else None,
    )


class _ChunkedLossFunction(torch.autograd.Function):
    """loss_sum(hidden, weight, bias) with gradients computed eagerly, chunk by chunk, in forward."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: _ChunkPlan) -> Tensor:
        loss, gh, gw, gb = _run_chunks(plan, hidden, weight, bias)
        ctx.grads = (gh, gw, gb)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grads = getattr(ctx, "grads", None)
        if grads is None:
            raise RuntimeError("chunked_loss: backward can run only once (gradients were precomputed)")
        ctx.grads = None  # ours alone: scale in place instead of allocating head-sized copies
        scaled = tuple(g.mul_(grad_output.to(g.dtype)) if g is not None else None for g in grads)
        return (*scaled, None)


def chunked_loss(
    objective: Objective,
    sched: dict[str, float],
    student_hidden: Tensor,
    student_head: nn.Linear,
    teacher_hidden: Tensor | None,
    teacher_head: nn.Linear | None,
    targets: Tensor,
    chunk_size: int = 1024,
    teacher_target_logprobs: Tensor | None = None,
    rows: RowInfo | None = None,
) -> LossResult:
    """Loss from final hidden states [N, H] and the LM head, ``chunk_size`` positions at a time.

    Peak memory is O(chunk_size·V) instead of O(N·V). Gradients flow to ``student_hidden`` and to
    the head's ``weight`` (which may be tied to the input embeddings) and ``bias``. Logits are
    computed in the hidden dtype, then upcast to fp32 for the loss. The teacher runs under
    no_grad; for ``SAMPLED_LOGPROBS`` only log p_T(target) is passed to the objective (or pass
    ``teacher_target_logprobs`` directly and no teacher head at all).
    The result supports a single backward pass (its gradients are precomputed).
    ``rows`` (contract v2): per-row side information; rows of weight 0 are skipped entirely (no
    logits, no gradient; their telemetry is left out too), and still count in ``n_tokens``.
    """
    if student_hidden.dim() != 2:
        raise ObjectiveError(f"student_hidden must be [N, H], got shape {tuple(student_hidden.shape)}")
    if chunk_size < 1:
        raise ObjectiveError(f"chunk_size must be >= 1, got {chunk_size}")
    n = student_hidden.shape[0]
    weight, bias = student_head.weight, student_head.bias
    vocab = weight.shape[0]
    t_weight = t_bias = None
    t_dtype = None
    if teacher_hidden is not None:
        if teacher_head is None:
            raise ObjectiveError("teacher_hidden was given without teacher_head")
        _check_vocab(vocab, teacher_head.weight.shape[0])
        # Cast the teacher head once (a no-op unless autocast picks another dtype).
        t_dtype = _compute_dtype(teacher_hidden)
        t_weight = teacher_head.weight.detach().to(t_dtype)
        t_bias = teacher_head.bias.detach().to(t_dtype) if teacher_head.bias is not None else None
        if teacher_hidden.shape[0] != n:
            raise ObjectiveError(f"teacher_hidden has {teacher_hidden.shape[0]} positions, student has {n}")
        teacher_hidden = teacher_hidden.detach()
    _check_targets(targets, n, vocab)
    signal = objective.required_teacher_signal()
    if signal is TeacherSignal.FULL_LOGITS and teacher_hidden is None:
        raise ObjectiveError(f"objective {objective.name!r} needs the teacher's hidden states and head")
    if signal is TeacherSignal.SAMPLED_LOGPROBS and teacher_hidden is None and teacher_target_logprobs is None:
        raise ObjectiveError(
            f"objective {objective.name!r} needs teacher hidden states and head, or teacher_target_logprobs"
        )

    n_all = n
    if rows is not None and rows.weight is not None:
        keep = torch.nonzero(rows.weight.detach() != 0).flatten()
        if keep.numel() < n:
            # Indexing is differentiable: the skipped rows simply receive zero gradient.
            student_hidden = student_hidden[keep]
            teacher_hidden = teacher_hidden[keep] if teacher_hidden is not None else None
            targets = targets[keep]
            teacher_target_logprobs = teacher_target_logprobs[keep] if teacher_target_logprobs is not None else None
            rows = rows.select(keep)

    grad_on = torch.is_grad_enabled()
    # Logits use the autocast dtype if autocast is on (as the dense path would); the loss itself
    # then runs with autocast off, in fp32.
    plan = _ChunkPlan(
        objective=objective,
        sched=sched,
        teacher_hidden=teacher_hidden,
        teacher_weight=t_weight,
        teacher_bias=t_bias,
        teacher_target_logprobs=teacher_target_logprobs.detach() if teacher_target_logprobs is not None else None,
        student_compute_dtype=_compute_dtype(student_hidden),
        teacher_compute_dtype=t_dtype,
        targets=targets,
        chunk_size=chunk_size,
        need_hidden=grad_on and student_hidden.requires_grad,
        need_weight=grad_on and weight.requires_grad,
        need_bias=grad_on and bias is not None and bias.requires_grad,
        rows=rows,
    )
    with torch.autocast(student_hidden.device.type, enabled=False):
        if plan.need_hidden or plan.need_weight or plan.need_bias:
            loss_sum = _ChunkedLossFunction.apply(student_hidden, weight, bias, plan)
        else:
            with torch.no_grad():
                loss_sum, *_ = _run_chunks(plan, student_hidden, weight, bias)
    return LossResult(loss_sum=loss_sum, n_tokens=n_all, entropy_sum=plan.entropy_sum, kl_sum=plan.kl_sum)


# ---------------------------------------------------------------------------------------------
# Statistics pass (contract v2)
# ---------------------------------------------------------------------------------------------
BEHAVIOUR_STAT = "student_target_logprob"  # always returned: log p_S(target) at the current weights


@torch.no_grad()
def row_token_stats(
    objective: Objective,
    sched: dict[str, float],
    student_hidden: Tensor,
    student_head: nn.Module,
    teacher_hidden: Tensor | None,
    teacher_head: nn.Module | None,
    targets: Tensor,
    chunk_size: int = 1024,
    teacher_target_logprobs: Tensor | None = None,
    rows: RowInfo | None = None,
) -> dict[str, Tensor]:
    """``objective.token_stats`` over N rows, chunk by chunk, without a graph: ``{name: [N] fp32}``.

    Also returns ``BEHAVIOUR_STAT`` (log p_S of each target token), which the stage uses as the
    behaviour log-probability when the rollout policy is the current student.
    """
    n = student_hidden.shape[0]
    _check_targets(targets, n, student_head.weight.shape[0])
    out: dict[str, list[Tensor]] = {}
    for start in range(0, n, max(chunk_size, 1)):
        end = min(start + chunk_size, n)
        s_logits = D.upcast(F.linear(student_hidden[start:end].detach().to(_compute_dtype(student_hidden)),
                                     student_head.weight.detach().to(_compute_dtype(student_hidden)),
                                     None if student_head.bias is None else student_head.bias.detach().to(_compute_dtype(student_hidden))))
        t_logits = None
        if teacher_hidden is not None and teacher_head is not None:
            t_logits = D.upcast(F.linear(teacher_hidden[start:end].detach(), teacher_head.weight.detach().to(teacher_hidden.dtype),
                                         None if teacher_head.bias is None else teacher_head.bias.detach().to(teacher_hidden.dtype)))
        t_lp = teacher_target_logprobs[start:end] if teacher_target_logprobs is not None else None
        chunk = make_loss_chunk(objective, s_logits, t_logits, targets[start:end], t_lp,
                                rows.select(slice(start, end)) if rows is not None else None)
        with torch.autocast(s_logits.device.type, enabled=False):
            stats = dict(objective.token_stats(chunk, sched) or {})
        stats[BEHAVIOUR_STAT] = D.token_logprob(chunk.student_logprobs(), chunk.targets)
        for name, value in stats.items():
            if not isinstance(value, Tensor) or value.shape != (end - start,):
                raise ObjectiveError(
                    f"objective {objective.name!r}: token_stats[{name!r}] must be a [{end - start}] tensor, got "
                    f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
                )
            out.setdefault(name, []).append(value.detach().float())
    if n == 0:
        return {BEHAVIOUR_STAT: torch.zeros(0, device=student_hidden.device)}
    return {k: torch.cat(v) for k, v in out.items()}
