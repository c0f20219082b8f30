"""Issue 51, the `report` holes a probe found: no record field becomes a path outside `--out` (every figure),
a record file that is not the record of the run it names is skipped and named (an edited config under the old run
id, a copy under another name with a later time), every skipped file is named with why, and a bad `--table` or
`--figure` is echoed as given."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.hashing import short_hash
from poisonbench.experiment.records import RunStore
from tests.report_records import healthy_noise_examples, hint_params, make_record, sample_predictions, write_records


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def rehashed(record: dict) -> dict:
    """`record` under the run id of its (edited) config, as `defend` would have written it."""
    record["run_id"] = short_hash(record["config"])
    return record


def hostile_values(tmp_path: Path) -> list[str]:
    """Record fields that would make a path leave `--out` if used raw: a relative escape, an absolute path (inside
    this test's directory, so that a failure stays contained), `..` alone, a hidden name, odd characters, length."""
    return ["x/../../../ESCAPED", str(tmp_path / "abs" / "ESCAPED"), "..", ".hidden", "a\\b:c*?<>|\"é €",
            "y" * 300 + "/../ESCAPED"]


def hostile_records(figure: str, value: str) -> list[dict]:
    """Records that figure `figure` draws, with `value` as their dataset, model, recipe name, defense method and
    PoisonSet label (Fig. 1: the dataset; the method must stay `hint`, the one method that keeps noise examples)."""
    if figure == "1":
        records = [make_record(method="hint", params=hint_params(), rho=0.8, examples=healthy_noise_examples())]
    elif figure in ("2", "rho"):
        records = [make_record(rho=0.4, trial=t, acc=0.9 - 0.01 * t, sample=sample_predictions(0)) for t in range(2)]
    else:
        attack = {"3": "mp", "4": "bp"}[figure]
        records = [make_record(dataset="cifar10", family="cifar10", recipe="paper", trial=t,
                               targeted={"attack": attack, "target_index": 3 + t, "target_class": 5,
                                         "intended_class": 1, "success": t == 0}) for t in range(2)]
    for r in records:
        r["config"]["dataset"] = value
        if figure != "1":  # Fig. 1 names its file by the dataset alone; the others by dataset, model and recipe
            r["config"]["model"] = value
            r["config"]["recipe"]["name"] = value
            r["config"]["defense"]["method"] = value
            r["config"]["poison"]["label"] = value
        rehashed(r)
    return records


@pytest.fixture
def no_images(monkeypatch):
    """Figures 2–4 draw placeholders rather than load a dataset by a hostile name."""
    from poisonbench.report.figures import panels

    monkeypatch.setattr(panels, "split_test_images", lambda *args: None)


# ----------------------------------------------------------------------------------------------- item 2: paths

@pytest.mark.parametrize("figure", ["1", "2", "3", "4", "rho"])
def test_no_record_field_makes_a_figure_path_outside_out(cli, tmp_path, no_images, figure):
    """Every figure, every hostile value: each file written is inside --out, nothing is created anywhere else,
    and the figures of distinct hostile values get distinct files."""
    values = hostile_values(tmp_path)
    out = tmp_path / "a" / "b" / "out"
    written = []
    for i, value in enumerate(values):
        res = write_records(tmp_path / f"res{i}", hostile_records(figure, value))
        before = files_under(tmp_path)
        code, stdout, err = cli("report", "--figure", figure, "--results", res, "--out", out)
        new = files_under(tmp_path) - before
        assert all(out.resolve() in p.resolve().parents for p in new), f"{value!r}: written outside --out: {new}"
        assert code == 0, err
        paths = [Path(line) for line in stdout.splitlines()]
        assert paths, f"figure {figure} drew nothing for {value!r}: {err}"
        assert new == set(paths)  # exactly the files it names, each directly in --out
        for p in paths:
            assert p.parent == out and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.png", p.name) and ".." not in p.name, p.name
        written += paths
    assert len(set(written)) == len(written)  # no two hostile values share (overwrite) one file
    assert [p for p in tmp_path.rglob("*ESCAPED*") if p.parent != out] == [] and not (tmp_path / "abs").exists()
    if figure != "1":  # all of them in one workspace: one figure per setting, none overwriting another
        res = write_records(tmp_path / "res_all", [r for v in values for r in hostile_records(figure, v)])
        code, stdout, err = cli("report", "--figure", figure, "--results", res, "--out", tmp_path / "all")
        assert code == 0 and len(set(stdout.splitlines())) == len(values), err
        assert {p.parent for p in files_under(tmp_path / "all")} == {tmp_path / "all"}


def test_the_figure_save_helper_refuses_a_path_outside_out(cli, tmp_path, monkeypatch):
    """The last guard: even a file name that escaped the slug (here a broken slug) writes nothing outside --out;
    the command fails in one line."""
    from poisonbench.report.figures import rho

    monkeypatch.setattr(rho, "slug", lambda s: "x/../../../ESCAPED")
    res = write_records(tmp_path / "res", [make_record(rho=0.4, trial=t) for t in range(2)])
    out = tmp_path / "a" / "b" / "out"
    code, stdout, err = cli("report", "--figure", "rho", "--results", res, "--out", out)
    assert code == 2 and err.startswith("Error: refusing to write figure") and len(err.strip().splitlines()) == 1
    assert stdout == "" and not list(tmp_path.rglob("*ESCAPED*"))


def test_a_symbolic_link_in_out_does_not_redirect_a_figure(cli, tmp_path):
    """A link at the figure's name pointing outside --out is not written through: the file outside stays as it
    was."""
    res = write_records(tmp_path / "res", [make_record(rho=0.4, trial=t) for t in range(2)])
    out = tmp_path / "out"
    code, stdout, _ = cli("report", "--figure", "rho", "--results", res, "--out", out)
    (png,) = [Path(line) for line in stdout.splitlines()]
    png.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, png)
    code, stdout, err = cli("report", "--figure", "rho", "--results", res, "--out", out)
    assert code == 2 and "refusing to write figure" in err
    assert victim.read_text() == "precious"


def test_safe_slug_keeps_plain_names_and_confines_the_others():
    from poisonbench.report.figures.panels import SLUG_MAX, safe_slug

    for plain in ("mnist-5k", "cifar10", "e2e.npz", "fashion-mnist", "resnet18", "tiny_2.npz"):
        assert safe_slug(plain) == plain
    hostile = ["x/../../../ESCAPED", "/etc/passwd", "..", "...", ".", "", ".hidden", "a/b", "a\\b", "é€",
               "z" * 500, "x" * 100 + "/../" + "y" * 100, "-rf", "_"]
    slugs = [safe_slug(v) for v in hostile]
    for value, s in zip(hostile, slugs, strict=True):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) and ".." not in s and len(s) <= SLUG_MAX, (value, s)
    assert safe_slug("z" * 500) != safe_slug("z" * 501)  # a truncated name keeps a hash of the whole


def test_settings_whose_names_slug_alike_write_distinct_figure_files(cli, tmp_path):
    """`a b.npz` and `a_b.npz` have one `safe_slug`; the names a setting's figures are given from it still differ
    (accuracy vs ρ, the matrix heatmap): two settings, two PNGs of each, none overwriting the other, and the plain
    name keeps its plain file name."""
    records = [make_record(dataset=name, rho=rho, trial=t, acc=0.9 - rho / 4 - t / 100)
               for name in ("a b.npz", "a_b.npz") for rho in (0.0, 0.4) for t in range(2)]
    res = write_records(tmp_path / "res", records)
    code, stdout, err = cli("report", "--figure", "rho", "--results", res, "--out", tmp_path / "rho")
    assert code == 0, err
    paths = [Path(line) for line in stdout.splitlines()]
    assert len(paths) == len(set(paths)) == 2 and sorted(files_under(tmp_path / "rho")) == sorted(paths)
    assert tmp_path / "rho" / "rho_a_b.npz_convnet_quick10.png" in paths
    code, _, err = cli("report", "--table", "matrix", "--results", res, "--out", tmp_path / "matrix")
    assert code == 0, err
    heatmaps = [Path(line.removeprefix("heatmap: ")) for line in err.splitlines() if line.startswith("heatmap: ")]
    assert len(heatmaps) == len(set(heatmaps)) == 2, heatmaps
    assert sorted(files_under(tmp_path / "matrix")) == sorted(heatmaps)
    assert tmp_path / "matrix" / "matrix_a_b.npz_convnet_quick10.png" in heatmaps


def test_a_figure_joins_no_record_field_but_a_plain_file_name_to_data_dir(tmp_path, monkeypatch):
    """A record names an .npz by its file name, looked up in --data-dir; one naming a path (`../x.npz`) is not
    joined to --data-dir (it would read from outside it)."""
    import poisonbench.data
    from poisonbench.report.figures import panels

    loaded = []
    monkeypatch.setattr(poisonbench.data, "load_dataset", lambda name, *a, **k: loaded.append(name) or 1 / 0)
    data = tmp_path / "data"
    for name in ("../../outside.npz", "sub/../../x.npz"):
        assert panels.split_test_images(name, str(data)) is None  # nothing loaded: placeholders
    assert not [n for n in loaded if n.startswith(str(data))], loaded
    assert panels.split_test_images("plain.npz", str(data)) is None
    assert loaded[-2:] == [str(data / "plain.npz"), "plain.npz"]


def test_the_store_builds_no_path_outside_runs_from_a_run_id(tmp_path):
    store = RunStore(tmp_path / "res")
    record = make_record()
    for rid in ("../../ESCAPED", "/abs/ESCAPED", "a/b", ".hidden", ".."):
        with pytest.raises(PoisonbenchError, match="is not a run id"):
            store.put({**record, "run_id": rid})
        with pytest.raises(PoisonbenchError, match="is not a run id"):
            store.failure_path(rid)
    assert files_under(tmp_path) == set()
    assert store.get(record["run_id"]) is None and store.path(record["run_id"]).name == f"{record['run_id']}.json"


# ----------------------------------------------------------------------------------------------- item 8: run ids

def plain_rows(out: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(out)))


def test_a_record_whose_config_was_edited_under_its_old_run_id_is_skipped_and_named(cli, tmp_path):
    genuine = [make_record(rho=0.2, trial=t, acc=0.9) for t in range(2)]
    res = write_records(tmp_path / "res", genuine)
    edited = json.loads(json.dumps(genuine[1]))
    edited["config"]["recipe"]["lr"] = 0.5  # would show as a configuration of its own
    edited["metrics"]["test_acc"] = 0.1
    path = res / "runs" / f"{edited['run_id']}.json"
    path.write_text(json.dumps(edited))
    code, out, err = cli("report", "--format", "csv", "--results", res)
    assert code == 0, err
    (row,) = plain_rows(out)
    assert row["n"] == "1" and float(row["test_acc_mean"]) == pytest.approx(0.9)
    (line,) = [x for x in err.splitlines() if str(path) in x]
    assert "run_id does not match its config's hash" in line or (
        f"run_id {edited['run_id']!r} does not match its config's hash" in line)
    assert "skipped 1 record file(s)" in err and "1 not the record of the run it names" in err


def test_a_copy_with_a_later_time_does_not_replace_the_genuine_record(cli, tmp_path):
    genuine = [make_record(rho=0.2, trial=t, acc=0.9) for t in range(3)]
    res = write_records(tmp_path / "res", genuine)
    copy = {**genuine[0], "finished_at": "2099-01-01T00:00:00+00:00",
            "metrics": {**genuine[0]["metrics"], "test_acc": 0.1}}
    (res / "runs" / "zzz-copy.json").write_text(json.dumps(copy))
    code, out, err = cli("report", "--table", "2", "--format", "json", "--rho", "0.2", "--results", res)
    assert code == 0, err
    (row,) = [r for r in json.loads(out)["rows"] if r["method"] == "none"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(90.0)
    (line,) = [x for x in err.splitlines() if "zzz-copy.json" in x]
    assert "file name is not its run_id" in line
    assert "repeating the trial id" not in err  # no generic note about a replaced run: nothing was replaced


def test_every_skipped_file_is_named_with_why(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record(trial=t) for t in range(2)])
    runs = res / "runs"
    (runs / "torn.json").write_text('{"schema_version": 1, "run_')
    (runs / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (runs / "folder.json").mkdir()
    (runs / "list.json").write_text("[1, 2]")
    (runs / "future.json").write_text(json.dumps({**make_record(trial=2), "schema_version": 2}))
    no_acc = make_record(trial=3)
    del no_acc["metrics"]["test_acc"]
    (runs / f"{no_acc['run_id']}.json").write_text(json.dumps(no_acc))
    code, out, err = cli("report", "--format", "csv", "--results", res)
    assert code == 0 and plain_rows(out)[0]["n"] == "2"
    lines = err.strip().splitlines()
    why = {"torn.json": "not valid JSON", "binary.json": "not valid JSON", "folder.json": "unreadable",
           "list.json": "not a run record (a JSON array", "future.json": "schema_version 2, not 1",
           f"{no_acc['run_id']}.json": "incomplete: lacks metrics.test_acc"}
    for name, words in why.items():
        (line,) = [x for x in lines if f"{runs / name}:" in x]
        assert line.startswith("skipped ") and words in line, line
    assert lines[-1].startswith(f"skipped {len(why)} record file(s) in {runs}")
    assert len(lines) == len(why) + 1 and "Traceback" not in err


def test_genuine_records_are_not_skipped(tmp_path):
    """The identity check agrees with how records are named (a run id is the hash of the config, through a JSON
    round trip): records of every shape in the fixtures load, none is skipped (the archived records of
    experiments/records were checked the same way by hand)."""
    from tests.report_records import synthetic_records

    records = synthetic_records()
    store = RunStore(write_records(tmp_path / "res", records))
    assert len(store.all()) == len(records) and store.skipped == [] and store.skipped_note() is None


def test_a_workspace_whose_every_file_is_skipped_is_an_error_that_says_so(cli, tmp_path):
    record = make_record()
    runs = (tmp_path / "res" / "runs")
    runs.mkdir(parents=True)
    (runs / "copy.json").write_text(json.dumps(record))
    code, out, err = cli("report", "--table", "2", "--results", tmp_path / "res")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert "copy.json: file name is not its run_id" in lines[0]
    assert lines[-1].startswith("Error: no usable run records under") and "all 1 record file(s)" in lines[-1]


# ----------------------------------------------------------------------------------------------- item 9c: echo

@pytest.mark.parametrize("args,needle", [
    (["--table", "abc"], "unknown table 'abc'; valid choices: 2, 3, 4, 5, matrix, backdoor"),
    (["--table", "vi"], "unknown table 'vi'; valid choices: 2, 3, 4, 5, matrix, backdoor"),
    (["--figure", "RhO2"], "unknown figure 'RhO2'; valid choices: 1, 2, 3, 4, rho"),
])
def test_a_bad_table_or_figure_is_echoed_as_given(cli, tmp_path, args, needle):
    """As given, and in one line: checked before the records are read (a skipped file's warning does not come
    first)."""
    res = write_records(tmp_path / "res", [make_record()])
    (res / "runs" / "torn.json").write_text("{")
    code, out, err = cli("report", *args, "--results", res)
    assert code == 2 and out == "" and err.strip() == f"Error: {needle}"


def test_roman_and_any_case_names_still_select_a_table_or_figure(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record(rho=0.2, trial=t) for t in range(2)])
    assert cli("report", "--table", "ii", "--format", "csv", "--results", res)[0] == 0
    code, out, err = cli("report", "--figure", "RHO", "--results", res, "--out", tmp_path / "f")
    assert code == 0 and out.strip(), err


def test_figure_1_run_draws_the_named_record_whatever_its_attack_mix(tmp_path, cli):
    """`--run ID` names one HINT record: the table's default filter (the paper's four-attack mix) must not hide a
    run of another mix and leave an exit 0 that drew nothing (found by experiments/probe_issue51.py)."""
    record = make_record(method="hint", params=hint_params(), rho=0.8, examples=healthy_noise_examples())
    record["config"]["poison"]["attacks"] = ["durp"]
    rehashed(record)
    results = write_records(tmp_path / "ws", [record])
    out = tmp_path / "out"
    code, stdout, err = cli("report", "--figure", "1", "--results", results, "--out", out, "--run", record["run_id"])
    assert code == 0, err
    assert [p.name for p in files_under(out)] == ["fig1_healthy_noise_mnist-5k.png"]
