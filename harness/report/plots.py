"""PNG figures for the report, drawn with matplotlib's Agg canvas only (no pyplot global state).

Byte-identical output for identical results: the default style is forced, the PNG `Software`
metadata (which names the matplotlib version) is dropped, no dates are written, and the SVG hash
salt is fixed in case a figure is ever saved as SVG.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.report.load import Cell
from harness.report.table import Leaderboard, Row

DPI = 100
TELEMETRY_STANDARD = {"step", "loss", "grad_norm", "entropy", "teacher_kl", "tokens_per_s", "nonfinite"}
_NOT_SCHEDULED = re.compile(r"(time|tokens|memory|bytes|_s$|^epoch$|^prompts|^samples)")
_RC = {"svg.hashsalt": "distill-bench", "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.grid": True,
       "grid.alpha": 0.3, "figure.constrained_layout.use": True}
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Plot:
    filename: str
    title: str
    caption: str
    png: bytes


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style(index: int) -> dict[str, Any]:
    colors = matplotlib.colormaps["tab10"].colors
    return {"color": colors[index % 10], "linestyle": _LINESTYLES[(index // 10) % len(_LINESTYLES)]}


def _telemetry_series(cells: list[Cell], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged series of one telemetry key by step (non-finite values ignored)."""
    by_step: dict[int, list[float]] = {}
    for cell in cells:
        for i, rec in enumerate(cell.telemetry):
            v = rec.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            by_step.setdefault(int(rec.get("step", i)), []).append(float(v))
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([np.mean(by_step[int(s)]) for s in steps], dtype=float)


def _scheduled_keys(rows: list[Row]) -> list[str]:
    keys: set[str] = set()
    for row in rows:
        for cell in row.cells:
            for rec in cell.telemetry:
                sched = rec.get("sched") if isinstance(rec.get("sched"), dict) else {}
                for k, v in list(rec.items()) + [(f"sched.{k}", v) for k, v in sched.items()]:
                    if (
                        k not in TELEMETRY_STANDARD
                        and isinstance(v, (int, float))
                        and not isinstance(v, bool)
                        and not _NOT_SCHEDULED.search(k)
                    ):
                        keys.add(k)
    # Objective-scheduled values first (beta ...), the learning rate last.
    return sorted(k for k in keys if k != "lr") + (["lr"] if "lr" in keys else [])


def _flatten_sched(cells: list[Cell]) -> list[Cell]:
    """Expose a nested `sched: {...}` telemetry dict as `sched.<key>` fields (copies, cells untouched)."""
    out = []
    for c in cells:
        if any(isinstance(r.get("sched"), dict) for r in c.telemetry):
            clone = Cell.loaded(c.cell_id, c.dir, c.data)
            clone.__dict__["telemetry"] = [
                {**r, **{f"sched.{k}": v for k, v in (r.get("sched") or {}).items()}} for r in c.telemetry
            ]
            out.append(clone)
        else:
            out.append(c)
    return out


def _legend(fig: Figure, axes: np.ndarray, order: list[str]) -> None:
    """One figure legend for all subplots, entries in leaderboard row order."""
    found: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    labels = [lab for lab in order if lab in found]
    if labels:
        fig.legend([found[lab] for lab in labels], labels, loc="outside right upper", fontsize=8)


def _errors(values: list[tuple[float, Any]], lo_clip: float = 0.0, hi_clip: float = 100.0) -> np.ndarray:
    """[2, n] error-bar lengths from intervals, clipped to the metric's range for drawing only."""
    err = []
    for mean, iv in values:
        if iv.has_ci:
            err.append([mean - max(iv.lo, lo_clip), min(iv.hi, hi_clip) - mean])
        else:
            err.append([0.0, 0.0])
    return np.clip(np.array(err, dtype=float).reshape(-1, 2).T, 0.0, None)


def training_curves(board: Leaderboard) -> Plot | None:
    rows = [r for r in board.rows if not r.is_baseline and any(c.telemetry for c in r.cells)]
    tasks = [t for t in board.tasks if any(c.telemetry for r in rows for c in r.cells_for(t).values())]
    if not rows or not tasks:
        return None
    fig = _new_figure(4.2 * len(tasks) + 1.8, 6.0)
    axes = fig.subplots(2, len(tasks), squeeze=False)
    for j, task in enumerate(tasks):
        for i, (key, name) in enumerate((("loss", "loss"), ("grad_norm", "grad norm"))):
            ax = axes[i][j]
            positive = True
            for k, row in enumerate(rows):
                steps, values = _telemetry_series(list(row.cells_for(task).values()), key)
                if steps.size:
                    ax.plot(steps, values, label=row.label, linewidth=1.2, **_style(k))
                    positive &= bool(np.all(values > 0))
            if key == "grad_norm" and positive and ax.lines:
                ax.set_yscale("log")
            ax.set_title(f"{task}: {name}")
            ax.set_xlabel("optimizer step")
    _legend(fig, axes, [r.label for r in rows])
    return Plot("training_curves.png", "Training curves", "Loss and grad norm per optimizer step (mean over seeds).", _png(fig))


def schedules(board: Leaderboard) -> Plot | None:
    rows = [r for r in board.rows if not r.is_baseline and any(c.telemetry for c in r.cells)]
    keys = _scheduled_keys(rows)
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure(4.2 * ncols + 1.8, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for n, key in enumerate(keys):
        ax = axes[n // ncols][n % ncols]
        for k, row in enumerate(rows):
            task = next((t for t in board.tasks if any(c.telemetry for c in row.cells_for(t).values())), None)
            if task is None:
                continue
            steps, values = _telemetry_series(_flatten_sched(list(row.cells_for(task).values())), key)
            if steps.size:
                ax.plot(steps, values, label=row.label, linewidth=1.2, **_style(k))
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
    for n in range(len(keys), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    _legend(fig, axes, [r.label for r in rows])
    return Plot(
        "schedules.png",
        "Scheduled values",
        "Values the objectives schedule over training (e.g. beta) and the learning rate, from telemetry (first task with telemetry, mean over seeds).",
        _png(fig),
    )


def win_rate_bars(board: Leaderboard) -> Plot | None:
    """Bars for the first judged (verdict) metric: a win-rate against a baseline."""
    spec = next((s for s in board.metrics if s.kind == "verdict"), None)
    if spec is None:
        return None
    key = spec.key
    rows = [r for r in board.rows if math.isfinite(board.main[(r.label, key)].mean)]
    if not rows:
        return None
    fig = _new_figure(max(4.5, 0.7 * len(rows) + 2.0), 3.8)
    ax = fig.subplots()
    x = np.arange(len(rows))
    means = np.array([board.main[(r.label, key)].mean for r in rows])
    err = _errors([(board.main[(r.label, key)].mean, board.main[(r.label, key)]) for r in rows])
    colors = ["0.6" if r.is_baseline else matplotlib.colormaps["tab10"].colors[0] for r in rows]
    ax.bar(x, means, yerr=err, capsize=3, color=colors)
    ax.set_ylim(0, 105)
    ax.axhline(50.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [r.label for r in rows], rotation=30, ha="right")
    ax.set_ylabel("win-rate (%)")
    ax.set_title(f"{spec.label} (95% CI; grey = baseline)")
    task_name = spec.label.split(" ")[0]  # the label's task part, e.g. "DialogSum"
    return Plot("winrate.png", spec.label, f"Win-rate against the {task_name} baseline with 95% CIs (drawn clipped to 0-100); dashed line = parity.", _png(fig))


def sweep_plots(board: Leaderboard) -> list[Plot]:
    """One figure per (objective, swept parameter): each headline metric against the swept value."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in board.rows:
        if len(row.sweep) == 1:
            (param,) = row.sweep
            groups.setdefault((row.base_label, param), []).append(row)
    plots = []
    for (base, param), rows in sorted(groups.items()):
        parent = next((r for r in board.rows if r.label == base and not r.sweep), None)
        points = [(r.sweep[param], r) for r in rows]
        if parent is not None and param in parent.params:
            points.append((parent.params[param], parent))
        points = [(float(v), r) for v, r in points if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not points:
            continue
        points.sort(key=lambda p: (p[0], p[1].label))
        metrics = [m for m in board.metrics if any(math.isfinite(board.main[(r.label, m.key)].mean) for _, r in points)]
        if not metrics:
            continue
        fig = _new_figure(3.4 * len(metrics) + 0.5, 3.2)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, spec in zip(axes, metrics):
            pts = [(x, board.main[(r.label, spec.key)], r) for x, r in points if math.isfinite(board.main[(r.label, spec.key)].mean)]
            xs = np.array([p[0] for p in pts])
            ys = np.array([p[1].mean for p in pts])
            err = _errors([(y, p[1]) for y, p in zip(ys, pts)])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.2)
            for x, iv, r in pts:
                if r is parent:
                    ax.plot([x], [iv.mean], marker="*", markersize=12, color="C3", linestyle="none", label="default")
            ax.set_title(spec.label)
            ax.set_xlabel(param)
        axes[0].set_ylabel("%")
        if parent is not None and any(r is parent for _, r in points):
            axes[0].legend(fontsize=8)
        plots.append(
            Plot(
                f"sweep_{slug(base)}_{slug(param)}.png",
                f"Sweep: {base} over {param}",
                f"Headline metrics of {base} against {param} (95% CIs drawn clipped to 0-100; star = the un-swept setting).",
                _png(fig),
            )
        )
    return plots


def render_plots(board: Leaderboard) -> list[Plot]:
    """All figures that have data, in report order."""
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        plots = [training_curves(board), schedules(board), win_rate_bars(board)]
        out = [p for p in plots if p is not None]
        out += sweep_plots(board)
    return out
