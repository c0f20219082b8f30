"""`--format latex` compiles (issue 84 item 2). Every text of a table (cells, titles, captions, notes, the `%` comment
lines) goes through one escaper (`render.latex_escape`, pylatexenc's Unicode → LaTeX encoder): the source is ASCII
whatever the records hold (ε, ±, β, γ, —, ≥, CJK, an emoji, LaTeX's special characters in a dataset's or a method's
name), and no special character is left bare outside the commands. With pdflatex on PATH, the LaTeX of every table
(II–V, the matrix, the plain report) is compiled inside a minimal document."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from poisonbench.report import tables
from poisonbench.report.aggregate import load_summary
from poisonbench.report.aggregate import render as render_plain
from poisonbench.report.tables.render import latex_escape
from tests.report_records import make_record, synthetic_records

# a dataset name and a method name that hold every LaTeX special character and Unicode the old hand-written map
# left raw; the method's name opens with `[`, which after a row's `\\` would be read as its optional argument
DATASET = "[ε≥½ — γ±β] 50% & $x_1^2$ #{~}\\ 漢字 🙂 <b>|"
METHOD = "[ε] 100%"
SPECIAL = set("&%$#_{}~^\\")


def hostile_records() -> list[dict]:
    records = synthetic_records()
    records += [make_record(dataset=DATASET, rho=rho, trial=t, acc=0.5 + 0.01 * t) for rho in (0.0, 1.0)
                for t in (0, 1)]
    records += [make_record(method=METHOD, params={"note": "ε≥0 — γ"}, rho=rho, trial=t, acc=0.8)
                for rho in (0.0, 1.0) for t in (0, 1)]
    return records


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    """The LaTeX of every table as `report html` builds them (`--paper --ci`, the paper's mix; the matrix of every
    mix) and of the plain report, from the synthetic records and the hostile ones."""
    records = hostile_records()
    out = {}
    for number in (*tables.TABLES, tables.MATRIX):
        opts = tables.Options(trials=5, paper=number != tables.MATRIX, ci=True, wilson=True)
        mix = "any" if number == tables.MATRIX else tables.PAPER_MIX
        table = tables.build(number, records, opts, mix=mix, poison_sets="")
        assert not table.empty, number
        out[number] = tables.render(table, "latex")
    out["plain"] = render_plain(load_summary(records, mix="any", poison_sets="any"), "latex")
    return out


def bare(source: str) -> str:
    """`source` less its control sequences (`\\name`, `\\%`, `\\\\`, …): what is left is text, braces and `&`."""
    return re.sub(r"\\(?:[A-Za-z]+|.)", "", source)


def balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


@pytest.mark.parametrize("text", [DATASET, METHOD, "ε at δ = 1e-05; ρ ≥ 0.5 — Δ × 2 · r = 0.5", "a\\x1b\x1b\nb",
                                  "{[}", "}{", "~^_", "\\begin{document}", "é ü ñ", "‰ ∞ ≈ ≠ →"])
def test_an_escaped_text_is_ascii_with_no_bare_special_character(text):
    source = latex_escape(text)
    assert source.isascii(), source
    left = bare(source)
    assert not (set(left) & (SPECIAL - set("{}"))), (source, left)
    assert balanced(left), source  # every brace is a group the escaper opened and closed
    assert not source.startswith("["), source  # read as the optional argument of a `\\` before it


def test_the_escaper_writes_what_latex_users_write():
    assert latex_escape("93.10 ± 0.14 [92.00, 94.20]") == r"93.10 \ensuremath{\pm} 0.14 [92.00, 94.20]"
    assert latex_escape("0/5 [0–43%]") == r"0/5 [0--43\%]"
    assert latex_escape("ε at δ") == r"\ensuremath{\varepsilon} at \ensuremath{\delta}"
    assert latex_escape("a — b | c") == r"a --- b \textbar{} c"
    assert latex_escape("[1, 2]") == "{[}1, 2]"
    assert latex_escape("漢") == r"\ensuremath{\langle}\texttt{U+6F22}\ensuremath{\rangle}"
    assert latex_escape("x_1 & 50% $\\") == r"x\_1 \& 50\% \${\textbackslash}"


@pytest.mark.parametrize("name", [*tables.TABLES, tables.MATRIX, "plain"])
def test_the_latex_of_every_table_is_ascii_and_escaped(sources, name):
    source = sources[name]
    assert source.isascii()
    assert "$" not in bare(source)  # math only through \ensuremath
    columns = None
    for line in source.splitlines():
        if line.startswith("% "):  # a comment line: escaped text too (a record's newline cannot end it)
            line = line[2:]
        elif m := re.fullmatch(r"\\begin\{tabular\}\{([lr]+)\}", line):
            columns = len(m[1])
            continue
        left = bare(line)
        assert not (set(left) & (SPECIAL - set("{}&"))), line
        assert balanced(left), line
        if line.endswith(r" \\") and columns and not line.startswith(r"\par"):
            assert left.count("&") == columns - 1, line  # the separators only: a cell's & is escaped
        else:
            assert "&" not in left, line
    if name in ("2", tables.MATRIX):
        assert r"\texttt{U+6F22}" in source and r"\ensuremath{\varepsilon}" in source
    if name == tables.MATRIX:
        assert "\n{[}" + r"\ensuremath{\varepsilon}] 100\%" in source  # a row opening with [


DOCUMENT = r"""\documentclass{article}
\IfFileExists{booktabs.sty}{\usepackage{booktabs}}{\newcommand\toprule{\hline}\newcommand\midrule{\hline}
\newcommand\bottomrule{\hline}}
\begin{document}
%s
\end{document}
"""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on PATH: the LaTeX is not compiled")
@pytest.mark.parametrize("name", [*tables.TABLES, tables.MATRIX, "plain"])
def test_the_latex_of_every_table_compiles(sources, name, tmp_path):
    """pdflatex in a minimal article (booktabs where installed, else its rules as \\hline: texlive-latex-base alone
    has none), stopping at the first error."""
    (tmp_path / "table.tex").write_text(DOCUMENT % sources[name], encoding="ascii")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                           "table.tex"], cwd=tmp_path, capture_output=True, text=True, errors="replace", timeout=300,
                          check=False)
    log = (tmp_path / "table.log").read_text(errors="replace") if (tmp_path / "table.log").exists() else done.stdout
    assert done.returncode == 0, log[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    assert not re.search(r"^! ", log, re.M), log[-3000:]
