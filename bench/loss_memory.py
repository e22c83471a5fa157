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
  trl_chunked  TRL DistillationTrainer's loss (trl>=1.10, `trl.trainer.distillation_trainer.
           _chunked_divergence_loss`): the same hidden states and head weights, all positions valid,
           beta from the case (fkl 0 = forward KL, gkd 0.5 = JSD, rkl 1 = reverse KL); only for
           those cases. Its chunking is its own (it tiles internally); the strongest peer.
Each run ends with backward(); the student head's weight gradient is counted in every variant.

Memory phase: every (case, variant) runs in a fresh subprocess; after setup and a small warm-up the
kernel's peak-RSS counter is reset (see bench/_common.py), so `peak` is the resident memory the
measured call added above the baseline. TRL's peak is measured `--trl-runs` times, spread over the
phase (median used).
Time phase: one subprocess per objective builds the inputs once and runs chunked, dense and TRL calls
interleaved (rotating order, `--repeats` rounds), so each ratio compares calls made within seconds of
each other on a shared, noisy machine; medians. The first process also times the four LM-head GEMMs
alone (a floor for any exact fp32 implementation). The first round checks chunked against dense:
loss and gradients (hidden states, head weight) within relative error 1e-5.
Targets (issue "Performance: memory-efficient distillation losses..."): chunked peak <= 15% of TRL's
and chunked time <= 50% of TRL's, for every divergence objective; against DistillationTrainer's
chunked kernel (issue 17): chunked peak <= its peak. The first timing round also records the
relative difference between our loss (sum / N) and DistillationTrainer's mean loss.
`--chunk-size` defaults to 64 rows (one [64, 49152] fp32 block = 12 MiB): smaller chunks lower the
peak (the objective's per-chunk temporaries) but re-read the head weight and re-accumulate its fp32
gradient once per chunk; TrainConfig's loss_chunk_size default (1024) would make this 1024-position
case a single chunk, i.e. dense-sized temporaries.
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
# Registered objectives covered by another case: their per-token loss is that case's divergence
# (contract-v2 row weights/selection scale rows after it and add no [N, V] tensor).
ALIASES = {"supervised_kd": "fkl", "opsd": "rkl", "tip": "rkl", "sod": "rkl"}
QUICK_CASES = ["fkl", "veto_rev", "gkd"]
TOLERANCE = 1e-5
# Cases DistillationTrainer's generalized JSD covers, with its beta (0: KL(teacher || student), 1: reverse).
TRL_CHUNKED_BETA = {"fkl": 0.0, "gkd": 0.5, "rkl": 1.0}
TARGET_MEM, TARGET_TIME = 0.15, 0.50


# ---------------------------------------------------------------------------------------------
# Worker: one variant of one case
# ---------------------------------------------------------------------------------------------
def make_inputs(n: int, vocab: int, hidden: int, seed: int = 0, device: str = "cpu"):
    """Hidden states, heads and targets. Head scale gives logits with std ~3 (peaked, LM-like)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    t_head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    with torch.no_grad():
        w = torch.randn(vocab, hidden, generator=g) * (3.0 / hidden**0.5)
        head.weight.copy_(w)
        t_head.weight.copy_(w + torch.randn(vocab, hidden, generator=g) * (1.5 / hidden**0.5))
    h = torch.randn(n, hidden, generator=g)
    th = torch.randn(n, hidden, generator=g) * 0.7 + h * 0.7
    y = torch.randint(0, vocab, (n,), generator=g)
    return (h.to(device).requires_grad_(True), head.to(device), th.to(device), t_head.to(device), y.to(device))


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

    if variant == "trl_chunked":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        beta = TRL_CHUNKED_BETA[case]
        mask = torch.ones(1, h.shape[0], dtype=torch.long, device=h.device)

        def step() -> float:
            loss, _entropy, _n = _chunked_divergence_loss(h[None], th[None], head.weight, t_head.weight, mask, beta=beta)
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
        _sync(h.device)
        dt = time.perf_counter() - t0
    del s_logits, t_logits
    return dt


def _rel_err(a, b) -> float:
    import torch

    scale = float(b.abs().max()) if isinstance(b, torch.Tensor) else abs(float(b))
    diff = float((a - b).abs().max()) if isinstance(a, torch.Tensor) else abs(float(a) - float(b))
    return diff / max(scale, 1e-30)


def _sync(device) -> None:
    """Wait for queued GPU work so wall-clock intervals cover it (no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class CudaPeak:
    """Peak allocated CUDA memory above the allocation at entry (the allocator's own counters)."""

    method = "cuda_max_memory_allocated"

    def __init__(self, device) -> None:
        self.device = device

    def __enter__(self) -> "CudaPeak":
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        self.peak_above_baseline = torch.cuda.max_memory_allocated(self.device) - self.baseline


def _setup(n: int, vocab: int, hidden: int, threads: int | None, device: str = "cpu"):
    import torch

    if threads:
        torch.set_num_threads(threads)
    h, head, th, t_head, y = make_inputs(n, vocab, hidden, device=device)

    def clear() -> None:
        h.grad = None
        head.weight.grad = None
        gc.collect()

    return h, head, th, t_head, y, clear


def _warm_up(variant: str, case: str, h, head, th, t_head, y, chunk_size: int) -> None:
    """A call on a few rows: loads lazily imported code, kernels and thread pools."""
    make_step(variant, case, h[:8].detach().requires_grad_(True), head, th[:8], t_head, y[:8], min(chunk_size, 4))()
    h.grad = None
    head.weight.grad = None


def memory_worker(variant: str, case: str, n: int, vocab: int, hidden: int, chunk_size: int,
                  threads: int | None = None, device: str = "cpu") -> dict:
    """Fresh process: peak RSS (CPU) or peak allocated memory (CUDA) of one measured call above the
    post-setup baseline."""
    import torch

    h, head, th, t_head, y, clear = _setup(n, vocab, hidden, threads, device)
    _warm_up(variant, case, h, head, th, t_head, y, chunk_size)
    clear()
    step = make_step(variant, case, h, head, th, t_head, y, chunk_size)
    with (CudaPeak(h.device) if h.device.type == "cuda" else PeakRSS()) as mem:
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
    return {
        "phase": "memory", "variant": variant, "case": case,
        "objective": {"trl": "trl_gkd_jsd", "trl_chunked": "trl_distillation_chunked"}.get(variant, CASES[case][0]),
        "params": {"trl": {"beta": 0.5}, "trl_chunked": {"beta": TRL_CHUNKED_BETA.get(case)}}.get(variant, CASES[case][1]),
        "n": n, "vocab": vocab, "hidden": hidden, "chunk_size": chunk_size if variant == "chunked" else None,
        "peak_bytes": mem.peak_above_baseline, "baseline_rss_bytes": mem.baseline, "memory_method": mem.method,
        "time_s": dt, "loss": loss, "threads": torch.get_num_threads(), "device": device,
    }


def timing_worker(case: str, n: int, vocab: int, hidden: int, chunk_size: int, repeats: int, check: bool,
                  gemm: bool, threads: int | None = None, device: str = "cpu") -> dict:
    """One process per objective: chunked, dense and TRL calls interleaved (rotating order), plus the
    chunked == dense check on the first round."""
    import torch

    h, head, th, t_head, y, clear = _setup(n, vocab, hidden, threads, device)
    variants = ["chunked", "dense", "trl"] + (["trl_chunked"] if case in TRL_CHUNKED_BETA else [])
    steps = {}
    for v in variants:
        _warm_up(v, case, h, head, th, t_head, y, chunk_size)
        steps[v] = make_step(v, case, h, head, th, t_head, y, chunk_size)
    times: dict[str, list[float]] = {v: [] for v in variants}
    if gemm:
        times["gemm_floor"] = []
    got = None
    check_row = None
    first: dict[str, float] = {}
    for r in range(max(repeats, 1)):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        for v in order:
            clear()
            _sync(h.device)
            t0 = time.perf_counter()
            loss = steps[v]()  # float(loss) after backward: the GPU work is done when it returns
            times[v].append(time.perf_counter() - t0)
            if r == 0 and v in ("chunked", "trl_chunked"):
                # Both as a mean per position; our generalized JSD is TRL's divided by beta(1 - beta)
                # (objectives/divergences.generalized_jsd: continuous in beta), so scale TRL's the same way.
                beta = TRL_CHUNKED_BETA.get(case, 0.0)
                first[v] = loss / h.shape[0] if v == "chunked" else loss / (beta * (1 - beta) if 0 < beta < 1 else 1)
            if check and r == 0 and v in ("chunked", "dense"):
                cur = (loss, h.grad.detach().clone(), head.weight.grad.detach().clone())
                if got is None:
                    got = (v, cur)
                else:
                    c, d = (got[1], cur) if got[0] == "chunked" else (cur, got[1])
                    errs = {"loss": _rel_err(c[0], d[0]), "grad_hidden": _rel_err(c[1], d[1]),
                            "grad_head": _rel_err(c[2], d[2])}
                    check_row = {"max_rel_err": errs, "tolerance": TOLERANCE,
                                 "ok": all(e <= TOLERANCE for e in errs.values())}
                    got = None
        if gemm:
            clear()
            times["gemm_floor"].append(gemm_floor(h, head, th, t_head))
    peer_diff = (abs(first["chunked"] - first["trl_chunked"]) / max(abs(first["trl_chunked"]), 1e-30)
                 if "trl_chunked" in first else None)
    return {"phase": "time", "case": case, "times_s": times, "check": check_row,
            "threads": torch.get_num_threads(), "chunk_size": chunk_size,
            "mean_loss": first, "rel_diff_vs_trl_chunked": peer_diff}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def plan_memory_jobs(cases: list[str], trl_runs: int) -> list[tuple[str, str]]:
    """(variant, case) in run order: TRL runs spread evenly, chunked/dense order alternating."""
    ours: list[tuple[str, str]] = []
    for i, c in enumerate(cases):
        pair = [("chunked", c), ("dense", c)]
        ours += pair if i % 2 == 0 else pair[::-1]
    ours += [("trl_chunked", c) for c in cases if c in TRL_CHUNKED_BETA]
    if trl_runs <= 0:
        return ours
    slots = [round(k * len(ours) / max(trl_runs - 1, 1)) for k in range(trl_runs)] if trl_runs > 1 else [0]
    jobs: list[tuple[str, str]] = []
    for pos in range(len(ours) + 1):
        jobs += [("trl", cases[0])] * slots.count(pos)
        if pos < len(ours):
            jobs.append(ours[pos])
    return jobs


def coverage_warnings(cases: list[str]) -> list[str]:
    """Registered objectives that use a teacher signal but are not measured by any case."""
    from objectives.base import TeacherSignal, list_objectives

    covered = {CASES[c][0] for c in cases} | {a for a, c in ALIASES.items() if c in cases}
    # Reward objectives (contract v2: kdrl, rlad) need per-row advantages and behaviour log-probs that
    # only the training stage makes; this single-chunk bench cannot feed them, so they are out of scope.
    missing = [cls.name for cls in list_objectives()
               if cls().required_teacher_signal() is not TeacherSignal.NONE and not cls().uses_reward()
               and cls.name not in covered]
    return [f"registered divergence objective {m!r} is not measured (add a case)" for m in missing]


def summarize(mem_rows: list[dict], time_rows: list[dict], cases: list[str]) -> list[dict]:
    trl = [r for r in mem_rows if r["variant"] == "trl"]
    trl_peak = median([r["peak_bytes"] for r in trl])
    floors = [t for r in time_rows for t in r["times_s"].get("gemm_floor", [])]
    out = []
    for c in cases:
        ch = next(r for r in mem_rows if r["variant"] == "chunked" and r["case"] == c)
        de = next(r for r in mem_rows if r["variant"] == "dense" and r["case"] == c)
        tr = next(r for r in time_rows if r["case"] == c)
        t = {v: median(x) for v, x in tr["times_s"].items()}
        mem_ratio = ch["peak_bytes"] / trl_peak
        time_ratio = t["chunked"] / t["trl"]
        out.append({
            "case": c, "label": CASES[c][2], "objective": CASES[c][0], "params": CASES[c][1],
            "chunked_peak_mib": ch["peak_bytes"] / MIB, "dense_peak_mib": de["peak_bytes"] / MIB,
            "trl_peak_mib": trl_peak / MIB, "mem_ratio_vs_trl": mem_ratio,
            "dense_mem_ratio_vs_trl": de["peak_bytes"] / trl_peak,
            "chunked_vs_dense_mem": ch["peak_bytes"] / max(de["peak_bytes"], 1),
            "chunked_time_s": t["chunked"], "dense_time_s": t["dense"], "trl_time_s": t["trl"],
            "time_ratio_vs_trl": time_ratio, "dense_time_ratio_vs_trl": t["dense"] / t["trl"],
            "chunked_vs_dense_time": t["chunked"] / t["dense"],
            "gemm_floor_s": median(floors), "check_ok": (tr["check"] or {}).get("ok"),
            "check_max_rel_err": max((tr["check"] or {}).get("max_rel_err", {"-": float("nan")}).values()),
            "meets_mem_target": mem_ratio <= TARGET_MEM, "meets_time_target": time_ratio <= TARGET_TIME,
        })
        tc = next((r for r in mem_rows if r["variant"] == "trl_chunked" and r["case"] == c), None)
        if tc is not None:
            out[-1].update({
                "trl_chunked_peak_mib": tc["peak_bytes"] / MIB, "trl_chunked_time_s": t["trl_chunked"],
                "mem_ratio_vs_trl_chunked": ch["peak_bytes"] / max(tc["peak_bytes"], 1),
                "time_ratio_vs_trl_chunked": t["chunked"] / t["trl_chunked"],
                "rel_diff_vs_trl_chunked": tr.get("rel_diff_vs_trl_chunked"),
                "meets_peer_mem_target": ch["peak_bytes"] <= tc["peak_bytes"],
            })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all (quick: fkl veto_rev gkd)")
    p.add_argument("--n", type=int, default=1024, help="loss positions")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk-size", type=int, default=64, help="chunked_loss positions per chunk")
    p.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds per objective")
    p.add_argument("--trl-runs", type=int, default=2, help="TRL memory processes, spread over the memory phase")
    p.add_argument("--no-check", action="store_true", help="skip the chunked == dense check")
    p.add_argument("--threads", type=int, help="torch threads in every worker (default: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (n 64, vocab 4096, hidden 64, chunk 16)")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (tests; memory not isolated)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: peak = allocator's max_memory_allocated)")
    p.add_argument("--out", help="JSON path (default bench/results/loss_memory.json)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.vocab, args.hidden, args.chunk_size = 64, 4096, 64, 16
        args.trl_runs = min(args.trl_runs, 1)
        args.repeats = min(args.repeats, 1)
    cases = args.cases or (QUICK_CASES if args.quick else list(CASES))
    sizes = (args.n, args.vocab, args.hidden, args.chunk_size)

    if args.worker:
        if args.worker[0] == "mem":
            emit(memory_worker(args.worker[1], args.worker[2], *sizes, threads=args.threads, device=args.device))
        else:
            emit(timing_worker(args.worker[1], *sizes, args.repeats, not args.no_check, args.gemm, args.threads,
                               args.device))
        return 0

    common = ["--n", str(args.n), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
              "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats), "--device", args.device]
    common += ["--no-check"] if args.no_check else []
    common += ["--threads", str(args.threads)] if args.threads else []

    info = machine_info()
    warnings = coverage_warnings(cases) if args.cases is None and not args.quick else []
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    t_start = time.perf_counter()
    mem_rows, time_rows = [], []
    for variant, case in plan_memory_jobs(cases, args.trl_runs):
        if args.inprocess:
            row = memory_worker(variant, case, *sizes, threads=args.threads, device=args.device)
        else:
            row = run_worker(__file__, ["--worker", "mem", variant, case, *common])
        mem_rows.append(row)
        print(f"  memory {variant:<8}{case:<12} peak {row['peak_bytes'] / MIB:8.0f} MiB", file=sys.stderr, flush=True)
    for i, case in enumerate(cases):
        if args.inprocess:
            row = timing_worker(case, *sizes, args.repeats, not args.no_check, i == 0, args.threads, args.device)
        else:
            row = run_worker(__file__, ["--worker", "time", case, *common] + (["--gemm"] if i == 0 else []))
        time_rows.append(row)
        print(f"  time   {case:<12} " + "  ".join(f"{v} {median(x):.2f}s" for v, x in row["times_s"].items()),
              file=sys.stderr, flush=True)
    summary = summarize(mem_rows, time_rows, cases)
    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)

    table = fmt_table(
        ["objective", "chunked MiB", "dense MiB", "TRL MiB", "mem chunked/TRL", "time chunked/TRL",
         "time dense/TRL", "check", "targets (mem, time)"],
        [[s["label"], s["chunked_peak_mib"], s["dense_peak_mib"], s["trl_peak_mib"], s["mem_ratio_vs_trl"],
          s["time_ratio_vs_trl"], s["dense_time_ratio_vs_trl"],
          "ok" if s["check_ok"] else ("-" if s["check_ok"] is None else "FAIL"),
          ("ok" if s["meets_mem_target"] else "MISS") + ", " + ("ok" if s["meets_time_target"] else "MISS")]
         for s in summary])
    trl_rows = [r for r in mem_rows if r["variant"] == "trl"]
    trl_times = [t for r in time_rows for t in r["times_s"]["trl"]]
    floor = summary[0]["gemm_floor_s"]
    print(f"\nLM head + loss + backward: {args.n} positions x vocab {args.vocab}, hidden {args.hidden}, fp32, "
          f"chunk {args.chunk_size}, device {args.device}, {mem_rows[0]['threads']} threads; peak above baseline "
          f"({mem_rows[0]['memory_method']})")
    print(f"TRL generalized_jsd_loss(beta=0.5): peak {[round(r['peak_bytes'] / MIB) for r in trl_rows]} MiB; "
          f"time median {median(trl_times):.2f} s over {len(trl_times)} calls; the 4 head GEMMs alone take "
          f"{floor:.2f} s (a floor for any exact fp32 variant)")
    print(table)
    peers = [s for s in summary if "trl_chunked_peak_mib" in s]
    if peers:
        print("\nvs TRL DistillationTrainer._chunked_divergence_loss (same inputs; target: our peak <= its peak):")
        print(fmt_table(
            ["objective", "chunked MiB", "DistillationTrainer MiB", "chunked s", "DistillationTrainer s",
             "mean loss rel diff (JSD / beta(1-beta))", "target"],
            [[s["label"], s["chunked_peak_mib"], s["trl_chunked_peak_mib"], s["chunked_time_s"],
              s["trl_chunked_time_s"], s["rel_diff_vs_trl_chunked"], "ok" if s["meets_peer_mem_target"] else "MISS"]
             for s in peers]))
    print(f"targets: chunked peak <= {TARGET_MEM:.0%} of TRL, time <= {TARGET_TIME:.0%} of TRL (time ratios: same "
          f"process, interleaved); load average {info['loadavg_start']} -> {info['loadavg_end']}")
    path = write_json(out_path(args.out, "loss_memory.json"), {
        "benchmark": "loss_memory", "machine": info, "versions": versions("torch", "trl", "transformers"),
        "config": {"n": args.n, "vocab": args.vocab, "hidden": args.hidden, "chunk_size": args.chunk_size,
                   "repeats": args.repeats, "trl_runs": args.trl_runs, "inprocess": args.inprocess,
                   "quick": args.quick, "threads": mem_rows[0]["threads"], "device": args.device},
        "targets": {"mem_ratio_max": TARGET_MEM, "time_ratio_max": TARGET_TIME},
        "warnings": warnings, "summary": summary, "memory_rows": mem_rows, "timing_rows": time_rows,
        "table_markdown": table,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
