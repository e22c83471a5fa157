"""Contract v2 in the training stage: groups, rewards, segments, teacher prompts and row weights.

The stage takes this path only when the objective uses a v2 hook (``Objective.uses_contract_v2``);
every other objective runs the v1 code in ``loop.py`` untouched, so its arithmetic cannot change.

One optimizer step here:
1. each prompt of this process's share is repeated ``n_samples`` times (a group; groups never span
   processes) and sequences are built from the objective's source;
2. task rewards (injected by the runner as ``TrainingSetup.reward``; this package never imports
   evaluation code) become group-normalized advantages: (r − mean_g) / (std_g + 1e-6), 0 when the
   group's rewards are all equal (population std, as GRPO);
3. the teacher sees ``teacher_prompt(example)`` + the same completion tokens when the objective
   defines it, and is the configured teacher, a frozen copy of the initial student, or the live
   student under no_grad (``teacher_model()``);
4. a no-grad statistics pass computes ``token_stats`` and log p_S(target) (the behaviour log-probs:
   the rollout policy is the current student at temperature 1; with ``rollout_precision: bf16`` it
   is the fp32 student, not its bf16 copy) for every row; the rows of all micro-batches and
   processes are gathered and ``row_weights`` runs once over all of them;
5. the gradient pass multiplies each row's loss by its weight (weight-0 rows skipped) and divides
   by the global loss-token count, as in v1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as tdist

from harness.generation import encode_prompts
from harness.training.batching import TokenSequence, TrainBatch, collate, split_micro_batches
from harness.training.forward import loss_hidden_states
from objectives.base import Objective, RowInfo, SequenceSource
from objectives.engine import BEHAVIOUR_STAT, row_token_stats

ADVANTAGE_EPS = 1e-6
RewardFn = Callable[[Sequence[Any], Sequence[str]], list[float]]


def expand_groups(examples: Sequence[Any], n_samples: int) -> list[Any]:
    """Each example repeated ``n_samples`` times, consecutively (one group per prompt)."""
    return [ex for ex in examples for _ in range(n_samples)]


def group_advantages(rewards: Sequence[float], n_samples: int, eps: float = ADVANTAGE_EPS) -> list[float]:
    """(r − group mean) / (group population std + eps) for consecutive groups of ``n_samples``."""
    if len(rewards) % n_samples:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {n_samples}")
    out: list[float] = []
    for g in range(0, len(rewards), n_samples):
        r = torch.tensor(rewards[g : g + n_samples], dtype=torch.float64)
        std = r.std(unbiased=False)
        adv = torch.zeros_like(r) if float(std) == 0.0 else (r - r.mean()) / (std + eps)
        out.extend(float(a) for a in adv)
    return out


def segment_ids(tokenizer: Any, completion_ids: Sequence[int], delimiter: str | None) -> list[int]:
    """Segment index of each completion token: a token whose text contains ``delimiter`` closes
    its segment (it belongs to it; the next token starts a new one). No delimiter: all 0."""
    if not delimiter:
        return [0] * len(completion_ids)
    out, seg = [], 0
    for tid in completion_ids:
        out.append(seg)
        if delimiter in tokenizer.decode([tid]):
            seg += 1
    return out


def with_prompt(example: Any, prompt: str) -> Any:
    """A copy of ``example`` whose user message is ``prompt`` (for rendering the teacher's prompt)."""
    if dataclasses.is_dataclass(example):
        return dataclasses.replace(example, prompt=prompt)
    clone = type(example).__new__(type(example))
    clone.__dict__.update(vars(example), prompt=prompt)
    return clone


@dataclass
class MicroRows:
    """One micro-batch of the v2 path: the student's batch, the teacher's (None: same as student's),
    row side information and the sequence ids of its rows."""

    student: TrainBatch
    teacher: TrainBatch | None
    rows: RowInfo


@dataclass
class StepRows:
    micro: list[MicroRows]
    n_sequences: int
    rewards: list[float] | None = None


def build_step_rows(objective: Objective, tokenizer: Any, render: Callable[[Any], str], examples: Sequence[Any],
                    seqs: Sequence[TokenSequence], *, pad_id: int, micro_batch_size: int, n_samples: int,
                    first_global_example: Callable[[int], int], rewards: list[float] | None,
                    teacher_prompt_limit: int) -> StepRows:
    """Collate the step's sequences into micro-batches with their v2 row information.

    ``examples``/``seqs`` are this process's expanded lists (group-major); ``first_global_example(i)``
    maps a local example index to its position in the global batch, so seq ids are global.
    """
    delimiter = objective.segment_delimiter()
    advantages = group_advantages(rewards, n_samples) if rewards is not None else None
    teacher_seqs: list[TokenSequence] | None = None
    if type(objective).teacher_prompt is not Objective.teacher_prompt:
        texts = [objective.teacher_prompt(ex) for ex in examples]
        rendered = [render(with_prompt(ex, t)) if t is not None else render(ex) for ex, t in zip(examples, texts)]
        t_prompt_ids = encode_prompts(tokenizer, rendered, teacher_prompt_limit)
        teacher_seqs = [TokenSequence(tuple(p), s.completion_ids) for p, s in zip(t_prompt_ids, seqs)]

    micro: list[MicroRows] = []
    order = list(range(len(seqs)))
    for part in split_micro_batches(order, micro_batch_size):
        batch = collate([seqs[i] for i in part], pad_id)
        t_batch = collate([teacher_seqs[i] for i in part], pad_id) if teacher_seqs is not None else None
        if t_batch is not None and not torch.equal(t_batch.targets, batch.targets):
            raise RuntimeError("teacher-prompt batch does not align with the student's completion tokens")
        seq_local = [part[int(b)] for b in batch.loss_rows]
        seq_id = [first_global_example(i // n_samples) * n_samples + i % n_samples for i in seq_local]
        seg: list[int] = []
        for i in part:
            seg.extend(segment_ids(tokenizer, seqs[i].completion_ids, delimiter))
        rows = RowInfo(seq_id=torch.tensor(seq_id, dtype=torch.long), segment_id=torch.tensor(seg, dtype=torch.long),
                       advantage=(torch.tensor([advantages[i] for i in seq_local], dtype=torch.float32)
                                  if advantages is not None else None))
        micro.append(MicroRows(batch, t_batch, rows))
    return StepRows(micro, len(seqs), rewards)


def gather_rows(dist: Any, local: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Concatenate per-row tensors of every process in rank order; returns (all rows, this rank's offset).

    Uses one all-reduce of a zero-padded buffer, the only collective ``DistContext`` relies on.
    """
    n_local = next(iter(local.values())).shape[0] if local else 0
    if dist.world_size == 1:
        return local, 0
    # gloo reduces on CPU, NCCL on the process's GPU (as DistContext does for its own collectives)
    device = dist.device if tdist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.zeros(dist.world_size, dtype=torch.float64, device=device)
    counts[dist.rank] = n_local
    tdist.all_reduce(counts, op=tdist.ReduceOp.SUM)
    counts_l = [int(c) for c in counts.tolist()]
    offset, total = sum(counts_l[: dist.rank]), sum(counts_l)
    out = {}
    for name in sorted(local):
        buf = torch.zeros(total, dtype=torch.float64, device=device)
        buf[offset : offset + n_local] = local[name].to(device=device, dtype=torch.float64)
        tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
        out[name] = buf.to(local[name].device, local[name].dtype)
    return out, offset


def check_step_weights(objective: Objective, weights: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
        raise ValueError(f"objective {objective.name!r}: row_weights must return a [{n}] tensor")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"objective {objective.name!r}: row_weights must be finite and >= 0")
    return weights.detach().float()


def stats_and_weights(objective: Objective, sched: dict, step_rows: StepRows, *, student, teacher, s_head, t_head,
                      autocast_dtype, chunk_size: int, dist: Any, device) -> tuple[list[torch.Tensor | None], int, int]:
    """The no-grad statistics pass, then ``row_weights`` over the whole step.

    Fills ``rows.behaviour_logprobs`` and ``rows.weight`` of every micro-batch; returns the teacher
    hidden states per micro-batch (reused by the gradient pass) and the forward token counts.
    """
    import contextlib

    need_weights = objective.uses_row_weights()
    teacher_hidden: list[torch.Tensor | None] = []
    local: dict[str, list[torch.Tensor]] = {}
    s_tokens = t_tokens = 0
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext())
    for m in step_rows.micro:
        m.student = m.student.to(device)
        m.teacher = m.teacher.to(device) if m.teacher is not None else None
        with torch.no_grad():
            h_s = loss_hidden_states(student, m.student, autocast_dtype)
            s_tokens += m.student.n_tokens
            h_t = None
            if t_head is not None:
                tb = m.teacher if m.teacher is not None else m.student
                h_t = loss_hidden_states(teacher, tb, autocast_dtype)
                t_tokens += tb.n_tokens
            with ctx:
                stats = row_token_stats(objective, sched, h_s, s_head, h_t, t_head, m.student.targets,
                                        chunk_size=chunk_size or 1024, rows=m.rows)
        teacher_hidden.append(h_t)
        m.rows.behaviour_logprobs = stats[BEHAVIOUR_STAT].cpu()
        for k, v in stats.items():
            local.setdefault(k, []).append(v.cpu())
    if need_weights:
        flat = {k: torch.cat(v) for k, v in local.items()}
        flat["__seq_id"] = torch.cat([m.rows.seq_id for m in step_rows.micro]).double()
        flat["__segment_id"] = torch.cat([m.rows.segment_id for m in step_rows.micro]).double()
        everything, offset = gather_rows(dist, flat)
        seq_id = everything.pop("__seq_id").long()
        segment_id = everything.pop("__segment_id").long()
        weights = check_step_weights(objective, objective.row_weights(everything, seq_id, segment_id), seq_id.shape[0])
        start = offset
        for m in step_rows.micro:
            n = m.student.n_loss_tokens
            m.rows.weight = weights[start : start + n]
            start += n
    return teacher_hidden, s_tokens, t_tokens


def prepare_step(objective: Objective, builder: Any, examples: Sequence[Any], source: SequenceSource, seed: int,
                 reward: RewardFn | None, tokenizer: Any) -> tuple[list[Any], list[TokenSequence], list[float] | None]:
    """Expanded examples, their sequences and (when the objective uses rewards) their rewards."""
    n = objective.n_samples()
    expanded = expand_groups(examples, n)
    seqs = builder.build(expanded, source, seed=seed)
    rewards = None
    if objective.uses_reward():
        if reward is None:
            raise ValueError(f"objective {objective.name!r} needs a task reward but the task defines none")
        texts = [tokenizer.decode(list(s.completion_ids), skip_special_tokens=True) for s in seqs]
        rewards = [float(r) for r in reward(expanded, texts)]
        if len(rewards) != len(seqs):
            raise ValueError(f"task reward returned {len(rewards)} values for {len(seqs)} completions")
    return expanded, seqs, rewards


def check_objective(objective: Objective, setup: Any, student: torch.nn.Module) -> torch.nn.Module | None:
    """Validate the objective's v2 declarations against the setup; return the module that teaches.

    Called before any checkpoint is loaded, so a ``self_frozen`` teacher is the INITIAL student
    (a resumed run gets the same teacher as an uninterrupted one).
    """
    n = objective.n_samples()
    if n < 1:
        raise ValueError(f"objective {objective.name!r}: n_samples must be >= 1, got {n}")
    sources = set(objective.needs().sources)
    if n > 1 and sources != {SequenceSource.STUDENT}:
        raise ValueError(f"objective {objective.name!r}: n_samples > 1 needs student rollouts as the only source")
    if objective.uses_reward() and setup.reward is None:
        raise ValueError(f"objective {objective.name!r} needs a task reward, but the training task defines none "
                         "(rewards exist for gsm8k and humaneval)")
    who = objective.teacher_model()
    if who == "teacher":
        return setup.teacher
    if who == "self_live":
        return student
    if who == "self_frozen":
        import copy

        return copy.deepcopy(student).eval().requires_grad_(False)
    raise ValueError(f"objective {objective.name!r}: teacher_model() must be teacher|self_frozen|self_live, got {who!r}")


def build_for_step(objective: Objective, builder: Any, setup: Any, examples: Sequence[Any], source: SequenceSource,
                   *, seed: int, pad_id: int, micro_batch_size: int, dist: Any,
                   teacher_prompt_limit: int) -> tuple[StepRows, list[TokenSequence]]:
    """Sequences and row information of this process's share of one optimizer step."""
    n = objective.n_samples()
    expanded, seqs, rewards = prepare_step(objective, builder, examples, source, seed, setup.reward, setup.tokenizer)
    # this process holds global batch positions rank, rank + world, ... (global_batch_indices[rank::world])
    step_rows = build_step_rows(objective, setup.tokenizer, setup.render_prompt, expanded, seqs, pad_id=pad_id,
                                micro_batch_size=micro_batch_size, n_samples=n,
                                first_global_example=lambda i: dist.rank + i * dist.world_size,
                                rewards=rewards, teacher_prompt_limit=teacher_prompt_limit)
    return step_rows, seqs


def forward_backward(objective: Objective, sched: dict, step_rows: StepRows, *, student, teacher, s_head, t_head,
                     autocast_dtype, chunk_size, dist: Any, device, n_global: float,
                     loss_fn: Callable[..., Any]) -> tuple[float, float, float, int, int]:
    """Statistics pass (when needed) and gradient pass; returns loss/entropy/KL sums and forward token counts.

    ``loss_fn`` is the stage's own loss entry point (``loop._objective_loss``), passed in to keep
    this module free of an import cycle with the loop.
    """
    needs_stats = objective.uses_row_weights() or objective.uses_behaviour_logprobs()
    hidden_t: list[torch.Tensor | None] = [None] * len(step_rows.micro)
    s_tokens = t_tokens = 0
    if needs_stats:
        hidden_t, s_tokens, t_tokens = stats_and_weights(
            objective, sched, step_rows, student=student, teacher=teacher, s_head=s_head, t_head=t_head,
            autocast_dtype=autocast_dtype, chunk_size=chunk_size, dist=dist, device=device)
    loss_sum = entropy_sum = kl_sum = 0.0
    for m, h_t in zip(step_rows.micro, hidden_t):
        batch = m.student.to(device)
        s_tokens += batch.n_tokens
        h_s = loss_hidden_states(student, batch, autocast_dtype)
        if t_head is not None and h_t is None:
            tb = (m.teacher if m.teacher is not None else m.student).to(device)
            with torch.no_grad():
                h_t = loss_hidden_states(teacher, tb, autocast_dtype)
            t_tokens += tb.n_tokens
        rows = RowInfo(**{f: (None if getattr(m.rows, f) is None else getattr(m.rows, f).to(device))
                          for f in RowInfo.FIELDS})
        res = loss_fn(objective, sched, h_s, s_head, h_t, t_head, batch.targets, chunk_size,
                              autocast_dtype, rows=rows)
        (res.loss_sum / max(n_global, 1.0)).backward()
        loss_sum += float(res.loss_sum.detach())
        entropy_sum += res.entropy_sum
        kl_sum += res.kl_sum
    return loss_sum, entropy_sum, kl_sum, s_tokens, t_tokens


def step_telemetry(step_rows: StepRows, dist: Any) -> dict[str, float]:
    """Global per-step telemetry of the v2 path: mean task reward, share of rows of nonzero weight,
    mean row weight (only the keys that apply)."""
    out: dict[str, float] = {}
    if step_rows.rewards is not None:
        n = dist.all_reduce_sum(len(step_rows.rewards))
        out["reward_mean"] = dist.all_reduce_sum(sum(step_rows.rewards)) / max(n, 1.0)
    weights = [m.rows.weight for m in step_rows.micro if m.rows.weight is not None]
    if weights:
        w = torch.cat(weights)
        n = dist.all_reduce_sum(w.numel())
        out["rows_kept"] = dist.all_reduce_sum(int((w != 0).sum())) / max(n, 1.0)
        out["row_weight_mean"] = dist.all_reduce_sum(float(w.sum())) / max(n, 1.0)
    return out
