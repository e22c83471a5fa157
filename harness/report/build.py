"""`build_report`: results dir(s) in, leaderboard files out (Markdown, HTML, CSV, PNG figures)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.io import atomic_write_bytes, atomic_write_text
from harness.report.frame import to_csv, to_frame
from harness.report.html import render_html
from harness.report.load import PathLike, Results, load_results
from harness.report.markdown import render_markdown
from harness.report.plots import render_plots
from harness.report.reference import load_reference
from harness.report.sections import build_document
from harness.report.table import Leaderboard, build_leaderboard


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by `build_report`."""

    markdown: Path
    html: Path
    csv: Path
    files_dir: Path
    plots: list[Path] = field(default_factory=list)

    def all(self) -> list[Path]:
        return [self.markdown, self.html, self.csv, *self.plots]

    def describe(self) -> str:
        """What was written, one path per line (what `report` and `run` print)."""
        lines = [f"leaderboard: {self.markdown}", f"  html:  {self.html}", f"  csv:   {self.csv}"]
        if self.plots:
            lines.append(f"  plots: {len(self.plots)} in {self.files_dir}")
        return "\n".join(lines)


def leaderboard_frame(results_dir: PathLike | Sequence[PathLike]) -> pd.DataFrame:
    """The leaderboard as a long DataFrame (the same table the CSV export holds) for your own analysis."""
    return to_frame(build_leaderboard(load_results(results_dir)))


def report_name(results: Results, name: str | None) -> str:
    raw = name or results.suite_name or results.roots[0].resolve().name or "leaderboard"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or "leaderboard"


def build_report(
    results_dir: PathLike | Sequence[PathLike], out_dir: PathLike = Path("leaderboards"), name: str | None = None
) -> ReportFiles:
    """Rebuild the leaderboard of one results dir (or several shards/dirs) from the results alone.

    Writes `out_dir/NAME.md`, `NAME.html` (self-contained), `NAME.csv` (long format) and
    `out_dir/NAME_files/*.png`; NAME defaults to the suite name. Output is deterministic: the same
    results give byte-identical files.
    """
    results = load_results(results_dir)
    out = Path(out_dir)
    stem = report_name(results, name)
    board: Leaderboard = build_leaderboard(results)
    plots = render_plots(board)
    try:
        reference = load_reference()
    except FileNotFoundError:  # e.g. a wheel built without the package data: report without the block
        reference = None
    doc = build_document(results, board, plots, reference, stem)

    files_dir = out / f"{stem}_files"
    files_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in plots:
        path = files_dir / plot.filename
        atomic_write_bytes(path, plot.png)
        written.append(path)
    for stale in sorted(files_dir.glob("*.png")):  # figures of an earlier build that no longer apply
        if stale not in written:
            stale.unlink()

    md_path, html_path, csv_path = out / f"{stem}.md", out / f"{stem}.html", out / f"{stem}.csv"
    atomic_write_text(md_path, render_markdown(doc, files_dir.name))
    atomic_write_text(html_path, render_html(doc))
    atomic_write_text(csv_path, to_csv(to_frame(board)))
    return ReportFiles(md_path, html_path, csv_path, files_dir, written)
