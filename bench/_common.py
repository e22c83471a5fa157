"""Shared plumbing of the benchmarks: peak-RSS measurement, worker subprocesses, machine info, output.

Peak memory on CPU (``PeakRSS``)
--------------------------------
Each measured variant runs in a fresh subprocess. After its setup (inputs built, libraries imported,
one small warm-up call so lazily loaded code pages and thread pools already count in the baseline)
the worker resets the kernel's resident-set high-water mark by writing ``5`` to
``/proc/self/clear_refs``; ``VmHWM`` in ``/proc/self/status`` then restarts from the current RSS.
After the measured call, ``VmHWM - baseline RSS`` is the peak resident memory the call added.

Why not the alternatives:
* ``ru_maxrss`` is the same kernel counter but cannot be reset, so its delta is only valid if the
  process never had a higher RSS before the baseline (imports, loading, warm-ups often do);
* a sampling thread (``/proc/self/statm`` every 1 ms) misses short peaks (a [1024, 49152] fp32
  temporary lives for a few ms) and competes for the GIL with the measured code;
* the torch profiler's allocation replay (bench/chunked_memory.py) counts live tensor bytes, not
  what the process holds: glibc keeps freed blocks below its mmap threshold, so RSS is the number
  that decides whether a run fits in RAM.
When ``clear_refs`` is not writable (non-Linux, restricted /proc), ``PeakRSS`` falls back to the
sampler and says so in ``method``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
MIB = 2**20
GIB = 2**30
BENCH_DATE = "2026-11-25"


# ---------------------------------------------------------------------------------------------
# Peak resident memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (0 when /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def reset_hwm() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS; False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakRSS:
    """Peak RSS above the RSS at ``__enter__``: kernel VmHWM after a reset, else a 1 ms sampler.

    ``peak_now()`` may be called inside the block (e.g. at each training step's end).
    """

    def __init__(self, interval_s: float = 0.001, force_sampler: bool = False):
        self.interval_s = interval_s
        self.force_sampler = force_sampler
        self.method = ""
        self.baseline = 0
        self.peak = 0  # absolute bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0

    def __enter__(self) -> "PeakRSS":
        use_hwm = not self.force_sampler and reset_hwm()
        self.baseline = rss_bytes()
        self._sampled = self.baseline
        if use_hwm:
            self.method = "VmHWM reset via /proc/self/clear_refs"
        else:
            self.method = f"RSS sampler ({self.interval_s * 1e3:g} ms)"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes())
            self._stop.wait(self.interval_s)

    def peak_now(self) -> int:
        if self._thread is None:
            hwm = _status_kib("VmHWM")
            return max(self.baseline, (hwm or 0) * 1024)
        return max(self._sampled, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self.peak = self.peak_now()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._sampled)

    @property
    def peak_above_baseline(self) -> int:
        return max(0, self.peak - self.baseline)


# ---------------------------------------------------------------------------------------------
# Worker subprocesses
# ---------------------------------------------------------------------------------------------
def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(script: Path | str, args: Sequence[str], timeout_s: float | None = None) -> dict:
    """Run ``python script args...`` in a fresh process; its last stdout line is a JSON object."""
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(), timeout=timeout_s, check=False)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def emit(row: dict) -> None:
    """A worker's result: one JSON line on stdout (the parent reads the last one)."""
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Machine and output
# ---------------------------------------------------------------------------------------------
def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem / GIB, 1) if mem else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_start": loadavg(), "measured_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "bench_date": BENCH_DATE,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    return info


def versions(*dists: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = None
    return out


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))
    out = []
    for k, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)) + " |")
        if k == 0:
            out.append("|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|")
    return "\n".join(out)


def _cell(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        if c != c:  # nan
            return "-"
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def out_path(arg: str | os.PathLike | None, default_name: str) -> Path:
    return Path(arg) if arg else RESULTS_DIR / default_name
