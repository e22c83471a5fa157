"""Render a report `Document` as one self-contained HTML file: inline CSS, figures as base64 data URIs,
no scripts and no external references, so it opens offline and can be mailed as a single file."""

from __future__ import annotations

import base64
import html
import re

from harness.report.sections import Document, Entry, Section, Table

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --head: #eef1f6; --best: #e3f4e6; --warn: #fff4d6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5rem 2rem 4rem; max-width: 1400px; }
h1 { font-size: 1.6rem; margin: 0 0 1rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1rem 0 .4rem; }
p { margin: .4rem 0 .8rem; max-width: 95ch; }
code { background: #f3f4f7; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
.banner { background: var(--warn); border: 1px solid #e7c65a; border-radius: 6px; padding: .6rem 1rem; }
.banner p { margin: .3rem 0; }
.tablewrap { overflow: auto; max-height: 80vh; border: 1px solid var(--line); border-radius: 6px; margin: .4rem 0 1rem; }
table { border-collapse: separate; border-spacing: 0; width: max-content; min-width: 100%; }
caption { caption-side: top; text-align: left; color: var(--muted); padding: .4rem .6rem; font-style: italic; }
th, td { padding: .35rem .7rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
thead th { position: sticky; top: 0; background: var(--head); z-index: 2; font-weight: 600; }
thead th:first-child { z-index: 3; background: var(--head); }
tbody tr:hover td { background: #f7f9fc; }
td.best { font-weight: 700; background: var(--best); }
tr.baseline td:first-child { font-style: italic; color: var(--muted); }
tr.reference td { color: var(--muted); }
section.paper-reference { border: 2px dashed #9aa3b5; border-radius: 8px; padding: 0 1rem .5rem; background: #fafbfd; }
.sig { color: #b3261e; font-weight: 700; margin-left: .2em; }
table.kv th, table.kv td { text-align: left; }
table.kv td { white-space: normal; max-width: 110ch; overflow-wrap: anywhere; }
tr.reference td:first-child { background: #fafbfd; }
figure { margin: .5rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .9em; }
""".strip()


def esc(text: str) -> str:
    """Escape text; `://` is written as an entity so URLs quoted from configs (a judge's base_url) stay
    readable text yet the file contains no `http(s)://` string and never references anything external."""
    return html.escape(text, quote=False).replace("://", ":&#47;&#47;")


def inline(text: str) -> str:
    """Escape, then turn the Markdown inline subset used in paragraphs into tags."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", out)


def _td(c: Entry) -> str:
    cls = ' class="best"' if c.best else ""
    sig = '<span class="sig" title="p &lt; 0.05 vs SFT">†</span>' if c.sig else ""
    return f"<td{cls}>{esc(c.text)}{sig}</td>"


def _table(t: Table) -> list[str]:
    kv = "" if t.numeric else " kv"
    out = ['<div class="tablewrap">', f'<table id="{html.escape(t.id)}" class="report-table{kv}">']
    if t.caption:
        out.append(f"<caption>{esc(t.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in t.headers) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(t.rows):
        kind = t.row_kinds[i] if t.row_kinds else ""
        cls = f' class="{kind}"' if kind else ""
        out.append(f"<tr{cls}>" + "".join(_td(c) for c in row) + "</tr>")
    out += ["</tbody>", "</table>", "</div>"]
    return out


def _section(s: Section) -> list[str]:
    out = [f'<section id="{html.escape(s.id)}" class="{html.escape(s.id)}">', f"<h2>{esc(s.title)}</h2>"]
    if s.banner:
        out.append('<div class="banner" role="alert">' + "".join(f"<p>⚠️ {inline(p)}</p>" for p in s.paragraphs) + "</div>")
    else:
        out += [f"<p>{inline(p)}</p>" for p in s.paragraphs]
    for t in s.tables:
        out += _table(t)
    for plot in s.plots:
        data = base64.b64encode(plot.png).decode("ascii")
        out.append(
            f'<figure><h3>{esc(plot.title)}</h3>'
            f'<img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(plot.caption)}</figcaption></figure>"
        )
    if s.note:
        out.append(f"<p>{inline(s.note)}</p>")
    out.append("</section>")
    return out


def render_html(doc: Document) -> str:
    title = esc(doc.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>\n{CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{title}</h1>",
    ]
    for s in doc.sections:
        parts += _section(s)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
