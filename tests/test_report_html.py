"""`report html OUT.html` (issue 69 item 3): one self-contained page of every table the records fill, the matrix's
heatmap and the figures. Its cells hold what `report table N --format json --paper --ci` holds, it names no URL
(images are data: URIs), a record's `<script>` shows as text, it is written atomically, and a packed file gives the
page a workspace gives. With Chromium on PATH, a headless screenshot of the page is taken."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from poisonbench.cli.main import main
from poisonbench.report import html as report_html
from poisonbench.report.figures import panels
from tests.report_records import make_record, synthetic_records, write_records

HOSTILE = '<script>alert("pwned")</script>'
SECTIONS = {"2": "table-2", "3": "table-3", "4": "table-4", "5": "table-5", "matrix": "table-matrix"}


class Page(HTMLParser):
    """The parts of the page the tests read: per section, its tables (caption → rows of cell texts), every tag's
    name, every src / href, the images' data and all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.sections: dict[str, dict[str, list[list[str]]]] = {}
        self.texts: list[str] = []
        self._section = self._table = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self._rows: list[list[str]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        for name in ("src", "href", "action", "srcset", "data"):
            if name in a:
                self.links.append((tag, name, a[name] or ""))
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = {}
        elif tag == "table":
            self._rows, self._table = [], ""
        elif tag == "caption":
            self._caption = []
        elif tag == "tr":
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "caption" and self._caption is not None:
            self._table = "".join(self._caption)
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self.sections[self._section][self._table] = self._rows

    def handle_data(self, data):
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def hostile_records() -> list[dict]:
    """The synthetic records, and two runs on a dataset whose name is markup."""
    return synthetic_records() + [make_record(dataset=HOSTILE, rho=0.0, trial=t, acc=0.5 + 0.01 * t) for t in (0, 1)]


def run(*args) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0, ""
    return 0, ""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("report-html") / "res", hostile_records())


@pytest.fixture(scope="module")
def rendered(workspace, tmp_path_factory):
    """The page of the workspace, figures included (test images stubbed: no dataset is loaded)."""
    out = tmp_path_factory.mktemp("page") / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(panels, "split_test_images", lambda *args: np.full((100, 1, 28, 28), 128, np.uint8))
        assert run("report", "html", out, "--results", workspace) == (0, "")
    return out


@pytest.fixture(scope="module")
def page(rendered):
    return Page(rendered.read_text(encoding="utf-8"))


def acc_text(mean, std, low, high, n, trials=5) -> str:
    """A cell of accuracy as the tables print it with --ci (builders.acc_cell); without the interval (the matrix's
    JSON names none), the start of the cell."""
    text = f"{mean:.2f}"
    if n > 1:
        text += f" ± {std:.2f}"
        if low is None:
            return text
        text += f" [{low:.2f}, {high:.2f}]"
    return text + (f" (n={n})" if n != trials else "")


def expected_cells(number: str, row: dict) -> list[str]:
    """The texts a JSON row of table `number` puts in its block: ours (with the interval) and the paper's."""
    cells = []
    if number == "3":
        if row["trials"]:
            cells.append(f"{row['successes']}/{row['trials']}")
        if row["acc_n"]:
            cells.append(acc_text(row["acc_mean"], row["acc_std"], row["acc_ci_low"], row["acc_ci_high"],
                                  row["acc_n"]))
        if row["acc_paper_mean"] is not None:
            cells.append(f"{row['acc_paper_mean']:.2f} ± {row['acc_paper_std']:.2f}")
        return cells
    if number == "5":
        if row["n"]:
            cells += [f"{row['time_mean']:.1f}", f"{row['x_none']:.2f}×"]
        if row["paper_time"] is not None:
            cells.append(f"{row['paper_time']}")
        return cells
    if number == "matrix" and row["kind"] == "targeted":
        return [f"{row['successes']}/{row['n']}"] if row["n"] else []
    if row["n"]:
        cells.append(acc_text(row["mean"], row["std"], row.get("ci_low"), row.get("ci_high"), row["n"]))
    if row.get("paper_mean") is not None:
        cells.append(f"{row['paper_mean']:.2f} ± {row['paper_std']:.2f}")
    return cells


@pytest.mark.parametrize("number", list(SECTIONS))
def test_the_cells_hold_the_numbers_of_the_json_table(cli, workspace, page, number):
    code, out, err = cli("report", "table", number, "--format", "json", "--paper", "--ci", "--results", workspace)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    blocks = page.sections[SECTIONS[number]]
    if number != "4":  # one HTML table per block of the terminal's (Table IV's blocks are titled "HINT at ρ = …")
        assert {r["setting"] for r in rows} == set(blocks)
    checked = 0
    for row in rows:
        block = blocks[row["setting"]] if number != "4" else [r for b in blocks.values() for r in b]
        cells = [c for r in block for c in r]
        for text in expected_cells(number, row):
            assert any(c == text or c.startswith(text + " ") for c in cells), (number, row, text)
            checked += 1
    assert checked > 10


def test_each_table_names_its_provenance(page, rendered):
    text = rendered.read_text(encoding="utf-8")
    assert text.count('<dl class="provenance">') == len(SECTIONS)
    for label in ("runs", "trials", "recipe", "device", "crafts", "code"):
        assert text.count(f"<dt>{label}</dt>") == len(SECTIONS)
    assert "unknown (" in text and "quick (10 ep)" in text  # the synthetic records name no device; their recipes


def test_the_page_loads_nothing_from_outside(page, rendered):
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    images = [v for tag, name, v in page.links if tag == "img"]
    assert len(images) >= 3  # the matrix's heatmaps and figures
    for tag, name, value in page.links:
        if name == "href":
            assert value.startswith("#") and "http" not in value.lower() and "//" not in value, (tag, value)
        else:  # base64 data, which may spell "http" or "//" by chance
            assert value.startswith("data:image/png;base64,"), (tag, name, value[:80])
    for value in images:
        assert base64.b64decode(value.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    text = rendered.read_text(encoding="utf-8")
    assert "url(" not in text and "@import" not in text and "default-src 'none'" in text


def test_a_records_markup_is_shown_escaped(page, rendered):
    text = rendered.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in text
    assert any(HOSTILE in t for t in page.texts)  # the reader sees the name as it is
    assert any(HOSTILE in caption for caption in page.sections["table-matrix"])


def test_every_figure_and_heatmap_is_inlined(rendered):
    text = rendered.read_text(encoding="utf-8")
    assert text.count("<figure>") >= 3 and "matrix_mnist-5k" in text and "rho_mnist-5k" in text


def test_a_packed_file_gives_the_page_a_workspace_gives(workspace, tmp_path):
    packed = tmp_path / "records.jsonl.gz"
    assert run("records", "pack", workspace, packed) == (0, "")
    pages = {}
    for flag, source in (("--results", workspace), ("--records", packed)):
        out = tmp_path / f"{flag[2:]}.html"
        assert run("report", "html", out, flag, source, "--no-figures") == (0, "")
        pages[flag] = out.read_text(encoding="utf-8").replace(str(source), "SOURCE")
    assert pages["--results"] == pages["--records"]
    assert "<figure>" in pages["--results"] and "Figures" not in pages["--results"].split("</nav>")[0]


def test_the_page_is_written_atomically_and_replaced(workspace, tmp_path, cli):
    out = tmp_path / "out" / "page.html"
    for force in ((), ("--force",)):  # an existing page is replaced only with --force (tests/test_write_discipline.py)
        code, stdout, err = cli("report", "html", out, "--results", workspace, "--no-figures", "--dataset",
                                "cifar10", *force)
        assert code == 0 and stdout.strip() == str(out), err
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.html"]  # no temporary file left
    assert "mnist-5k · convnet" not in out.read_text(encoding="utf-8")  # --dataset filters the tables


@pytest.mark.parametrize("args,needle", [
    (["--results", "r", "--records", "f.jsonl.gz"], "pass either --results or --records, not both"),
    (["--records", "missing.jsonl.gz"], "--records 'missing.jsonl.gz': no such file"),
    (["--trials", "0"], "--trials must be a positive integer"),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
])
def test_bad_input_is_one_line(cli, tmp_path, args, needle):
    code, out, err = cli("report", "html", tmp_path / "p.html", *args)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.html").exists()


def test_a_directory_is_no_page(cli, tmp_path):
    code, out, err = cli("report", "html", tmp_path, "--results", tmp_path / "empty")
    assert code == 2 and "is a directory" in err


def test_the_page_escapes_every_string():
    assert report_html.esc('<a href="x">&\x1b') == "&lt;a href=&quot;x&quot;&gt;&amp;\\x1b"


def css_rules(text: str) -> dict[str, dict[str, str]]:
    """The rules `selector { property: value; … }` of a style sheet without nesting, as {selector: {property:
    value}} (whitespace normalised)."""
    rules = {}
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        pairs = [d.split(":", 1) for d in body.split(";") if d.strip()]
        rules[" ".join(selector.split())] = {k.strip(): " ".join(v.split()) for k, v in pairs}
    return rules


def split_print(style: str) -> tuple[str, str]:
    """The style sheet outside its one `@media print { … }` block, and the block's content."""
    head, sep, tail = style.partition("@media print {")
    assert sep and style.count("@media") == 1
    depth, end = 1, 0
    while depth:
        depth += {"{": 1, "}": -1}.get(tail[end], 0)
        end += 1
    return head + tail[end:], tail[:end - 1]


# Issue 84. Printed (Print → PDF), every column of the widest table (Table II with its paper columns, ~2,900 px on
# screen) is on an A4 landscape page, in a small font with wrapping cells; figures, rows and provenance lists are not
# split across pages. Checked by printing a page to PDF with headless Chromium (docs/commands.md, "Printing"), not
# here: CI needs no browser.
PRINT = {
    "@page": {"size": "A4 landscape", "margin": "10mm"},
    "body": {"font-size": "9pt", "max-width": "none", "margin": "0", "padding": "0"},
    ".scroll": {"overflow-x": "visible"},
    "table": {"width": "100%", "font-size": "6.5pt"},
    "th, td": {"white-space": "normal", "overflow-wrap": "break-word", "padding": ".1em .25em"},
    "th.paper, td.paper, th": {"-webkit-print-color-adjust": "exact", "print-color-adjust": "exact"},
    "h2, caption, p.caption": {"break-after": "avoid"},
    "tr, figure, dl.provenance": {"break-inside": "avoid"},
    "figure img": {"max-width": "100%", "max-height": "150mm"},
}


def test_a_wide_table_scrolls_on_screen_and_prints_whole(rendered):
    """On screen each table is in its own box that scrolls sideways (the page does not); printed, the print rules
    above, whole."""
    screen, printed = split_print(report_html.STYLE)
    assert css_rules(screen)[".scroll"] == {"overflow-x": "auto", "max-width": "100%"}
    assert css_rules(screen)["th, td"]["white-space"] == "nowrap"  # on screen a cell stays on one line
    assert css_rules(printed) == PRINT
    text = rendered.read_text(encoding="utf-8")
    assert f"<style>{report_html.STYLE}</style>" in text
    assert text.count("<table>") == text.count('<div class="scroll"><table>') > len(SECTIONS)


def test_the_content_security_policy_is_pinned(rendered):
    """The whole policy: no script, no request, images only as data: URIs; the style is the page's own inline
    `<style>` (what 'unsafe-inline' allows; there is no other)."""
    assert report_html.CSP == ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
                               "form-action 'none'")
    text = rendered.read_text(encoding="utf-8")
    assert text.count("Content-Security-Policy") == 1
    assert f'<meta http-equiv="Content-Security-Policy" content="{report_html.CSP}">' in text
    assert text.count("<style>") == 1 and " style=" not in text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_browser_renders_the_page(rendered, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH: the page is not rendered by a browser")
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,2000", rendered.resolve().as_uri()],
                   capture_output=True, timeout=180, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a blank 1280×2000 PNG is a few kB
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        grey = np.asarray(image.convert("L"))
    assert grey.min() < 80 and grey.max() > 230  # dark text on a light page, not one colour
    assert 0.01 < (grey < 200).mean() < 0.6  # text, tables and images, not a blank (or black) page


def test_the_page_is_deterministic(workspace, tmp_path):
    texts = []
    for i in range(2):
        out = tmp_path / f"{i}.html"
        assert run("report", "html", out, "--results", workspace, "--no-figures") == (0, "")
        texts.append(Path(out).read_text(encoding="utf-8"))
    assert texts[0] == texts[1]


def test_a_sweep_grid_cannot_write_a_page():
    from poisonbench.cli.sweep import check_report_args
    from poisonbench.core.errors import PoisonbenchError

    with pytest.raises(PoisonbenchError, match="grid: report html page.html: `report html` is no grid report"):
        check_report_args(["html", "page.html"], "grid")
