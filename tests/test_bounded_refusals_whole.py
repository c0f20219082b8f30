"""`core/bounded.py`'s refusals stated whole, and how much `read_bytes` asks of a file (issue 82, the full mutmut
run of 2026-11-29, commit 81bb672: its survivors were refusals checked by substring or never reached, the OSError
branches of the stat, the open and the read, a label dropped for the quoted path, and reads that asked for more than
the bound). Each refusal is `Refused(where, why, over_limit)`, its message `where: why`; `where` is the label a
caller gives, else the file's quoted path."""

from __future__ import annotations

import errno
import io
import os
from types import SimpleNamespace

import pytest

from poisonbench.core import bounded
from poisonbench.core.bounded import Refused


def refusal(call) -> tuple[str, str, bool, str]:
    with pytest.raises(Refused) as info:
        call()
    e = info.value
    assert info.value.__cause__ is None
    return e.where, e.why, e.over_limit, str(e)


@pytest.mark.parametrize("label", [None, "the grid"])
def test_a_missing_file_is_unreadable_named_by_its_label_or_quoted_path(tmp_path, label):
    path = tmp_path / "absent.json"
    where = label if label is not None else repr(str(path))
    why = "unreadable (No such file or directory)"
    for call in (lambda: bounded.check_regular_file(path, label), lambda: bounded.open_regular(path, label),
                 lambda: bounded.read_bytes(path, 10, label), lambda: bounded.read_text(path, 10, label)):
        assert refusal(call) == (where, why, False, f"{where}: {why}")


@pytest.mark.parametrize("error, why", [(PermissionError(errno.EACCES, "Permission denied"),
                                         "unreadable (Permission denied)"),
                                        (OSError(), "unreadable (OSError)")])
def test_an_oserror_is_named_by_its_strerror_else_its_type(tmp_path, monkeypatch, error, why):
    path = tmp_path / "f.json"
    path.write_text("{}")

    def fails(*_a, **_k):
        raise error

    monkeypatch.setattr(bounded.os, "stat", fails)
    where = repr(str(path))
    assert refusal(lambda: bounded.check_regular_file(path)) == (where, why, False, f"{where}: {why}")
    monkeypatch.undo()
    monkeypatch.setattr(bounded.os, "open", fails)
    assert refusal(lambda: bounded.open_regular(path, "L")) == ("L", why, False, f"L: {why}")


@pytest.mark.parametrize("label", [None, "the record"])
def test_a_directory_is_refused_under_its_label_or_quoted_path(tmp_path, label):
    where = label if label is not None else repr(str(tmp_path))
    why = "unreadable (Is a directory)"
    assert refusal(lambda: bounded.check_regular_file(tmp_path, label)) == (where, why, False, f"{where}: {why}")


@pytest.mark.parametrize("label", [None, "the pack"])
def test_a_file_over_the_bound_is_refused_unread_under_its_label_or_quoted_path(tmp_path, label):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 11)
    where = label if label is not None else repr(str(path))
    why = "larger than 10 bytes, the limit for this file; refused unread"
    assert refusal(lambda: bounded.read_bytes(path, 10, label)) == (where, why, True, f"{where}: {why}")


@pytest.mark.parametrize("label", [None, "delta"])
def test_the_memory_bound_takes_a_file_exactly_at_it_and_refuses_one_byte_of_need_more(tmp_path, monkeypatch, label):
    path = tmp_path / "t.bin"
    path.write_bytes(b"0123456789")
    monkeypatch.setattr(bounded, "available_memory", lambda: 100)
    assert bounded.read_bytes(path, 1000, label, memory_per_byte=10) == b"0123456789"
    where = label if label is not None else repr(str(path))
    why = ("reading it takes about 110 bytes, more than the 100 bytes of memory available; refused unread")
    assert refusal(lambda: bounded.read_bytes(path, 1000, label, memory_per_byte=11)) == \
        (where, why, True, f"{where}: {why}")


class _Reader:
    """A file whose stat says `size` bytes but whose reads return `content` (it grew, or it lies), recording each
    read's request; `fails`: the OSError a read raises."""

    def __init__(self, real, content: bytes, fails: OSError | None = None):
        self.real, self.stream, self.fails, self.asked = real, io.BytesIO(content), fails, []

    def fileno(self):
        return self.real.fileno()

    def read(self, n=-1):
        self.asked.append(n)
        if self.fails is not None:
            raise self.fails
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def _reading(monkeypatch, tmp_path, stat_size: int, content: bytes, fails: OSError | None = None) -> list:
    path = tmp_path / "f.bin"
    path.write_bytes(b"s" * stat_size)
    readers = []

    def open_regular(p, label=None):
        readers.append(_Reader(open(p, "rb"), content, fails))
        return readers[-1]

    monkeypatch.setattr(bounded, "open_regular", open_regular)
    return readers


def test_a_file_that_did_not_grow_is_read_in_one_request_of_its_size_plus_one(tmp_path, monkeypatch):
    readers = _reading(monkeypatch, tmp_path, 5, b"abcde")
    assert bounded.read_bytes(tmp_path / "f.bin", 100) == b"abcde"
    assert readers[0].asked == [6]


def test_a_file_that_grew_is_read_on_by_doubling_never_asking_past_the_bound_plus_one(tmp_path, monkeypatch):
    readers = _reading(monkeypatch, tmp_path, 3, b"g" * 1000)
    with pytest.raises(Refused):
        bounded.read_bytes(tmp_path / "f.bin", 20)
    assert readers[0].asked == [4, 4, 8, 5]  # 4, 8, 16, then the 5 bytes that reach 21 = the bound + 1
    assert sum(readers[0].asked) == 21


def test_a_file_that_grew_to_exactly_the_bound_is_taken_whole(tmp_path, monkeypatch):
    readers = _reading(monkeypatch, tmp_path, 3, b"g" * 20)
    assert bounded.read_bytes(tmp_path / "f.bin", 20) == b"g" * 20
    assert readers[0].asked == [4, 4, 8, 5, 1]  # the last asks for the one byte past the bound: none comes


@pytest.mark.parametrize("label", [None, "weights"])
@pytest.mark.parametrize("error, why", [(OSError(errno.EIO, "Input/output error"), "unreadable (Input/output error)"),
                                        (OSError(), "unreadable (OSError)")])
def test_a_read_that_fails_is_unreadable_under_the_label_or_quoted_path(tmp_path, monkeypatch, label, error, why):
    _reading(monkeypatch, tmp_path, 4, b"abcd", fails=error)
    path = tmp_path / "f.bin"
    where = label if label is not None else repr(str(path))
    assert refusal(lambda: bounded.read_bytes(path, 10, label)) == (where, why, False, f"{where}: {why}")


def test_read_bytes_refuses_a_device_by_its_stat_before_any_read(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    why = "a device, not a regular file; refused unread (only regular files are read)"
    assert refusal(lambda: bounded.read_bytes("/dev/zero", 10)) == ("'/dev/zero'", why, True, f"'/dev/zero': {why}")


# the parsers' refusals: damaged (over_limit False), named by `where`, whole


def test_json_that_is_not_utf8_or_not_json_is_damaged_not_over_a_bound():
    why = "not valid JSON (not UTF-8 text)"
    assert refusal(lambda: bounded.loads_json(b"\xff{}", "w")) == ("w", why, False, f"w: {why}")
    why = "not valid JSON (Expecting value at column 1)"
    assert refusal(lambda: bounded.loads_json("", "w")) == ("w", why, False, f"w: {why}")


def test_a_value_error_of_the_json_parser_other_than_digits_is_damaged_json(monkeypatch):
    def fails(*_a, **_k):
        raise ValueError("no such thing")

    monkeypatch.setattr(bounded.json, "loads", fails)
    why = "not valid JSON (no such thing)"
    assert refusal(lambda: bounded.loads_json("{}", "w")) == ("w", why, False, f"w: {why}")


def test_malformed_toml_is_damaged_not_over_a_bound(monkeypatch):
    why = "malformed TOML (Invalid value (at end of document))"
    assert refusal(lambda: bounded.loads_toml("a = ", "g")) == ("g", why, False, f"g: {why}")
    import tomllib

    def fails(*_a, **_k):
        raise ValueError("no such thing")

    monkeypatch.setattr(tomllib, "loads", fails)
    why = "malformed TOML (no such thing)"
    assert refusal(lambda: bounded.loads_toml("a = 1", "g")) == ("g", why, False, f"g: {why}")


def test_bytes_that_are_not_safetensors_are_damaged_and_named(tmp_path):
    why = "not a readable safetensors file (SafetensorError)"
    assert refusal(lambda: bounded.loads_tensors(b"garbage!!", "w")) == ("w", why, False, f"w: {why}")
    path = tmp_path / "d.safetensors"
    path.write_bytes(b"garbage!!")
    for label, where in ((None, repr(str(path))), ("delta", "delta")):
        assert refusal(lambda label=label: bounded.read_tensors(path, label)) == (where, why, False, f"{where}: {why}")


@pytest.mark.parametrize("label", [None, "delta"])
def test_a_tensor_file_over_the_memory_bound_is_named_by_its_label(tmp_path, monkeypatch, label):
    path = tmp_path / "d.safetensors"
    path.write_bytes(b"x" * 10)
    monkeypatch.setattr(bounded, "available_memory", lambda: 29)
    where = label if label is not None else repr(str(path))
    why = "reading it takes about 30 bytes, more than the 29 bytes of memory available; refused unread"
    for call in (lambda: bounded.read_tensor_file(path, label), lambda: bounded.read_tensors(path, label)):
        assert refusal(call) == (where, why, True, f"{where}: {why}")


def test_a_safetensors_header_of_length_zero_in_exactly_eight_bytes_is_read_as_json():
    # 8 bytes hold the length and nothing else: a header of 0 bytes, which is not JSON (not a cut header)
    why = "not valid JSON (Expecting value at column 1)"
    assert refusal(lambda: bounded.tensors_metadata(bytes(8), "w")) == ("w", why, False, f"w: {why}")
    why = "not a readable safetensors file (its header is cut or larger than 16.0 MB)"
    assert refusal(lambda: bounded.tensors_metadata(bytes(7), "w")) == ("w", why, False, f"w: {why}")


@pytest.mark.parametrize("label", [None, "the grid"])
def test_read_text_names_the_label_or_quoted_path_for_each_refusal(tmp_path, label):
    path = tmp_path / "g.toml"
    path.write_bytes(b"\xff\xfe")
    where = label if label is not None else repr(str(path))
    assert refusal(lambda: bounded.read_text(path, 10, label)) == (where, "not UTF-8 text", False,
                                                                   f"{where}: not UTF-8 text")
    why = "larger than 1 bytes, the limit for this file; refused unread"
    assert refusal(lambda: bounded.read_text(path, 1, label)) == (where, why, True, f"{where}: {why}")


# open_regular: a FIFO never waited on, a socket named under its label, the descriptor handed back blocking


def test_open_regular_refuses_a_fifo_without_a_writer_at_once(tmp_path):
    import threading

    fifo = tmp_path / "delta.safetensors"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(refusal(lambda: bounded.open_regular(fifo, "delta"))),
                              daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # the open blocked waiting for a writer: release it, then fail
        open(fifo, "wb").close()
        worker.join(5)
        pytest.fail("open_regular waited on a FIFO")
    why = "a FIFO, not a regular file; refused unread (only regular files are read)"
    assert outcome == [("delta", why, True, f"delta: {why}")]


@pytest.mark.parametrize("label", [None, "the record"])
def test_a_socket_that_cannot_be_opened_is_named_a_socket_under_its_label(tmp_path, label):
    import socket

    path = tmp_path / "s.json"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        where = label if label is not None else repr(str(path))
        why = "a socket, not a regular file; refused unread (only regular files are read)"
        assert refusal(lambda: bounded.open_regular(path, label)) == (where, why, True, f"{where}: {why}")
    finally:
        server.close()


def test_open_regular_hands_back_a_blocking_descriptor(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    with bounded.open_regular(path) as f:
        assert os.get_blocking(f.fileno()) is True
        assert f.read() == b"x"


@pytest.mark.parametrize("label", [None, "the grid"])
def test_a_directory_opened_is_refused_under_its_label_or_quoted_path(tmp_path, label):
    where = label if label is not None else repr(str(tmp_path))
    why = "unreadable (Is a directory)"
    assert refusal(lambda: bounded.open_regular(tmp_path, label)) == (where, why, False, f"{where}: {why}")


def test_a_file_of_no_known_kind_is_not_a_plain_file():
    import stat as st

    weird = SimpleNamespace(st_mode=st.S_IFLNK | 0o777)  # what no followed stat returns: the last branch
    why = "not a plain file, not a regular file; refused unread (only regular files are read)"
    assert refusal(lambda: bounded._require_regular(weird, "p", None)) == ("'p'", why, True, f"'p': {why}")


# iter_bounded_lines: exactly at each limit taken, one byte more refused in one whole line


def test_bounded_lines_take_a_line_exactly_at_max_line_and_name_the_line_one_byte_longer():
    assert list(bounded.iter_bounded_lines(io.BytesIO(b"abcd\nxy"), "p", max_line=5, max_total=100)) == \
        [(1, b"abcd\n"), (2, b"xy")]
    stream = io.BytesIO(b"ab\nabcdef\n")
    why = "line 2 is longer than 5 bytes, the limit for one line; refused"
    assert refusal(lambda: list(bounded.iter_bounded_lines(stream, "p", max_line=5, max_total=100))) == \
        ("p", why, True, f"p: {why}")
    assert stream.tell() == 3 + 6  # the long line read only to its limit + 1


def test_bounded_lines_take_a_file_exactly_at_max_total_and_refuse_one_byte_more():
    assert [n for n, _ in bounded.iter_bounded_lines(io.BytesIO(b"abc\nde"), "p", max_line=10, max_total=6)] == [1, 2]
    why = "more than 5 bytes uncompressed (at line 2), the limit for one file; refused"
    assert refusal(lambda: list(bounded.iter_bounded_lines(io.BytesIO(b"abc\nde"), "p", max_line=10,
                                                           max_total=5))) == ("p", why, True, f"p: {why}")


@pytest.mark.parametrize("nbytes, text", [(999, "999 bytes"), (1000, "1.0 kB"),
                                          (10**6, "1.0 MB"), (10**9, "1.0 GB"),
                                          (1_500_000_000, "1.5 GB")])
def test_size_text_changes_unit_exactly_at_each_power_of_a_thousand(nbytes, text):
    assert bounded.size_text(nbytes) == text


@pytest.mark.parametrize("label", [None, "the record"])
def test_a_file_that_grew_past_the_bound_is_refused_under_its_label_or_quoted_path(tmp_path, monkeypatch, label):
    _reading(monkeypatch, tmp_path, 3, b"g" * 1000)
    path = tmp_path / "f.bin"
    where = label if label is not None else repr(str(path))
    why = "larger than 20 bytes, the limit for this file; refused unread"
    assert refusal(lambda: bounded.read_bytes(path, 20, label)) == (where, why, True, f"{where}: {why}")
