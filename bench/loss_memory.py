"""Peak memory and time of LM head + loss + backward, per divergence objective: ours vs TRL.

    python bench/loss_memory.py                 # 1024 positions, vocab 49,152, hidden 576, fp32, all objectives
    python bench/loss_memory.py --quick         # tiny sizes, three objectives (plumbing check)
    python bench/loss_memory.py --cases fkl gkd --chunk-size 64 --trl-runs 2

Variants, all starting from the same final hidden states [N, H] (student and teacher), the same
student and teacher LM-head weights [V, H] and the same targets:
  chunked  objectives.engine.chunked_loss (logits chunk by chunk, gradients computed inside)
  dense    student logits with grad + teacher logits under no_grad, then objectives.engine.dense_loss
  trl      TRL GKDTrainer.generalized_jsd_loss(beta=0.5) on logits computed from the same hidden states
           and heads (teacher under no_grad, as GKDTrainer.compute_loss does), labels all valid
Each run ends with backward(); the student head's weight gradient is counted in every variant.

Memory: every (case, variant) runs in a fresh subprocess; after setup and a small warm-up the kernel's
peak-RSS counter is reset (see bench/_common.py), so `peak` is the resident memory the measured call
added above the baseline. Time: the measured call plus `--repeats - 1` more calls in that process
(median). TRL is the peer: it is measured `--trl-runs` times, spread over the run (first, middle,
last), and each objective's ratio uses the median TRL figure. The chunked worker also checks the
chunked loss and gradients against the dense path (relative error <= 1e-5).
Targets (issue "Performance: memory-efficient distillation losses..."): chunked peak <= 15% of TRL's
and chunked time <= 50% of TRL's, for every divergence objective.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

# case -> (registered objective, params, label). supervised_kd and onpolicy_fkl share one
# per_token_loss (D.forward_kl(teacher_logp, student_logp)); they differ only in sequence source.
CASES: dict[str, tuple[str, dict, str]] = {
    "fkl": ("onpolicy_fkl", {}, "forward KL (supervised_kd = onpolicy_fkl)"),
    "rkl": ("onpolicy_rkl", {}, "onpolicy_rkl (reverse KL)"),
    "veto_fwd": ("veto", {"direction": "forward"}, "veto forward (beta 0.8)"),
    "veto_rev": ("veto", {"direction": "reverse"}, "veto reverse (beta 0.8)"),
    "gkd": ("gkd", {"beta": 0.5}, "gkd JSD beta 0.5"),
    "skew_kl": ("skew_kl", {}, "skew_kl (alpha 0.1)"),
    "skew_rkl": ("skew_rkl", {}, "skew_rkl (alpha 0.1)"),
    "tvd": ("tvd", {}, "tvd"),
    "onpolicy_pg": ("onpolicy_pg", {}, "onpolicy_pg (closed-form baseline)"),
}
ALIASES = {"supervised_kd": "fkl"}  # registered objectives covered by another case
QUICK_CASES = ["fkl", "veto_rev", "gkd"]
TOLERANCE = 1e-5
TARGET_MEM, TARGET_TIME = 0.15, 0.50


# ---------------------------------------------------------------------------------------------
# Worker: one variant of one case
# ---------------------------------------------------------------------------------------------
def make_inputs(n: int, vocab: int, hidden: int, seed: int = 0):
    """Hidden states, heads and targets. Head scale gives logits with std ~3 (peaked, LM-like)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    t_head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    with torch.no_grad():
        w = torch.randn(vocab, hidden, generator=g) * (3.0 / hidden**0.5)
        head.weight.copy_(w)
        t_head.weight.copy_(w + torch.randn(vocab, hidden, generator=g) * (1.5 / hidden**0.5))
    h = torch.randn(n, hidden, generator=g).requires_grad_(True)
    th = torch.randn(n, hidden, generator=g) * 0.7 + h.detach() * 0.7
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, head, th, t_head, y


def make_step(variant: str, case: str, h, head, th, t_head, y, chunk_size: int):
    """A closure running LM head + loss + backward for one variant; returns the loss value."""
    import torch

    if variant == "trl":
        from trl.experimental.gkd import GKDTrainer

        def step() -> float:
            with torch.no_grad():
                t_logits = t_head(th)
            s_logits = head(h)
            loss = GKDTrainer.generalized_jsd_loss(s_logits[None], t_logits[None], labels=y[None], beta=0.5)
            loss.backward()
            return float(loss.detach())

        return step

    from objectives.base import build_objective
    from objectives.engine import chunked_loss, dense_loss

    name, params, _ = CASES[case]
    obj = build_objective(name, params)
    sched = obj.schedule(0, 100)
    if variant == "chunked":

        def step() -> float:
            res = chunked_loss(obj, sched, h, head, th, t_head, y, chunk_size=chunk_size)
            res.loss_sum.backward()
            return float(res.loss_sum.detach())

    elif variant == "dense":

        def step() -> float:
            with torch.no_grad():
                t_logits = t_head(th)
            res = dense_loss(obj, sched, head(h), t_logits, y)
            res.loss_sum.backward()
            return float(res.loss_sum.detach())

    else:
        raise ValueError(f"unknown variant {variant!r}")
    return step


def gemm_floor(h, head, th, t_head) -> float:
    """Seconds for the 4 head GEMMs alone: h@W.T, th@Wt.T, G@W and G.T@h (G: a [N, V] gradient)."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        s_logits = h @ head.weight.t()
        t_logits = th @ t_head.weight.t()
        _ = s_logits @ head.weight
        _ = s_logits.t() @ h
        dt = time.perf_counter() - t0
    del s_logits, t_logits
    return dt


def _rel_err(a, b) -> float:
    import torch

    scale = float(b.abs().max()) if isinstance(b, torch.Tensor) else abs(float(b))
    diff = float((a - b).abs().max()) if isinstance(a, torch.Tensor) else abs(float(a) - float(b))
    return diff / max(scale, 1e-30)


def worker(variant: str, case: str, n: int, vocab: int, hidden: int, chunk_size: int, repeats: int,
           check: bool, threads: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    h, head, th, t_head, y = make_inputs(n, vocab, hidden)

    def clear() -> None:
        h.grad = None
        head.weight.grad = None
        gc.collect()

    # Warm-up on a few rows: loads lazily imported code, kernels and thread pools before the baseline.
    warm = make_step(variant, case, h[:8].detach().requires_grad_(True), head, th[:8], t_head, y[:8],
                     min(chunk_size, 4))
    warm()
    clear()
    step = make_step(variant, case, h, head, th, t_head, y, chunk_size)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        loss = step()
        first = time.perf_counter() - t0
    times = [first]
    for _ in range(max(repeats - 1, 0)):
        clear()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    row = {
        "variant": variant, "case": case, "objective": CASES[case][0] if variant != "trl" else "trl_gkd_jsd",
        "params": CASES[case][1] if variant != "trl" else {"beta": 0.5},
        "n": n, "vocab": vocab, "hidden": hidden, "chunk_size": chunk_size if variant == "chunked" else None,
        "peak_bytes": mem.peak_above_baseline, "baseline_rss_bytes": mem.baseline, "memory_method": mem.method,
        "times_s": times, "time_s": median(times), "loss": loss, "threads": torch.get_num_threads(),
    }
    if variant == "trl":
        # The four LM-head GEMMs every variant performs (student and teacher logits, d/dh, d/dW):
        # a floor under any exact fp32 implementation's time, measured in the same process.
        clear()
        row["gemm_floor_times_s"] = [gemm_floor(h, head, th, t_head) for _ in range(max(repeats, 1))]
        row["gemm_floor_s"] = median(row["gemm_floor_times_s"])
    if check and variant == "chunked":
        got = (float(loss), h.grad.detach().clone(), head.weight.grad.detach().clone())
        clear()
        ref_loss = make_step("dense", case, h, head, th, t_head, y, chunk_size)()
        errs = {"loss": _rel_err(got[0], ref_loss), "grad_hidden": _rel_err(got[1], h.grad),
                "grad_head": _rel_err(got[2], head.weight.grad)}
        row["check"] = {"max_rel_err": errs, "tolerance": TOLERANCE, "ok": all(e <= TOLERANCE for e in errs.values())}
    return row


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def plan_jobs(cases: list[str], trl_runs: int) -> list[tuple[str, str]]:
    """(variant, case) in run order: TRL spread evenly, chunked/dense order alternating per case."""
    ours: list[tuple[str, str]] = []
    for i, c in enumerate(cases):
        pair = [("chunked", c), ("dense", c)]
        ours += pair if i % 2 == 0 else pair[::-1]
    if trl_runs <= 0:
        return ours
    jobs: list[tuple[str, str]] = []
    slots = [round(k * len(ours) / max(trl_runs - 1, 1)) for k in range(trl_runs)] if trl_runs > 1 else [0]
    for pos in range(len(ours) + 1):
        jobs += [("trl", cases[0])] * slots.count(pos)
        if pos < len(ours):
            jobs.append(ours[pos])
    return jobs


def coverage_warnings(cases: list[str]) -> list[str]:
    """Registered objectives that use a teacher signal but are not measured by any case."""
    from objectives.base import TeacherSignal, list_objectives

    covered = {CASES[c][0] for c in cases} | {a for a, c in ALIASES.items() if c in cases}
    missing = [cls.name for cls in list_objectives()
               if cls().required_teacher_signal() is not TeacherSignal.NONE and cls.name not in covered]
    return [f"registered divergence objective {m!r} is not measured (add a case)" for m in missing]


def summarize(rows: list[dict], cases: list[str]) -> list[dict]:
    trl = [r for r in rows if r["variant"] == "trl"]
    trl_peak = median([r["peak_bytes"] for r in trl]) if trl else float("nan")
    trl_time = median([t for r in trl for t in r["times_s"]]) if trl else float("nan")
    floor = median([t for r in trl for t in r.get("gemm_floor_times_s", [])]) if trl else float("nan")
    out = []
    for c in cases:
        ch = next(r for r in rows if r["variant"] == "chunked" and r["case"] == c)
        de = next(r for r in rows if r["variant"] == "dense" and r["case"] == c)
        mem_ratio = ch["peak_bytes"] / trl_peak if trl else None
        time_ratio = ch["time_s"] / trl_time if trl else None
        out.append({
            "case": c, "label": CASES[c][2], "objective": CASES[c][0], "params": CASES[c][1],
            "chunked_peak_mib": ch["peak_bytes"] / MIB, "dense_peak_mib": de["peak_bytes"] / MIB,
            "trl_peak_mib": trl_peak / MIB, "chunked_time_s": ch["time_s"], "dense_time_s": de["time_s"],
            "trl_time_s": trl_time, "gemm_floor_s": floor, "gemm_floor_vs_trl": floor / trl_time if trl else None,
            "mem_ratio_vs_trl": mem_ratio, "time_ratio_vs_trl": time_ratio,
            "dense_mem_ratio_vs_trl": de["peak_bytes"] / trl_peak if trl else None,
            "chunked_vs_dense_mem": ch["peak_bytes"] / max(de["peak_bytes"], 1),
            "chunked_vs_dense_time": ch["time_s"] / de["time_s"],
            "check_ok": ch.get("check", {}).get("ok"),
            "check_max_rel_err": max(ch.get("check", {}).get("max_rel_err", {"-": float("nan")}).values()),
            "meets_mem_target": mem_ratio is not None and mem_ratio <= TARGET_MEM,
            "meets_time_target": time_ratio is not None and time_ratio <= TARGET_TIME,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all (quick: fkl veto_rev gkd)")
    p.add_argument("--n", type=int, default=1024, help="loss positions")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk-size", type=int, default=64, help="chunked_loss positions per chunk")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per chunked/dense process")
    p.add_argument("--trl-runs", type=int, default=3, help="TRL processes, spread over the run")
    p.add_argument("--trl-repeats", type=int, default=1, help="timed calls per TRL process")
    p.add_argument("--no-check", action="store_true", help="skip the chunked == dense check")
    p.add_argument("--threads", type=int, help="torch threads in every worker (default: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (n 64, vocab 4096, hidden 64, chunk 16)")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (tests; memory not isolated)")
    p.add_argument("--out", help="JSON path (default bench/results/loss_memory.json)")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.vocab, args.hidden, args.chunk_size = 64, 4096, 64, 16
        args.trl_runs = min(args.trl_runs, 1)
        args.repeats = min(args.repeats, 1)
    cases = args.cases or (QUICK_CASES if args.quick else list(CASES))

    def job_args(variant: str, case: str) -> list[str]:
        return ["--worker", variant, case, "--n", str(args.n), "--vocab", str(args.vocab),
                "--hidden", str(args.hidden), "--chunk-size", str(args.chunk_size),
                "--repeats", str(args.trl_repeats if variant == "trl" else args.repeats)] + (
                    ["--no-check"] if args.no_check else []) + (
                    ["--threads", str(args.threads)] if args.threads else [])

    if args.worker:
        variant, case = args.worker
        emit(worker(variant, case, args.n, args.vocab, args.hidden, args.chunk_size, args.repeats,
                    not args.no_check, args.threads))
        return 0

    info = machine_info()
    warnings = coverage_warnings(cases) if args.cases is None and not args.quick else []
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    rows = []
    t_start = time.perf_counter()
    for variant, case in plan_jobs(cases, args.trl_runs):
        if args.inprocess:
            row = worker(variant, case, args.n, args.vocab, args.hidden, args.chunk_size,
                         args.trl_repeats if variant == "trl" else args.repeats, not args.no_check, args.threads)
        else:
            row = run_worker(__file__, job_args(variant, case))
        rows.append(row)
        print(f"  {variant:<8}{case:<12} peak {row['peak_bytes'] / MIB:8.0f} MiB   time {row['time_s']:7.2f} s",
              file=sys.stderr, flush=True)
    summary = summarize(rows, cases)
    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)

    table = fmt_table(
        ["objective", "chunked MiB", "dense MiB", "TRL MiB", "mem chunked/TRL", "time chunked/TRL",
         "chunked/dense time", "check", "targets"],
        [[s["label"], s["chunked_peak_mib"], s["dense_peak_mib"], s["trl_peak_mib"], s["mem_ratio_vs_trl"],
          s["time_ratio_vs_trl"], s["chunked_vs_dense_time"],
          "ok" if s["check_ok"] else ("-" if s["check_ok"] is None else "FAIL"),
          ("mem " + ("ok" if s["meets_mem_target"] else "MISS") + ", time " + ("ok" if s["meets_time_target"] else "MISS"))]
         for s in summary])
    trl_rows = [r for r in rows if r["variant"] == "trl"]
    print(f"\nLM head + loss + backward: {args.n} positions x vocab {args.vocab}, hidden {args.hidden}, fp32, "
          f"chunk {args.chunk_size}; peak = RSS above baseline ({rows[0]['memory_method']})")
    if trl_rows:
        print(f"TRL generalized_jsd_loss(beta=0.5): peaks {[round(r['peak_bytes'] / MIB) for r in trl_rows]} MiB, "
              f"times {[round(t, 2) for r in trl_rows for t in r['times_s']]} s (medians used); the 4 head GEMMs "
              f"alone take {summary[0]['gemm_floor_s']:.2f} s = {summary[0]['gemm_floor_vs_trl']:.2f} of TRL's time")
    print(table)
    print(f"targets: chunked peak <= {TARGET_MEM:.0%} of TRL, time <= {TARGET_TIME:.0%} of TRL; "
          f"load average {info['loadavg_start']} -> {info['loadavg_end']}")
    path = write_json(out_path(args.out, "loss_memory.json"), {
        "benchmark": "loss_memory", "machine": info, "versions": versions("torch", "trl", "transformers"),
        "config": {"n": args.n, "vocab": args.vocab, "hidden": args.hidden, "chunk_size": args.chunk_size,
                   "repeats": args.repeats, "trl_runs": args.trl_runs, "trl_repeats": args.trl_repeats,
                   "inprocess": args.inprocess, "quick": args.quick, "threads": args.threads or info.get("torch_threads")},
        "targets": {"mem_ratio_max": TARGET_MEM, "time_ratio_max": TARGET_TIME},
        "warnings": warnings, "summary": summary, "rows": rows, "table_markdown": table,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
