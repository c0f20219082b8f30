"""`report html`: every table the records fill, the matrix's heatmaps and the figures on one self-contained HTML page
(issue 69).

The page loads nothing: its style is inline, every image a `data:image/png;base64` URI, and a Content-Security-Policy
forbids the browser any other source (no script, no font, no request). The tables are HTML tables (their text can be
copied) built by the terminal's builders (`tables.build`) with the options the terminal takes for the paper's
numbers and the intervals (`--paper --ci`, Table III's Wilson intervals; the matrix with `--ci`): each cell holds the
text the terminal shows. Each table has its provenance: the crafts and code versions of its caption
(tables.provenance) and the devices, recipes and trials of the runs it shows. The heatmap and the figures are drawn by
the figure code (report.figures) into PNG bytes in memory (`panels.captured`). Every string that comes from a record
(a dataset name, a method, a note naming either) is escaped here (`esc`): records are untrusted.

On screen a table wider than the page (Table II with its paper columns is ~2,900 px) scrolls sideways in its own box
(`.scroll`), the page does not. Printed (Print → PDF) the style's `@media print` takes over (issue 84): A4 landscape,
the tables at full width in a small font with their cells wrapping, so every column is on the paper; a figure, a row
or a provenance list is not split across pages, and an image is no taller than a page.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core.printable import printable
from . import tables
from .tables import provenance

SECTIONS = (*tables.TABLES, tables.MATRIX, "backdoor")  # the tables of the page, in its order
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; }
nav ul { columns: 2; } .source, .caption { color: #333; } .muted { color: #666; }
table { border-collapse: collapse; margin: 1em 0 .4em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f5; } td.label { text-align: left; } th:first-child { text-align: left; }
th.paper, td.paper { background: #f7f4ec; color: #5b4a1f; } td.best { font-weight: 700; color: #0a6b2d; }
tr.rule td { border-top: 2px solid #888; }
dl.provenance { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; font-size: .92em;
                background: #f8f8fa; border-left: 3px solid #9aa; padding: .5em .8em; }
dl.provenance dt { font-weight: 600; } dl.provenance dd { margin: 0; }
ul.notes { font-size: .9em; color: #444; margin-top: .2em; } ul.table-notes { color: #7a4b00; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e0e0e0; }
figcaption { font-size: .9em; color: #444; }
.scroll { overflow-x: auto; max-width: 100%; }
@media print {
  @page { size: A4 landscape; margin: 10mm; }
  body { font-size: 9pt; max-width: none; margin: 0; padding: 0; }
  .scroll { overflow-x: visible; }
  table { width: 100%; font-size: 6.5pt; }
  th, td { white-space: normal; overflow-wrap: break-word; padding: .1em .25em; }
  th.paper, td.paper, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, caption, p.caption { break-after: avoid; }
  tr, figure, dl.provenance { break-inside: avoid; }
  figure img { max-width: 100%; max-height: 150mm; }
}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def esc(value: object) -> str:
    """A record's text (or any text) as HTML that shows it: markup characters escaped (html.escape, quotes
    included), control characters shown escaped (core.printable)."""
    return html.escape(printable(str(value)), quote=True)


@dataclass
class Figure:
    name: str  # the file name the figure code would have written
    png: bytes
    caption: str = ""


@dataclass
class Section:
    anchor: str
    title: str
    table: tables.Table | None = None
    figures: list[Figure] = field(default_factory=list)
    provenance: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def table_filters(number: str, filters: dict) -> dict:
    """The filters `report table N` applies: the matrix reads every attack mix (its cells are single attacks), the
    paper's tables the paper's mix; the mix's default PoisonSets."""
    return {**filters, "mix": "any" if number in (tables.MATRIX, "backdoor") else tables.PAPER_MIX, "poison_sets": ""}


def table_options(number: str, trials: int) -> tables.Options:
    """What the terminal shows with `--paper --ci` (the matrix has no paper numbers: `--ci`)."""
    return tables.Options(trials=trials, paper=number not in (tables.MATRIX, "backdoor"), ci=True, wilson=True)


def device_text(record: dict) -> str:
    env = record.get("env") or {}
    device = str(env.get("device") or "unknown")
    model = env.get("gpu") or env.get("cpu")
    return f"{device} ({model})" if model else device


def counted(counts: Counter) -> str:
    return ", ".join(f"{k} ({n})" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def provenance_items(shown: list[dict], crafts: str, trials: int) -> list[tuple[str, str]]:
    """(label, text) per line of a table's or a figure's provenance, from the records it shows; `crafts`: the
    "Crafts: …; code: …" of tables.provenance."""
    if not shown:
        return []
    from .tables.records import CONFIGURATION

    df = tables.frame(shown)  # a cell: the runs of one configuration, any trial (as tables.provenance groups them)
    per_configuration = df.groupby(CONFIGURATION[:-1], dropna=False).trial.nunique()
    low, high = int(per_configuration.min()), int(per_configuration.max())
    recipes = Counter(f"{r} ({json.loads(j).get('epochs')} ep)" for r, j in zip(df.recipe, df.recipe_json, strict=True))
    items = [("runs", f"{len(df)} in {len(per_configuration)} cell(s)"),
             ("trials", f"{low}" + (f"–{high}" if high != low else "") + f" per cell (asked: {trials})"),
             ("recipe", counted(recipes)),
             ("device", counted(Counter(device_text(r) for r in shown)))]
    if crafts:
        craft_part, _, code_part = crafts.partition("; code: ")
        items.append(("crafts", craft_part.removeprefix("Crafts: ")))
        if code_part:
            items.append(("code", code_part))
    return items


def split_caption(caption: str) -> tuple[str, str]:
    """A table's caption and its provenance sentence ("Crafts: …; code: …", appended by `tables.build`)."""
    head, sep, tail = caption.rpartition(". Crafts: ")
    return (head, "Crafts: " + tail) if sep else (caption, "")


def table_section(number: str, records: list[dict], by_id: dict[str, dict], filters: dict,
                  trials: int) -> Section | None:
    """The section of table `number`, or None when no record fills it; the matrix's with its heatmap(s)."""
    table = tables.build(number, records, table_options(number, trials), **table_filters(number, filters))
    if table.empty:
        return None
    caption, crafts = split_caption(table.caption)
    table.caption = caption
    shown = [by_id[r] for r in sorted(table.shown) if r in by_id]
    section = Section(f"table-{number}", table.title, table, provenance=provenance_items(shown, crafts, trials))
    if number == tables.MATRIX:
        from .figures.matrix import figure_matrix
        from .figures.panels import captured

        with captured() as kept:
            figure_matrix(table, Path("heatmaps"))
        section.figures = [Figure(name, png, f"heatmap of the matrix ({name})") for name, png in kept]
    return section


def figure_section(records: list[dict], filters: dict, data_dir: str | None) -> Section:
    """Figures 1–4 and accuracy vs ρ, each drawn where the records allow (notes name the others)."""
    from ..core.errors import PoisonbenchError
    from . import figures
    from .figures.panels import captured

    section, notes = Section("figures", "Figures"), []
    chosen = {**filters, "mix": tables.PAPER_MIX, "poison_sets": ""}
    shown_df = tables.cell_records(tables.apply_filters(tables.frame(records), **chosen))[0]
    for number in figures.FIGURES:
        try:
            with captured() as kept:
                figures.draw(number, records, Path("figures"), paper=number == "rho", data_dir=data_dir, **chosen)
        except PoisonbenchError as e:
            notes.append(f"Figure {number}: not drawn: {e}")
            continue
        if not kept:
            notes.append(f"Figure {number}: nothing to draw from these records")
            continue
        crafts = provenance.caption(shown_df)
        label = "accuracy vs ρ" if number == "rho" else f"Figure {number}"
        for name, png in kept:
            section.figures.append(Figure(name, png, f"{label} ({name}). {crafts}"))
    section.notes = notes
    return section


def build_sections(records: list[dict], filters: dict, trials: int = 5, data_dir: str | None = None,
                   with_figures: bool = True) -> list[Section]:
    by_id = {r["run_id"]: r for r in records}
    sections = [s for n in SECTIONS if (s := table_section(n, records, by_id, filters, trials))]
    if with_figures:
        figs = figure_section(records, filters, data_dir)
        if figs.figures or figs.notes:
            sections.append(figs)
    return sections


# --- HTML -------------------------------------------------------------------------------------------------------

def html_block(block: tables.Block) -> list[str]:
    paper_columns = {i for i, c in enumerate(block.columns) if "(paper " in c}
    out = ['<div class="scroll"><table>', f"<caption>{esc(block.title)}</caption>", "<thead><tr>"]
    paper_class = ' class="paper"'
    out += [f'<th scope="col"{paper_class if i in paper_columns else ""}>{esc(c)}</th>'
            for i, c in enumerate(block.columns)]
    out += ["</tr></thead>", "<tbody>"]
    for i, row in enumerate(block.rows):
        out.append('<tr class="rule">' if i in block.rules else "<tr>")
        for j, cell in enumerate(row):
            classes = [name for name, on in (("label", cell.label), ("best", cell.best),
                                              ("paper", j in paper_columns)) if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<td{attr}>{esc(cell.text)}</td>")
        out.append("</tr>")
    out += ["</tbody></table></div>"]
    if block.notes:
        out += ['<ul class="notes">', *(f"<li>{esc(n)}</li>" for n in block.notes), "</ul>"]
    return out


def html_figure(fig: Figure) -> list[str]:
    data = base64.b64encode(fig.png).decode("ascii")
    return ["<figure>", f'<img alt="{esc(fig.name)}" src="data:image/png;base64,{data}">',
            f"<figcaption>{esc(fig.caption)}</figcaption>", "</figure>"]


def html_section(section: Section) -> list[str]:
    out = [f'<section id="{esc(section.anchor)}">', f"<h2>{esc(section.title)}</h2>"]
    t = section.table
    if t is not None:
        out.append(f'<p class="caption">{esc(t.caption)}</p>')
    if section.provenance:
        out.append('<dl class="provenance">')
        out += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in section.provenance]
        out.append("</dl>")
    if t is not None:
        for block in t.blocks:
            out += html_block(block)
        if t.notes:
            out += ['<ul class="notes table-notes">', *(f"<li>{esc(n)}</li>" for n in t.notes), "</ul>"]
    for fig in section.figures:
        out += html_figure(fig)
    if section.notes:
        out += ['<ul class="notes">', *(f"<li>{esc(n)}</li>" for n in section.notes), "</ul>"]
    out.append("</section>")
    return out


def render_page(sections: list[Section], source: str, runs: int, notes: list[str] = ()) -> str:
    """The page: a header naming the records, a list of contents, one section per table, the figures."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>poisonbench report: {esc(source)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           "<header>", "<h1>poisonbench report</h1>",
           f'<p class="source">Records: <code>{esc(source)}</code>, {runs} run(s). Each cell: mean ± sample std over '
           "trials [95% t-interval] (n=k where a cell has another number of trials than asked); the paper's numbers "
           "in the tinted columns; the best of a row in bold green. Every number is defined in docs/metrics.md.</p>"]
    if notes:
        out += ['<ul class="notes table-notes">', *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    out += ["</header>", "<nav><ul>"]
    out += [f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections]
    out += ["</ul></nav>"]
    if not sections:
        out.append('<p class="muted">No table can be filled from these records.</p>')
    for section in sections:
        out += html_section(section)
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def page(records: list[dict], source: str, filters: dict, trials: int = 5, data_dir: str | None = None,
         notes: list[str] = (), with_figures: bool = True) -> str:
    """The whole page for `records` (already read; `source` names where from, for the header)."""
    sections = build_sections(records, filters, trials, data_dir, with_figures)
    return render_page(sections, source, len(records), list(notes))
