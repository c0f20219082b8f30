"""Issue 82, failure class 6: text from a record is never interpreted by the program that opens a report. CSV: a
cell of record text that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to a spreadsheet
(`=HYPERLINK(…)`, `+cmd|…`, `@SUM(…)`): it is neutralised the OWASP way, a single quote in front; numbers, and
text that is a number (`-5.2`), are left as they are. Markdown: a cell escapes `|` (a column break), `\\` and the
HTML characters `<`, `>`, `&` (raw HTML); titles, captions and notes escape the HTML characters."""

from __future__ import annotations

import csv
import io

import pytest

from poisonbench.report.tables.render import csv_cell, md_escape
from tests.report_records import make_record, write_records

FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|x",
            "\t=1+2", "\r=1+2"]


@pytest.mark.parametrize(("value", "cell"), [
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd", "'-2+3+cmd"),
    ("@SUM(1+1)", "'@SUM(1+1)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-5.2", "-5.2"),  # text that is a number stays a number
    ("+1e5", "+1e5"),
    (-5.2, -5.2),  # so does a number
    ("hint", "hint"),
    ("a=b", "a=b"),  # only the first character makes a formula
    ("", ""),
])
def test_a_csv_cell_that_a_spreadsheet_would_run_is_quoted(value, cell):
    assert csv_cell(value) == cell


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("formula", FORMULAS)
def test_report_csv_writes_no_formula(cli, tmp_path, formula):
    """The plain report and Table II as csv: the method and the dataset of a run whose names are formulas are
    written with a quote in front, whole; the numbers of the same rows stay numbers (negative ones too)."""
    records = [make_record(dataset=formula, method=formula, rho=rho, trial=t, acc=0.9 - 0.01 * t)
               for rho in (0.0, 0.2) for t in range(2)]
    res = write_records(tmp_path / "res", records)
    quoted = "'" + formula.replace("\t", "\\t").replace("\r", "\\r")  # tab and CR then shown escaped (printable)
    code, out, err = cli("report", "--format", "csv", "--results", res)
    assert code == 0, err
    rows = csv_rows(out)
    assert len(rows) == 2 and all(r["method"] == quoted and r["dataset"] == quoted for r in rows)
    assert {r["test_acc_mean"] for r in rows} == {"0.895"}
    code, out, err = cli("report", "table", "2", "--format", "csv", "--paired", "--results", res)
    assert code == 0, err
    rows = csv_rows(out)
    assert rows and all(r["method"] == quoted and r["dataset"] == quoted for r in rows)
    assert all(r["setting"].startswith(quoted + " · ") for r in rows)
    for row in rows:  # no cell begins a formula, but a number
        for value in row.values():
            if value[:1] in ("=", "+", "-", "@"):
                float(value)


def test_report_csv_keeps_negative_numbers_numbers(cli, tmp_path):
    """A negative difference (ours − paper) is written as the number it is, no quote."""
    records = [make_record(rho=0.0, trial=t, acc=0.5) for t in range(2)]
    res = write_records(tmp_path / "res", records)
    code, out, err = cli("report", "table", "2", "--format", "csv", "--diff", "--results", res)
    assert code == 0, err
    (row,) = csv_rows(out)
    assert row["diff"] == "-48.44" and row["mean"] == "50.0"


@pytest.mark.parametrize(("text", "cell"), [
    ("a|b", "a\\|b"),
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("a\\|b", "a\\\\\\|b"),  # a backslash of the record's own cannot escape the escape
    ("x & y", "x &amp; y"),
    ("a\nb", "a\\nb"),
])
def test_a_markdown_cell_shows_the_record_text(text, cell):
    assert md_escape(text) == cell


HOSTILE = "a|b<img src=x onerror=alert(1)>"
SHOWN = "a\\|b&lt;img src=x onerror=alert(1)&gt;"


def test_table_markdown_escapes_record_text_in_cells_titles_and_notes(cli, tmp_path):
    """Table II as Markdown, a method and a dataset named `a|b<img …>`: the header cell, the block's title and the
    note naming the method, each whole."""
    records = [make_record(dataset=HOSTILE, method=m, params={"k": 1} if m != "none" else None, rho=0.0, trial=t)
               for m in ("none", HOSTILE) for t in range(2)]
    res = write_records(tmp_path / "res", records)
    code, out, err = cli("report", "table", "2", "--format", "md", "--results", res)
    assert code == 0, err
    lines = out.splitlines()
    assert f"| ρ | W/o Defense | {SHOWN} |" in lines
    assert f"*{SHOWN.replace(chr(92) + '|', '|')} · convnet · quick recipe, 10 ep*" in lines
    assert "<img" not in out


def test_plain_report_markdown_escapes_every_cell(cli, tmp_path):
    records = [make_record(method=HOSTILE, trial=t) for t in range(2)]
    res = write_records(tmp_path / "res", records)
    code, out, err = cli("report", "--format", "md", "--results", res)
    assert code == 0, err
    assert out.splitlines()[2] == f"| mnist-5k | convnet | quick (10 ep) | - | {SHOWN} | - | 2 | 90.00 ± 0.00 | 10.5 |"
