"""One bounded reader for every untrusted file (poisonbench/core/bounded.py; docs/commands.md, "Limits"): hostile
files small on disk (a few MB at most) that declare or inflate to gigabytes, nest 100,000 deep, block (a FIFO) or
hold a 5,000-digit integer are refused in one line naming the file and the limit, or skipped and named where a
command reads many files; the memory ones in a child process whose address space is bounded."""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from poisonbench.core import bounded
from poisonbench.core.bounded import MAX_DEPTH, MAX_INT_DIGITS, Refused
from poisonbench.experiment.packed_records import gzip_bytes
from poisonbench.experiment.records import RunStore
from tests.conftest import one_line_error, write_npz
from tests.report_records import make_record, write_records
from tests.test_probe_sweep_run import planned
from tests.test_probe_sweep_run import write_grid as write_run_grid

GiB = 1 << 30
CHUNK = 1 << 20
DEEP = 100_000  # "[" * DEEP + "]" * DEEP: 200 kB


def deflate_repeated(head: bytes, byte: bytes, count: int) -> bytes:
    """A raw deflate stream of `head` then `count` bytes `byte`, made in milliseconds whatever `count`: each
    1 MiB block is flushed in full (byte-aligned, no shared dictionary), so its compressed bytes repeat."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(byte * CHUNK) + comp.flush(zlib.Z_FULL_FLUSH)
    out += [block] * (count // CHUNK)
    out.append(comp.compress(byte * (count % CHUNK)) + comp.flush())
    return b"".join(out)


def crc_repeated(head: bytes, byte: bytes, count: int) -> int:
    crc, chunk = zlib.crc32(head), byte * CHUNK
    for _ in range(count // CHUNK):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(byte * (count % CHUNK), crc)


def zeros_npz(path: Path, arrays: dict[str, tuple[str, tuple[int, ...]]]) -> Path:
    """An honest .npz (a zip of deflated .npy members, CRCs right) whose arrays are all zeros: 1.5 GB of them
    take 1.5 MB on disk. Written by hand: numpy would first hold the arrays."""
    import io

    local, central = bytearray(), bytearray()
    for name, (descr, shape) in arrays.items():
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
        head, nbytes = header.getvalue(), int(np.prod(shape)) * np.dtype(descr).itemsize
        data = deflate_repeated(head, b"\0", nbytes)
        crc, size, fname = crc_repeated(head, b"\0", nbytes), len(head) + nbytes, f"{name}.npy".encode()
        assert size < 1 << 32  # no zip64 needed
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(fname), 0)
        local += fname + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                               len(fname), 0, 0, 0, 0, 0, offset) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(arrays), len(arrays), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def gzip_repeated(path: Path, head: bytes, byte: bytes, count: int) -> Path:
    """A gzip file of `head` then `count` bytes `byte` (its trailer's CRC is not computed: every reader here stops
    long before the end)."""
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate_repeated(head, byte, count)
                     + struct.pack("<II", 0, count % (1 << 32)))
    return path


@contextmanager
def address_space(extra: int = GiB):
    """Within the block this process's address space may grow by `extra` bytes at most (RLIMIT_AS's soft limit,
    restored after): a reader that allocates in proportion to what a file declares fails with MemoryError."""
    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


@contextmanager
def no_blocking(seconds: int = 10):
    """Within the block a call that blocks (open() of a FIFO without a writer) is interrupted after `seconds`, and
    the test fails instead of hanging."""
    def interrupt(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def header_line(runs: int = 0) -> bytes:
    return (json.dumps({"kind": "header", "format": "poisonbench-records", "version": 1, "runs": runs,
                        "poison_manifests": 0}) + "\n").encode()


@pytest.fixture
def workspace(tmp_path) -> Path:
    return write_records(tmp_path / "res", [make_record(trial=t) for t in range(2)])


# ------------------------------------------------------------------------------------------- the module itself


def test_the_bounded_reader_refuses_each_hostile_shape_in_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(deep_json())
    with pytest.raises(Refused, match=rf"deep\.json.*nested more than {MAX_DEPTH} levels"):
        bounded.read_json_file(deep)
    shallow_but_over = tmp_path / "over.json"
    shallow_but_over.write_text(deep_json(MAX_DEPTH + 1))  # parses, then the depth check refuses it
    with pytest.raises(Refused, match="nested more than"):
        bounded.read_json_file(shallow_but_over)
    assert bounded.loads_json(deep_json(MAX_DEPTH), "x") is not None
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    with pytest.raises(Refused, match="larger than 100 bytes"):
        bounded.read_json_file(big, max_bytes=100)
    with pytest.raises(Refused, match=f"an integer of more than {MAX_INT_DIGITS} digits"):
        bounded.loads_json("1" * 5000, "x")
    with pytest.raises(Refused, match="nested more than"):
        bounded.loads_toml("seed = " + deep_json(), "grid")
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    with pytest.raises(Refused, match="a FIFO, not a regular file"):
        bounded.read_json_file(fifo)  # at once: opened without blocking
    import io

    lines = bounded.iter_bounded_lines(io.BytesIO(b"ab\n" + b"c" * 11), "f", max_line=10)
    assert next(lines) == (1, b"ab\n")
    with pytest.raises(Refused, match="line 2 is longer than 10 bytes"):
        next(lines)


# ------------------------------------------------------------------------------------------- .npz datasets


def test_an_npz_declaring_more_than_loading_it_can_hold_is_refused_before_allocating(cli, tmp_path):
    """1.5 MB on disk declaring 1.5 GB of images (the probe's file): refused in one line, naming the file, the
    declared size and the memory available, with 1 GiB of address space to spare. Before: np.lib.format
    allocated the array (the old check compared 1.5 GB with the host's MemAvailable), MemoryError here, the
    OOM killer on the probe's machine."""
    n = 500_000  # 500,000 32×32×3 images: 1.536 GB
    npz = zeros_npz(tmp_path / "zeros.npz", {"x": ("|u1", (n, 32, 32, 3)), "y": ("<i8", (n,))})
    assert npz.stat().st_size < 3_000_000
    with address_space(GiB):
        code, out, err = cli("data", "info", npz)
    one_line_error(code, err, str(npz), "declares 1.5 GB", "on disk, more than 100× the file",
                   "refused before reading it")


def test_an_npz_that_deflates_honestly_but_needs_more_memory_than_there_is_is_refused(monkeypatch, cli, tmp_path):
    """The memory bound behind the inflation bound: the loader's measured bytes per declared byte against what is
    available (here: the same 1.5 GB file with the inflation bound lifted, 1 GiB of address space to spare)."""
    from poisonbench.data import npz as npz_module

    monkeypatch.setattr(npz_module, "MAX_NPZ_INFLATION", 10**9)
    n = 500_000
    npz = zeros_npz(tmp_path / "zeros.npz", {"x": ("|u1", (n, 32, 32, 3)), "y": ("<i8", (n,))})
    with address_space(GiB):
        code, out, err = cli("data", "info", npz)
    one_line_error(code, err, str(npz), "declares 1.5 GB", "memory available", "refused before reading it")


def test_an_npz_over_the_absolute_bound_is_refused_whatever_the_memory(monkeypatch, tmp_path):
    from poisonbench.data import npz as npz_module
    from poisonbench.data.npz import NpyHeader, check_declared_size

    monkeypatch.setattr(npz_module, "available_memory", lambda: 1 << 60)
    x = NpyHeader((200_000, 224, 224, 3), np.dtype(np.uint8), 128, 0)  # 30 GB of ImageNet-sized images
    y = NpyHeader((200_000,), np.dtype(np.int64), 128, 0)
    with pytest.raises(Exception, match=r"big\.npz: declares 30\.1 GB .* the limit of 16\.0 GB"):
        check_declared_size(Path("big.npz"), x, y)
    check_declared_size(Path("ok.npz"), NpyHeader((60_000, 32, 32, 3), np.dtype(np.uint8), 128, 0), y)


def test_an_honest_npz_still_loads(cli, tmp_path):
    code, out, err = cli("data", "info", write_npz(tmp_path), "--json")
    assert code == 0, err


# ------------------------------------------------------------------------------------------- packed record files


def test_a_packed_file_holding_one_huge_line_is_refused_in_one_line_without_reading_it(cli, tmp_path):
    """4 MB of gzip inflating to one 2 GiB line without a newline: refused at the line bound, naming the file and
    the limit, with 1 GiB of address space to spare. Before: `for line in f` read the whole line, MemoryError."""
    packed = gzip_repeated(tmp_path / "huge.jsonl.gz", b"", b"a", 2 * GiB)
    assert packed.stat().st_size < 5_000_000
    with address_space(GiB):
        code, out, err = cli("report", "--results", packed)
    one_line_error(code, err, str(packed), "line 1 is longer than 16.0 MB")


def test_a_packed_file_inflating_past_the_total_bound_is_refused(monkeypatch, cli, tmp_path):
    monkeypatch.setattr(bounded, "MAX_PACKED_BYTES", 1000)
    packed = tmp_path / "many.jsonl.gz"
    padded = header_line(0)[:-1] + b" " * 600 + b"\n"  # a valid line of 700 bytes: the second one passes the bound
    packed.write_bytes(gzip_bytes(padded * 2))
    one_line_error(*cli("records", "unpack", packed, tmp_path / "out")[::2], str(packed),
                   "more than 1.0 kB uncompressed (at line 2)")


def test_a_deeply_nested_packed_line_is_refused_in_one_line(cli, tmp_path):
    """Before: RecursionError escaped `read_pack` (only ValueError was caught): a traceback."""
    packed = tmp_path / "deep.jsonl.gz"
    packed.write_bytes(gzip_bytes(header_line(1) + deep_json().encode() + b"\n"))
    for args in (["report", "--results", packed], ["records", "unpack", packed, tmp_path / "out"]):
        one_line_error(*cli(*args)[::2], f"{str(packed)!r} line 2", f"nested more than {MAX_DEPTH} levels")


def test_a_packed_line_with_a_5000_digit_integer_gives_the_right_reason(cli, tmp_path):
    """Before: "not valid JSON (not UTF-8 text)", the wrong reason (Python's int digits limit is a ValueError)."""
    packed = tmp_path / "digits.jsonl.gz"
    packed.write_bytes(gzip_bytes(header_line(1) + b'{"kind":"run","record":{"n":' + b"1" * 5000 + b"}}\n"))
    code, out, err = cli("records", "unpack", packed, tmp_path / "out")
    one_line_error(code, err, f"{str(packed)!r} line 2", f"an integer of more than {MAX_INT_DIGITS} digits")
    assert "UTF-8" not in err


def test_a_fifo_named_like_a_packed_file_is_refused_not_waited_on(cli, tmp_path):
    """Before: `report` opened the FIFO and blocked until a writer came (interrupted here after 10 s)."""
    fifo = tmp_path / "records.jsonl.gz"
    os.mkfifo(fifo)
    with no_blocking():
        code, out, err = cli("report", "--results", fifo)
    one_line_error(code, err, str(fifo), "a FIFO, not a regular file")


# ------------------------------------------------------------------------------------------- runs/ and failures/


def test_report_and_pack_skip_and_name_a_deeply_nested_record(cli, workspace, tmp_path):
    """Before: RecursionError out of `RunStore.all()` ended `report` and `records pack` with a traceback."""
    deep = workspace / "runs" / "deep.json"
    deep.write_text(deep_json())
    code, out, err = cli("report", "--format", "csv", "--results", workspace)
    assert code == 0 and "Traceback" not in err, err
    assert f"skipped {deep}: nested more than {MAX_DEPTH} levels deep" in err
    code, out, err = cli("records", "pack", workspace, tmp_path / "p.jsonl.gz")
    assert code == 0 and "Traceback" not in err, err
    assert f"skipped {deep}: nested more than {MAX_DEPTH} levels deep" in err


def test_report_skips_and_names_a_fifo_among_the_records(cli, workspace):
    """Before: `report` blocked on the FIFO (interrupted here after 10 s)."""
    fifo = workspace / "runs" / "fifo.json"
    os.mkfifo(fifo)
    with no_blocking():
        code, out, err = cli("report", "--format", "csv", "--results", workspace)
    assert code == 0, err
    assert f"skipped {fifo}: a FIFO, not a regular file" in err


def test_sweep_plan_and_status_name_a_deeply_nested_run_or_failure_record(cli, tmp_path):
    """Before: `store.get` / `store.failure` caught ValueError only; RecursionError ended both commands."""
    grid, results = write_run_grid(tmp_path, trials=1), tmp_path / "r"
    (step,) = planned(grid, results).runs
    store = RunStore(str(results))
    for path in (store.path(step.key), store.failure_path(step.key)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(deep_json())
    for command in ("plan", "status"):
        code, out, err = cli("sweep", command, grid, "--results", results)
        assert code == 0 and "Traceback" not in err, err
        for path in (store.path(step.key), store.failure_path(step.key)):
            assert f"skipped {path}: nested more than {MAX_DEPTH} levels deep" in err, err


def test_a_grid_nesting_a_seed_list_deeply_is_one_line(cli, tmp_path):
    """Before: `seed = [[[…]]]` 100,000 deep ended `sweep plan` in a RecursionError traceback."""
    grid = tmp_path / "deep.toml"
    grid.write_text(f'[defaults]\ndataset = "{write_npz(tmp_path)}"\n\n[[runs]]\nseed = {deep_json()}\n')
    one_line_error(*cli("sweep", "plan", grid, "--results", tmp_path / "r")[::2], str(grid),
                   f"nested more than {MAX_DEPTH} levels deep")


def test_a_grid_over_the_size_bound_is_one_line(cli, tmp_path):
    grid = tmp_path / "big.toml"
    grid.write_text("# " + "x" * bounded.MAX_GRID_BYTES + "\n")
    one_line_error(*cli("sweep", "plan", grid, "--results", tmp_path / "r")[::2], str(grid), "larger than 1.0 MB")


def test_gzip_reads_the_packed_files_the_repo_ships_within_the_bounds():
    """The archived packs (experiments/records/) read: the bounds refuse no genuine file (the two largest here)."""
    from poisonbench.experiment.packed_records import read_pack

    records = Path(__file__).resolve().parents[1] / "experiments" / "records"
    for pack in (records / "mnist-5k.jsonl.xz", records / "fashion-5k-targeted.jsonl.xz"):  # most runs, longest line
        assert read_pack(pack).runs
    assert gzip.decompress(gzip_bytes(b"x")) == b"x"
