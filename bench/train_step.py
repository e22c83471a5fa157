"""Throughput and peak memory of a full on-policy training step: our training stage vs TRL's GKDTrainer.

    python bench/train_step.py                  # SmolLM2-135M teacher, 20-layer pruned student, 3 objectives
    python bench/train_step.py --quick          # tiny random models (plumbing check, seconds)
    python bench/train_step.py --objectives onpolicy_fkl --steps 5 --repeats 1

One step = rollout (student samples the completions) + teacher forward + student forward/backward +
clip + AdamW step, for batch 4. Both sides get the same models (fresh loads of the same checkpoints),
the same 4 GSM8K prompts (rendered with the chat template; the 4 whose length is closest to
`--prompt-tokens`, so no truncation happens on either side), max_new_tokens 32, sampling at T = 1,
top_p = 1, top_k = 0, no stop strings, lr 1e-5 constant, grad clip 1.0, fp32, no checkpoints.
  ours  harness.training.loop.train() with a TrainingSetup (chunked loss, TrainConfig defaults otherwise)
  trl   trl.experimental.gkd.GKDTrainer, lmbda = 1 (always on-policy), beta 0 (forward KL: the peer of
        onpolicy_fkl and of veto, which anneals to forward KL) or beta 1 (reverse KL: peer of onpolicy_rkl)
  trl_distill  (--peers trl_distill) trl.DistillationTrainer (trl>=1.10; always on-policy, chunked JSD
        loss), the same beta; prompts given as the same rendered text, checked token for token; with
        --rollout-backend vllm it samples with its own colocated vLLM engine (use_vllm, vllm_mode colocate)
--rollout-backend vllm (CUDA): our stage samples with its colocated vLLM engine (train.rollout_backend).
Targets of issue 17 on a GPU: on-policy step >= 1.0x DistillationTrainer with vLLM, >= 3x GKDTrainer.
Each (framework, objective) runs in a fresh subprocess; the processes alternate ours/TRL and the whole
sequence repeats `--repeats` times. Step time = interval between consecutive step ends (everything in
the loop: data, rollout, forward/backward, optimizer, logging); the first step is a warm-up and is not
timed. Tokens/s = tokens in the trained sequences (prompt + completion, no padding) / step time; the
completion lengths are reported because sampled rollouts end at different places (EOS).
Peak memory = peak RSS above the RSS after both models are loaded (kernel high-water mark, reset
before training; see bench/_common.py), over all steps including the warm-up (optimizer state).
Instrumentation of our stage: `harness.training.loop.collate` and `TelemetryLog.append` are wrapped
in the worker process to read per-step token counts and step-end times (no behaviour change).
Target (issue): >= 1.3x TRL's throughput at equal or lower peak memory.

Before/after a change to our own stage (issue 15: one generation call per step instead of rollouts
bounded by the micro-batch): `--peers ours_base --base-code DIR` runs our stage from the checkout
DIR (e.g. `git worktree add /tmp/base COMMIT`) as the peer, interleaved with this tree's, with the
same models, prompts and settings; `--micro-batch` / `--generation-batch` set our micro-batch and
generation batch. Each worker also reports the bytes it wrote during training (/proc/self/io:
`wchar`, bytes passed to write calls, and `write_bytes`, bytes sent to the block layer) and its wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--code-root" in sys.argv:
    # An `ours_base` worker: our stage as another checkout has it (e.g. the commit before a change),
    # imported ahead of this tree's; this script only drives it.
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--code-root") + 1]).resolve()))

from bench._common import (  # noqa: E402
    MIB,
    PeakRSS,
    emit,
    fmt_table,
    loadavg,
    machine_info,
    median,
    out_path,
    run_worker,
    versions,
    write_json,
)

TEACHER = "smollm2-135m-instruct"
STUDENT_DROP = list(range(10, 20))  # the smoke suite's 20-layer student
TRL_BETA = {"onpolicy_fkl": 0.0, "veto": 0.0, "onpolicy_rkl": 1.0}
OBJECTIVES = ["onpolicy_fkl", "onpolicy_rkl", "veto"]
TARGET_SPEEDUP = 1.3


# ---------------------------------------------------------------------------------------------
# Models and prompts
# ---------------------------------------------------------------------------------------------
def load_pair(quick: bool, tmp: Path):
    """(teacher, student, tokenizer, model_dirs): fresh loads; the student is loaded from disk."""
    import torch

    from harness.config import ModelSpec
    from harness.modeling import load_model, load_tokenizer, make_tiny_model

    if quick:
        t_dir = make_tiny_model(tmp / "teacher", vocab_size=512, hidden=32, layers=3, seed=0)
        s_dir = make_tiny_model(tmp / "student", vocab_size=512, hidden=32, layers=2, seed=1)
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(t_dir, dtype=torch.float32).eval()
        student = AutoModelForCausalLM.from_pretrained(s_dir, dtype=torch.float32)
        return teacher, student, load_tokenizer(s_dir)
    teacher_spec = ModelSpec(name=TEACHER)
    teacher, tok = load_model(teacher_spec)
    student, _ = load_model(ModelSpec(derive_from="teacher", drop_layers=STUDENT_DROP), teacher=teacher_spec)
    return teacher, student, tok


def pick_prompts(tok, quick: bool, n: int, target_tokens: int) -> list[tuple[str, str]]:
    """(rendered prompt, reference answer) for the n GSM8K training prompts closest to target_tokens."""
    from harness.data import get_task, load_examples, render_chat_prompt

    pool: list[tuple[str, str]] = []
    if not quick:
        try:
            from harness.paths import data_dir
            from harness.data import prompt_renderer

            task = get_task("gsm8k")
            render = prompt_renderer(task, tok)
            pool = [(render(ex), ex.response or "") for ex in load_examples(task, "train", limit=200, data_dir=data_dir())]
        except Exception as exc:  # noqa: BLE001 - no data: synthetic prompts below
            print(f"note: GSM8K data unavailable ({type(exc).__name__}: {exc}); using synthetic prompts",
                  file=sys.stderr)
    if not pool:
        words = "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May".split()
        for i in range(4 * n):
            q = " ".join(words[: 6 + (i * 5) % len(words)]) + f" How many {i}?"
            pool.append((render_chat_prompt(tok, f"Q: {q} \n\nA:"), f"The answer is {i}.\n#### {i}"))
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p, _ in pool]
    order = sorted(range(len(pool)), key=lambda i: (abs(lengths[i] - target_tokens), i))[:n]
    return [pool[i] for i in sorted(order)]


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------
def run_ours(objective: str, teacher, student, tok, prompts, steps: int, max_new_tokens: int, tmp: Path,
             chunk_size: int | None, rollout_precision: str = "same", precision: str = "fp32",
             rollout_backend: str = "hf", micro_batch: int | None = None, generation_batch: int | None = None,
             base: bool = False) -> dict:
    from harness.config import RunConfig
    from harness.training import loop as L
    from harness.training.telemetry import TelemetryLog

    class Ex:
        def __init__(self, i: int, prompt: str, response: str):
            self.id, self.prompt, self.response = f"p{i}", prompt, response
            self.references, self.answer, self.fields, self.meta = [response], None, {}, {}

    examples = [Ex(i, p, r) for i, (p, r) in enumerate(prompts)]
    train = dict(lr=1e-5, epochs=steps, max_steps=steps, batch_size=len(prompts), micro_batch_size=micro_batch or len(prompts),
                 lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0, grad_clip=1.0, max_prompt_tokens=512,
                 max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, precision=precision,
                 checkpoint_every=10_000, cache_teacher_generations=False)
    if chunk_size is not None:
        train["loss_chunk_size"] = chunk_size
    train["rollout_precision"] = rollout_precision
    if not base or rollout_backend != "hf":  # older checkouts may predate the option (hf was their only backend)
        train["rollout_backend"] = rollout_backend
    if generation_batch is not None:
        train["generation_batch_size"] = generation_batch
    cfg = RunConfig(teacher={"name": TEACHER}, student={"name": TEACHER}, task={"name": "gsm8k"},
                    objective={"name": objective, "params": {}}, train=train, seed=0)
    setup = L.TrainingSetup(teacher=teacher, student=student, tokenizer=tok, examples=examples,
                            render_prompt=lambda ex: ex.prompt, stop=())

    # Instrumentation only: per-step token counts and step-end timestamps / memory high-water marks.
    tokens: list[int] = []
    completion: list[int] = []
    ends: list[tuple[float, int]] = []
    phases: list[dict] = []  # the stage's own per-step time split (telemetry), for the breakdown
    orig_collate, orig_append = L.collate, TelemetryLog.append

    pending = [0, 0]  # tokens, completion tokens of the step in progress (one collate per micro-batch)

    def collate(seqs, pad_id, *a, **k):
        batch = orig_collate(seqs, pad_id, *a, **k)
        pending[0] += batch.n_tokens
        pending[1] += batch.n_loss_tokens
        return batch

    with PeakRSS() as mem:
        def append(self, row):  # one telemetry row per optimizer step: the step's micro-batches summed
            tokens.append(pending[0])
            completion.append(pending[1])
            pending[:] = [0, 0]
            ends.append((time.perf_counter(), mem.peak_now()))
            phases.append({k: row.get(k) for k in ("sequences_s", "forward_backward_s", "optimizer_s")})
            return orig_append(self, row)

        L.collate, TelemetryLog.append = collate, append
        io_before = _proc_io()
        try:
            t0 = time.perf_counter()
            L.train(cfg, tmp / "run", setup, progress=False)
        finally:
            L.collate, TelemetryLog.append = orig_collate, orig_append
        io_after = _proc_io()
    stats = _step_stats(t0, ends, tokens, completion, len(prompts), mem)
    stats["train_wall_s"] = time.perf_counter() - t0
    stats["train_io_bytes"] = {k: io_after[k] - io_before[k] for k in io_after if k in io_before}
    timed = phases[1:]  # step 0 is the warm-up
    stats["phase_median_s"] = {k: median([p[k] for p in timed if p.get(k) is not None])
                               for k in ("sequences_s", "forward_backward_s", "optimizer_s")} if timed else {}
    return stats


def run_trl(beta: float, teacher, student, tok, prompts, steps: int, max_new_tokens: int, tmp: Path,
            precision: str = "fp32") -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tokens: list[int] = []
    completion: list[int] = []
    ends: list[tuple[float, int]] = []
    holder: dict = {}

    class Timed(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            # GKDTrainer replaced the batch in place with the on-policy sequences.
            tokens.append(int(inputs["attention_mask"].sum()))
            completion.append(int((inputs["labels"] != -100).sum()))
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append((time.perf_counter(), holder["mem"].peak_now()))

    # Pre-tokenized rows with an explicit completion mask: DataCollatorForChatML then uses exactly our
    # prompt ids (re-rendering a chat would re-split the prompt/answer boundary by byte offsets).
    rows = []
    for p, r in prompts:
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"][:max_new_tokens] or [tok.eos_token_id]
        rows.append({"prompt": p, "input_ids": p_ids + r_ids, "completion_mask": [0] * len(p_ids) + [1] * len(r_ids)})
    args = GKDConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=len(prompts), gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, lmbda=1.0, beta=beta, temperature=1.0, max_new_tokens=max_new_tokens,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, bf16=precision == "bf16", fp16=False,
        dataloader_num_workers=0, seed=0, disable_dropout=True, gradient_checkpointing=False,
        max_length=1024, disable_tqdm=True,
    )
    trainer = Timed(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                    processing_class=tok, callbacks=[StepEnd()])
    # The prompts TRL will generate from must be ours, token for token.
    batch = trainer.data_collator(rows)
    trl_prompts = [row[m.bool()].tolist() for row, m in zip(batch["prompts"], batch["prompt_attention_mask"])]
    if trl_prompts != [tok(p, add_special_tokens=False)["input_ids"] for p, _ in prompts]:
        raise RuntimeError("TRL's collated prompts differ from ours; the comparison would not be like for like")
    with PeakRSS() as mem:
        holder["mem"] = mem
        t0 = time.perf_counter()
        trainer.train()
    return _step_stats(t0, ends, tokens, completion, len(prompts), mem)


def run_trl_distill(beta: float, teacher, student, tok, prompts, steps: int, max_new_tokens: int, tmp: Path,
                    precision: str = "fp32", rollout_backend: str = "hf") -> dict:
    """TRL's DistillationTrainer on the same models and prompts (its own generation: HF, or vLLM colocate)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    tokens: list[int] = []
    completion: list[int] = []
    ends: list[tuple[float, int]] = []
    seen_prompts: list[list[list[int]]] = []
    holder: dict = {}

    class Timed(DistillationTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            out = super()._generate_single_turn(prompt_ids, *a, **k)
            seen_prompts.append([list(x) for x in prompt_ids])
            tokens.append(sum(len(x) for x in prompt_ids) + sum(len(c) for c in out))
            completion.append(sum(len(c) for c in out))
            return out

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append((time.perf_counter(), holder["mem"].peak_now()))

    cuda = torch.cuda.is_available()
    args = DistillationConfig(
        output_dir=str(tmp / "trl_distill"), per_device_train_batch_size=len(prompts), gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, beta=beta, temperature=1.0, top_p=1.0, top_k=0, max_completion_length=max_new_tokens,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=not cuda, bf16=precision == "bf16",
        fp16=False, dataloader_num_workers=0, seed=0, disable_dropout=True, gradient_checkpointing=False,
        disable_tqdm=True, use_vllm=rollout_backend == "vllm", vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
    )
    trainer = Timed(model=student, teacher_model=teacher, args=args,
                    train_dataset=Dataset.from_list([{"prompt": p} for p, _ in prompts]), processing_class=tok,
                    callbacks=[StepEnd()])
    with PeakRSS() as mem:
        holder["mem"] = mem
        t0 = time.perf_counter()
        trainer.train()
    ours = sorted(tok(p, add_special_tokens=False)["input_ids"] for p, _ in prompts)
    if not seen_prompts or sorted(seen_prompts[0]) != ours:
        raise RuntimeError("DistillationTrainer generated from other prompt ids than ours; not like for like")
    return _step_stats(t0, ends, tokens, completion, len(prompts), mem)


def _proc_io() -> dict[str, int]:
    """This process's I/O counters (Linux /proc/self/io); empty where unavailable."""
    try:
        with open("/proc/self/io") as fh:
            return {k: int(v) for k, v in (line.split(":") for line in fh if ":" in line)}
    except OSError:
        return {}


def _step_stats(t0: float, ends, tokens, completion, batch: int, mem: PeakRSS) -> dict:
    times = [ends[0][0] - t0] + [b[0] - a[0] for a, b in zip(ends, ends[1:])]
    timed = list(range(1, len(times)))  # step 0 is the warm-up
    tok_t = sum(tokens[i] for i in timed)
    time_t = sum(times[i] for i in timed)
    return {
        "step_times_s": times, "tokens_per_step": tokens, "completion_tokens_per_step": completion,
        "tokens_per_s": tok_t / time_t if time_t > 0 else None,
        "tokens_per_s_median_step": median([tokens[i] / times[i] for i in timed]),
        "completion_tokens_per_s": sum(completion[i] for i in timed) / time_t if time_t > 0 else None,
        "mean_completion_len": sum(completion[i] for i in timed) / (batch * len(timed)) if timed else None,
        "step_time_median_s": median([times[i] for i in timed]),
        "peak_bytes": max((m for _, m in ends), default=mem.baseline) - mem.baseline,
        "peak_bytes_incl_teardown": mem.peak_above_baseline, "baseline_rss_bytes": mem.baseline,
        "memory_method": mem.method,
    }


def worker(framework: str, objective: str, steps: int, max_new_tokens: int, prompt_tokens: int, batch: int,
           quick: bool, chunk_size: int | None, threads: int | None, rollout_precision: str = "same",
           precision: str = "fp32", rollout_backend: str = "hf", micro_batch: int | None = None,
           generation_batch: int | None = None) -> dict:
    import torch

    t_worker = time.perf_counter()

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as d:
        tmp = Path(d)
        teacher, student, tok = load_pair(quick, tmp)
        prompts = pick_prompts(tok, quick, batch, prompt_tokens)
        prompt_lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p, _ in prompts]
        if framework in ("ours", "ours_base"):
            # ours_base: the same call into the other checkout's stage, with only the options it knows.
            base = framework == "ours_base"
            stats = run_ours(objective, teacher, student, tok, prompts, steps, max_new_tokens, tmp, chunk_size,
                             rollout_precision, precision, rollout_backend, micro_batch,
                             None if base else generation_batch, base=base)
        elif framework == "trl_distill":
            stats = run_trl_distill(TRL_BETA[objective], teacher, student, tok, prompts, steps, max_new_tokens, tmp,
                                    precision, rollout_backend)
        else:
            stats = run_trl(TRL_BETA[objective], teacher, student, tok, prompts, steps, max_new_tokens, tmp, precision)
    import harness

    return {"framework": framework, "objective": objective, "trl_beta": TRL_BETA[objective] if framework != "ours" else None,
            "rollout_backend": rollout_backend if framework != "trl" else "hf",
            "code_root": str(Path(harness.__file__).resolve().parents[1]),
            "micro_batch": micro_batch or batch if framework in ("ours", "ours_base") else None,
            "generation_batch": generation_batch if framework == "ours" else None,
            "worker_wall_s": time.perf_counter() - t_worker,
            "steps": steps, "batch": batch, "prompt_lens": prompt_lens, "max_new_tokens": max_new_tokens,
            "threads": torch.get_num_threads(), "precision": precision, "rollout_precision": rollout_precision if framework == "ours" else None,
            **stats}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per process (the first is a warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="alternating ours/TRL rounds")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=64, help="pick prompts closest to this length")
    p.add_argument("--chunk-size", type=int, help="our loss_chunk_size (default: TrainConfig's)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="both sides: our TrainConfig.precision (bf16 autocast) and TRL's bf16=True (weights stay fp32)")
    p.add_argument("--rollout-precision", choices=["same", "bf16"], default="same",
                   help="our TrainConfig.rollout_precision (TRL always samples with its fp32 weights)")
    p.add_argument("--rollout-backend", choices=["hf", "vllm"], default="hf",
                   help="vllm (CUDA): our train.rollout_backend and DistillationTrainer's use_vllm (colocate)")
    p.add_argument("--peers", nargs="+", choices=["trl", "trl_distill", "ours_base"], default=["trl"],
                   help="trl: GKDTrainer; trl_distill: DistillationTrainer (trl>=1.10); ours_base: our stage "
                        "from the checkout --base-code (before/after a change)")
    p.add_argument("--base-code", help="with --peers ours_base: root of the other checkout (a git worktree)")
    p.add_argument("--code-root", help=argparse.SUPPRESS)  # set by the driver for ours_base workers
    p.add_argument("--micro-batch", type=int, help="our micro_batch_size (default: --batch)")
    p.add_argument("--generation-batch", type=int,
                   help="our train.generation_batch_size (default: TrainConfig's; not passed to ours_base)")
    p.add_argument("--quick", action="store_true", help="tiny random models, 2 steps, 1 round")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (tests; memory not isolated)")
    p.add_argument("--out", help="JSON path (default bench/results/train_step.json)")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.max_new_tokens = min(args.steps, 3), 1, min(args.max_new_tokens, 8)
    if "ours_base" in args.peers:
        if not args.base_code or not (Path(args.base_code) / "harness").is_dir():
            p.error("--peers ours_base needs --base-code DIR, a checkout with harness/ (e.g. `git worktree add "
                    "/tmp/base COMMIT`)")
        if args.inprocess:
            p.error("--peers ours_base imports another checkout's harness: it needs worker processes (drop --inprocess)")
    if args.micro_batch is not None and (args.micro_batch < 1 or args.batch % args.micro_batch):
        p.error(f"--micro-batch {args.micro_batch} must divide --batch {args.batch}")
    if args.rollout_backend == "vllm":
        from harness.vllm_backend import vllm_unavailable_reason

        reason = vllm_unavailable_reason()
        if reason is not None:
            p.error(f'--rollout-backend vllm: {reason}; on a CUDA machine `pip install -e ".[vllm]"`, or drop the option')
    wargs = (args.steps, args.max_new_tokens, args.prompt_tokens, args.batch, args.quick, args.chunk_size, args.threads,
             args.rollout_precision, args.precision, args.rollout_backend, args.micro_batch, args.generation_batch)
    if args.worker:
        emit(worker(args.worker[0], args.worker[1], *wargs))
        return 0

    info = machine_info()
    t_start = time.perf_counter()
    # Per round: ours for every objective, TRL once per distinct beta (veto shares TRL beta 0 with
    # onpolicy_fkl), interleaved; odd rounds run the sequence backwards.
    rows: list[dict] = []
    for r in range(args.repeats):
        jobs: list[tuple[str, str]] = []
        for obj in args.objectives:
            jobs.append(("ours", obj))
            for peer in args.peers:
                # A TRL peer runs once per distinct beta; our base stage once per objective.
                if peer == "ours_base" or not any(f == peer and TRL_BETA[o] == TRL_BETA[obj] for f, o in jobs):
                    jobs.append((peer, obj))
        if r % 2:
            jobs.reverse()
        for fw, obj in jobs:
            if args.inprocess:
                row = worker(fw, obj, *wargs)
            else:
                cli = ["--worker", fw, obj, "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
                       "--prompt-tokens", str(args.prompt_tokens), "--batch", str(args.batch)]
                cli += (["--quick"] if args.quick else []) + (["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])
                cli += ["--threads", str(args.threads)] if args.threads else []
                cli += ["--rollout-precision", args.rollout_precision, "--precision", args.precision,
                        "--rollout-backend", args.rollout_backend]
                cli += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
                cli += ["--generation-batch", str(args.generation_batch)] if args.generation_batch else []
                cli += ["--code-root", str(Path(args.base_code).resolve())] if fw == "ours_base" else []
                row = run_worker(__file__, cli)
            row["round"] = r
            rows.append(row)
            print(f"  round {r} {fw:<5}{obj:<14} {row['tokens_per_s']:8.1f} tok/s  step {row['step_time_median_s']:6.2f} s  "
                  f"peak {row['peak_bytes'] / MIB:7.0f} MiB  completion {row['mean_completion_len']:.1f}",
                  file=sys.stderr, flush=True)

    summary = []
    for obj in args.objectives:
        beta = TRL_BETA[obj]
        ours = [x for x in rows if x["framework"] == "ours" and x["objective"] == obj]
        peer_rows = {peer: [x for x in rows if x["framework"] == peer and x["trl_beta"] == beta
                            and (peer != "ours_base" or x["objective"] == obj)] for peer in args.peers}
        trl = peer_rows.get("trl") or peer_rows[args.peers[0]]
        # Ratio per round (same round = measured minutes apart at most), then the median over rounds.
        per_round = []
        for r in range(args.repeats):
            o = [x for x in ours if x["round"] == r]
            t = [x for x in trl if x["round"] == r]
            if o and t:
                per_round.append(o[0]["tokens_per_s"] / t[0]["tokens_per_s"])
        speedup = median(per_round)
        ours_peak, trl_peak = median([x["peak_bytes"] for x in ours]), median([x["peak_bytes"] for x in trl])
        summary.append({
            "objective": obj, "trl_beta": beta, "ours_tokens_per_s": median([x["tokens_per_s"] for x in ours]),
            "trl_tokens_per_s": median([x["tokens_per_s"] for x in trl]), "speedup_per_round": per_round,
            "speedup": speedup, "ours_step_s": median([x["step_time_median_s"] for x in ours]),
            "trl_step_s": median([x["step_time_median_s"] for x in trl]),
            "ours_peak_mib": ours_peak / MIB, "trl_peak_mib": trl_peak / MIB, "mem_ratio": ours_peak / trl_peak,
            "ours_completion_len": median([x["mean_completion_len"] for x in ours]),
            "trl_completion_len": median([x["mean_completion_len"] for x in trl]),
            "meets_target": speedup >= TARGET_SPEEDUP and ours_peak <= trl_peak,
            "ours_phase_median_s": {k: median([x["phase_median_s"][k] for x in ours if x.get("phase_median_s")])
                                    for k in ("sequences_s", "forward_backward_s", "optimizer_s")},
        })
        dist = peer_rows.get("trl_distill")
        if dist:
            rounds = [o["tokens_per_s"] / d["tokens_per_s"] for r in range(args.repeats)
                      for o in ours if o["round"] == r for d in dist if d["round"] == r]
            summary[-1].update({
                "distill_tokens_per_s": median([x["tokens_per_s"] for x in dist]),
                "distill_step_s": median([x["step_time_median_s"] for x in dist]),
                "distill_peak_mib": median([x["peak_bytes"] for x in dist]) / MIB,
                "distill_completion_len": median([x["mean_completion_len"] for x in dist]),
                "speedup_vs_distill_per_round": rounds, "speedup_vs_distill": median(rounds),
            })
        base = peer_rows.get("ours_base")
        if base:
            # This tree's stage / the base checkout's, per round (measured back to back), then the median.
            rounds = [o["tokens_per_s"] / b["tokens_per_s"] for r in range(args.repeats)
                      for o in ours if o["round"] == r for b in base if b["round"] == r]
            io = lambda rows, k: median([x.get("train_io_bytes", {}).get(k, 0) for x in rows])  # noqa: E731
            summary[-1].update({
                "base_code": str(Path(args.base_code).resolve()),
                "base_tokens_per_s": median([x["tokens_per_s"] for x in base]),
                "base_step_s": median([x["step_time_median_s"] for x in base]),
                "base_peak_mib": median([x["peak_bytes"] for x in base]) / MIB,
                "base_completion_len": median([x["mean_completion_len"] for x in base]),
                "base_worker_wall_s": median([x["worker_wall_s"] for x in base]),
                "ours_worker_wall_s": median([x["worker_wall_s"] for x in ours]),
                "base_train_wchar": io(base, "wchar"), "ours_train_wchar": io(ours, "wchar"),
                "base_train_write_bytes": io(base, "write_bytes"), "ours_train_write_bytes": io(ours, "write_bytes"),
                "base_phase_median_s": {k: median([x["phase_median_s"][k] for x in base if x.get("phase_median_s")])
                                        for k in ("sequences_s", "forward_backward_s", "optimizer_s")},
                "speedup_vs_base_per_round": rounds, "speedup_vs_base": median(rounds),
                "step_time_base_over_ours_per_round": [b["step_time_median_s"] / o["step_time_median_s"]
                                                       for r in range(args.repeats) for o in ours if o["round"] == r
                                                       for b in base if b["round"] == r],
            })
    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    table = fmt_table(
        ["objective (TRL beta)", "ours tok/s", "TRL tok/s", "speedup", "ours step s", "TRL step s",
         "ours peak MiB", "TRL peak MiB", "mem ours/TRL", "completion ours/TRL", "target"],
        [[f"{s['objective']} ({s['trl_beta']:g})", s["ours_tokens_per_s"], s["trl_tokens_per_s"], s["speedup"],
          s["ours_step_s"], s["trl_step_s"], s["ours_peak_mib"], s["trl_peak_mib"], s["mem_ratio"],
          f"{s['ours_completion_len']:.1f}/{s['trl_completion_len']:.1f}", "ok" if s["meets_target"] else "MISS"]
         for s in summary])
    # The TRL table's columns read "TRL": shown only when a TRL trainer was a peer.
    trl_peer = any(x in args.peers for x in ("trl", "trl_distill"))
    print(f"\nFull on-policy step, batch {args.batch} (our micro-batch {args.micro_batch or args.batch}), prompts "
          f"{rows[0]['prompt_lens']} tokens, max_new_tokens {args.max_new_tokens}, {args.steps - 1} timed steps x "
          f"{args.repeats} rounds, {rows[0]['threads']} threads")
    if trl_peer:
        print(table)
    if "trl_distill" in args.peers:
        print(f"\nvs TRL DistillationTrainer (rollouts: {args.rollout_backend}; targets on a GPU with vLLM: >= 1.0x):")
        print(fmt_table(
            ["objective (beta)", "ours tok/s", "DistillationTrainer tok/s", "speedup", "ours step s",
             "DistillationTrainer step s", "ours peak MiB", "DistillationTrainer peak MiB", "completion ours/TRL"],
            [[f"{s['objective']} ({s['trl_beta']:g})", s["ours_tokens_per_s"], s["distill_tokens_per_s"],
              s["speedup_vs_distill"], s["ours_step_s"], s["distill_step_s"], s["ours_peak_mib"], s["distill_peak_mib"],
              f"{s['ours_completion_len']:.1f}/{s['distill_completion_len']:.1f}"] for s in summary]))
    if "ours_base" in args.peers:
        print(f"\nvs our stage at {args.base_code} (same settings; ours with generation batch "
              f"{args.generation_batch or 'default'}):")
        print(fmt_table(
            ["objective", "ours tok/s", "base tok/s", "ours/base", "ours step s", "base step s", "ours rollout s",
             "base rollout s", "ours peak MiB", "base peak MiB", "ours wchar", "base wchar", "completion ours/base"],
            [[s["objective"], s["ours_tokens_per_s"], s["base_tokens_per_s"], s["speedup_vs_base"], s["ours_step_s"],
              s["base_step_s"], s["ours_phase_median_s"]["sequences_s"], s["base_phase_median_s"]["sequences_s"],
              s["ours_peak_mib"], s["base_peak_mib"], s["ours_train_wchar"], s["base_train_wchar"],
              f"{s['ours_completion_len']:.1f}/{s['base_completion_len']:.1f}"] for s in summary]))
    for s in summary:
        ph = s["ours_phase_median_s"]
        print(f"ours {s['objective']}: step split (median s) sequences/rollout {ph['sequences_s']:.2f}, "
              f"forward+backward {ph['forward_backward_s']:.2f}, optimizer+rest {ph['optimizer_s']:.2f}")
    print((f"target: >= {TARGET_SPEEDUP}x TRL tokens/s at <= TRL peak memory; " if trl_peer else "")
          + f"load average {info['loadavg_start']} -> {info['loadavg_end']}")
    path = write_json(out_path(args.out, "train_step.json"), {
        "benchmark": "train_step", "machine": info, "versions": versions("torch", "trl", "transformers", "accelerate"),
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "summary": summary, "rows": rows, "table_markdown": table,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
