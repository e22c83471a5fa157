"""Human-readable number formatting shared by the Markdown and HTML renderers."""

from __future__ import annotations

import math

from harness.report.stats import Interval

DASH = "—"


def fmt_num(x: float, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:.{digits}f}"


def fmt_interval(iv: Interval, digits: int = 1) -> str:
    """`m ± h` for a t-interval (symmetric), `m [lo, hi]` for a bootstrap interval, `m` without one."""
    if not math.isfinite(iv.mean):
        return DASH
    m = f"{iv.mean:.{digits}f}"
    if not iv.has_ci:
        return m
    if iv.method == "t":
        return f"{m} ± {(iv.hi - iv.lo) / 2:.{digits}f}"
    return f"{m} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def fmt_signed(x: float, digits: int = 1) -> str:
    if not math.isfinite(x):
        return DASH
    return f"{x:+.{digits}f}"


def fmt_p(p: float) -> str:
    """`p=0.039`, `p<0.001`."""
    if p is None or not math.isfinite(p):
        return f"p={DASH}"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}"


def human_count(n: float) -> str:
    """1234 -> 1.23k, 4.5e6 -> 4.50M (three significant digits)."""
    if n is None or not math.isfinite(n):
        return DASH
    if abs(n) < 1000:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        v = n / scale
        if abs(v) < 999.5 or unit == "T":
            return f"{v:.3g}{unit}" if abs(v) >= 100 else f"{v:.2f}{unit}" if abs(v) < 10 else f"{v:.1f}{unit}"
    return str(n)  # pragma: no cover


def human_duration(seconds: float) -> str:
    """12.3s, 4m 05s, 2h 03m."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def human_bytes(n: float) -> str:
    """Binary units: 1536 -> 1.5 KiB."""
    if n is None or not math.isfinite(n):
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def fmt_cost(key: str, value: float) -> str:
    if key.endswith("_s"):
        return human_duration(value)
    if key.endswith("_bytes"):
        return human_bytes(value)
    return human_count(value)


def fmt_stability(key: str, value: float) -> str:
    if key == "grad_norm_max":
        return fmt_num(value, 2) if math.isfinite(value) and value < 1e4 else (f"{value:.3g}" if math.isfinite(value) else DASH)
    return human_count(value)
