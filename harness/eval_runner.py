"""Drive a model through its tasks' evaluation protocols and write traceable records.

For each task: render prompts with the task's definition, generate with the decoding the task
resolves (`harness.tasks.contract.generation_params`), hand the outputs to the task's scoring
module, and write `eval/<task>.jsonl` (one record per example) plus `eval/<task>.json` (aggregate +
the protocol serialized from what ran: resolved task definition, decoding, rules-file hashes).
Teacher-forced diagnostics (held-out teacher KL, reference CE) ride along through
`objectives.engine`'s chunked path. Nothing here knows a task by name.

Under `torchrun` / `accelerate launch` every rank calls this together with the same model: each
generates and scores its share of the examples (`harness.ranks.Shards`: whole generation batches of
the one-process plan, so outputs are those of one process bit for bit), the shares are gathered on
every rank, and rank 0 alone writes the files, each once and atomically.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.config import EvalConfig, TaskConfig
from harness.data import get_task, load_examples, prompt_renderer
from harness.generation import HFGenerationBackend
from harness.io import atomic_write_json, atomic_write_jsonl
from harness.ranks import Shards
from harness.tasks.contract import ScoreContext, generation_params, load_scorer, protocol_record


def evaluate_model(model, tokenizer, tasks: Sequence[TaskConfig], cfg: EvalConfig, out_dir: Path, *,
                   data_dir: Path | None, teacher=None, baseline_outputs: dict[str, dict[str, str]] | None = None,
                   progress: bool = True, seed: int = 0, baseline_name: str | None = None,
                   logit_columns: int | None = None, weights_from_checkpoint: bool = False,
                   is_baseline_model: bool = False, shards: Shards | None = None) -> dict[str, Any]:
    """Evaluate `model` on `tasks`; returns {task: aggregate, "diagnostics": {...}}.

    `baseline_outputs[task][example_id]` are a baseline model's outputs for tasks that declare
    `needs.baseline_outputs` (the pipeline generates them once per results dir); `baseline_name`
    (which model wrote them) is recorded in the protocol. `logit_columns` is the pair's head slice
    (see `harness.pipeline.LoadedPair`), applied to the diagnostics exactly as in training.
    `weights_from_checkpoint`: the model's weights are those of the checkpoint it was loaded from
    (a teacher or untrained baseline), so a vLLM engine built from that checkpoint needs no weight sync.
    `is_baseline_model`: `model` wrote those baseline outputs (a judged comparison is then 50% by
    construction; the scorer records it without asking the judge).
    `shards`: this process's place in a process group (every rank calls this; rank 0 writes). The
    return value is the same on every rank.
    """
    out_dir = Path(out_dir)
    eval_dir = out_dir / "eval"
    shards = shards or Shards()
    backend = generation_backend(model, tokenizer, cfg, progress=progress and shards.is_writer,
                                 weights_from_checkpoint=weights_from_checkpoint, seed=seed, world_size=shards.world_size)
    results: dict[str, Any] = {}
    diag_rows: dict[str, dict[str, float]] = {}
    for tcfg in tasks:
        task_def = get_task(tcfg.name)
        scorer = load_scorer(task_def)
        examples = load_examples(task_def, "eval", source=tcfg.eval_source, limit=tcfg.eval_limit, data_dir=data_dir, seed=0)
        render = prompt_renderer(task_def, tokenizer)
        prompts = [render(ex) for ex in examples]
        params = generation_params(task_def, cfg, seed)
        t0 = time.perf_counter()
        gen_before = backend.generated_tokens
        backend.desc = f"eval {tcfg.name}"
        outputs = generate_shared(backend, prompts, params, shards)
        ctx = ScoreContext(task=task_def, task_cfg=tcfg, eval_cfg=cfg, examples=examples, prompts=prompts,
                           outputs=outputs, params=params, model=model, tokenizer=tokenizer, data_dir=data_dir,
                           seed=seed, baseline_outputs=(baseline_outputs or {}).get(tcfg.name),
                           baseline_name=baseline_name, is_baseline_model=is_baseline_model, shards=shards)
        agg, rows = scorer.score(ctx)
        agg["wall_time_s"] = time.perf_counter() - t0
        agg["generated_tokens"] = shards.total(backend.generated_tokens - gen_before)
        agg["world_size"] = shards.world_size  # provenance: processes that shared this evaluation
        agg["protocol"] = protocol_record(
            task_def, params, eval_source=tcfg.eval_source, data_dir=str(data_dir) if data_dir else None,
            limit=tcfg.eval_limit, n_examples=len(examples), **(agg.get("protocol") or {}))
        if cfg.diagnostics:
            diag = reference_diagnostics(model, teacher, tokenizer, examples[: cfg.diagnostics_limit], render,
                                         logit_columns=logit_columns, shards=shards)
            diag["mean_length"] = agg.get("mean_length")
            for key in ("distinct_1", "distinct_2", "self_bleu"):
                if key in agg:
                    diag[key] = agg[key]
            diag_rows[tcfg.name] = diag
        if shards.is_writer:  # each file whole, once, by one process: a retry replaces it, never appends
            atomic_write_jsonl(eval_dir / f"{tcfg.name}.jsonl", rows)
            atomic_write_json(eval_dir / f"{tcfg.name}.json", agg)
        results[tcfg.name] = agg
    if diag_rows:
        results["diagnostics"] = summarize_diagnostics(diag_rows)
        if shards.is_writer:
            atomic_write_json(eval_dir / "diagnostics.json", results["diagnostics"])
    return results


def generate_shared(backend, prompts: Sequence[str], params, shards: Shards) -> list:
    """`backend.generate(prompts, params)`, each rank running its share, the result on every rank,
    equal to what one process generates (greedy and sampled alike).

    - A backend with a batch plan (`HFGenerationBackend`) is split by whole batches of the plan one
      process would run, so every row sees the same batch mates, padding and sampling seed.
    - A backend whose sampling is seeded per request (`generate_requests`: vLLM, which batches
      continuously on its own) is split by prompt, each prompt seeded by its place in the whole list.
    - Any other backend may draw from one stream across a call, so a share would sample differently:
      rank 0 generates everything and the others receive it (correct, not faster).
    """
    if shards.world_size == 1:
        return backend.generate(prompts, params)
    if hasattr(backend, "plan") and hasattr(backend, "generate_batches"):
        from harness.generation import merge_batches

        plan = backend.plan(prompts, params)
        done = shards.map(lambda mine: backend.generate_batches(prompts, params, mine, plan=plan), range(len(plan)))
        return merge_batches(plan, done)
    if not hasattr(backend, "generate_requests"):
        return shards.on_writer(lambda: backend.generate(prompts, params))
    n = params.n

    def by_prompt(mine: list[int]) -> list[list]:
        outs = backend.generate_requests([prompts[i] for i in mine], params, mine)
        return [outs[k * n : (k + 1) * n] for k in range(len(mine))]

    return [o for outs in shards.map(by_prompt, range(len(prompts))) for o in outs]


def generation_backend(model, tokenizer, cfg: EvalConfig, *, progress: bool, weights_from_checkpoint: bool,
                       seed: int = 0, desc: str = "generate", world_size: int = 1):
    """The evaluation's generator: HF `generate`, or a vLLM engine holding `model`'s weights.

    `world_size`: processes in the group. Under torchrun each rank's vLLM engine must be built as one
    of the launcher's processes (as the training loop's rollout engine is), or vLLM would set up a
    distributed environment of its own inside the torchrun group; building it the same way also
    lets a suite cell's evaluation reuse the engine its rollouts used instead of a second one."""
    if cfg.backend != "vllm":
        return HFGenerationBackend(model, tokenizer, batch_size=cfg.batch_size, progress=progress, desc=desc)
    from harness.vllm_backend import VLLMGenerationBackend

    return VLLMGenerationBackend.for_model(
        model, tokenizer, gpu_memory_utilization=cfg.vllm.gpu_memory_utilization, sleep=cfg.vllm.sleep,
        max_model_len=cfg.vllm.max_model_len, seed=seed, sync="checkpoint" if weights_from_checkpoint else "now",
        progress=progress, desc=desc, world_size=world_size)


def generate_baseline_outputs(model, tokenizer, task_cfg: TaskConfig, cfg: EvalConfig, data_dir: Path | None,
                              progress: bool = True, weights_from_checkpoint: bool = True,
                              shards: Shards | None = None) -> dict[str, str]:
    """A baseline model's outputs keyed by example id, decoded exactly as the evaluated models are
    (the pairwise judge's other side, or the teacher's answers an agreement metric compares with).
    Baselines are loaded from their checkpoints, so a vLLM engine needs no weight sync by default."""
    task_def = get_task(task_cfg.name)
    examples = load_examples(task_def, "eval", source=task_cfg.eval_source, limit=task_cfg.eval_limit, data_dir=data_dir, seed=0)
    render = prompt_renderer(task_def, tokenizer)
    shards = shards or Shards()
    backend = generation_backend(model, tokenizer, cfg, progress=progress and shards.is_writer,
                                 weights_from_checkpoint=weights_from_checkpoint, desc=f"baseline outputs {task_cfg.name}",
                                 world_size=shards.world_size)
    outs = generate_shared(backend, [render(ex) for ex in examples], generation_params(task_def, cfg, 0), shards)
    return {ex.id: o.text.strip() for ex, o in zip(examples, outs)}


def summarize_diagnostics(per_task: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Flat means over tasks (what the leaderboard shows) plus the per-task values."""
    keys = sorted({k for d in per_task.values() for k, v in d.items() if isinstance(v, (int, float)) and v is not None})
    flat = {}
    for k in keys:
        vals = [d[k] for d in per_task.values() if isinstance(d.get(k), (int, float)) and d.get(k) is not None and math.isfinite(d[k])]
        if vals:
            flat[k] = sum(vals) / len(vals)
    return {**flat, "per_task": per_task}


# ----------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def reference_diagnostics(model, teacher, tokenizer, examples, render, max_tokens: int = 256, *,
                          logit_columns: int | None = None, chunk_size: int = 128,
                          shards: Shards | None = None) -> dict[str, float]:
    """Teacher-forced on held-out references: student per-token CE and mean KL(p_T || p_S).

    These separate objectives even when a CPU-sized run leaves benchmark scores near zero. The
    loss goes through the training stage's own path (`objectives.engine.chunked_loss` with the
    `sft` objective, whose per-token loss is the CE; the engine's KL statistic is KL(p_T||p_S)) on
    the same sliced heads, `chunk_size` positions at a time, so memory stays bounded. Under a
    process group each rank computes its share of the 4-sequence batches; the per-batch sums are
    added in batch order, exactly as one process adds them.
    """
    from harness.generation import encode_prompts
    from harness.modeling.batching import TokenSequence, collate
    from harness.modeling.forward import lm_head, loss_hidden_states, sliced_head
    from objectives.base import build_objective
    from objectives.engine import chunked_loss

    if teacher is not None and logit_columns is None:
        s_rows, t_rows = (m.get_output_embeddings().weight.shape[0] for m in (model, teacher))
        # Heads of different sizes over one tokenizer (checked at load): compare the tokenizer's columns.
        logit_columns = len(tokenizer) if s_rows != t_rows else None

    seqs = []
    for ex in examples:
        ref = ex.response or (ex.references[0] if ex.references else None)
        if not ref:
            continue
        p_ids = encode_prompts(tokenizer, [render(ex)], 512)[0]
        r_ids = tokenizer(ref, add_special_tokens=False)["input_ids"][:max_tokens]
        seqs.append(TokenSequence(tuple(p_ids), tuple(r_ids)))
    if not seqs:
        return {}
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ce = build_objective("sft", {})
    s_head = sliced_head(lm_head(model), logit_columns)
    t_head = sliced_head(lm_head(teacher), logit_columns) if teacher is not None else None

    def batch_sums(starts: list[int]) -> list[tuple[float, float, int]]:
        sums = []
        was_training = model.training
        model.eval()
        try:
            for i in starts:
                batch = collate(seqs[i : i + 4], pad_id).to(device)
                t_hidden = loss_hidden_states(teacher, batch) if teacher is not None else None
                res = chunked_loss(ce, {}, loss_hidden_states(model, batch), s_head, t_hidden, t_head, batch.targets,
                                   chunk_size=chunk_size)
                sums.append((float(res.loss_sum), res.kl_sum if teacher is not None else 0.0, batch.n_loss_tokens))
        finally:
            model.train(was_training)
        return sums

    ce_sum = kl_sum = 0.0
    n = 0
    for loss_sum, batch_kl, tokens in (shards or Shards()).map(batch_sums, range(0, len(seqs), 4)):
        ce_sum += loss_sum
        if teacher is not None:
            kl_sum += batch_kl
        n += tokens
    out = {"ref_ce": ce_sum / n, "ref_tokens": n}
    if teacher is not None:
        out["teacher_kl"] = kl_sum / n
    return out
