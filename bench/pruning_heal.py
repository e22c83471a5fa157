"""Which pruned student heals best within the smoke suite's training budget?

For each candidate layer set: derive the student from SmolLM2-135M-Instruct, measure held-out
GSM8K reference cross-entropy and teacher KL (teacher-forced, `harness.eval_runner.reference_diagnostics`),
train it with `sft` under the smoke suite's exact training settings on GSM8K, and measure again.
The smoke suite uses the candidate with the lowest cross-entropy after training.

    python bench/pruning_heal.py [--eval-n 24] [--json bench/results/pruning_heal.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import ModelSpec, RunConfig, load_suite_config  # noqa: E402
from harness.data import get_task, load_examples  # noqa: E402
from harness.eval_runner import reference_diagnostics  # noqa: E402
from harness.modeling import load_model  # noqa: E402
from harness.data import prompt_renderer  # noqa: E402
from harness.pipeline import build_setup, load_pair  # noqa: E402
from harness.training.loop import train  # noqa: E402

CANDIDATES = {
    "drop 10-19": {"drop_layers": list(range(10, 20))},
    "drop 5-14": {"drop_layers": list(range(5, 15))},
    "drop odd 9..27": {"drop_layers": list(range(9, 28, 2))},
    "20 evenly spaced": {"keep_layers": sorted({round(i * 29 / 19) for i in range(20)})},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-n", type=int, default=24)
    ap.add_argument("--json", default="bench/results/pruning_heal.json")
    args = ap.parse_args()
    suite = load_suite_config(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")
    teacher_spec = suite.teacher
    teacher, tok = load_model(teacher_spec)
    task_def = get_task("gsm8k")
    held_out = load_examples(task_def, "eval", limit=args.eval_n, seed=0)
    render = prompt_renderer(task_def, tok)
    rows = []
    for name, layers in CANDIDATES.items():
        spec = ModelSpec(derive_from="teacher", **layers)
        pair = load_pair(teacher_spec, spec, need_teacher=True, teacher=teacher)
        before = reference_diagnostics(pair.student, teacher, tok, held_out, render)
        gsm = next(t for t in suite.tasks if t.name == "gsm8k")
        cfg = RunConfig(teacher=teacher_spec, student=spec, task=gsm, objective={"name": "sft"}, train=suite.train, seed=0)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp), build_setup(cfg, pair), progress=False, save_model=False)
        after = reference_diagnostics(pair.student, teacher, tok, held_out, render)
        row = {"candidate": name, **layers, "ce_before": before["ref_ce"], "kl_before": before["teacher_kl"],
               "ce_after": after["ref_ce"], "kl_after": after["teacher_kl"], "train_s": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name:18s} CE {row['ce_before']:.3f} -> {row['ce_after']:.3f}   KL {row['kl_before']:.3f} -> "
              f"{row['kl_after']:.3f}   ({row['train_s']:.0f}s)", flush=True)
    best = min(rows, key=lambda r: r["ce_after"])
    print(f"best after the smoke budget: {best['candidate']}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"eval_n": args.eval_n, "train": suite.train.model_dump(mode="json"), "rows": rows,
                               "best": best["candidate"]}, indent=2))


if __name__ == "__main__":
    main()
