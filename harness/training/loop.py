"""The standardized training loop. Read it top to bottom: `train()` is the whole stage.

Every objective goes through exactly this code: same data order, optimizer, schedule, clipping,
masking and global token normalization; only the objective's sequence source, teacher signal and
per-token loss differ.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.config import RunConfig
from harness.errors import TrainingAborted
from harness.generation import GenerationParams, HFGenerationBackend
from harness.io import atomic_write_json
from harness.modeling.batching import collate
from harness.training.batching import split_micro_batches
from harness.training.checkpoint import CHECKPOINT_DIRNAME, TrainState, find_checkpoint, load_latest, save_checkpoint
from harness.training.checkpoint_policy import CheckpointPolicy
from harness.training import rows as v2_rows
from harness.training.distributed import DataParallelStudent, DistContext, init_distributed
from harness.modeling.forward import lm_head, loss_hidden_states, sliced_head
from harness.training.schedules import build_scheduler
from harness.training.sharded_checkpoint import find_sharded_checkpoint, load_latest_sharded, save_sharded_checkpoint
from harness.training.sharding import ShardedStudent, check_sharding, grad_norm_value
from harness.training.sequences import SequenceBuilder, SequenceCounters, TeacherGenerationCache
from harness.training.telemetry import PeakMemory, TelemetryLog
from harness.training.trackers import Trackers
from objectives.base import Objective, SequenceSource, TeacherSignal, build_objective, schedule_progress
from objectives.engine import chunked_loss, dense_loss

SUMMARY_FILENAME = "train_summary.json"
MODEL_DIRNAME = "model"


@dataclass
class TrainingSetup:
    """What a training run works on; the suite runner builds it once and reuses loaded models."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: Any
    examples: Sequence[Any]  # harness.data.Example
    render_prompt: Any  # Example -> rendered prompt text
    stop: tuple[str, ...] = ()
    teacher_key: str = "teacher"
    teacher_cache_path: Path | None = None
    logit_columns: int | None = None  # set when heads differ in size but share the tokenizer (checked upstream)
    # Contract v2: (examples, completion texts) -> rewards; set by the runner from the task (None: no reward).
    reward: Any = None


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    total_steps: int
    resumed_from_step: int
    summary: dict[str, Any] = field(default_factory=dict)
    student: Any = None  # the trained model in memory (the suite evaluates it without a reload)


def total_optimizer_steps(n_examples: int, epochs: float, batch_size: int, max_steps: int | None) -> int:
    steps = max(1, math.ceil(n_examples * epochs / batch_size))
    return min(steps, max_steps) if max_steps else steps


def global_batch_indices(step: int, batch_size: int, n_examples: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a fresh seeded permutation per epoch, read in order.

    A pure function of (step, seed), so a resumed run sees exactly the batches it would have seen.
    """
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n_examples)
        perm = list(range(n_examples))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[offset])
    return out


def pick_source(mix: dict[SequenceSource, float], seed: int, step: int) -> SequenceSource:
    """Sample this step's sequence source; identical on every process (seeded by step only)."""
    if len(mix) == 1:
        return next(iter(mix))
    r = random.Random(seed * 7_919 + step).random()
    acc = 0.0
    for src, p in sorted(mix.items(), key=lambda kv: kv[0].value):
        acc += p
        if r < acc:
            return src
    return max(mix, key=mix.get)


def required_signal(objective: Objective) -> TeacherSignal:
    """The teacher signal the objective's loss reads (its ``needs()``, the one declaration)."""
    return objective.needs().teacher_signal


def train(cfg: RunConfig, run_dir: Path, setup: TrainingSetup, *, max_steps: int | None = None,
          progress: bool = True, dist: DistContext | None = None, stop_after_step: int | None = None,
          save_model: bool = True) -> TrainResult:
    """Train `setup.student` with `cfg.objective`; resumes from `run_dir/checkpoint` when present.

    `stop_after_step` ends the process's work early (as an interruption would) after writing a
    checkpoint; tests use it to check resume equivalence. `save_model=False` skips writing the final
    HF checkpoint (the final training checkpoint still allows resuming evaluation).
    """
    tc = cfg.train
    dist = dist or init_distributed()
    run_dir = Path(run_dir)
    if dist.is_main:  # one writer: the other ranks of a data-parallel run write nothing here
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # --- the objective and what it needs ------------------------------------------------------
    objective = build_objective(cfg.objective.name, cfg.objective.params)
    signal_needed = required_signal(objective)
    v2 = objective.uses_contract_v2()
    student, teacher, tok = setup.student, setup.teacher, setup.tokenizer
    if v2:
        teacher = v2_rows.check_objective(objective, setup, student)
    if signal_needed != TeacherSignal.NONE and teacher is None:
        raise ValueError(f"objective {objective.name!r} needs a teacher ({signal_needed.value}) but none was loaded")
    sharded = tc.sharding == "fsdp"
    check_sharding(tc.sharding, objective.needs(), dist.world_size, contract_v2=v2)
    device = dist.device
    if not sharded:  # FSDP moves only this rank's shard onto the device (ShardedStudent below)
        student.to(device)
    student.train()
    if teacher is not None and teacher is not student:  # contract v2 "self_live": the student teaches itself
        teacher.to(device).eval().requires_grad_(False)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    autocast_dtype = torch.bfloat16 if use_bf16 else None
    if tc.gradient_checkpointing and hasattr(student, "gradient_checkpointing_enable"):
        student.gradient_checkpointing_enable()

    # --- optimizer, schedule, budget ----------------------------------------------------------
    total_steps = total_optimizer_steps(len(setup.examples), tc.epochs, tc.batch_size, max_steps or tc.max_steps)
    if tc.batch_size % dist.world_size:
        raise ValueError(f"train.batch_size {tc.batch_size} must be a multiple of the process count {dist.world_size}")
    # Sharded before the optimizer exists: AdamW then holds (and keeps moments for) this rank's shards only.
    sharded_student = (ShardedStudent(student, dist, loss_hidden_states, bf16=use_bf16 and device.type == "cuda")
                       if sharded else None)
    params = [p for p in student.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) is ~4x faster than the default per-tensor loop for a 100M student.
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay,
                                  fused=all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params))
    scheduler = build_scheduler(optimizer, total_steps, tc.warmup_ratio, tc.lr_schedule)

    # --- resume ----------------------------------------------------------------------------------
    telemetry = TelemetryLog(run_dir)
    trackers = Trackers(tc.log_with, run_dir, run_dir.name, cfg.model_dump(mode="json"), enabled=dist.is_main)
    # Only a checkpoint that matches its manifest is resumed from; damaged ones are discarded and
    # the reason goes into the summary (`resume_events`), so a fallback is never silent.
    # Sharded runs keep each rank's shard of weights and optimizer state (sharded_checkpoint.py).
    resumed = (load_latest_sharded(run_dir, student, optimizer, scheduler, dist) if sharded else
               load_latest(run_dir, student, optimizer, scheduler, live_telemetry=telemetry.path, owner=dist.is_main))
    if resumed.state is not None:
        state = resumed.state
        if not sharded:  # the shards were loaded in place, on this rank's device
            student.to(device)
    else:
        state = TrainState(step=0, telemetry_rows=0, nonfinite_steps=0, nonfinite_in_row=0, counters={})
    if dist.is_main:
        telemetry.restore(resumed.telemetry, state.telemetry_rows)
    resumed_from = state.step
    counters = {k: 0.0 for k in ("prompts_seen", "generated_tokens", "teacher_forward_tokens",
                                 "student_forward_tokens", "loss_tokens", "train_wall_time_s")}
    counters.update(state.counters)

    # --- sequence construction ---------------------------------------------------------------------
    rollout = GenerationParams(max_new_tokens=tc.max_new_tokens, temperature=tc.temperature, top_p=tc.top_p,
                               stop=tuple(setup.stop), max_prompt_tokens=tc.max_prompt_tokens)
    seq_counters = SequenceCounters()
    # The vLLM engine holds its own bf16 weights: no copy here for that backend.
    rollout_model = (bf16_rollout_copy(student)
                     if not sharded and tc.rollout_backend == "hf" and resolve_rollout_precision(tc.rollout_precision, device) == "bf16"
                     else None)
    # One generation call per process per step (the whole share of the batch) unless a smaller
    # generation batch is set: decoding is memory-bound, so a wider batch is nearly free per row.
    gen_batch = generation_batch_size(tc, dist.world_size)
    # The vLLM engine is built at the first on-policy step, so objectives that never roll out never start one.
    # (Sharded runs never sample from the student: check_sharding refused such objectives.)
    student_backend = None if tc.rollout_backend == "vllm" or sharded else HFGenerationBackend(
        rollout_model or student, tok, batch_size=gen_batch, setting="train.generation_batch_size")
    builder = SequenceBuilder(
        tokenizer=tok, render=setup.render_prompt, max_prompt_tokens=tc.max_prompt_tokens,
        max_response_tokens=tc.max_response_tokens, rollout=rollout,
        student_backend=student_backend,
        teacher_backend=(HFGenerationBackend(teacher, tok, batch_size=gen_batch, setting="train.generation_batch_size")
                         if teacher is not None else None),
        teacher_cache=(TeacherGenerationCache(setup.teacher_cache_path, setup.teacher_key)
                       if tc.cache_teacher_generations and setup.teacher_cache_path else None),
        counters=seq_counters,
    )
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    s_head = sliced_head(lm_head(student), setup.logit_columns)
    t_head = (sliced_head(lm_head(teacher), setup.logit_columns)
              if teacher is not None and signal_needed != TeacherSignal.NONE else None)

    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state.step, desc=f"train {objective.name}", unit="step", leave=False)

    policy = CheckpointPolicy(tc.checkpoint_every, tc.checkpoint_every_s, start_step=state.step)
    # v1 objectives: DDP. Contract-v2 objectives run the student in harness/training/rows.py, outside
    # the DDP forward, and sum gradients with DistContext.all_reduce_grads instead.
    trainer = sharded_student or (
        None if v2 else DataParallelStudent(student, dist, loss_hidden_states, static_graph=tc.gradient_checkpointing))
    loss_scale = sharded_student.loss_scale if sharded_student is not None else 1.0
    interrupted = {"flag": False}
    previous_handler = _install_sigint(interrupted)
    budget = tc.budget

    def budget_spent() -> bool:
        return budget is not None and counters[budget.metric] >= budget.limit

    try:
        with PeakMemory(device) as peak:
            while state.step < total_steps and not budget_spent():
                step = state.step
                t0 = time.perf_counter()
                sched = objective.schedule(step, total_steps)
                source = pick_source(objective.source_mix(schedule_progress(step, total_steps)), cfg.seed, step)

                # 1. this process's share of the global batch, as token sequences
                if source is SequenceSource.STUDENT:  # sample from the current policy
                    if rollout_model is not None:
                        sync_rollout_copy(rollout_model, student)
                    if tc.rollout_backend == "vllm":
                        if student_backend is None:
                            student_backend = builder.student_backend = vllm_rollout_backend(cfg, student, tok, dist)
                        student_backend.sync_weights(student)
                idx = global_batch_indices(step, tc.batch_size, len(setup.examples), cfg.seed)[dist.rank :: dist.world_size]
                gen_before = seq_counters.generated_tokens
                if v2:  # contract v2 (groups, rewards, teacher prompts, row weights): harness/training/rows.py
                    step_rows, seqs = v2_rows.build_for_step(
                        objective, builder, setup, [setup.examples[i] for i in idx], source,
                        seed=cfg.seed * 1_000_003 + step * 101 + dist.rank, pad_id=pad_id,
                        micro_batch_size=tc.micro_batch_size, dist=dist,
                        teacher_prompt_limit=tc.max_prompt_tokens + tc.max_response_tokens)
                else:
                    seqs = builder.build([setup.examples[i] for i in idx], source,
                                         seed=cfg.seed * 1_000_003 + step * 101 + dist.rank)
                n_global = dist.all_reduce_sum(sum(len(s.completion_ids) for s in seqs))
                t_sequences = time.perf_counter()

                # 2. forward/backward over micro-batches, normalized by the GLOBAL loss-token count
                loss_sum = entropy_sum = kl_sum = 0.0
                fwd_tokens = 0
                t_fwd_tokens = None
                if v2:
                    loss_sum, entropy_sum, kl_sum, fwd_tokens, t_fwd_tokens = v2_rows.forward_backward(
                        objective, sched, step_rows, student=student, teacher=teacher, s_head=s_head, t_head=t_head,
                        autocast_dtype=autocast_dtype, chunk_size=tc.loss_chunk_size, dist=dist, device=device,
                        n_global=n_global, loss_fn=_objective_loss)
                    dist.all_reduce_grads(params)  # the v2 rows path runs the student outside DDP
                # v1: unchanged (the v2 path above already ran forward/backward)
                micros = [] if v2 else split_micro_batches(seqs, tc.micro_batch_size)
                for k, micro in enumerate(micros):
                    batch = collate(micro, pad_id).to(device)
                    fwd_tokens += batch.n_tokens
                    # Gradients are summed across processes during the last micro-batch's backward.
                    with trainer.micro_batch(final=k == len(micros) - 1):
                        h_s = trainer.hidden_states(batch, autocast_dtype)
                        h_t = None
                        if t_head is not None:
                            with torch.no_grad():
                                h_t = loss_hidden_states(teacher, batch, autocast_dtype)
                        res = _objective_loss(objective, sched, h_s, s_head, h_t, t_head, batch.targets,
                                              tc.loss_chunk_size, autocast_dtype)
                        (res.loss_sum / max(n_global, 1.0) * loss_scale).backward()
                    loss_sum += float(res.loss_sum.detach())
                    entropy_sum += res.entropy_sum
                    kl_sum += res.kl_sum
                t_backward = time.perf_counter()

                # 3. clip, guard against non-finite values, step
                loss_value = dist.all_reduce_sum(loss_sum) / max(n_global, 1.0)
                grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or float("inf")))
                finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
                lr_now = scheduler.get_last_lr()[0]
                if finite:
                    optimizer.step()
                    state.nonfinite_in_row = 0
                else:
                    state.nonfinite_steps += 1
                    state.nonfinite_in_row += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.step += 1

                # 4. budget counters and telemetry
                dt = time.perf_counter() - t0
                counters["prompts_seen"] += tc.batch_size
                counters["generated_tokens"] += dist.all_reduce_sum(seq_counters.generated_tokens - gen_before)
                counters["student_forward_tokens"] += dist.all_reduce_sum(fwd_tokens)
                if t_head is not None:
                    counters["teacher_forward_tokens"] += dist.all_reduce_sum(fwd_tokens if t_fwd_tokens is None else t_fwd_tokens)
                counters["loss_tokens"] += n_global
                counters["train_wall_time_s"] += dt
                row = {
                    "step": state.step, "loss": loss_value, "grad_norm": grad_norm, "lr": lr_now,
                    "entropy": dist.all_reduce_sum(entropy_sum) / max(n_global, 1.0),
                    "teacher_kl": dist.all_reduce_sum(kl_sum) / max(n_global, 1.0) if t_head is not None else None,
                    "tokens_per_s": dist.all_reduce_sum(fwd_tokens) / dt if dt > 0 else None,
                    "source": source.value, "loss_tokens": int(n_global), "nonfinite": not finite,
                    # where the step's time went: sequences (rollouts included), forward+backward, the rest
                    "sequences_s": t_sequences - t0, "forward_backward_s": t_backward - t_sequences,
                    "optimizer_s": time.perf_counter() - t_backward, **sched,
                }
                if v2:
                    row.update(v2_rows.step_telemetry(step_rows, dist))
                if dist.is_main:
                    telemetry.append(row)
                    trackers.log(row, state.step)
                state.telemetry_rows = telemetry.rows if dist.is_main else state.step
                state.counters = counters
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "grad_norm", "beta", "tokens_per_s") and v is not None})

                if state.nonfinite_in_row >= tc.max_nonfinite_in_row:
                    found = find_sharded_checkpoint(run_dir) if sharded else find_checkpoint(run_dir)
                    kept = (f"The last good checkpoint in {run_dir} is intact" if found is not None
                            else f"No checkpoint was due yet ({policy.describe()}), so a rerun starts over")
                    raise TrainingAborted(
                        f"{state.nonfinite_in_row} non-finite steps in a row (last at step {state.step}); stopping. "
                        f"{kept}; lower train.lr or check the objective's parameters."
                    )
                # Every rank must take the same branch (the save ends in a barrier): decide together.
                was_interrupted = dist.any(interrupted["flag"])
                stop_now = was_interrupted or (stop_after_step is not None and state.step >= stop_after_step)
                if finite and dist.any(policy.due(state.step, interrupted=stop_now)):
                    if sharded:  # collective: every rank writes its own shard
                        save_sharded_checkpoint(run_dir, student, optimizer, scheduler, state, dist,
                                                telemetry_path=telemetry.path)
                    elif dist.is_main:
                        save_checkpoint(run_dir, student, optimizer, scheduler, state, telemetry_path=telemetry.path)
                    policy.saved(state.step)
                    dist.barrier()
                if was_interrupted:
                    raise KeyboardInterrupt
                if stop_now:
                    break
    finally:
        _restore_sigint(previous_handler)
        trackers.finish()
        if bar is not None:
            bar.close()

    model_dir = run_dir / MODEL_DIRNAME
    summary = {
        "objective": objective.name, "objective_params": objective.params.model_dump(mode="json"),
        "optimizer_steps": state.step, "total_steps": total_steps, "resumed_from_step": resumed_from,
        "nonfinite_steps": state.nonfinite_steps, "peak_memory_bytes": peak.peak, "world_size": dist.world_size,
        "teacher_signal": signal_needed.value, "loss_chunk_size": tc.loss_chunk_size,
        "stopped_by_budget": budget_spent() and state.step < total_steps,
        "budget": budget.model_dump() if budget is not None else None,
        "precision": "bf16" if use_bf16 else "fp32", "rollout_backend": tc.rollout_backend,
        "rollout_weight_syncs": getattr(student_backend, "syncs", None), **{k: counters[k] for k in counters},
        "resume_events": resumed.events,
        "generation_batches": generation_record(dist, student_backend, builder.teacher_backend),
    }
    full_state = None
    if sharded_student is not None:
        summary["sharding"] = sharded_student.layout()  # collective: every rank reports its shard
    finished = state.step >= total_steps or budget_spent()
    if finished and save_model and sharded_student is not None:
        full_state = sharded_student.full_state_dict()  # collective; the full weights land on rank 0 only
    if finished and dist.is_main:
        if save_model:
            _save_final_model(student, tok, model_dir, state_dict=full_state)
        atomic_write_json(run_dir / SUMMARY_FILENAME, summary)
        if save_model:
            # The final model (weights only) supersedes the resume checkpoint and its optimizer state.
            # Without a saved model (suites) it stays until the cell's evaluation is recorded.
            import shutil

            shutil.rmtree(run_dir / CHECKPOINT_DIRNAME, ignore_errors=True)
    dist.barrier()
    # A sharded student holds DTensor shards, not a usable model: callers load `model_dir` instead.
    return TrainResult(run_dir, model_dir, state.step, total_steps, resumed_from, summary,
                       None if sharded else student)


def resolve_rollout_precision(setting: str, device: torch.device) -> str:
    """`auto` samples rollouts from a bf16 copy on CUDA (decoding is bandwidth-bound there; the fp32
    master weights stay exact) and from the training weights elsewhere (on CPU bf16 decoding saves
    little and the exact policy is kept)."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "same"
    return setting


def generation_batch_size(tc, world_size: int) -> int | str:
    """Prompts per generation call on one process: the configured bound, else the process's whole share.
    `auto` is passed on to the backend, which sizes each call from free memory, never above the call's
    rows (the share)."""
    if tc.generation_batch_size == "auto":
        return "auto"
    share = max(1, tc.batch_size // world_size)
    return min(tc.generation_batch_size, share) if tc.generation_batch_size else share


def generation_record(dist: DistContext, *backends) -> dict:
    """What the HF generation calls of this process's run (since it started or resumed) used, over all
    ranks: the distinct batch sizes (`auto` resolved) and the batches split after running out of memory.
    A collective: every rank calls it."""
    mine = [b for b in backends if b is not None and hasattr(b, "batch_sizes_used")]
    sizes = sorted(set().union(*dist.all_gather_object(sorted({s for b in mine for s in b.batch_sizes_used}))))
    return {"batch_sizes": sizes, "oom_splits": int(dist.all_reduce_sum(sum(b.oom_splits for b in mine)))}


def vllm_rollout_backend(cfg: RunConfig, student, tok, dist: DistContext):
    """A colocated vLLM engine for the student's architecture; the loop pushes the weights into it
    before every on-policy step (resumed runs included), so nothing is pushed here."""
    from harness.vllm_backend import VLLMGenerationBackend

    v = cfg.train.vllm
    return VLLMGenerationBackend.for_model(
        student, tok, gpu_memory_utilization=v.gpu_memory_utilization, sleep=v.sleep, max_model_len=v.max_model_len,
        seed=cfg.seed * 1_000 + dist.rank, world_size=dist.world_size, sync="caller")


def bf16_rollout_copy(student: torch.nn.Module) -> torch.nn.Module | None:
    """A bf16 copy of the student for sampling rollouts (None when the student already is bf16).

    Decoding reads every weight once per generated token, so the copy halves the bytes read; how
    much time that saves depends on the kernels (on this project's 2-core CPU: 2.59 -> 2.32 s per
    rollout, bench/train_step.py). `sync_rollout_copy` refreshes it from the student.
    """
    if all(p.dtype == torch.bfloat16 for p in student.parameters()):
        return None
    import copy

    return copy.deepcopy(student).to(torch.bfloat16).eval().requires_grad_(False)


@torch.no_grad()
def sync_rollout_copy(rollout_model: torch.nn.Module, student: torch.nn.Module) -> None:
    """Copy the student's current weights into the rollout copy (cast to its dtype)."""
    for dst, src in zip(rollout_model.parameters(), student.parameters(), strict=True):
        dst.copy_(src)


def _objective_loss(objective, sched, h_s, s_head, h_t, t_head, targets, chunk_size, autocast_dtype, rows=None):
    """Chunked path by default (no [N, V] tensor for both models at once); dense when chunk_size is None.

    ``rows`` (contract v2 only) carries row weights and side information; v1 never passes it.
    """
    import contextlib

    ctx = torch.autocast(h_s.device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    extra = {} if rows is None else {"rows": rows}
    with ctx:
        if chunk_size is not None:
            return chunked_loss(objective, sched, h_s, s_head, h_t, t_head, targets, chunk_size=chunk_size, **extra)
        s_logits = s_head(h_s).float()
        t_logits = t_head(h_t).float() if t_head is not None else None
        return dense_loss(objective, sched, s_logits, t_logits, targets, **extra)


def _save_final_model(student, tokenizer, model_dir: Path, state_dict: dict | None = None) -> None:
    """A standard HF checkpoint (LoRA adapters merged), written to a temp dir and renamed.

    `state_dict`: the gathered full weights of a sharded student (its own parameters are shards)."""
    import shutil
    import tempfile

    model = student
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=".model-"))
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(tmp)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)


# SIGTERM is how schedulers end a job (SLURM at preemption or time limit, Kubernetes, `docker stop`,
# torchrun forwarding its own SIGTERM to the workers), with a grace period before SIGKILL: treat it as
# Ctrl-C, so the step in flight ends in a checkpoint instead of losing up to a whole interval.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_sigint(flag: dict) -> dict | None:
    """First Ctrl-C (or SIGTERM): finish the current step, checkpoint, then stop. Second: stop at once.
    Returns the previous handlers, for `_restore_sigint`."""

    def handler(signum, frame):
        if flag["flag"]:
            raise KeyboardInterrupt
        flag["flag"] = True

    try:
        return {sig: signal.signal(sig, handler) for sig in INTERRUPT_SIGNALS}
    except ValueError:  # not in the main thread: leave signals alone
        return None


def _restore_sigint(previous: dict | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
