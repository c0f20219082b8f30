"""Renders a Table (`layout.Table`) as rich, Markdown, LaTeX, CSV or JSON."""

from __future__ import annotations

import functools
import html
import json
import math

import pandas as pd

from ...core.errors import unknown_choice
from ...core.printable import printable, printable_json
from .layout import FORMATS, ROMAN, Table

# LaTeX: pylatexenc's encoder (a maintained table of Unicode → LaTeX: ε, ±, β, ≥, accents, …; LaTeX's special
# characters & % $ # _ { } ~ ^ \ escaped), so that the source is ASCII and compiles with pdflatex whatever a record
# holds: a character it has no macro for is written as its code point (⟨U+6F22⟩). Ours before its defaults: the
# dashes as LaTeX sources write them (ligatures), and | as \textbar (OT1, pdflatex's default font encoding, prints a
# raw | as an em dash).
LATEX_OWN = {"–": "--", "—": "---", "|": r"\textbar{}"}


@functools.cache
def latex_encoder():
    """pylatexenc's `UnicodeToLatexEncoder` (an optional package, core/optional.py: without it the LaTeX format
    stops in one line naming it)."""
    from ...core.optional import require

    require("pylatexenc")
    from pylatexenc.latexencode import RULE_DICT, UnicodeToLatexConversionRule, UnicodeToLatexEncoder

    own = UnicodeToLatexConversionRule(RULE_DICT, {ord(ch): latex for ch, latex in LATEX_OWN.items()})
    return UnicodeToLatexEncoder(conversion_rules=[own, "defaults"], unknown_char_policy="unihex",
                                 unknown_char_warning=False)


def latex_escape(text: str) -> str:
    """`text` as LaTeX source (ASCII, `latex_encoder`); its control characters shown escaped first (core.printable),
    so that `\\x1b` is `{\\textbackslash}x1b` in the PDF, not a macro. A `[` that opens the text is braced, so that
    a row or a note after `\\\\` is not read as the optional argument of `\\\\`."""
    source = latex_encoder().unicode_to_latex(printable(text))
    return "{[}" + source[1:] if source.startswith("[") else source


def md_text(text: str) -> str:
    """A record's text (or any text) in Markdown prose (a title, a caption, a note): control characters shown escaped
    (core.printable), `&`, `<` and `>` as HTML entities, so that no raw HTML of a record reaches a renderer."""
    return html.escape(printable(text), quote=False)


def md_escape(text: object) -> str:
    """A record's text as one Markdown table cell that shows it: its own backslashes doubled (one would escape the
    escape), then `md_text`, and `|` (which would end the cell) escaped."""
    return md_text(str(text).replace("\\", "\\\\")).replace("|", r"\|")


def render_md(t: Table) -> str:
    out = [f"**{md_text(t.title)}.** {md_text(t.caption)}", ""]
    for b in t.blocks:
        out += [f"*{md_text(b.title)}*", ""]
        out.append("| " + " | ".join(md_escape(c) for c in b.columns) + " |")
        out.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(b.columns))) + "|")
        for row in b.rows:
            out.append("| " + " | ".join(f"**{md_escape(c.text)}**" if c.best else md_escape(c.text)
                                         for c in row) + " |")
        out.append("")
        out += [f"- {md_text(n)}" for n in b.notes]
        if b.notes:
            out.append("")
    out += [f"- {md_text(n)}" for n in t.notes]
    return "\n".join(out).rstrip() + "\n"


def render_latex(t: Table) -> str:
    # the comments escaped too: a record's text (a newline included) must not end the comment, and the source
    # stays ASCII
    out = [f"% {latex_escape(t.title)}: {latex_escape(t.caption)}. Needs \\usepackage{{booktabs}}."]
    out += [f"% {latex_escape(n)}" for n in t.notes]  # runs left out of the table: for whoever reads the source
    for b in t.blocks:
        labels = sum(1 for c in b.rows[0] if c.label) if b.rows else 1
        spec = "l" * labels + "r" * (len(b.columns) - labels)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                f"\\caption{{{latex_escape(t.title)}: {latex_escape(t.caption)}. {latex_escape(b.title)}.}}",
                f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(latex_escape(c) for c in b.columns) + r" \\", r"\midrule"]
        for i, row in enumerate(b.rows):
            if i in b.rules:
                out.append(r"\midrule")
            cells = [f"\\textbf{{{latex_escape(c.text)}}}" if c.best else latex_escape(c.text) for c in row]
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if b.notes:
            out.append(r"\par\smallskip\footnotesize " + r" \\ ".join(latex_escape(n) for n in b.notes))
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def csv_cell(value):
    """`value` as a CSV cell no spreadsheet runs (OWASP, "CSV Injection"): a string that begins with `=`, `+`, `-`,
    `@`, a tab or a carriage return (`=HYPERLINK(…)`, `+cmd|…`, `@SUM(…)`) gets a single quote in front, unless it is
    a number as written (`-5.2`, `+1e5`: kept, a number to the spreadsheet too); numbers and every other value are
    kept as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        number = float(value)
    except ValueError:
        return "'" + value
    return value if math.isfinite(number) else "'" + value  # `-inf`, `+nan`: text to a spreadsheet


def csv_frame(frame: pd.DataFrame) -> str:
    """`frame` as CSV: every cell through `csv_cell`, control characters shown escaped (core.printable), the rows'
    line breaks kept. The one writer of the reports' CSV (tables and the plain report)."""
    return printable(frame.map(csv_cell).to_csv(index=False, lineterminator="\n"), newlines=True)


def render_csv(t: Table) -> str:
    """The table's rows (`csv_frame`)."""
    return csv_frame(pd.DataFrame(t.data))


def render_json(t: Table) -> str:
    notes = [{"block": b.title, "notes": b.notes} for b in t.blocks]
    return printable_json(json.dumps({"table": ROMAN.get(t.number, t.number), "caption": t.caption, "notes": notes,
                                      "table_notes": t.notes, "rows": t.data}, indent=2, ensure_ascii=False)) + "\n"


def render_rich(t: Table, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table as RichTable

    from ...core.console import stdout_console

    def text(value: str) -> str:  # a record's text as rich markup that shows it: no markup, no control character
        return escape(printable(value))

    console = console or stdout_console()
    console.print(f"[bold]{text(t.title)}.[/bold] {text(t.caption)}", highlight=False)
    for b in t.blocks:
        # the notes go under the table as lines of their own, not as its caption: rich wraps a caption to the
        # table's width (a note under a narrow table would fill a column of 30 characters), a line to the console's
        rt = RichTable(title=text(b.title))
        for i, col in enumerate(b.columns):
            rt.add_column(text(col), justify="left" if b.rows and b.rows[0][i].label else "right")
        for i, row in enumerate(b.rows):
            rt.add_row(*[f"[bold green]{text(c.text)}[/]" if c.best else text(c.text) for c in row],
                       end_section=(i + 1) in b.rules)
        console.print(rt)
        for note in b.notes:
            console.print(text(note), style="table.caption", highlight=False)
    for note in t.notes:
        console.print(f"[yellow]{text(note)}[/yellow]", highlight=False)


def render(t: Table, fmt: str) -> str:
    renderers = {"md": render_md, "latex": render_latex, "csv": render_csv, "json": render_json}
    if fmt not in renderers:
        raise unknown_choice("format", fmt, FORMATS)
    return renderers[fmt](t)
