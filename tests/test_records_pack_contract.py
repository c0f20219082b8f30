"""The contract of packed run records, whole (poisonbench.experiment.packed_records; issue 64): the exact one-line
message of each refusal, naming the file (and line); the canonical bytes of a pack (sorted keys, compact
separators, a gzip header without a file name, the committed xz files reproduced byte for byte); the summaries of
`pack` and `unpack`; the conflicts `unpack` names; the API's defaults and `report --results`' choice of store."""

from __future__ import annotations

import errno
import gzip
import json
import lzma
import os
import zlib
from pathlib import Path

import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.io import atomic_write_json, json_bytes
from poisonbench.experiment import packed_records
from poisonbench.experiment.packed_records import PackedRunStore, gzip_bytes, is_packed, open_store, read_pack
from poisonbench.experiment.records import RunStore
from tests.conftest import files_under, one_line_error
from tests.report_records import make_record
from tests.test_records_pack import header, manifest_of, write_manifest, write_pack

COMMITTED = Path(__file__).resolve().parents[1] / "experiments" / "records" / \
    "mnist-5k-targeted-forest-search2-ensembles.jsonl.xz"  # 15 runs and 15 PoisonSet manifests, 13 kB
SKIP_HINT = ("nothing was written: move them away, unpack into another directory, or pass --skip-conflicts to "
             "write only the rest")


def refusal(code: int, err: str) -> str:
    """The message of a one-line refusal (exit 2, one line `Error: ...`), without its `Error: ` prefix."""
    one_line_error(code, err)
    return err.strip().splitlines()[-1].removeprefix("Error: ")


def q(path) -> str:
    """A path as the messages quote it."""
    return repr(str(path))


@pytest.fixture
def workspace(tmp_path) -> Path:
    """Two run records written by RunStore and one PoisonSet manifest."""
    root = tmp_path / "ws"
    store = RunStore(root)
    for trial in (0, 1):
        store.put(make_record(trial=trial))
    write_manifest(root, 0)
    return root


def run_line(record: dict) -> dict:
    return {"kind": "run", "record": record}


# ----------------------------------------------------------------------------------------------- pack: the bytes

def test_a_pack_is_canonical_json_lines_in_a_gzip_without_file_name_or_time(cli, tmp_path):
    """A record file whose keys are not sorted (hand-written, not by RunStore) is packed as one compact line with
    sorted keys and no spaces; the header line is exactly the documented one; two packs are byte-identical and the
    gzip header carries no file name and mtime 0 (docs/commands.md, "Packed run records")."""
    root = tmp_path / "ws"
    record = make_record(trial=2)
    unsorted = dict(reversed(record.items()))
    assert list(unsorted) != sorted(unsorted)
    (root / "runs").mkdir(parents=True)
    (root / "runs" / f"{record['run_id']}.json").write_text(json.dumps(unsorted, indent=4))
    manifest = write_manifest(root, 3)
    for name in ("a.jsonl.gz", "b.jsonl.gz"):
        code, _, err = cli("records", "pack", root, tmp_path / name)
        assert code == 0 and err == "", err
    data = (tmp_path / "a.jsonl.gz").read_bytes()
    assert data == (tmp_path / "b.jsonl.gz").read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00" and data[4:8] == b"\0\0\0\0"  # deflate, no flags (no FNAME), mtime 0
    raw = gzip.decompress(data)
    assert raw.splitlines(keepends=True) == [
        b'{"format":"poisonbench-records","kind":"header","poison_manifests":1,"runs":1,"version":1}\n',
        json.dumps(run_line(record), sort_keys=True, separators=(",", ":")).encode() + b"\n",
        json.dumps({"kind": "poison_manifest", "manifest": manifest}, sort_keys=True,
                   separators=(",", ":")).encode() + b"\n"]
    assert b", " not in raw and b'": ' not in raw and raw.isascii()


def test_a_committed_experiment_pack_unpacks_and_packs_again_to_the_same_bytes(cli, tmp_path):
    """experiments/records/*.jsonl.xz: unpacked and packed again, the file comes back byte for byte (the same
    lines, the same xz preset); its gzip pack holds the same lines."""
    code, _, err = cli("records", "unpack", COMMITTED, tmp_path / "ws")
    assert code == 0, err
    code, out, err = cli("records", "pack", tmp_path / "ws", tmp_path / "again.jsonl.xz", "--json")
    assert code == 0, err
    assert (tmp_path / "again.jsonl.xz").read_bytes() == COMMITTED.read_bytes()
    assert json.loads(out)["bytes"] == COMMITTED.stat().st_size
    assert cli("records", "pack", tmp_path / "ws", tmp_path / "again.jsonl.gz")[0] == 0
    assert gzip.decompress((tmp_path / "again.jsonl.gz").read_bytes()) == lzma.decompress(COMMITTED.read_bytes())


# ----------------------------------------------------------------------------------------------- pack: what it reads

def test_pack_leaves_out_a_writers_directory_and_names_a_moved_manifest_in_its_summary(cli, tmp_path):
    """poisons/ only (no runs/ yet) is a workspace. A writer's temporary directory (a leading dot, even with a
    manifest) and a directory without manifest.json are left out silently; a manifest moved to another PoisonSet's
    directory is named, with spec_of's reason, in the summary and on stderr; the valid one is packed."""
    root = tmp_path / "ws"
    kept = write_manifest(root, 1)
    temporary = root / "poisons" / ".tmp-writer"
    temporary.mkdir(parents=True)
    (temporary / "manifest.json").write_bytes(json_bytes(manifest_of(2)))
    (root / "poisons" / "ffffffffffffffff").mkdir()  # crafting: no manifest yet
    moved = manifest_of(4)
    atomic_write_json(root / "poisons" / "0000000000000000" / "manifest.json", moved)
    out = tmp_path / "p.jsonl.gz"
    code, printed, err = cli("records", "pack", root, out, "--json")
    assert code == 0, err
    why = (f"poison set 0000000000000000: its manifest describes other crafting inputs (poison id "
           f"{moved['poison_id']!r}, inputs hash {moved['poison_id']}); moved or edited? delete "
           f"{q(root / 'poisons' / '0000000000000000')} and craft again")
    manifest_file = root / "poisons" / "0000000000000000" / "manifest.json"
    assert err == f"skipped {manifest_file}: {why}\n"
    data = out.read_bytes()
    assert json.loads(printed) == {"out": str(out), "runs": 0, "poison_manifests": 1,
                                   "skipped": [{"file": str(manifest_file), "why": why}], "bytes": len(data),
                                   "uncompressed_bytes": len(gzip.decompress(data))}
    assert [json.loads(line) for line in gzip.decompress(data).splitlines()] == [
        header(0, 1), {"kind": "poison_manifest", "manifest": kept}]


# ----------------------------------------------------------------------------------------------- pack: refusals

@pytest.mark.parametrize("make,args,message", [
    (None, ["{tmp}/nowhere", "{tmp}/o.jsonl.gz"],
     "'{tmp}/nowhere' is not a directory; pass a results workspace (a directory holding runs/)"),
    ("empty", ["{tmp}/d", "{tmp}/o.jsonl.gz"], "'{tmp}/d' holds neither runs/ nor poisons/: not a results workspace"),
    ("ws", ["{tmp}/ws", "{tmp}/o.tar"],
     "OUT '{tmp}/o.tar' must be a file name ending in .jsonl.gz or .jsonl.xz (e.g. records.jsonl.gz)"),
    ("ws", ["{tmp}/ws", "{tmp}/.jsonl.xz"],
     "OUT '{tmp}/.jsonl.xz' must be a file name ending in .jsonl.gz or .jsonl.xz (e.g. records.jsonl.gz)"),
    ("ws", ["{tmp}/ws", "{tmp}/dir.jsonl.gz"],
     "OUT '{tmp}/dir.jsonl.gz' is a directory; pass a file name ending in .jsonl.gz"),
    ("ws", ["{tmp}/ws", "{tmp}/old.jsonl.gz"],
     "OUT '{tmp}/old.jsonl.gz' exists; pass --force to replace it, or another file name"),
    ("ws", ["{tmp}/ws", "{tmp}/a-file/o.jsonl.gz", "--force"],
     "cannot write '{tmp}/a-file/o.jsonl.gz': '{tmp}/a-file' is a file, not a directory"),
], ids=["dir-missing", "dir-not-a-workspace", "out-suffix", "out-only-a-suffix", "out-a-directory", "out-exists",
        "out-under-a-file"])
def test_pack_refusals_are_whole_one_line_messages_naming_the_file(cli, workspace, tmp_path, make, args, message):
    if make == "empty":
        (tmp_path / "d").mkdir()
    (tmp_path / "dir.jsonl.gz").mkdir()
    (tmp_path / "old.jsonl.gz").write_bytes(b"keep")
    (tmp_path / "a-file").write_bytes(b"")
    code, _, err = cli("records", "pack", *[a.format(tmp=tmp_path) for a in args])
    assert refusal(code, err) == message.format(tmp=tmp_path)
    assert (tmp_path / "old.jsonl.gz").read_bytes() == b"keep" and not list(tmp_path.glob("o.*"))


def test_pack_refuses_to_replace_a_file_by_default_in_the_api_too(workspace, tmp_path):
    out = tmp_path / "old.jsonl.gz"
    out.write_bytes(b"keep")
    with pytest.raises(PoisonbenchError, match="exists; pass --force"):
        packed_records.pack(workspace, out)
    assert out.read_bytes() == b"keep"
    assert packed_records.pack(workspace, out, force=True)["runs"] == 2


@pytest.mark.parametrize("command", ["pack", "unpack"])
def test_a_failed_write_is_one_line_naming_what_and_where(cli, workspace, tmp_path, monkeypatch, command):
    """A full disk (an OSError from the atomic writer): one line naming what was being written and the file (pack)
    or the workspace (unpack); nothing written."""
    packed = tmp_path / "p.jsonl.gz"
    packed_records.pack(workspace, packed)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packed_records, "atomic_write_bytes", full)  # pack
    monkeypatch.setattr(packed_records, "write_file_at", full)  # unpack, into the directories it holds
    if command == "pack":
        code, _, err = cli("records", "pack", workspace, tmp_path / "o.jsonl.gz")
        expected = f"cannot write packed records to {q(tmp_path / 'o.jsonl.gz')}: No space left on device"
    else:
        code, _, err = cli("records", "unpack", packed, tmp_path / "u")
        expected = f"cannot write unpacked records to {q(tmp_path / 'u')}: No space left on device"
    assert refusal(code, err) == expected
    assert not (tmp_path / "o.jsonl.gz").exists()
    assert [p for p in files_under(tmp_path / "u") if p.parent.name != "locks"] == []  # the run's lock file stays


# ----------------------------------------------------------------------------------------------- read: refusals

RECORD = make_record(trial=3)


def damaged(tmp: Path) -> tuple[Path, str]:
    """A valid pack of 2 lines whose gzip CRC was flipped: read to its end, then refused."""
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in [header(1), run_line(RECORD)])
    data = bytearray(gzip_bytes(raw))
    data[-8] ^= 1  # the lowest byte of the CRC-32 in the trailer
    path = tmp / "bad.jsonl.gz"
    path.write_bytes(bytes(data))
    crc = zlib.crc32(raw)
    return path, f"CRC check failed {hex(crc ^ 1)} != {hex(crc)}"


@pytest.mark.parametrize("make,message", [
    ("missing", "no packed records file '{p}' (make one with `poisonbench records pack`)"),
    ("directory", "'{p}' is a directory, not a packed records file (.jsonl.gz)"),
    ("plain", "'{p}' is not a packed records file: neither gzip nor xz"),
    ("empty", "'{p}' is empty: not a packed records file"),
    ("cut", "'{p}' is cut short after line 2 (the compressed stream ends early): pack it again"),
    ("damaged", "'{p}' is not a packed records file: damaged after line 2 ({why})"),
])
def test_a_file_that_cannot_be_read_as_a_pack_is_refused_in_one_whole_line(cli, tmp_path, make, message):
    path, why = tmp_path / "bad.jsonl.gz", ""
    if make == "directory":
        path.mkdir()
    elif make == "plain":
        path.write_text(json.dumps(header(0)) + "\n")
    elif make == "empty":
        path.write_bytes(gzip_bytes(b""))
    elif make == "cut":  # the 8-byte trailer (CRC, size) lost: every line was read
        write_pack(path, [header(1), run_line(RECORD)])
        path.write_bytes(path.read_bytes()[:-8])
    elif make == "damaged":
        path, why = damaged(tmp_path)
    expected = message.format(p=path, why=why)
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    assert refusal(code, err) == expected
    code, _, err = cli("report", "--results", path)
    assert refusal(code, err) == expected
    assert not (tmp_path / "u").exists()


def test_an_unreadable_pack_is_one_line_with_the_systems_reason(cli, tmp_path, monkeypatch):
    path = write_pack(tmp_path / "p.jsonl.gz", [header(1), run_line(RECORD)])

    real_open = os.open

    def denied(name, *args, **kwargs):  # root reads any file: the system's refusal, simulated for this one
        if str(name) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    assert refusal(code, err) == f"{q(path)}: unreadable (Permission denied)"


@pytest.mark.parametrize("lines,message", [
    ([header(1), b"\xff\xfe"], "line 2: not valid JSON (not UTF-8 text)"),
    ([header(1), b'{"kind": "run", "record": {'],
     "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 28)"),
    ([header(1), b"[1, 2]"], "line 2: unknown kind None; valid choices: header, run, poison_manifest"),
    ([header(1), {"kind": "checkpoint"}], "line 2: unknown kind 'checkpoint'; valid choices: header, run, "
                                          "poison_manifest"),
    ([run_line(RECORD)], "line 1: not a poisonbench-records header (a file made by `poisonbench records pack` "
                         "starts with one)"),
    ([{**header(1), "format": "other-records"}, run_line(RECORD)],
     "line 1: not a poisonbench-records header (a file made by `poisonbench records pack` starts with one)"),
    ([{**header(1), "version": 7}, run_line(RECORD)], "line 1: unknown format version 7; valid choices: 1"),
    ([header(1), run_line(RECORD), header(1)], "line 3: a second header (two packed files joined?)"),
    ([header(1), {"kind": "run", "record": [RECORD]}], "line 2: a run line without its 'record' object"),
    ([header(0, 1), {"kind": "poison_manifest"}], "line 2: a poison_manifest line without its 'manifest' object"),
    ([header(2), run_line(RECORD), run_line(RECORD)], f"line 3: run {RECORD['run_id']!r} again (first at line 2)"),
])
def test_a_bad_line_is_refused_in_one_whole_line_naming_file_and_line(cli, tmp_path, lines, message):
    path = write_pack(tmp_path / "bad.jsonl.gz", lines)
    expected = f"{q(path)} {message}"
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    assert refusal(code, err) == expected
    code, _, err = cli("report", "--results", path)
    assert refusal(code, err) == expected


def test_counts_that_do_not_match_the_header_are_one_whole_line(cli, tmp_path):
    path = write_pack(tmp_path / "bad.jsonl.gz", [header(2, 1), run_line(RECORD)])
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    assert refusal(code, err) == (f"{q(path)}: its header announces 2 run(s) and 1 manifest(s), it holds 1 and 0: "
                                  "cut short or edited")


# ----------------------------------------------------------------------------------------------- unpack

PID = manifest_of(7)["poison_id"]


def crafted(trial: int, sha: str) -> dict:
    """A run record that names the craft (tensors' sha256) of PoisonSet PID it trained on."""
    return {**make_record(trial=trial), "inputs": {"poisons": [{"poison_id": PID, "tensors_sha256": sha}]}}


@pytest.mark.parametrize("existing,conflict", [
    ("other-craft", "run {rid}: '{path}' trained on craft {pid8}@bbbbbbbb, the packed record on craft "
                    "{pid8}@aaaaaaaa"),
    ("not-json", "'{path}' exists with other contents"),
    ("same-craft", "'{path}' exists with other contents"),
    ("directory", "'{path}' is not a file"),
    ("runs-a-file", "'{runs}' is a file, not a directory"),
])
def test_unpack_names_the_first_conflict_in_one_whole_line_and_writes_nothing(cli, tmp_path, existing, conflict):
    """A record of the same run id trained on another craft names both crafts (docs/engine.md, "One run id, one
    craft"); other contents, a directory where the file belongs or a file where runs/ belongs are named too."""
    ours = crafted(6, "a" * 64)
    path = write_pack(tmp_path / "p.jsonl.gz", [header(1), run_line(ours)])
    target = RunStore(tmp_path / "u").path(ours["run_id"])
    if existing == "runs-a-file":
        target.parent.parent.mkdir()
        target.parent.write_bytes(b"")
    elif existing == "directory":
        target.mkdir(parents=True)
    else:
        theirs = {"other-craft": crafted(6, "b" * 64), "same-craft": {**ours, "finished_at": "later"}}
        atomic_write_json(target, theirs.get(existing, {}))
        if existing == "not-json":
            target.write_text("{torn")
    before = {p: p.read_bytes() for p in files_under(tmp_path / "u")}
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    named = conflict.format(rid=ours["run_id"], path=target, runs=target.parent, pid8=PID[:8])
    assert refusal(code, err) == f"unpacking would overwrite 1 file(s) ({named}); {SKIP_HINT}"
    assert {p: p.read_bytes() for p in files_under(tmp_path / "u")} == before


def test_unpack_refuses_by_default_in_the_api_too(tmp_path):
    ours = crafted(6, "a" * 64)
    path = write_pack(tmp_path / "p.jsonl.gz", [header(1), run_line(ours)])
    atomic_write_json(RunStore(tmp_path / "u").path(ours["run_id"]), crafted(6, "b" * 64))
    with pytest.raises(PoisonbenchError, match="unpacking would overwrite 1 file"):
        packed_records.unpack(path, tmp_path / "u")


def test_skip_conflicts_lists_every_conflict_and_writes_the_rest(cli, tmp_path):
    """Two conflicting files before an identical one and a new one: both conflicts refused and named (none
    forgotten), the identical file counted unchanged, the new one written."""
    records = sorted((make_record(trial=t) for t in range(4)), key=lambda r: r["run_id"])
    path = write_pack(tmp_path / "p.jsonl.gz", [header(4), *map(run_line, records)])
    store = RunStore(tmp_path / "u")
    store.path(records[0]["run_id"]).mkdir(parents=True)  # a directory in the way
    atomic_write_json(store.path(records[1]["run_id"]), {**records[1], "finished_at": "later"})
    atomic_write_json(store.path(records[2]["run_id"]), records[2])  # identical
    code, out, err = cli("records", "unpack", path, tmp_path / "u", "--skip-conflicts", "--json")
    assert code == 0, err
    refused = [f"{q(store.path(records[0]['run_id']))} is not a file",
               f"{q(store.path(records[1]['run_id']))} exists with other contents"]
    assert json.loads(out) == {"directory": str(tmp_path / "u"), "runs": 4, "poison_manifests": 0, "written": 1,
                               "unchanged": 1, "refused": refused}
    assert err == "".join(f"not unpacked: {line}\n" for line in refused)
    assert store.path(records[3]["run_id"]).read_bytes() == json_bytes(records[3])


def test_an_existing_file_that_cannot_be_read_is_one_line(cli, tmp_path, monkeypatch):
    path = write_pack(tmp_path / "p.jsonl.gz", [header(1), run_line(RECORD)])
    target = RunStore(tmp_path / "u").path(RECORD["run_id"])
    atomic_write_json(target, RECORD)
    real = os.open

    def denied(path, *args, **kwargs):
        if os.fspath(path) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    code, _, err = cli("records", "unpack", path, tmp_path / "u")
    assert refusal(code, err) == f"cannot read {q(target)}: Permission denied"


# ----------------------------------------------------------------------------------------------- report

def test_a_packed_store_reads_records_by_run_id_whatever_their_line_order(tmp_path):
    """Lines out of run id order (a hand-made pack): `all()` returns them as RunStore would, by run id."""
    records = sorted((make_record(trial=t) for t in range(4)), key=lambda r: r["run_id"], reverse=True)
    path = write_pack(tmp_path / "p.jsonl.gz", [header(4), *map(run_line, records)])
    assert read_pack(path).path == path
    store = PackedRunStore(path)
    assert [r["run_id"] for r in store.all()] == sorted(r["run_id"] for r in records)
    packed_records.unpack(path, tmp_path / "u")
    assert store.all() == RunStore(tmp_path / "u").all()


def test_which_store_results_names(workspace, tmp_path, monkeypatch):
    """`--results` (else $POISONBENCH_RESULTS): a directory is a RunStore of it; an existing file (any name) or a
    name ending in .jsonl.gz / .jsonl.xz is a packed file; nothing named is not."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POISONBENCH_RESULTS", raising=False)
    packed = tmp_path / "records.bin"  # a pack under another name
    packed_records.pack(workspace, tmp_path / "p.jsonl.gz")
    packed.write_bytes((tmp_path / "p.jsonl.gz").read_bytes())
    assert [is_packed(name) for name in (None, "", "  ", str(workspace), str(packed), "missing.jsonl.xz")] == [
        False, False, False, False, True, True]
    expected = RunStore(workspace).all()
    assert len(expected) == 2
    store = open_store(str(workspace))
    assert type(store) is RunStore and store.all() == expected
    store = open_store(str(packed))
    assert type(store) is PackedRunStore and store.all() == expected
    monkeypatch.setenv("POISONBENCH_RESULTS", str(packed))
    assert is_packed(None) and type(open_store(None)) is PackedRunStore and open_store(None).all() == expected
    with pytest.raises(PoisonbenchError, match="^no packed records file 'missing.jsonl.gz' "):
        open_store("missing.jsonl.gz")
