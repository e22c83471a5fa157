"""Overhead per cell of `run --executor ray` against the local executor, on one machine.

Both executors run the same tiny suite (random 4-layer model, so cells are short and the
executor's own cost is visible) in fresh child processes with one thread each. The Ray run uses a
one-CPU cluster started by this script beforehand, so cells run one at a time as they do locally
and the comparison is like for like; the cluster's start-up is reported separately (paid once per
cluster, not per cell). Per cell:
  executor overhead = (run wall time - sum of the cells' own wall_time_s) / cells
i.e. everything a run spends outside computing its cells (process start, teacher loads outside
cells, scheduling, result transfer, commit, report), spread over the cells; the difference of the
two executors' figures is what Ray adds per cell. `--repeats N` alternates local/ray N times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt_table, loadavg, machine_info, median, out_path, write_json  # noqa: E402


def _suite(tmp: Path, model_dir: Path, objectives: int) -> Path:
    gsm = tmp / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"})
                           + "\n" for i in range(12)))
    names = ["sft", "supervised_kd", "onpolicy_rkl", "veto"][:objectives]
    suite = {
        "name": "overhead", "teacher": {"name": str(model_dir)},
        "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [{"name": "gsm8k", "train_source": f"file:{gsm}", "eval_source": f"file:{gsm}", "train_limit": 8,
                   "eval_limit": 4}],
        "objectives": [{"name": n} for n in names], "seeds": [0, 1],
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 6,
                  "max_prompt_tokens": 96, "max_response_tokens": 24, "checkpoint_every": 1},
        "eval": {"batch_size": 4, "gsm8k": {"max_new_tokens": 8}, "diagnostics_limit": 2},
        "baselines": ["teacher"],
    }
    path = tmp / "overhead.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _run(suite: Path, out: Path, executor: str, address: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--results-dir", str(out / "results"),
           "--leaderboards-dir", str(out / "boards"), "--no-progress", "--executor", executor]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{executor} run failed: {proc.stderr[-3000:]}")
    cells = [json.loads(p.read_text()) for p in (out / "results" / "overhead").glob("cells/*/cell.json")]
    inside = sum(c["cost"]["wall_time_s"] for c in cells)
    return {"executor": executor, "wall_s": wall, "cells": len(cells), "cells_wall_s": inside,
            "overhead_per_cell_s": (wall - inside) / len(cells), "load": loadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", type=int, default=2, choices=(1, 2, 3, 4), help="objectives (x 2 seeds + 1 baseline cells)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from harness.modeling import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        suite = _suite(tmp, make_tiny_model(tmp / "model"), args.objectives)
        # A one-CPU cluster of its own, started once by this process (stopped at the end, and
        # only it); the measured runs are separate drivers that connect to it.
        import ray

        t0 = time.perf_counter()
        os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit it, as the local run's process does
        ray.init(num_cpus=1, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
        start_s = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        rows = []
        try:
            for r in range(args.repeats):
                for ex in ("local", "ray"):
                    rows.append({"repeat": r, **_run(suite, tmp / f"{ex}{r}", ex, address if ex == "ray" else None)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            ray.shutdown()
    per = {ex: median([x["overhead_per_cell_s"] for x in rows if x["executor"] == ex]) for ex in ("local", "ray")}
    walls = {ex: median([x["wall_s"] for x in rows if x["executor"] == ex]) for ex in ("local", "ray")}
    print(fmt_table(["executor", "run wall s", "cells", "overhead/cell s"],
                    [[ex, f"{walls[ex]:.1f}", rows[0]["cells"], f"{per[ex]:.2f}"] for ex in ("local", "ray")]))
    print(f"Ray adds {per['ray'] - per['local']:.2f} s per cell; cluster start-up {start_s:.1f} s (once)")
    write_json(out_path(args.out, "ray_overhead.json"),
               {"machine": machine_info(), "cluster_start_s": start_s, "rows": rows,
                "overhead_per_cell_s": per, "ray_minus_local_per_cell_s": per["ray"] - per["local"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
