"""The Veto paper's published numbers (paper_reference.yaml), kept apart from our own results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

REFERENCE_FILE = Path(__file__).with_name("paper_reference.yaml")


@dataclass(frozen=True)
class PaperReference:
    title: str
    arxiv: str
    setup: str
    columns: list[tuple[str, str]]  # (metric key, header)
    rows: list[tuple[str, list[float]]]  # (method, values in column order)

    @property
    def citation(self) -> str:
        # Plain text, not a link: the HTML report must not reference external URLs.
        return f"“{self.title}”, arXiv:{self.arxiv}"


def load_reference(path: Path = REFERENCE_FILE) -> PaperReference:
    """Parse and sanity-check the reference table (every row has one value per column)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    columns = [(str(c["key"]), str(c["label"])) for c in raw["columns"]]
    rows = []
    for r in raw["rows"]:
        values = [float(v) for v in r["values"]]
        if len(values) != len(columns):
            raise ValueError(f"{path}: row {r['method']!r} has {len(values)} values for {len(columns)} columns")
        rows.append((str(r["method"]), values))
    cite = raw["citation"]
    return PaperReference(str(cite["title"]), str(cite["arxiv"]), str(raw.get("setup", "")).strip(), columns, rows)
