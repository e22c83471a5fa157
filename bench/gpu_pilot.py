"""GPU pilot: one training cell of the paper suite's shape with small models, and what it implies.

    python bench/gpu_pilot.py                      # CUDA: SmolLM2-135M teacher, 20-layer pruned student
    python bench/gpu_pilot.py --steps 6 --objective veto
    python bench/gpu_pilot.py --quick --device cpu # tiny random models on CPU (plumbing check only)

The cell uses suites/paper.yaml's `train` section as is (batch 16, micro-batch 4, max_new_tokens
512, prompts up to 1024 tokens, bf16 autocast, gradient checkpointing, T 0.5 / top-p 0.5, one
generation call per step, bf16 rollouts on CUDA) on GSM8K training prompts, with an on-policy
objective (every step samples rollouts), for `--steps` optimizer steps; the first is a warm-up and
is not timed. Printed, from the stage's own per-step telemetry:
  rollout tokens/s   generated completion tokens / time building sequences (rollouts)
  training tokens/s  student forward tokens (prompt + completion) / forward+backward time
  peak memory        the stage's peak (CUDA allocator on GPU, RSS on CPU)
  projection         the paper plan's (`distill-bench run paper --dry-run`) rollout token upper bound
                     and training tokens divided by those rates: the suite's wall time on one device
                     with THESE small models. The paper's models are larger; the script also prints the
                     same figure scaled by the student's parameter ratio (decoding and training cost
                     grow about linearly with parameters at these sizes), which is a rough estimate,
                     labelled as such.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import MIB, machine_info, median, out_path, versions, write_json  # noqa: E402
from bench.train_step import load_pair, pick_prompts  # noqa: E402

PAPER_STUDENT_PARAMS = 494e6  # Qwen2-0.5B-Instruct, the paper suite's student


def paper_plan_totals() -> dict:
    """Upper bounds over the paper suite's cells, from its config alone (no model loaded)."""
    from harness.config import load_suite_config
    from harness.suite import estimate_cost, plan_cells, resolve_suite_path

    cfg = load_suite_config(resolve_suite_path("paper"), [])
    limits = {t.name: t.train_limit for t in cfg.tasks}
    tot = {"cells": 0, "optimizer_steps": 0, "prompts_seen": 0, "max_rollout_tokens": 0}
    for cell in plan_cells(cfg):
        est = estimate_cost(cfg, cell, limits.get(cell.task))
        tot["cells"] += 1
        for k in ("optimizer_steps", "prompts_seen", "max_rollout_tokens"):
            tot[k] += est[k]
    return tot


def run_cell(args) -> dict:
    import torch

    from harness.config import RunConfig, load_suite_config
    from harness.suite import resolve_suite_path
    from harness.training import loop as L
    from harness.training.distributed import DistContext

    paper = load_suite_config(resolve_suite_path("paper"), [])
    train_cfg = paper.train.model_dump(mode="json")
    train_cfg.update(max_steps=args.steps, epochs=args.steps, cache_teacher_generations=False,
                     checkpoint_every=None, checkpoint_every_s=None)
    if args.quick:  # plumbing only: tiny lengths so a CPU finishes in seconds
        train_cfg.update(max_new_tokens=8, max_prompt_tokens=64, gradient_checkpointing=False, precision="fp32")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="gpu-pilot-") as d:
        teacher, student, tok = load_pair(args.quick, Path(d))
        if device.type == "cuda":
            # As a suite cell holds it (harness.pipeline.load_pair): the frozen teacher in bf16 on CUDA;
            # the student stays fp32 (master weights; the stage moves both to the device).
            teacher = teacher.to(torch.bfloat16)
        n_params = sum(p.numel() for p in student.parameters())
        prompts = pick_prompts(tok, args.quick, train_cfg["batch_size"] * args.steps, 256)

        class Ex:
            def __init__(self, i: int, prompt: str, response: str):
                self.id, self.prompt, self.response = f"p{i}", prompt, response
                self.references, self.answer, self.fields, self.meta = [response], None, {}, {}

        examples = [Ex(i, p, r) for i, (p, r) in enumerate(prompts)]
        cfg = RunConfig(teacher={"name": "pilot"}, student={"name": "pilot"}, task={"name": "gsm8k"},
                        objective={"name": args.objective, "params": {}}, train=train_cfg, seed=0)
        setup = L.TrainingSetup(teacher=teacher, student=student, tokenizer=tok, examples=examples,
                                render_prompt=lambda ex: ex.prompt, stop=("\n\n",))
        t0 = time.perf_counter()
        result = L.train(cfg, Path(d) / "run", setup, progress=False,
                         dist=DistContext(rank=0, world_size=1, device=device), save_model=False)
        wall = time.perf_counter() - t0
        import json

        rows = [json.loads(x) for x in (Path(d) / "run" / "telemetry.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    gen_tok = result.summary["generated_tokens"] / max(len(rows), 1)  # per step, mean
    fwd_tok = result.summary["student_forward_tokens"] / max(len(rows), 1)
    seq_s = median([r["sequences_s"] for r in timed])
    fb_s = median([r["forward_backward_s"] for r in timed])
    step_s = median([r["sequences_s"] + r["forward_backward_s"] + r["optimizer_s"] for r in timed])
    return {"device": str(device), "objective": args.objective, "steps": len(rows), "wall_s": wall,
            "student_params": n_params, "train": train_cfg, "generated_tokens_per_step": gen_tok,
            "forward_tokens_per_step": fwd_tok, "rollout_tokens_per_s": gen_tok / seq_s if seq_s else None,
            "training_tokens_per_s": fwd_tok / fb_s if fb_s else None, "step_s": step_s,
            "peak_memory_bytes": result.summary["peak_memory_bytes"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: a plumbing check)")
    p.add_argument("--objective", default="onpolicy_fkl", help="an on-policy objective (rollouts every step)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is a warm-up")
    p.add_argument("--quick", action="store_true", help="tiny random models and lengths")
    p.add_argument("--out", help="JSON path (default bench/results/gpu_pilot.json)")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_pilot: no CUDA device here; run it on a GPU machine, or pass --quick --device cpu for a "
              "plumbing check (its figures say nothing about a GPU)", file=sys.stderr)
        return 2
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is a warm-up)")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cell = run_cell(args)
    plan = paper_plan_totals()
    # Training tokens of the whole plan: the pilot's forward tokens per prompt x every prompt seen.
    fwd_per_prompt = cell["forward_tokens_per_step"] / cell["train"]["batch_size"]
    plan_train_tokens = plan["prompts_seen"] * fwd_per_prompt
    rollout_h = plan["max_rollout_tokens"] / cell["rollout_tokens_per_s"] / 3600 if cell["rollout_tokens_per_s"] else None
    train_h = plan_train_tokens / cell["training_tokens_per_s"] / 3600 if cell["training_tokens_per_s"] else None
    scale = PAPER_STUDENT_PARAMS / cell["student_params"]
    proj = {"paper_cells": plan["cells"], "paper_prompts_seen": plan["prompts_seen"],
            "paper_max_rollout_tokens": plan["max_rollout_tokens"], "paper_training_tokens_est": plan_train_tokens,
            "rollout_hours_small_models": rollout_h, "training_hours_small_models": train_h,
            "student_param_ratio": scale,
            "total_hours_scaled_rough": (rollout_h + train_h) * scale if rollout_h and train_h else None}
    if not args.device.startswith("cuda"):
        print("gpu_pilot: plumbing check on the CPU; these figures are not a GPU measurement", file=sys.stderr)
    print(f"pilot cell ({cell['device']}, {cell['objective']}, {cell['steps']} steps, student "
          f"{cell['student_params'] / 1e6:.0f}M params): step {cell['step_s']:.2f} s")
    print(f"  rollout tokens/s  {cell['rollout_tokens_per_s']:.1f}  ({cell['generated_tokens_per_step']:.0f} generated tokens/step)")
    print(f"  training tokens/s {cell['training_tokens_per_s']:.1f}  ({cell['forward_tokens_per_step']:.0f} forward tokens/step)")
    print(f"  peak memory       {cell['peak_memory_bytes'] / MIB:.0f} MiB")
    print(f"paper suite plan: {plan['cells']} cells, {plan['prompts_seen']} prompts, <= {plan['max_rollout_tokens']} rollout tokens")
    if rollout_h is not None and train_h is not None:
        print(f"  projected wall time with these models, one device: rollouts {rollout_h:.1f} h + training {train_h:.1f} h "
              f"(upper bound: every rollout at max length)")
        if not args.quick:  # tiny random models: a parameter ratio of ~10^4 would mean nothing
            print(f"  scaled by the student's parameter ratio x{scale:.1f} (rough estimate): {proj['total_hours_scaled_rough']:.0f} h")
    path = write_json(out_path(args.out, "gpu_pilot.json"), {
        "benchmark": "gpu_pilot", "machine": machine_info(), "versions": versions("torch", "transformers"),
        "config": vars(args), "cell": cell, "projection": proj})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
