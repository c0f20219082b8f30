"""Issue 82 item 3, round 4: the holes left in the one read discipline. Pickles' opcodes are checked before any
unpickler sees them (core/bounded_pickle.py: memo indices, refused opcodes, declared lengths, memory per byte);
packed record files bound the memory their JSON takes per byte of text; the grid estimate's throughput table is
read through the bounded reader."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from poisonbench.core import bounded, bounded_pickle
from poisonbench.core.bounded import Refused
from poisonbench.core.errors import PoisonbenchError

from .test_read_discipline import fifo, quick  # noqa: F401 (fifo: a fixture)

REPO = Path(__file__).resolve().parents[1]
# LONG_BINPUT 2**28: CPython's C unpickler grows its memo array to that index (4.1 GB peak RSS, measured)
MEMO_BOMB = b"\x80\x02N" + b"r" + (2**28).to_bytes(4, "little") + b"."


def _readers():
    from poisonbench.data.cifar_pickle import load_batch
    from poisonbench.poisons.interchange.unpickle import load_pickle, load_torch_or_pickle

    return {"cifar batch": load_batch, "toxic pickle": load_pickle, "forest pickle": load_torch_or_pickle}


# --- 1. pickles -----------------------------------------------------------------------------------------------------

def test_the_memo_bomb_is_refused_at_once_without_growing_memory(tmp_path):
    """9 bytes that made the unpickler take 4.1 GB: each pickle reader refuses them in one line, in under a few
    seconds, the process's peak RSS growing less than 50 MB (a child process, its address space capped at 1.5 GB
    over what it holds, so that an unfixed reader fails with MemoryError rather than taking the machine's memory)."""
    bomb = tmp_path / "data_batch_1"
    bomb.write_bytes(MEMO_BOMB)
    script = textwrap.dedent(f"""
        import resource, time
        from poisonbench.core.bounded import Refused
        from poisonbench.data.cifar_pickle import load_batch
        from poisonbench.poisons.interchange.unpickle import load_pickle, load_torch_or_pickle
        vm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, resource.RLIM_INFINITY))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        for load in (load_batch, load_pickle, load_torch_or_pickle):
            try:
                load({str(bomb)!r})
                print("loaded")
            except Refused as e:
                print("refused", e)
            except Exception as e:
                print("failed", type(e).__name__, e)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"grown {{grown:.1f}} MB in {{time.monotonic() - started:.2f}} s")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 4, (done.stdout, done.stderr)
    for line in lines[:3]:
        assert line.startswith("refused ") and "memo entry 268435456 at byte 3 after 2 opcodes" in line, line
    grown, seconds = float(lines[3].split()[1]), float(lines[3].split()[4])
    assert grown < 50 and seconds < 10, lines[3]


def test_the_bounded_reader_allocates_what_the_file_holds_not_its_bound(tmp_path):
    """`read_bytes(path, 16 GB)` of a 9-byte file under an address-space limit (`ulimit -v`) 1.5 GB above what the
    process holds: `f.read(max_bytes + 1)` allocated the 16 GB bound before reading (MemoryError, whatever the file's
    size: every safetensors and pickle read); now the file's size + 1, and on up to the bound if it grew."""
    path = tmp_path / "small"
    path.write_bytes(MEMO_BOMB)
    script = textwrap.dedent(f"""
        import resource
        from poisonbench.core.bounded import MAX_TENSOR_FILE_BYTES, read_bytes
        vm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, resource.RLIM_INFINITY))
        print(read_bytes({str(path)!r}, MAX_TENSOR_FILE_BYTES) == {MEMO_BOMB!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.stdout.strip() == "True", (done.stdout, done.stderr)


@pytest.mark.parametrize("reader", ["cifar batch", "toxic pickle", "forest pickle"])
@pytest.mark.parametrize(("payload", "why"), [
    (MEMO_BOMB, "memo entry 268435456 at byte 3 after 2 opcodes"),
    (b"\x80\x02(K\x01p999\n.", "memo entry 999 at byte 5 after 3 opcodes"),  # PUT, protocol 0's text form
    (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"xx.", "declares 1099511627776 bytes for the opcode at "
     "byte 2, only 3 follow"),  # BINBYTES8
    (b"\x80\x05\x96" + (2**33).to_bytes(8, "little") + b".", "declares 8589934592 bytes"),  # BYTEARRAY8
    (b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.", "declares a frame of 1099511627776 bytes at byte 2, "
     "only 2 follow"),
    (b"\x80\x02X" + (2**31).to_bytes(4, "little") + b"abc.", "declares 2147483648 bytes"),  # BINUNICODE
    (b"\x80\x02\x82\x01.", "opcode EXT1 at byte 2"),
    (b"\x80\x02NQ.", "opcode BINPERSID at byte 3"),
    (b"Pid\n.", "opcode PERSID at byte 0"),
    (b"(i__main__\nC\n.", "opcode INST at byte 1"),
    (b"\x80\x05\x97.", "opcode NEXT_BUFFER at byte 2"),
])
def test_every_pickle_reader_refuses_what_no_data_pickle_holds_before_unpickling(tmp_path, reader, payload, why):
    """Memo indices past the opcodes so far, declared lengths past the end, opcodes no data pickle needs: one
    `Refused` line naming the file, from each of the three pickle readers (one helper, `read_pickle`)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(Refused) as raised:
        _readers()[reader](path)
    message = str(raised.value)
    assert message.startswith(repr(str(path)) + ": ") and why in message, message
    assert message.endswith("refused before unpickling") and "\n" not in message


def _batch(rows: int = 64) -> dict:
    x = np.random.default_rng(0).integers(0, 256, (rows, 3072), dtype=np.uint8)
    return {b"batch_label": b"training batch 1 of 5", b"labels": list(range(rows)), b"data": x,
            b"filenames": [b"img_%d.png" % i for i in range(rows)]}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_genuine_pickles_of_every_protocol_still_load(tmp_path, protocol):
    """A CIFAR-style batch and the Toxic benchmark's PIL images, pickled with each protocol (protocol 2 and 5 are
    what the official batches and numpy's out-of-band-free arrays use), pass the scan and load as before."""
    from PIL import Image

    from poisonbench.data.cifar_pickle import load_batch
    from poisonbench.poisons.interchange.unpickle import load_pickle

    batch = _batch()
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = load_batch(tmp_path / "data_batch_1")
    assert np.array_equal(loaded["data"], batch[b"data"]) and loaded["labels"] == batch[b"labels"]
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    (tmp_path / "poisons.pickle").write_bytes(pickle.dumps([(Image.fromarray(pixels), 3)] * 3, protocol=protocol))
    images = load_pickle(tmp_path / "poisons.pickle")
    assert [label for _, label in images] == [3, 3, 3]
    assert all(np.array_equal(image.array("x"), pixels) for image, _ in images)


def test_a_pickle_over_the_memory_per_byte_bound_is_refused_and_one_at_it_loads(tmp_path, monkeypatch):
    """Empty sets: 1 byte of pickle each, 216 bytes of Python each. Above the floor, an estimate of
    MAX_PICKLE_MEMORY_PER_BYTE × the file's size at most: a pickle whose estimate is exactly at the floor loads,
    one byte over it is refused, before unpickling; the estimate against the memory available likewise."""
    from poisonbench.poisons.interchange.unpickle import load_pickle

    path = tmp_path / "poisons.pickle"
    path.write_bytes(pickle.dumps([set() for _ in range(2000)], protocol=4))
    estimate = bounded_pickle.check_pickle(path.read_bytes(), "x")
    assert estimate > bounded_pickle.MAX_PICKLE_MEMORY_PER_BYTE * path.stat().st_size  # 140 per byte
    monkeypatch.setattr(bounded_pickle, "PICKLE_MEMORY_FLOOR", estimate)
    assert load_pickle(path) == [set()] * 2000
    monkeypatch.setattr(bounded_pickle, "PICKLE_MEMORY_FLOOR", estimate - 1)
    with pytest.raises(Refused) as raised:
        load_pickle(path)
    assert f"its opcodes build up to {bounded.size_text(estimate)}" in str(raised.value)
    monkeypatch.setattr(bounded_pickle, "PICKLE_MEMORY_FLOOR", 10**12)
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate)
    assert load_pickle(path) == [set()] * 2000
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate - 1)
    with pytest.raises(Refused, match="unpickling it takes about"):
        load_pickle(path)


def test_the_estimate_is_above_what_unpickling_takes():
    """`check_pickle`'s estimate is an upper bound: tracemalloc's peak while unpickling, for a batch (4-6 per byte
    estimated, 1-3 taken), a list of ints, of empty sets, of dicts, of short strings."""
    import io
    import tracemalloc

    from poisonbench.data.cifar_pickle import _BatchUnpickler

    cases = [pickle.dumps(_batch(500), protocol=p) for p in (2, 5)] + [
        pickle.dumps(obj, protocol=4) for obj in (list(range(1000, 21000)), [set() for _ in range(10000)],
                                                  [{i: i} for i in range(10000)], [f"a{i}" for i in range(10000)])]
    for data in cases:
        estimate = bounded_pickle.check_pickle(data, "x")
        tracemalloc.start()
        try:
            _BatchUnpickler(io.BytesIO(data), Path("x")).load()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= estimate, (len(data), peak, estimate)


# --- 3. the grid estimate's throughput table -------------------------------------------------------------------------

def test_the_throughput_table_is_read_through_the_bounded_reader(tmp_path, monkeypatch):
    """`sweeps/estimate.py`'s throughput.json (and `write_table`'s existing table): nested too deep or over the
    JSON bound is one `Refused` line naming the file, not a RecursionError or a read of any size."""
    from poisonbench.sweeps import estimate

    deep = tmp_path / "throughput.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for read in (estimate.packaged_figures, lambda p: estimate.write_table(p, "A", {})):
        with pytest.raises(Refused, match="nested more than 64 levels deep"):
            read(deep)
    big = tmp_path / "big.json"
    big.write_text('{"devices": {}}')
    monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", big.stat().st_size)
    assert estimate.packaged_figures(big) == []
    monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", big.stat().st_size - 1)
    with pytest.raises(Refused, match="larger than 14 bytes"):
        estimate.packaged_figures(big)
    monkeypatch.undo()
    assert estimate.packaged_figures()  # the packaged table itself reads


def test_a_fifo_for_the_throughput_table_is_refused_unread(tmp_path, fifo):  # noqa: F811 (the fixture)
    import time

    from poisonbench.sweeps import estimate

    path = fifo(tmp_path / "throughput.json")
    started = time.monotonic()
    with pytest.raises(PoisonbenchError, match="a FIFO, not a regular file"):
        estimate.packaged_figures(path)
    quick(started)


# --- 2. packed record files: memory per byte of text ------------------------------------------------------------------

def _pack_of(tmp_path, record: dict) -> tuple[Path, int, int]:
    """(a packed file of one run record, its lines' estimate, their text)."""
    import json

    from poisonbench.experiment import packed_records as pr

    lines = [pr._line({"format": pr.FORMAT, "kind": "header", "poison_manifests": 0, "runs": 1, "version": 1}),
             pr._line({"kind": "run", "record": record})]
    path = tmp_path / "junk.jsonl.gz"
    path.write_bytes(pr.gzip_bytes(b"".join(lines)))
    assert json.loads(lines[1])["record"] == record
    return path, sum(map(pr.json_memory_estimate, lines)), sum(map(len, lines))


def test_a_pack_of_tiny_containers_is_refused_at_the_memory_bound_and_one_at_it_read(tmp_path, monkeypatch):
    """`[]` after `[]`: 24-36 bytes of Python per byte of text. Above the floor, the lines may estimate
    MAX_PACKED_MEMORY_PER_BYTE × their text at most: estimated exactly at the floor the pack is read, one byte over
    it refused, in one line naming the file, before the line is parsed; against the memory available likewise."""
    from poisonbench.experiment import packed_records as pr

    path, estimate, text = _pack_of(tmp_path, {"run_id": "r1", "junk": [[] for _ in range(20_000)]})
    assert estimate > pr.MAX_PACKED_MEMORY_PER_BYTE * text
    monkeypatch.setattr(pr, "PACKED_MEMORY_FLOOR", estimate)
    assert len(pr.read_pack(path).runs) == 1
    monkeypatch.setattr(pr, "PACKED_MEMORY_FLOOR", estimate - 1)
    with pytest.raises(Refused) as raised:
        pr.read_pack(path)
    assert str(raised.value).startswith(f"{str(path)!r}: its JSON up to line 2 would take about ")
    assert "the limit is 20 (genuine records take 9-11); refused" in str(raised.value)
    monkeypatch.setattr(pr, "PACKED_MEMORY_FLOOR", 10**12)
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate - 1)
    with pytest.raises(Refused, match="parsing it up to line 2 takes about"):
        pr.read_pack(path)


def test_the_estimate_bounds_what_parsing_takes_and_genuine_packs_pass(tmp_path, monkeypatch):
    """The token count is an upper bound on tracemalloc's count of what `json.loads` built, for tiny containers,
    short strings, small ints; every pack in experiments/records/ reads with the floor at 0 (9-11 per byte)."""
    import glob
    import json
    import tracemalloc

    from poisonbench.experiment import packed_records as pr

    for line in (b"[" + b"[]," * 30_000 + b"[]]", b"[" + b"{}," * 30_000 + b"{}]", b'[' + b'"ab",' * 20_000 + b'""]',
                 b"[" + b"1," * 30_000 + b"1]", b"[" + b'{"a":[]},' * 10_000 + b"{}]"):
        tracemalloc.start()
        try:
            parsed = json.loads(line)
            taken = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert parsed and taken <= pr.json_memory_estimate(line), (line[:10], taken)
    monkeypatch.setattr(pr, "PACKED_MEMORY_FLOOR", 0)
    packs = sorted(glob.glob(str(REPO / "experiments" / "records" / "*.jsonl.xz")))[:3]
    for pack in packs:
        assert pr.read_pack(pack).runs
