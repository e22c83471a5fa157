"""Leaderboards rebuilt from results/ alone: Markdown, self-contained HTML, CSV and PNG figures.

Public API::

    build_report(results_dir, out_dir=Path("leaderboards"), name=None) -> ReportFiles
    load_results(results_dir) -> Results           # one dir or a list of shard dirs
    leaderboard_frame(results_dir) -> pandas.DataFrame

Modules: load (read results), stats (CIs, paired tests), metrics (columns), table (aggregation),
frame (DataFrame/CSV), plots (PNG), sections (document model), markdown / html (renderers),
reference (the paper's published numbers), context (caveats, protocol, environment), build.
"""

from harness.report.build import ReportFiles, build_report, leaderboard_frame
from harness.report.load import Cell, MissingCell, Results, load_results

__all__ = ["Cell", "MissingCell", "ReportFiles", "Results", "build_report", "leaderboard_frame", "load_results"]
