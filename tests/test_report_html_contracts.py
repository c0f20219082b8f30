"""Contracts of `report html`'s own code (poisonbench/report/html.py) that the hand-planted bugs of 2026-11-29 found
unpinned (docs/testing.md, "core/bounded.py and report/html.py by hand"): which records and options each section's
table is built from, and each line of a section's provenance, whole."""

from __future__ import annotations

from collections import Counter

import pytest

from poisonbench.report import html as report_html
from poisonbench.report import tables
from tests.report_records import make_record


@pytest.mark.parametrize("number", [*tables.TABLES, tables.MATRIX, "backdoor"])
def test_each_section_reads_the_records_and_options_its_terminal_table_reads(number):
    """The matrix and the backdoor table read every attack mix (their cells are single attacks); the paper's
    tables the paper's mix; every table the mix's default PoisonSets. The paper's numbers and intervals on the
    paper's tables, intervals only on the matrix and the backdoor table (neither has paper numbers); Wilson's
    intervals everywhere; the trials asked passed on."""
    single = number in (tables.MATRIX, "backdoor")
    filters = report_html.table_filters(number, {"dataset": "mnist-5k", "mix": "anything"})
    assert filters == {"dataset": "mnist-5k", "mix": "any" if single else tables.PAPER_MIX, "poison_sets": ""}
    options = report_html.table_options(number, 7)
    assert (options.trials, options.paper, options.ci, options.wilson) == (7, not single, True, True)


@pytest.mark.parametrize(("env", "text"), [
    ({"device": "cuda", "gpu": "NVIDIA H200", "cpu": "AMD EPYC"}, "cuda (NVIDIA H200)"),  # the GPU names a GPU run
    ({"device": "cpu", "cpu": "AMD EPYC"}, "cpu (AMD EPYC)"),
    ({"device": "cpu"}, "cpu"),
    ({"device": None, "cpu": "x"}, "unknown (x)"),
    ({}, "unknown"),
    (None, "unknown"),
])
def test_a_runs_device_is_its_device_and_its_model(env, text):
    assert report_html.device_text({"env": env}) == text


def test_counts_list_the_most_frequent_first_then_by_name():
    assert report_html.counted(Counter({"b": 1, "c": 3, "a": 1, 7: 2})) == "c (3), 7 (2), a (1), b (1)"
    assert report_html.counted(Counter()) == ""


def _cell(method: str, trials: int, env: dict) -> list[dict]:
    records = [make_record(method=method, rho=0.2, trial=t) for t in range(trials)]
    for r in records:
        r["env"] = env
    return records


def test_the_provenance_names_runs_cells_trials_recipe_device_crafts_and_code_whole():
    """Two cells of 5 and 3 trials: "3–5 per cell (asked: 5)"; the devices counted, most frequent first; the
    crafts and code split from the caption's sentence."""
    shown = _cell("none", 5, {"device": "cpu", "cpu": "EPYC"}) + _cell("friends", 3, {"device": "cuda", "gpu": "H200"})
    items = report_html.provenance_items(shown, "Crafts: 2 PoisonSets; code: 1 version (abc123)", 5)
    assert items == [("runs", "8 in 2 cell(s)"), ("trials", "3–5 per cell (asked: 5)"),
                     ("recipe", "quick (10 ep) (8)"), ("device", "cpu (EPYC) (5), cuda (H200) (3)"),
                     ("crafts", "2 PoisonSets"), ("code", "1 version (abc123)")]


def test_the_provenance_gives_one_trial_count_where_every_cell_has_it_and_no_code_line_without_one():
    shown = _cell("none", 2, {}) + _cell("friends", 2, {})
    items = dict(report_html.provenance_items(shown, "Crafts: none", 5))
    assert items["trials"] == "2 per cell (asked: 5)"
    assert items["crafts"] == "none" and "code" not in items
    assert "crafts" not in dict(report_html.provenance_items(shown, "", 5))
    assert report_html.provenance_items([], "Crafts: x", 5) == []


def test_a_caption_is_split_at_its_last_crafts_sentence():
    assert report_html.split_caption("Table II. A. Crafts: x. Crafts: y; code: z") == \
        ("Table II. A. Crafts: x", "Crafts: y; code: z")
    assert report_html.split_caption("Table II without provenance") == ("Table II without provenance", "")


def _block() -> tables.Block:
    from poisonbench.report.tables.layout import Cell

    rows = [[Cell("W/o", label=True), Cell("1"), Cell("2"), Cell("3")],
            [Cell("HINT", label=True), Cell("4", best=True), Cell("5"), Cell("6")],
            [Cell("<b>", label=True), Cell("7"), Cell("8", best=True), Cell("9")]]
    return tables.Block("block & <title>", ["method", "ASR", "ASR (paper CIFAR-10)", "papers read"], rows,
                        rules={2}, notes=["a note <i>"])


def test_a_block_is_one_table_whole():
    """Each block: its caption, a head whose paper columns (and only those, "(paper …") are tinted, a row per row
    with a rule before the rows in `rules`, label and best cells classed, every text escaped, its notes below."""
    assert report_html.html_block(_block()) == [
        '<div class="scroll"><table>', "<caption>block &amp; &lt;title&gt;</caption>", "<thead><tr>",
        '<th scope="col">method</th>', '<th scope="col">ASR</th>', '<th scope="col" class="paper">ASR (paper '
        'CIFAR-10)</th>', '<th scope="col">papers read</th>', "</tr></thead>", "<tbody>",
        "<tr>", '<td class="label">W/o</td>', "<td>1</td>", '<td class="paper">2</td>', "<td>3</td>", "</tr>",
        "<tr>", '<td class="label">HINT</td>', '<td class="best">4</td>', '<td class="paper">5</td>', "<td>6</td>",
        "</tr>",
        '<tr class="rule">', '<td class="label">&lt;b&gt;</td>', "<td>7</td>", '<td class="best paper">8</td>',
        "<td>9</td>", "</tr>",
        "</tbody></table></div>", '<ul class="notes">', "<li>a note &lt;i&gt;</li>", "</ul>"]


def test_a_section_is_its_caption_provenance_blocks_notes_and_figures_in_order():
    table = tables.Table("3", 'caption "x"', [_block()], [], notes=["table note &"])
    figure = report_html.Figure('fig "a".png', b"\x89PNG", "a <caption>")
    section = report_html.Section("table-3", "Table <III>", table, [figure], [("runs", "2 in 1 cell(s)")],
                                  ["section note"])
    out = report_html.html_section(section)
    assert out[:4] == ['<section id="table-3">', "<h2>Table &lt;III&gt;</h2>",
                       '<p class="caption">caption &quot;x&quot;</p>', '<dl class="provenance">']
    assert out[4:6] == ["<dt>runs</dt><dd>2 in 1 cell(s)</dd>", "</dl>"]
    block_end = 6 + len(report_html.html_block(_block()))
    assert out[6:block_end] == report_html.html_block(_block())
    assert out[block_end:] == [
        '<ul class="notes table-notes">', "<li>table note &amp;</li>", "</ul>",
        "<figure>", '<img alt="fig &quot;a&quot;.png" src="data:image/png;base64,iVBORw==">',
        "<figcaption>a &lt;caption&gt;</figcaption>", "</figure>",
        '<ul class="notes">', "<li>section note</li>", "</ul>", "</section>"]


def test_the_page_names_its_records_runs_notes_and_contents_and_says_when_no_table_is_filled():
    empty = report_html.render_page([], 'w<"s>', 3, ["page note"]).splitlines()
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src ' \
           '\'unsafe-inline\'; base-uri \'none\'; form-action \'none\'">' in empty
    assert "<title>poisonbench report: w&lt;&quot;s&gt;</title>" in empty
    assert any(line.startswith('<p class="source">Records: <code>w&lt;&quot;s&gt;</code>, 3 run(s). ')
               for line in empty)
    header = empty[empty.index("<header>"):empty.index("</header>") + 1]
    assert header[-4:] == ['<ul class="notes table-notes">', "<li>page note</li>", "</ul>", "</header>"]
    assert '<p class="muted">No table can be filled from these records.</p>' in empty
    sections = [report_html.Section("table-2", "Table II"), report_html.Section("figures", "Figures & more")]
    page = report_html.render_page(sections, "w", 1).splitlines()
    assert '<p class="muted">No table can be filled from these records.</p>' not in page
    assert page[page.index("<nav><ul>") + 1:page.index("</ul></nav>")] == [
        '<li><a href="#table-2">Table II</a></li>', '<li><a href="#figures">Figures &amp; more</a></li>']
    assert "<ul class=\"notes table-notes\">" not in page  # no page notes, no list


def test_every_table_section_is_anchored_by_its_number_and_counts_the_runs_it_shows():
    from tests.report_records import synthetic_records

    records = synthetic_records()
    sections = report_html.build_sections(records, {}, with_figures=False)
    assert [s.anchor for s in sections] == ["table-2", "table-3", "table-4", "table-5", "table-matrix"]
    for s in sections:
        shown = len(s.table.shown)
        assert dict(s.provenance)["runs"].startswith(f"{shown} in "), s.anchor
    page = report_html.page(records, "w", {}, with_figures=False)
    assert f"<code>w</code>, {len(records)} run(s)." in page


def test_the_figures_section_draws_rho_with_the_papers_curve_and_keeps_a_section_of_notes_alone(monkeypatch):
    """Each figure is drawn with the page's filters, the paper's curve on accuracy vs ρ only; a figure that cannot
    be drawn is a note, and a section of notes alone is still on the page (it says why there is no figure)."""
    from poisonbench.core.errors import PoisonbenchError
    from poisonbench.report import figures
    from tests.report_records import synthetic_records

    calls = []

    def draw(number, records, out, paper, data_dir, **chosen):
        calls.append((number, paper, data_dir, chosen["mix"], chosen["poison_sets"]))
        raise PoisonbenchError(f"no data for {number}")

    monkeypatch.setattr(figures, "draw", draw)
    records = synthetic_records()
    section = report_html.figure_section(records, {}, "DATA")
    assert calls == [(n, n == "rho", "DATA", tables.PAPER_MIX, "") for n in figures.FIGURES]
    assert section.figures == [] and section.notes == [f"Figure {n}: not drawn: no data for {n}"
                                                       for n in figures.FIGURES]
    sections = report_html.build_sections(records, {}, data_dir="DATA")
    assert sections[-1].anchor == "figures" and sections[-1].notes == section.notes


def _fake_draw(monkeypatch, calls: list, given: list | None = None):
    """figures.draw that fails on Figure 1, captures nothing for Figure 2 and two PNGs for each other figure."""
    from poisonbench.core.errors import PoisonbenchError
    from poisonbench.report import figures
    from poisonbench.report.figures import panels

    def draw(number, records, out, paper, data_dir, **chosen):
        calls.append((number, out, paper, data_dir, chosen))
        if given is not None:
            given.append(records)
        if number == "1":
            raise PoisonbenchError("no data for 1")
        if number == "2":
            return
        panels._CAPTURED.get().extend([(f"f{number}a.png", number.encode() + b"a"), (f"f{number}b.png", b"b")])

    monkeypatch.setattr(figures, "draw", draw)


def test_the_figures_section_holds_each_drawn_png_captioned_and_a_note_for_each_figure_not_drawn(monkeypatch):
    """In the order of figures.FIGURES: a figure that fails is a note and the next is still drawn; one that draws
    nothing is a note; each PNG drawn is a figure named by its file, captioned with its label (accuracy vs ρ, or
    Figure N), its file and the crafts behind the runs the page's filters show. Each draw gets the page's filters,
    the paper's mix, all PoisonSets, the data directory, the paper's curve on ρ only, and out `figures`."""
    from pathlib import Path

    from poisonbench.report.tables import provenance
    from tests.report_records import synthetic_records

    calls, given = [], []
    _fake_draw(monkeypatch, calls, given)
    records = synthetic_records()
    filters = {"dataset": "mnist-5k"}
    section = report_html.figure_section(records, filters, "DATA")
    assert len(given) == 5 and all(g is records for g in given)  # every draw gets the page's records
    chosen = {**filters, "mix": tables.PAPER_MIX, "poison_sets": ""}
    assert calls == [(n, Path("figures"), n == "rho", "DATA", chosen) for n in ("1", "2", "3", "4", "rho")]
    crafts = provenance.caption(tables.cell_records(tables.apply_filters(tables.frame(records), **chosen))[0])
    everything = tables.apply_filters(tables.frame(records), mix=tables.PAPER_MIX, poison_sets="")
    unfiltered = provenance.caption(tables.cell_records(everything)[0])
    assert crafts and crafts != unfiltered  # the test can tell the filters were applied
    assert (section.anchor, section.title) == ("figures", "Figures")
    assert [(f.name, f.png, f.caption) for f in section.figures] == [
        (name, png, f"{label} ({name}). {crafts}")
        for n, label in (("3", "Figure 3"), ("4", "Figure 4"), ("rho", "accuracy vs ρ"))
        for name, png in ((f"f{n}a.png", n.encode() + b"a"), (f"f{n}b.png", b"b"))]
    assert section.notes == ["Figure 1: not drawn: no data for 1", "Figure 2: nothing to draw from these records"]


def test_the_page_is_its_sections_rendered_with_the_trials_data_and_figures_asked(monkeypatch):
    from tests.report_records import synthetic_records

    calls = []
    _fake_draw(monkeypatch, calls)
    records = synthetic_records()
    page = report_html.page(records, "w", {}, trials=7, data_dir="D", notes=["n1"])
    assert {c[3] for c in calls} == {"D"}
    assert page == report_html.render_page(report_html.build_sections(records, {}, 7, "D", True), "w", len(records),
                                           ["n1"])
    assert 'id="figures"' in page  # figures by default
    assert page != report_html.page(records, "w", {}, trials=5, data_dir="D", notes=["n1"])  # trials are used
    assert 'id="figures"' not in report_html.page(records, "w", {}, trials=7, data_dir="D", with_figures=False)


def test_the_pages_head_and_header_are_these_lines_whole_and_it_ends_closed():
    """An HTML5 page in English, UTF-8, the CSP, a viewport, the title and the header's description of a cell, word
    for word; the page ends by closing the body and the document."""
    page = report_html.render_page([], "w&s", 2)
    head = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src '
        '\'unsafe-inline\'; base-uri \'none\'; form-action \'none\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>poisonbench report: w&amp;s</title>", f"<style>{report_html.STYLE}</style>", "</head>", "<body>",
        "<header>", "<h1>poisonbench report</h1>",
        '<p class="source">Records: <code>w&amp;s</code>, 2 run(s). Each cell: mean ± sample std over trials [95% '
        "t-interval] (n=k where a cell has another number of trials than asked); the paper's numbers in the tinted "
        "columns; the best of a row in bold green. Every number is defined in docs/metrics.md.</p>",
        "</header>", "<nav><ul>", "</ul></nav>", '<p class="muted">No table can be filled from these records.</p>',
        "</body>", "</html>", ""])
    assert page == head


def test_the_page_asks_for_the_papers_five_trials_by_default():
    from tests.report_records import synthetic_records

    records = synthetic_records()
    default = report_html.page(records, "w", {}, with_figures=False)
    assert default == report_html.page(records, "w", {}, trials=5, with_figures=False)
    assert default != report_html.page(records, "w", {}, trials=6, with_figures=False)


@pytest.mark.parametrize("number, filters", [("3", {}), (tables.MATRIX, {"dataset": "mnist-5k"})])
def test_a_table_section_is_the_table_built_with_the_pages_options_and_filters_and_its_provenance(monkeypatch,
                                                                                                   number, filters):
    """`tables.build` gets the table's number, `table_options(number, trials)` and `table_filters(number, filters)`;
    the section is anchored and titled by the table, its caption without the crafts sentence, its provenance
    `provenance_items` of the records it shows, the crafts and the trials; the matrix's heatmaps drawn into
    `heatmaps`, each a figure captioned by its file."""
    from pathlib import Path

    from poisonbench.report.figures import matrix, panels
    from tests.report_records import synthetic_records

    records = synthetic_records()
    by_id = {r["run_id"]: r for r in records}
    built, drawn = [], []
    real_build = tables.build

    def build(n, recs, opts, **filters):
        built.append((n, recs, opts, filters))
        return real_build(n, recs, opts, **filters)

    def figure_matrix(table, out):
        drawn.append(out)
        panels._CAPTURED.get().append(("matrix.png", b"png"))

    monkeypatch.setattr(tables, "build", build)
    monkeypatch.setattr(matrix, "figure_matrix", figure_matrix)
    section = report_html.table_section(number, records, by_id, filters, 4)
    assert built == [(number, records, report_html.table_options(number, 4), report_html.table_filters(number,
                                                                                                       filters))]
    expected = real_build(number, records, report_html.table_options(number, 4),
                          **report_html.table_filters(number, filters))
    caption, crafts = report_html.split_caption(expected.caption)
    assert crafts.startswith("Crafts: ") and section.table.caption == caption
    assert (section.anchor, section.title) == (f"table-{number}", expected.title)
    shown = [by_id[r] for r in sorted(expected.shown) if r in by_id]
    assert section.provenance == report_html.provenance_items(shown, crafts, 4)
    if number == tables.MATRIX:
        assert drawn == [Path("heatmaps")]
        assert [(f.name, f.png, f.caption) for f in section.figures] == \
            [("matrix.png", b"png", "heatmap of the matrix (matrix.png)")]
    else:
        assert drawn == [] and section.figures == []


def test_table_options_are_the_terminals_paper_ci_and_wilson_and_the_matrix_has_no_paper_column():
    for number in ("2", "3", "4", "5"):
        assert report_html.table_options(number, 4) == tables.Options(trials=4, paper=True, ci=True, wilson=True)
    for number in (tables.MATRIX, "backdoor"):
        assert report_html.table_options(number, 4) == tables.Options(trials=4, paper=False, ci=True, wilson=True)


def test_provenance_counts_cells_by_every_configuration_column_keeping_missing_values():
    """A cell is one configuration (every column of CONFIGURATION but the trial; a value missing, as the threat of
    an untargeted run, is a value like any other): two settings that differ only in their PoisonSets are two cells."""
    first = [make_record(rho=0.2, trial=t) for t in range(3)]
    second = [make_record(rho=0.2, trial=t) for t in range(2)]
    for r in second:
        r["config"]["poison"]["poison_ids"] = {"pgd": "p1"}
        r["run_id"] += "-second"
    for r in first + second:  # a record of before scenarios were recorded: the column is missing
        del r["config"]["scenario"]
    assert tables.frame(first + second).scenario.isna().all()
    items = dict(report_html.provenance_items(first + second, "", 5))
    assert (items["runs"], items["trials"]) == ("5 in 2 cell(s)", "2–3 per cell (asked: 5)")


def test_build_sections_ask_for_the_papers_five_trials_by_default():
    from tests.report_records import synthetic_records

    records = synthetic_records()
    default = report_html.build_sections(records, {}, with_figures=False)
    assert default == report_html.build_sections(records, {}, 5, with_figures=False)
    assert default != report_html.build_sections(records, {}, 6, with_figures=False)
