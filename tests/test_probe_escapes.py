"""Issue 68, item 2: escape sequences printed raw. A record whose `config.dataset` or `defense.method` holds an
escape sequence (its run id recomputed, so it is accepted) was printed raw by `report` (rich, md, latex, csv), and
`sweep status` printed a failure record's `error` raw: a shared record could retitle or clear the reader's terminal.
Every string printed from a record, a failure record or a file name now passes one sanitiser
(`poisonbench.core.printable`), which shows control characters escaped and keeps the rest of Unicode as it is."""

from __future__ import annotations

import json

import pytest

from poisonbench.core.hashing import short_hash
from poisonbench.core.printable import printable, printable_json
from poisonbench.experiment.records import RunStore
from tests.report_records import hint_params, make_record, write_records

from .test_probe_sweep_run import planned, write_grid

TITLE = "\x1b]0;pwned\x07"  # OSC 0: sets the terminal's title
CLEAR = "\x1b[2J"  # CSI 2 J: clears the screen
EIGHT_BIT = "\x9b2J\x7f"  # the same as an 8-bit C1 CSI, and DEL
RAW = ("\x1b", "\x07", "\x9b", "\x7f")


def assert_nothing_raw(*texts: str) -> None:
    for text in texts:
        for ch in RAW:
            assert ch not in text, (ch, text)


def hostile_records() -> list[dict]:
    """Two trials of `none` and of `hint` at ρ = 0.4 whose dataset and method hold escape sequences, each under the
    run id of its edited config (as `defend` would have written it)."""
    records = []
    for trial in range(2):
        for method in ("none", "hint"):
            r = make_record(rho=0.4, trial=trial, method=method, params=hint_params() if method == "hint" else None)
            r["config"]["dataset"] = f"mnist{TITLE}"
            if method == "hint":
                r["config"]["defense"]["method"] = f"hint{CLEAR}{EIGHT_BIT}"
            r["run_id"] = short_hash(r["config"])
            records.append(r)
    return records


def test_the_sanitiser_escapes_control_characters_and_keeps_the_rest_of_unicode():
    assert printable(f"a{TITLE}b{CLEAR}{EIGHT_BIT}\r\n\t\x00") == r"a\x1b]0;pwned\x07b\x1b[2J\x9b2J\x7f\r\n\t\x00"
    assert printable("ρ ± · é € 漢 \\x1b") == "ρ ± · é € 漢 \\x1b"  # a backslash stays as it is
    assert printable("two\nlines\x1b", newlines=True) == "two\nlines\\x1b"
    assert printable("\u202eevil") == "\\u202eevil"  # a bidi override reorders what the reader sees
    text = json.dumps({"k": f"{TITLE}{EIGHT_BIT}ρ"}, ensure_ascii=False)
    assert_nothing_raw(printable_json(text))
    assert json.loads(printable_json(text)) == {"k": f"{TITLE}{EIGHT_BIT}ρ"}  # the same JSON value


@pytest.mark.parametrize("fmt", ["rich", "md", "latex", "csv", "json"])
@pytest.mark.parametrize("mode", [[], ["table", "2"]], ids=["plain", "table-2"])
def test_report_prints_a_record_s_escape_sequences_escaped_in_every_format(cli, tmp_path, fmt, mode):
    res = write_records(tmp_path / "res", hostile_records())
    code, out, err = cli("report", *mode, "--format", fmt, "--results", res)
    assert code == 0, err
    assert_nothing_raw(out, err)
    if fmt == "json":  # the JSON encoding escapes them, and the values stay the records' own
        rows = json.loads(out)
        rows = rows["rows"] if isinstance(rows, dict) else rows
        assert {r["dataset"] for r in rows} == {f"mnist{TITLE}"}
        assert f"hint{CLEAR}{EIGHT_BIT}" in {r["method"] for r in rows}
    else:
        assert "mnist\\x1b]0;pwned\\x07" in out.replace("{\\textbackslash}", "\\"), out
        assert "hint\\x1b[2J\\x9b2J\\x7f" in out.replace("{\\textbackslash}", "\\"), out
    if fmt in ("rich", "md") and mode:
        assert "±" in out and "ρ" in out  # the rest of Unicode is printed as it is


def test_rich_markup_in_a_record_is_printed_as_text(cli, tmp_path):
    """A `[/]` in a record's method is text, not rich markup (it ended `report` in a MarkupError)."""
    records = hostile_records()
    for r in records:
        if r["config"]["defense"]["method"] != "none":
            r["config"]["defense"]["method"] = "hint[/][link=file:///etc]x"
            r["run_id"] = short_hash(r["config"])
    res = write_records(tmp_path / "res", records)
    for mode in ([], ["table", "2"]):
        code, out, err = cli("report", *mode, "--results", res)
        assert code == 0 and "Traceback" not in err, err
        assert "[/][link=file:///etc]x" in out.replace("\n", "").replace("│", "").replace(" ", ""), out


def test_a_skipped_file_s_name_is_printed_escaped_by_report_and_records_pack(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record(rho=0.4, trial=t) for t in range(2)])
    (res / "runs" / f"x{CLEAR}{TITLE}.json").write_text(json.dumps(make_record(rho=0.4, trial=5)))
    code, out, err = cli("report", "--results", res)
    assert code == 0 and "skipped" in err, err
    assert_nothing_raw(out, err)
    assert "x\\x1b[2J\\x1b]0;pwned\\x07.json" in err, err
    code, out, err = cli("records", "pack", res, tmp_path / "p.jsonl.gz")
    assert code == 0 and "skipped" in err, err
    assert_nothing_raw(out, err)
    assert "x\\x1b[2J\\x1b]0;pwned\\x07.json" in err, err


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_sweep_status_prints_a_failure_record_s_error_escaped(cli, tmp_path, as_json):
    grid, results = write_grid(tmp_path, trials=1), tmp_path / "r"
    (step,) = planned(grid, results).runs
    path = RunStore(str(results)).failure_path(step.key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": step.key, "error": f"RuntimeError: {TITLE}{CLEAR}{EIGHT_BIT}"}))
    code, out, err = cli("sweep", "status", grid, "--results", results, *(["--json"] if as_json else []))
    assert code == 0, err
    assert_nothing_raw(out, err)
    if as_json:
        (failure,) = json.loads(out)["failures"]
        assert failure["error"] == f"RuntimeError: {TITLE}{CLEAR}{EIGHT_BIT}"
    else:
        assert "RuntimeError:\\x1b]0;pwned\\x07\\x1b[2J\\x9b2J\\x7f" in "".join(out.split()), out  # wrapped


def test_an_error_line_shows_control_characters_escaped(cli, tmp_path):
    """`Error: ...` lines pass the sanitiser too (a value given or read may hold an escape sequence)."""
    code, out, err = cli("report", "--results", tmp_path / f"nowhere{TITLE}.jsonl.gz")
    assert code == 2 and err.startswith("Error: "), err
    assert_nothing_raw(out, err)
