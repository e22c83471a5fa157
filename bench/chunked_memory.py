"""Peak memory and time of LM head + loss + backward: dense vs chunked loss paths.

    python bench/chunked_memory.py                       # 1024 positions x vocab 49,152, hidden 576, fp32
    python bench/chunked_memory.py --objectives veto --chunk-sizes 64 256 --json out.json

Each (objective, path) runs in a fresh subprocess so measurements do not interfere. Two memory
numbers per run:
  * ``alloc_peak``: peak of live tensor bytes during one forward+backward (CUDA allocator stats on
    GPU; on CPU the torch profiler's allocation events replayed in time order);
  * ``rss_delta`` (CPU only): growth of the process's peak RSS (ru_maxrss) during the first run,
    an allocator-independent cross-check.
Time is the median wall time of ``--repeats`` un-profiled runs (after one warm-up run).
The inputs (hidden states, student and teacher LM heads) exist before measurement and are not counted;
the student head's weight gradient (the same size as the head) is counted in both paths.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(objective_name: str, path: str, n: int, vocab: int, hidden: int, chunk_size: int, repeats: int, device: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from objectives.base import build_objective
    from objectives.conformance import cpu_memory_profile
    from objectives.engine import chunked_loss, dense_loss

    torch.manual_seed(0)
    obj = build_objective(objective_name, {})
    sched = obj.schedule(0, 100)
    head = torch.nn.Linear(hidden, vocab, bias=False).to(device)
    t_head = torch.nn.Linear(hidden, vocab, bias=False).to(device)
    h = torch.randn(n, hidden, device=device, requires_grad=True)
    th = torch.randn(n, hidden, device=device)
    y = torch.randint(0, vocab, (n,), device=device)

    def step() -> None:
        head.weight.grad = None
        h.grad = None
        if path == "dense":
            with torch.no_grad():
                t_logits = t_head(th)
            dense_loss(obj, sched, head(h), t_logits, y).loss_sum.backward()
        else:
            chunked_loss(obj, sched, h, head, th, t_head, y, chunk_size=chunk_size).loss_sum.backward()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    rss_delta = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024  # KiB on Linux
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        head.weight.grad = None
        h.grad = None
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync()
        alloc_peak = torch.cuda.max_memory_allocated() - before
        rss_delta = None
    else:
        head.weight.grad = None
        h.grad = None
        alloc_peak = cpu_memory_profile(step)[0]
    return {
        "objective": objective_name, "path": path, "chunk_size": chunk_size if path == "chunked" else None,
        "n": n, "vocab": vocab, "hidden": hidden, "device": device, "threads": torch.get_num_threads(),
        "alloc_peak_bytes": alloc_peak, "rss_delta_bytes": rss_delta,
        "time_s": statistics.median(times) if times else first, "first_run_s": first,
    }


def run_one(args: argparse.Namespace, objective: str, path: str, chunk_size: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", objective, path, "--n", str(args.n), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--chunk-size", str(chunk_size), "--repeats", str(args.repeats),
           "--device", args.device]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({objective}, {path}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=["onpolicy_fkl", "veto"])
    p.add_argument("--n", type=int, default=1024, help="loss positions")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[64, 128, 512])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", nargs=2, metavar=("OBJECTIVE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=128, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        objective, path = args.worker
        print(json.dumps(worker(objective, path, args.n, args.vocab, args.hidden, args.chunk_size, args.repeats, args.device)))
        return 0

    rows = []
    for objective in args.objectives:
        rows.append(run_one(args, objective, "dense", 0))
        for cs in args.chunk_sizes:
            rows.append(run_one(args, objective, "chunked", cs))
    mib = 2**20
    print(f"LM head + loss + backward, {args.n} positions x vocab {args.vocab}, hidden {args.hidden}, fp32, "
          f"device {args.device} ({rows[0]['threads']} threads)")
    print(f"{'objective':<14}{'path':<16}{'alloc peak MiB':>16}{'ratio':>8}{'RSS delta MiB':>15}{'time s':>9}")
    for objective in args.objectives:
        dense = next(r for r in rows if r["objective"] == objective and r["path"] == "dense")
        for r in (x for x in rows if x["objective"] == objective):
            label = "dense" if r["path"] == "dense" else f"chunked({r['chunk_size']})"
            rss = f"{r['rss_delta_bytes'] / mib:.0f}" if r["rss_delta_bytes"] is not None else "-"
            ratio = r["alloc_peak_bytes"] / dense["alloc_peak_bytes"]
            print(f"{objective:<14}{label:<16}{r['alloc_peak_bytes'] / mib:>16.0f}{ratio:>8.3f}{rss:>15}{r['time_s']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
