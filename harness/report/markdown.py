"""Render a report `Document` as GitHub-flavoured Markdown (figures referenced as files next to it)."""

from __future__ import annotations

from harness.report.sections import Document, Entry, Table


def _cell(c: Entry) -> str:
    text = c.text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    if c.sig:
        text += " †"
    return f"**{text}**" if c.best else text


def _table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    lines.append("| " + " | ".join(h.replace("|", "\\|") for h in t.headers) + " |")
    lines.append("|" + "|".join("---" if i == 0 or not t.numeric else "---:" for i in range(len(t.headers))) + "|")
    for i, row in enumerate(t.rows):
        cells = [_cell(c) for c in row]
        if t.row_kinds and t.row_kinds[i] == "baseline":
            cells[0] = f"*{cells[0]}*"  # baselines in italics: shown, never ranked
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(doc: Document, files_dir: str) -> str:
    """`files_dir` is the figures folder relative to the Markdown file (e.g. `NAME_files`)."""
    out = [f"# {doc.title}", ""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [f"> ⚠️ {p}" if s.banner else p, ""]
        for t in s.tables:
            out += _table(t)
        for plot in s.plots:
            out += [f"### {plot.title}", "", f"![{plot.title}]({files_dir}/{plot.filename})", "", f"*{plot.caption}*", ""]
        if s.note:
            out += [s.note, ""]
    return "\n".join(out).rstrip("\n") + "\n"
