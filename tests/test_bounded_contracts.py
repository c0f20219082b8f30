"""Contracts of the bounded reader (poisonbench/core/bounded.py) that the hand-planted bugs of 2026-11-29 found
unpinned (docs/testing.md, "core/bounded.py and report/html.py by hand"): which files count as regular (a link to one
does, a directory is unreadable rather than over a bound, each special file named for what it is), a file that grows
between its stat and its read (read whole up to the bound, refused beyond it, exactly at the bound taken), a
safetensors header cut short by the 8-byte length, a `__metadata__` that is not an object, where a JSON error is
(line and column), and `read_json_file`'s own depth bound."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from poisonbench.core import bounded
from poisonbench.core.bounded import Refused


def test_a_link_to_a_regular_file_is_read_through(tmp_path):
    """`check_regular_file` and the readers follow a symbolic link to a regular file (the workspace's own link
    checks are elsewhere): the stat and the bytes are the target's."""
    target = tmp_path / "record.json"
    target.write_text('{"a": [1, 2]}')
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert bounded.check_regular_file(link).st_size == target.stat().st_size
    assert bounded.read_json_file(link) == {"a": [1, 2]}


def test_a_directory_is_unreadable_not_over_a_bound(tmp_path):
    """A directory where a file belongs is unreadable (like a missing file: `over_limit` False, so the run store
    takes it for a run not done without a warning), whole message, by both the stat and the open."""
    for check in (bounded.check_regular_file, bounded.open_regular):
        with pytest.raises(Refused) as raised:
            check(tmp_path, "the file")
        assert (str(raised.value), raised.value.why, raised.value.over_limit) == \
            ("the file: unreadable (Is a directory)", "unreadable (Is a directory)", False)


def _stat_of(mode: int) -> os.stat_result:
    return os.stat_result((mode | 0o600, 1, 1, 1, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "what"), [(stat.S_IFBLK, "a device"), (stat.S_IFCHR, "a device"),
                                            (stat.S_IFIFO, "a FIFO"), (stat.S_IFSOCK, "a socket")])
def test_each_special_file_is_named_for_what_it_is_and_refused_as_over_a_bound(monkeypatch, mode, what):
    """A block device, a character device, a FIFO and a socket: each refused unread in one whole line naming what
    it is, `over_limit` True (a hostile file: named in a warning, never taken for a run not done)."""
    real_stat = os.stat  # bounded.os is the os module: only this one path gets the special file's stat
    monkeypatch.setattr(bounded.os, "stat", lambda path, *a, **k: _stat_of(mode) if path == "x.json"
                        else real_stat(path, *a, **k))
    with pytest.raises(Refused) as raised:
        bounded.check_regular_file("x.json", "'x.json'")
    assert str(raised.value) == f"'x.json': {what}, not a regular file; refused unread (only regular files are read)"
    assert raised.value.over_limit is True


def test_a_real_socket_and_a_real_device_are_named(tmp_path):
    path = tmp_path / "s.json"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(Refused, match=r": a socket, not a regular file;"):
            bounded.read_json_file(path)
    finally:
        server.close()
    with pytest.raises(Refused, match=r"^'/dev/null': a device, not a regular file; refused unread"):
        bounded.read_bytes("/dev/null", 10)


@settings(max_examples=150, deadline=None)
@given(true_size=st.integers(0, 300), stat_size=st.integers(0, 300), max_bytes=st.integers(0, 300))
@example(true_size=110, stat_size=50, max_bytes=102)  # the reads reach exactly the bound: one more byte is over it
@example(true_size=102, stat_size=50, max_bytes=102)  # a grown file exactly at the bound: read whole
def test_a_file_that_grew_since_its_stat_is_read_whole_up_to_the_bound_and_refused_beyond(
        tmp_path_factory, true_size, stat_size, max_bytes):
    """`read_bytes` stats the file, then reads: a file that grew in between (its stat smaller than what it holds)
    is read whole when it holds `max_bytes` or fewer (exactly at the bound included) and refused when it holds
    more; a stat already over the bound is refused unread. Simulated by a stat that reports fewer bytes."""
    stat_size = min(stat_size, true_size)
    path = tmp_path_factory.mktemp("grow") / "f.bin"
    data = bytes(range(256)) * 2
    path.write_bytes(data[:true_size])
    real_fstat = os.fstat
    inode = path.stat().st_ino

    def smaller(fd):  # bounded.os is the os module: only this file's descriptor reports fewer bytes
        st_ = real_fstat(fd)
        if st_.st_ino != inode:
            return st_
        fields = list(st_)
        fields[stat.ST_SIZE] = stat_size
        return os.stat_result(fields)

    original, bounded.os.fstat = bounded.os.fstat, smaller
    try:
        if stat_size > max_bytes or true_size > max_bytes:
            with pytest.raises(Refused) as raised:
                bounded.read_bytes(path, max_bytes, "f")
            assert raised.value.why == \
                f"larger than {bounded.size_text(max_bytes)}, the limit for this file; refused unread"
        else:
            assert bounded.read_bytes(path, max_bytes, "f") == data[:true_size]
    finally:
        bounded.os.fstat = original


def _safetensors_header(header: dict, declared_extra: int = 0) -> bytes:
    body = json.dumps(header).encode()
    return (len(body) + declared_extra).to_bytes(8, "little") + body


def test_a_safetensors_header_longer_than_the_bytes_after_its_length_is_cut():
    """The header's declared length counts from byte 8: a header declaring even one byte more than follows is
    "cut" (whole message), one that fits exactly is read."""
    header = {"__metadata__": {"spec": "s"}}
    assert bounded.tensors_metadata(_safetensors_header(header), "f") == {"spec": "s"}
    for extra in (1, 8):
        with pytest.raises(Refused) as raised:
            bounded.tensors_metadata(_safetensors_header(header, extra), "f")
        assert str(raised.value) == ("f: not a readable safetensors file (its header is cut or larger than "
                                     "16.0 MB)")
        assert raised.value.over_limit is False


@pytest.mark.parametrize("meta", [["spec"], "spec", 3, None])
def test_a_safetensors_metadata_that_is_not_an_object_reads_as_none(meta):
    assert bounded.tensors_metadata(_safetensors_header({"__metadata__": meta}), "f") == {}
    assert bounded.tensors_metadata(_safetensors_header(["not", "an", "object"]), "f") == {}


def test_a_json_error_names_its_column_on_line_1_and_its_line_and_column_after():
    with pytest.raises(Refused) as raised:
        bounded.loads_json(b'{"a": }', "f")
    assert str(raised.value) == "f: not valid JSON (Expecting value at column 7)"
    with pytest.raises(Refused) as raised:
        bounded.loads_json(b'{\n"a": }', "f")
    assert str(raised.value) == "f: not valid JSON (Expecting value at line 2, column 6)"
    with pytest.raises(Refused) as raised:
        bounded.loads_json(b'{\n\n"a": }', "f")
    assert str(raised.value) == "f: not valid JSON (Expecting value at line 3, column 6)"


def test_read_json_file_applies_its_own_depth_bound(tmp_path):
    """`read_json_file(max_depth=k)` takes a document exactly k containers deep and refuses k + 1, whatever
    MAX_DEPTH."""
    path = tmp_path / "d.json"
    path.write_text("[[[1]]]")
    assert bounded.read_json_file(path, max_depth=3) == [[[1]]]
    with pytest.raises(Refused) as raised:
        bounded.read_json_file(path, max_depth=2, label="d")
    assert str(raised.value) == "d: nested more than 2 levels deep, the limit"


def test_a_toml_integer_of_too_many_digits_is_over_a_bound_and_malformed_toml_is_damaged():
    """`loads_toml`: an integer past Python's digit bound is refused as over a bound (whole message); a malformed
    document as damaged (`over_limit` False)."""
    digits = bounded.MAX_INT_DIGITS + 1
    with pytest.raises(Refused) as raised:
        bounded.loads_toml(f"x = {'1' * digits}\n", "grid")
    assert str(raised.value) == f"grid: holds an integer of more than {bounded.MAX_INT_DIGITS} digits, the limit"
    assert raised.value.over_limit is True
    with pytest.raises(Refused) as raised:
        bounded.loads_toml("x = = 1\n", "grid")
    assert raised.value.over_limit is False and str(raised.value).startswith("grid: malformed TOML (")


def test_loads_toml_takes_exactly_its_depth_and_refuses_one_more():
    """Tables nest like JSON objects: `[a.b]` is 3 containers deep (the document, a, b)."""
    assert bounded.loads_toml("[a.b]\nc = 1\n", "grid", max_depth=3) == {"a": {"b": {"c": 1}}}
    with pytest.raises(Refused) as raised:
        bounded.loads_toml("[a.b]\nc = 1\n", "grid", max_depth=2)
    assert str(raised.value) == "grid: nested more than 2 levels deep, the limit"
    assert raised.value.over_limit is True


def test_read_text_refuses_text_that_is_not_utf8_in_one_whole_line(tmp_path):
    path = tmp_path / "g.toml"
    path.write_bytes(b"x = '\xff'\n")
    with pytest.raises(Refused) as raised:
        bounded.read_text(path, 100)
    assert str(raised.value) == f"{str(path)!r}: not UTF-8 text"
    assert raised.value.over_limit is False
    path.write_bytes("x = 'é'\n".encode())
    assert bounded.read_text(path, 100) == "x = 'é'\n"


def test_a_file_is_named_by_its_label_or_else_its_quoted_path(tmp_path):
    """The label given names the file; without one, the path quoted as Python quotes it."""
    path = tmp_path / "big file.json"
    path.write_bytes(b"[1, 2, 3]")
    for label, name in ((None, repr(str(path))), ("the record", "the record")):
        with pytest.raises(Refused) as raised:
            bounded.read_bytes(path, 8, label)
        assert str(raised.value) == f"{name}: larger than 8 bytes, the limit for this file; refused unread"
