"""The report as a renderer-neutral document: sections of paragraphs, tables and figures.

Markdown and HTML render the same `Document`, so the two files can never disagree on a number.
Paragraph text may use Markdown inline syntax (`code`, **bold**, *italic*); the HTML renderer
converts those three after escaping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.report.context import caveats, environment_rows, protocol_summary
from harness.report.fmt import DASH, fmt_cost, fmt_interval, fmt_p, fmt_signed, fmt_stability
from harness.report.load import Results
from harness.report.metrics import COST_KEYS, DIAGNOSTICS, STABILITY_KEYS
from harness.report.plots import Plot
from harness.report.reference import PaperReference
from harness.report.stats import N_BOOT, SPIKE_FACTOR, SPIKE_MIN_HISTORY, SPIKE_WINDOW
from harness.report.table import SIGNIFICANCE, Leaderboard

SHOWN_COST = ("optimizer_steps", "prompts_seen", "generated_tokens", "teacher_forward_tokens", "wall_time_s", "peak_memory_bytes")


@dataclass
class Entry:
    """One entry of a rendered table (not a results cell: those are `harness.cells.CellSpec`)."""

    text: str
    best: bool = False
    sig: bool = False  # significant vs SFT at the 5% level: a † is appended


@dataclass
class Table:
    id: str
    headers: list[str]
    rows: list[list[Entry]]
    row_kinds: list[str] = field(default_factory=list)  # "baseline" | "trained" | "" per row (HTML class)
    caption: str = ""
    numeric: bool = True  # right-align the value columns (False: key/value and text tables)


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    note: str = ""  # paragraph after the tables
    banner: bool = False  # rendered as a warning box


@dataclass
class Document:
    title: str
    sections: list[Section]


def _main_section(board: Leaderboard) -> Section:
    headers = ["Method", "Seed ids"] + [m.label for m in board.metrics]
    rows, kinds = [], []
    for row in board.rows:
        cells = [Entry(row.label), Entry(", ".join(str(s) for s in row.seeds()))]
        for spec in board.metrics:
            iv = board.main[(row.label, spec.key)]
            cells.append(Entry(fmt_interval(iv), best=(row.label, spec.key) in board.best))
        rows.append(cells)
        kinds.append("baseline" if row.is_baseline else "trained")
    table = Table("main", headers, rows, kinds, caption="Our results, percent, mean with 95% CI.")
    return Section(
        "leaderboard",
        "Leaderboard (this harness)",
        paragraphs=[
            "Percent. `m ± h`: mean over seeds with a 95% t-interval (≥2 seeds); `m [lo, hi]`: one seed, 95% "
            f"percentile bootstrap over examples ({N_BOOT} resamples). **Bold**: best non-baseline row per column "
            "(ties at the shown precision are all marked). Baselines (*Student (init)*, *Teacher*) are not ranked."
        ],
        tables=[table],
    )


def _delta_section(board: Leaderboard) -> Section:
    section = Section("delta", "Δ vs SFT (paired)")
    if board.sft_label is None:
        section.paragraphs.append("No `sft` row in these results, so no deltas or paired tests.")
        return section
    headers = ["Method"] + [m.label for m in board.metrics]
    rows, kinds = [], []
    for row in board.rows:
        if row.label == board.sft_label:
            continue
        cells = [Entry(row.label)]
        for spec in board.metrics:
            comp = board.deltas.get((row.label, spec.key))
            if comp is None:
                cells.append(Entry(DASH))
                continue
            text = fmt_signed(comp.delta)
            if comp.boot is not None:
                text += f" [{comp.boot.lo:+.1f}, {comp.boot.hi:+.1f}] {fmt_p(comp.boot.p_value)}"
            if math.isfinite(comp.mcnemar_p):
                text += f"; McNemar {fmt_p(comp.mcnemar_p)} ({comp.mcnemar_b}/{comp.mcnemar_c})"
            cells.append(Entry(text, sig=comp.significant))
        rows.append(cells)
        kinds.append("baseline" if row.is_baseline else "trained")
    section.paragraphs.append(
        f"Percentage points against `{board.sft_label}`. Brackets: 95% paired-bootstrap CI over shared example ids "
        "(examples resampled, identical seeds paired and pooled; a one-seed row pairs with every seed of the other); "
        "p: two-sided bootstrap p-value. GSM8K adds the exact McNemar test on the pooled discordant pairs "
        f"(b/c = this row right and SFT wrong / the reverse). † marks p < {SIGNIFICANCE} (McNemar for GSM8K, "
        "bootstrap otherwise); no correction for multiple comparisons."
    )
    section.tables.append(Table("delta", headers, rows, kinds))
    return section


def _cost_section(board: Leaderboard) -> Section:
    cost_labels = {k: lab for k, lab, _ in COST_KEYS}
    headers = ["Method"] + [cost_labels[k] for k in SHOWN_COST] + [lab for _, lab, _ in STABILITY_KEYS]
    rows, kinds = [], []
    for row in board.rows:
        cost = board.cost.get((row.label, "all"), {})
        stab = board.stability.get((row.label, "all"), {})
        cells = [Entry(row.label)]
        cells += [Entry(fmt_cost(k, cost.get(k, math.nan))) for k in SHOWN_COST]
        cells += [Entry(fmt_stability(k, stab.get(k, math.nan))) for k, _, _ in STABILITY_KEYS]
        rows.append(cells)
        kinds.append("baseline" if row.is_baseline else "trained")
    return Section(
        "cost",
        "Cost and stability",
        paragraphs=[
            "Totals over tasks of the per-task mean over seeds (peak memory and grad-norm max: maximum over all cells). "
            f"Spikes: optimizer steps whose grad norm exceeds {SPIKE_FACTOR:g}× the median of the previous "
            f"{SPIKE_WINDOW} finite grad norms (needs ≥{SPIKE_MIN_HISTORY} earlier steps), recomputed from "
            "telemetry.jsonl so every objective is judged by one rule. Non-finite: steps flagged `nonfinite` or "
            "with a non-finite loss / grad norm. Per-task values are in the CSV."
        ],
        tables=[Table("cost", headers, rows, kinds)],
    )


def _diagnostics_section(board: Leaderboard) -> Section:
    section = Section(
        "diagnostics",
        "Diagnostics",
        paragraphs=[
            "Held-out teacher KL(p_T‖p_S) and per-token cross-entropy on references (nats), distinct-1/2, "
            "self-BLEU and mean output length (tokens), per task; mean ± 95% t-interval over seeds where there are ≥2. "
            "Arrows say which direction usually means closer to the teacher / more diverse, not better per se."
        ],
    )
    for task in board.tasks:
        rows, kinds = [], []
        for row in board.rows:
            diag = board.diagnostics.get((row.label, task))
            if diag is None:
                continue
            rows.append([Entry(row.label)] + [Entry(fmt_interval(diag[s.key], s.digits)) for s in DIAGNOSTICS])
            kinds.append("baseline" if row.is_baseline else "trained")
        if rows:
            headers = ["Method"] + [f"{s.label} {s.direction}".strip() for s in DIAGNOSTICS]
            section.tables.append(Table(f"diagnostics-{task}", headers, rows, kinds, caption=task))
    if not section.tables:
        section.paragraphs.append("No diagnostics in these results.")
    return section


def _reference_section(ref: PaperReference | None) -> Section:
    title = "Published reference numbers (Veto paper; not produced by this harness)"
    if ref is None:
        return Section("paper-reference", title, paragraphs=["The reference data file `paper_reference.yaml` is missing."])
    headers = ["Method (published)"] + [label for _, label in ref.columns]
    rows = [[Entry(method)] + [Entry(f"{v:.1f}") for v in values] for method, values in ref.rows]
    return Section(
        "paper-reference",
        title,
        paragraphs=[
            f"From {ref.citation}. {ref.setup} These are the paper's numbers, copied for orientation; they are never "
            "mixed into the leaderboard above, and a different teacher, student, data budget or judge makes them "
            "incomparable with ours."
        ],
        tables=[Table("paper-reference", headers, rows, ["reference"] * len(rows))],
    )


def _missing_section(results: Results) -> Section:
    section = Section("missing", "Missing cells")
    if not results.missing:
        section.paragraphs.append("None: every planned or started cell finished.")
        return section
    rows = [[Entry(m.cell_id), Entry(m.reason), Entry(m.where)] for m in results.missing]
    section.tables.append(Table("missing", ["Cell", "Reason", "Where"], rows, numeric=False))
    return section


def build_document(
    results: Results, board: Leaderboard, plots: list[Plot], ref: PaperReference | None, name: str
) -> Document:
    sections: list[Section] = []
    warnings = caveats(results)
    if warnings:
        sections.append(Section("caveats", "Read this first", paragraphs=warnings, banner=True))
    sections += [_main_section(board), _delta_section(board), _cost_section(board), _diagnostics_section(board)]
    if plots:
        sections.append(Section("plots", "Plots", plots=plots))
    sections.append(_reference_section(ref))
    sections.append(
        Section(
            "protocol",
            "Protocol",
            tables=[Table("protocol", ["Item", "Value"], [[Entry(k), Entry(v)] for k, v in protocol_summary(results)], numeric=False)],
        )
    )
    env = environment_rows(results)
    env_section = Section("environment", "Environment")
    if env:
        multi = len(results.environments) > 1
        headers = (["Shard"] if multi else []) + ["Key", "Value"]
        rows = [([Entry(s)] if multi else []) + [Entry(k), Entry(v)] for s, k, v in env]
        env_section.tables.append(Table("environment", headers, rows, numeric=False))
    else:
        env_section.paragraphs.append("No `environment.json` in the results.")
    sections.append(env_section)
    sections.append(_missing_section(results))
    return Document(f"distill-bench leaderboard: {name}", sections)
