"""`poisonbench records pack | unpack` and `report --results FILE.jsonl.gz` (poisonbench.experiment.packed_records)."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from poisonbench.core.io import atomic_write_json
from poisonbench.experiment.packed_records import gzip_bytes
from poisonbench.experiment.records import RunStore
from poisonbench.poisons.spec import CraftSpec
from poisonbench.report.figures import panels
from tests.conftest import files_under, one_line_error
from tests.report_records import make_record, synthetic_records


def manifest_of(seed: int) -> dict:
    """A PoisonSet manifest (no tensors: only the manifest is packed) whose poison id is its inputs' hash."""
    spec = CraftSpec("pgd", {"steps": 10}, 0.3, 0.5, seed, "mnist-5k", "fp", None)
    return {"poison_id": spec.poison_id, **spec.inputs(), "count": 5, "tensor_sha256": "0" * 64, "craft_seconds": 1.5}


def write_manifest(root: Path, seed: int) -> dict:
    manifest = manifest_of(seed)
    atomic_write_json(root / "poisons" / manifest["poison_id"] / "manifest.json", manifest)
    return manifest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The report tests' synthetic records, written by RunStore, and two PoisonSet manifests."""
    root = tmp_path_factory.mktemp("pack") / "res"
    store = RunStore(root)
    for record in synthetic_records():
        store.put(record)
    for seed in (0, 1):
        write_manifest(root, seed)
    return root


@pytest.fixture(scope="module")
def packed(workspace) -> Path:
    from poisonbench.experiment.packed_records import pack

    out = workspace.parent / "records.jsonl.gz"
    pack(workspace, out)
    return out


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def write_pack(path: Path, lines: list) -> Path:
    """A packed file of `lines` (objects, or raw bytes for a broken line)."""
    raw = [line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines]
    path.write_bytes(gzip_bytes(b"".join(line + b"\n" for line in raw)))
    return path


def header(runs: int, manifests: int = 0) -> dict:
    return {"kind": "header", "format": "poisonbench-records", "version": 1, "runs": runs,
            "poison_manifests": manifests}


# ----------------------------------------------------------------------------------------------- pack / unpack

def test_pack_then_unpack_gives_every_file_back_byte_for_byte(cli, workspace, packed, tmp_path):
    lines = lines_of(packed)
    assert lines[0] == header(98, 2)
    assert [line["kind"] for line in lines[1:]] == ["run"] * 98 + ["poison_manifest"] * 2
    ids = [line["record"]["run_id"] for line in lines[1:99]]
    assert ids == sorted(ids)
    code, out, err = cli("records", "unpack", packed, tmp_path / "copy", "--json")
    assert code == 0, err
    assert json.loads(out) == {"directory": str(tmp_path / "copy"), "runs": 98, "poison_manifests": 2, "refused": [],
                               "written": 100, "unchanged": 0}
    source = files_under(workspace)
    copied = [p for p in files_under(tmp_path / "copy") if p.parent.name != "locks"]  # the locks unpack took
    assert [p.relative_to(workspace) for p in source] == [p.relative_to(tmp_path / "copy") for p in copied]
    for path in source:
        assert (tmp_path / "copy" / path.relative_to(workspace)).read_bytes() == path.read_bytes(), path
    # unpacking again over identical files is fine, and writes nothing
    code, out, err = cli("records", "unpack", packed, tmp_path / "copy", "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 100 and json.loads(out)["written"] == 0, err


def test_packing_twice_gives_the_same_bytes_and_a_reproducible_gzip_header(cli, workspace, packed, tmp_path):
    code, out, err = cli("records", "pack", workspace, tmp_path / "again.jsonl.gz", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["runs"] == 98 and summary["poison_manifests"] == 2 and summary["skipped"] == []
    again = (tmp_path / "again.jsonl.gz").read_bytes()
    assert again == packed.read_bytes() and summary["bytes"] == len(again)
    assert again[4:8] == b"\0\0\0\0" and not again[3] & 0x08  # mtime 0, no FNAME field
    assert [p.name for p in tmp_path.iterdir()] == ["again.jsonl.gz"]  # no temporary file left behind


def test_pack_skips_and_names_a_record_whose_run_id_is_not_its_file_name(cli, tmp_path):
    store = RunStore(tmp_path / "res")
    good, other = make_record(trial=0), make_record(trial=1)
    store.put(good)
    atomic_write_json(store.runs / "copy-of-a-run.json", other)  # a copy under another name
    code, out, err = cli("records", "pack", tmp_path / "res", tmp_path / "p.jsonl.gz", "--json")
    assert code == 0, err
    assert "skipped" in err and "copy-of-a-run.json" in err and "file name is not its run_id" in err
    summary = json.loads(out)
    assert summary["runs"] == 1 and [s["file"] for s in summary["skipped"]] == [str(store.runs / "copy-of-a-run.json")]
    assert [line["record"] for line in lines_of(tmp_path / "p.jsonl.gz")[1:]] == [good]


def test_pack_refuses_to_overwrite_an_existing_file_without_force(cli, workspace, tmp_path):
    out = tmp_path / "r.jsonl.gz"
    out.write_bytes(b"keep me")
    code, _, err = cli("records", "pack", workspace, out)
    one_line_error(code, err, str(out), "--force")
    assert out.read_bytes() == b"keep me"
    code, _, err = cli("records", "pack", workspace, out, "--force")
    assert code == 0 and out.read_bytes()[:2] == b"\x1f\x8b", err


@pytest.mark.parametrize("make,args,needles", [
    (None, ["pack", "{tmp}/nowhere", "{tmp}/o.jsonl.gz"], ["nowhere", "not a directory"]),
    ("empty-dir", ["pack", "{tmp}/d", "{tmp}/o.jsonl.gz"], ["neither runs/ nor poisons/"]),
    ("empty-dir", ["pack", "{tmp}/d", "{tmp}/o.tar"], ["o.tar", ".jsonl.gz"]),
    (None, ["unpack", "{tmp}/none.jsonl.gz", "{tmp}/u"], ["none.jsonl.gz", "records pack"]),
])
def test_bad_arguments_are_one_line(cli, tmp_path, make, args, needles):
    if make == "empty-dir":
        (tmp_path / "d").mkdir()
    code, _, err = cli("records", *[a.format(tmp=tmp_path) for a in args])
    one_line_error(code, err, *needles)
    assert not (tmp_path / "u").exists() and not list(tmp_path.glob("o.*"))


RECORD = make_record(trial=3)


@pytest.mark.parametrize("lines,needles", [
    ([header(1), b'{"kind": "run", "record": {'], ["line 2", "not valid JSON"]),
    ([header(1), {"kind": "checkpoint", "record": RECORD}], ["line 2", "'checkpoint'", "run, poison_manifest"]),
    ([header(1), {"kind": "run", "record": {**RECORD, "run_id": "../../etc/x"}}], ["line 2", "'../../etc/x'"]),
    ([header(1), {"kind": "run", "record": {**RECORD, "run_id": ".hidden"}}], ["line 2", "'.hidden'"]),
    ([header(1), {"kind": "run"}], ["line 2", "'record'"]),
    ([header(1, 1), {"kind": "run", "record": RECORD}, {"kind": "poison_manifest", "manifest": {"poison_id": "a/b"}}],
     ["line 3", "'a/b'", "poison id"]),
    ([header(2), {"kind": "run", "record": RECORD}, {"kind": "run", "record": RECORD}], ["line 3", "first at line 2"]),
    ([header(2), {"kind": "run", "record": RECORD}], ["announces 2 run(s)", "cut short"]),
    ([{"kind": "run", "record": RECORD}], ["line 1", "header"]),
    ([{**header(1), "version": 7}, {"kind": "run", "record": RECORD}], ["line 1", "version 7", "valid choices: 1"]),
])
def test_unpack_refuses_a_bad_line_and_writes_nothing(cli, tmp_path, lines, needles):
    bad = write_pack(tmp_path / "bad.jsonl.gz", lines)
    code, _, err = cli("records", "unpack", bad, tmp_path / "u")
    one_line_error(code, err, "bad.jsonl.gz", *needles)
    assert files_under(tmp_path / "u") == []
    code, _, err = cli("report", "--results", bad)  # the report refuses the file alike
    one_line_error(code, err, "bad.jsonl.gz", *needles)


RUN_LINE, OTHER_RUN_LINE = ({"kind": "run", "record": make_record(trial=t)} for t in (4, 5))
MANIFEST_LINES = [{"kind": "poison_manifest", "manifest": manifest_of(seed)} for seed in (7, 8)]


@pytest.mark.parametrize("lines,counts", [
    ([header(1, 2), RUN_LINE, MANIFEST_LINES[0]], "announces 1 run(s) and 2 manifest(s), it holds 1 and 1"),
    ([header(1, 1), RUN_LINE, *MANIFEST_LINES], "announces 1 run(s) and 1 manifest(s), it holds 1 and 2"),
    ([header(1, 0), RUN_LINE, MANIFEST_LINES[1]], "announces 1 run(s) and 0 manifest(s), it holds 1 and 1"),
    ([header(1, 2), RUN_LINE, OTHER_RUN_LINE, *MANIFEST_LINES], "announces 1 run(s) and 2 manifest(s), it holds 2 "
     "and 2"),
], ids=["a-manifest-line-missing", "a-manifest-line-extra", "manifests-announced-none", "a-run-line-extra"])
def test_unpack_refuses_a_pack_whose_manifest_or_run_lines_do_not_match_its_header(cli, tmp_path, lines, counts):
    """Every line is valid but the header's counts are not the body's, in either direction: one line, nothing
    unpacked (never fewer PoisonSets than packed, silently), and `report --results` refuses the file alike."""
    bad = write_pack(tmp_path / "bad.jsonl.gz", lines)
    code, _, err = cli("records", "unpack", bad, tmp_path / "u")
    one_line_error(code, err, "bad.jsonl.gz", counts, "cut short or edited")
    assert files_under(tmp_path / "u") == []
    code, _, err = cli("report", "--results", bad)
    one_line_error(code, err, "bad.jsonl.gz", counts)
    good = write_pack(tmp_path / "good.jsonl.gz", [header(1, 2), RUN_LINE, *MANIFEST_LINES])  # the counts agree
    code, out, err = cli("records", "unpack", good, tmp_path / "u", "--json")
    unpacked = [p for p in files_under(tmp_path / "u") if p.parent.name != "locks"]  # and the locks unpack took
    assert code == 0 and json.loads(out)["poison_manifests"] == 2 and len(unpacked) == 3, err


def test_unpack_refuses_a_file_that_is_not_gzip_or_is_cut_short(cli, packed, tmp_path):
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(header(0)) + "\n")
    code, _, err = cli("records", "unpack", tmp_path / "plain.jsonl.gz", tmp_path / "u")
    one_line_error(code, err, "plain.jsonl.gz", "neither gzip nor xz")
    (tmp_path / "cut.jsonl.gz").write_bytes(packed.read_bytes()[:-200])
    code, _, err = cli("records", "unpack", tmp_path / "cut.jsonl.gz", tmp_path / "u")
    one_line_error(code, err, "cut.jsonl.gz", "cut short")
    assert files_under(tmp_path / "u") == []


def test_unpack_refuses_to_overwrite_a_different_file_and_writes_nothing(cli, workspace, packed, tmp_path):
    target = tmp_path / "res"
    victim = RunStore(target).path(lines_of(packed)[50]["record"]["run_id"])
    victim.parent.mkdir(parents=True)
    victim.write_text("{}\n")  # another version of the record
    code, _, err = cli("records", "unpack", packed, target)
    one_line_error(code, err, str(victim), "nothing was written")
    assert files_under(target) == [victim] and victim.read_text() == "{}\n"


# ----------------------------------------------------------------------------------------------- report

@pytest.mark.parametrize("args", [
    ["--table", "2", "--format", "md"],
    ["--table", "3", "--format", "csv"],
    ["--table", "4", "--paper", "--format", "md"],
    ["--table", "5", "--format", "latex"],
    ["--table", "2"],  # rich
    ["--format", "json", "--dataset", "mnist-5k"],  # the plain report
])
def test_report_from_a_packed_file_is_the_report_from_its_directory(cli, workspace, packed, args):
    code, from_dir, err = cli("report", *args, "--results", workspace)
    assert code == 0 and from_dir, err
    code, from_pack, err = cli("report", *args, "--results", packed)
    assert code == 0, err
    assert from_pack == from_dir


def test_an_xz_pack_holds_the_same_lines_in_half_the_bytes_and_reads_the_same(cli, workspace, packed, tmp_path):
    """`.jsonl.xz`: the same JSON lines as the gzip file, xz-compressed (smaller, reproducible); unpacked and reported
    exactly as the gzip file is."""
    code, out, err = cli("records", "pack", workspace, tmp_path / "r.jsonl.xz", "--json")
    assert code == 0, err
    xz = tmp_path / "r.jsonl.xz"
    assert xz.read_bytes()[:6] == b"\xfd7zXZ\x00" and len(xz.read_bytes()) < len(packed.read_bytes())
    assert lzma.decompress(xz.read_bytes()) == gzip.decompress(packed.read_bytes())
    assert cli("records", "pack", workspace, tmp_path / "again.jsonl.xz")[0] == 0
    assert (tmp_path / "again.jsonl.xz").read_bytes() == xz.read_bytes()
    assert cli("records", "unpack", xz, tmp_path / "back")[0] == 0
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*.json")) == sorted(
        p.relative_to(workspace).as_posix() for p in workspace.rglob("*.json"))
    assert cli("report", "--table", "2", "--format", "csv", "--results", xz)[1] == cli(
        "report", "--table", "2", "--format", "csv", "--results", packed)[1]


@pytest.mark.parametrize("compress,name", [(lzma.compress, "xz-named.jsonl.gz"), (gzip_bytes, "gzip-named.jsonl.xz")],
                         ids=["xz-in-.jsonl.gz", "gzip-in-.jsonl.xz"])
def test_gzip_and_xz_are_told_by_their_magic_bytes_not_the_file_suffix(cli, tmp_path, compress, name):
    """An xz stream in a file named .jsonl.gz (and gzip in .jsonl.xz), e.g. renamed by hand, reads as what it is:
    unpacked and reported as the same lines under their own suffix are."""
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in [header(1, 2), RUN_LINE, *MANIFEST_LINES])
    misnamed = tmp_path / name
    misnamed.write_bytes(compress(raw))
    assert misnamed.read_bytes()[:2] == (b"\xfd7" if compress is lzma.compress else b"\x1f\x8b")
    code, out, err = cli("records", "unpack", misnamed, tmp_path / "u", "--json")
    assert code == 0, err
    assert (json.loads(out)["runs"], json.loads(out)["poison_manifests"], json.loads(out)["written"]) == (1, 2, 3)
    assert (tmp_path / "u" / "runs" / f"{RUN_LINE['record']['run_id']}.json").is_file()
    assert {p.parent.name for p in (tmp_path / "u" / "poisons").glob("*/manifest.json")} == {
        line["manifest"]["poison_id"] for line in MANIFEST_LINES}
    proper = write_pack(tmp_path / "proper.jsonl.gz", [header(1, 2), RUN_LINE, *MANIFEST_LINES])
    code, out, err = cli("report", "--format", "json", "--results", misnamed)
    assert code == 0 and out == cli("report", "--format", "json", "--results", proper)[1], err


def test_missing_from_a_packed_file_prints_the_same_commands_without_a_workspace(cli, workspace, packed):
    args = ["report", "--table", "2", "--missing", "--per-trial", "--trials", "6", "--dataset", "mnist-5k"]
    code, from_dir, _ = cli(*args, "--results", workspace)
    assert code == 0 and f" --results {workspace}\n" in from_dir
    code, from_pack, err = cli(*args, "--results", packed)
    assert code == 0 and "name no --results" in err
    assert from_pack == from_dir.replace(f" --results {workspace}", "") and "--results" not in from_pack


def test_figures_from_a_packed_file_are_the_figures_from_its_directory(cli, workspace, packed, tmp_path, monkeypatch):
    monkeypatch.setattr(panels, "split_test_images", lambda *args: np.full((100, 1, 28, 28), 128, np.uint8))
    for source, out in ((workspace, tmp_path / "from-dir"), (packed, tmp_path / "from-pack")):
        code, printed, err = cli("report", "--figure", "2", "--results", source, "--out", out)
        assert code == 0 and printed, err
    drawn = files_under(tmp_path / "from-dir")
    assert drawn and [p.name for p in drawn] == [p.name for p in files_under(tmp_path / "from-pack")]
    for path in drawn:
        assert (tmp_path / "from-pack" / path.name).read_bytes() == path.read_bytes(), path.name
    code, _, err = cli("report", "--figure", "2", "--results", packed)  # <results>/figures: not in a file
    one_line_error(code, err, "--out DIR")


def test_report_skips_and_names_a_packed_record_it_cannot_use_as_it_does_in_a_directory(cli, tmp_path):
    good, edited = make_record(trial=0), make_record(trial=1)
    edited = {**edited, "config": {**edited["config"], "seed": 99}}  # config edited after the run: id mismatch
    pack = write_pack(tmp_path / "p.jsonl.gz", [header(2), {"kind": "run", "record": good},
                                                {"kind": "run", "record": edited}])
    code, out, err = cli("report", "--format", "json", "--results", pack)
    assert code == 0, err
    assert f"skipped {pack} line 3" in err and "does not match its config's hash" in err
    assert "skipped 1 record file(s)" in err and [row["n"] for row in json.loads(out)] == [1]  # trial 1 left out


# ----------------------------------------------------------------------------------------------- pack --grid

def write_grid(path: Path, npz: Path, ratios: str) -> Path:
    """A grid on a tiny dataset: quick recipe, 1 epoch, the untargeted mix of durp alone (crafts in a second)."""
    path.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\nattacks = [["durp"]]\n'
                    f'method = "none"\n\n[[runs]]\npoison_ratio = [{ratios}]\n')
    return path


def packed_ids(path: Path) -> tuple[list[str], list[str]]:
    """The run ids and the poison ids of a packed file, in its order."""
    lines = lines_of(path)[1:]
    return ([line["record"]["run_id"] for line in lines if line["kind"] == "run"],
            [line["manifest"]["poison_id"] for line in lines if line["kind"] == "poison_manifest"])


@pytest.mark.usefixtures("one_thread")
def test_pack_grid_packs_only_that_grids_runs_and_the_poison_sets_they_trained_on(cli, tmp_path):
    """`records pack --grid` (was experiments/archive_records.py --grid): out of a workspace shared by two grids
    and a stray run, only the records of the grid's runs and the manifests of their PoisonSets; a record file
    the report would skip is named, not packed; the grid's runs without a record are counted."""
    from poisonbench.sweeps import Execution, load_grid, make_plan
    from tests.conftest import write_npz

    grid_a = write_grid(tmp_path / "a.toml", write_npz(tmp_path, name="a.npz"), "0, 0.5")
    grid_b = write_grid(tmp_path / "b.toml", write_npz(tmp_path, seed=1, name="b.npz"), "0.5")  # another PoisonSet
    ws = tmp_path / "ws"
    plans = {}
    for grid in (grid_a, grid_b):
        plan = make_plan(load_grid(str(grid)), Execution(results=str(ws)))
        for step in plan.steps:  # crafts the durp PoisonSet, then trains each run
            code, _, err = cli(*step.command(plan.execution))
            assert code == 0, err
        plans[grid] = plan
    runs_a, runs_b = ([s.key for s in plans[g].runs] for g in (grid_a, grid_b))
    poison_a, poison_b = ([s.key for s in plans[g].steps if s.kind == "prepare"] for g in (grid_a, grid_b))
    assert len(runs_a) == 2 and len(runs_b) == 1 and len(poison_a) == len(poison_b) == 1 and poison_a != poison_b
    stray = make_record(trial=3)
    RunStore(ws).put(stray)
    (ws / "runs" / "torn.json").write_text('{"run_id": ')

    code, out, err = cli("records", "pack", ws, tmp_path / "a.jsonl.gz", "--grid", grid_a, "--json")
    assert code == 0, err
    assert "skipped" in err and "torn.json" in err
    summary = json.loads(out)
    assert summary["grid"] == {"name": "a", "runs": 2, "missing": []}
    assert packed_ids(tmp_path / "a.jsonl.gz") == (sorted(runs_a), poison_a)
    assert lines_of(tmp_path / "a.jsonl.gz")[0] == header(2, 1)

    code, out, err = cli("records", "pack", ws, tmp_path / "b.jsonl.gz", "--grid", grid_b, "--json")
    assert code == 0 and json.loads(out)["grid"] == {"name": "b", "runs": 1, "missing": []}, err
    assert packed_ids(tmp_path / "b.jsonl.gz") == (runs_b, poison_b)

    # the packed grid unpacks to that grid's workspace: `sweep plan` finds every run done
    code, _, err = cli("records", "unpack", tmp_path / "a.jsonl.gz", tmp_path / "only-a")
    assert code == 0, err
    states = make_plan(load_grid(str(grid_a)), Execution(results=str(tmp_path / "only-a"))).states()
    assert [states[s.index] for s in plans[grid_a].runs] == ["done", "done"]
    assert {p.stem for p in (tmp_path / "only-a" / "runs").iterdir()} == set(runs_a)

    # a grid run without a record is counted, and a PoisonSet no packed run trained on is left out
    RunStore(ws).path(runs_a[1]).unlink()  # the ρ 0.5 run: the only one of grid a on the durp PoisonSet
    code, out, err = cli("records", "pack", ws, tmp_path / "a2.jsonl.gz", "--grid", grid_a)
    assert code == 0, err
    assert "packed 1 run record(s) of grid a's 2 run(s) (1 without a record in" in out
    assert "and 0 PoisonSet manifest(s)" in out
    assert packed_ids(tmp_path / "a2.jsonl.gz") == ([runs_a[0]], [])

    # without --grid: every record and every manifest
    code, out, err = cli("records", "pack", ws, tmp_path / "all.jsonl.gz", "--json")
    assert code == 0 and "grid" not in json.loads(out), err
    assert packed_ids(tmp_path / "all.jsonl.gz") == (sorted([*runs_a[:1], *runs_b, stray["run_id"]]),
                                                     sorted(poison_a + poison_b))


@pytest.mark.parametrize("args,needles", [
    (["{tmp}/ws", "{tmp}/o.jsonl.gz", "--data-dir", "{tmp}"], ["--data-dir", "--grid"]),
    (["{tmp}/ws", "{tmp}/o.jsonl.gz", "--grid", "{tmp}/none.toml"], ["none.toml"]),
    (["{tmp}/ws", "{tmp}/o.jsonl.gz", "--grid", "{tmp}/g.toml"], ["grid g", "nowhere.npz"]),  # its data is missing
    (["{tmp}/nowhere", "{tmp}/o.jsonl.gz", "--grid", "{tmp}/g.toml"], ["nowhere", "not a directory"]),
])
def test_bad_grid_arguments_are_one_line(cli, tmp_path, args, needles):
    (tmp_path / "ws" / "runs").mkdir(parents=True)
    write_grid(tmp_path / "g.toml", tmp_path / "nowhere.npz", "0")
    code, _, err = cli("records", "pack", *[a.format(tmp=tmp_path) for a in args])
    one_line_error(code, err, *needles)
    assert not list(tmp_path.glob("o.*"))
