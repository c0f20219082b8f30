"""The contracts of `core/bounded_pickle.py` stated whole (issue 82, the mutation runs of 2026-11-29): what each
opcode is charged (`_estimate`, summed by hand from the module's table for small pickles of every shape), the memo
index one below the opcodes so far and at it, a frame or a declared length exactly the bytes left and one more, the
memory-per-byte bound exactly at its limit and just over it, and the label `read_pickle` names in every refusal."""

from __future__ import annotations

import collections
import pickle
import pickletools
from fractions import Fraction

import pytest

from poisonbench.core import bounded, bounded_pickle
from poisonbench.core.bounded import Refused
from poisonbench.core.bounded_pickle import check_pickle, read_pickle

# per opcode: 16 (its reference), + the object it builds (_BUILDS), + 56 + 6 per byte of a string argument, + per
# stack item since the mark for a fill (_FILLS); PROTO, FRAME, STOP, NONE, BININT1, APPEND(S) build nothing more
REF, CONTAINER, SET, NUMBER, CALL, MEMO, SETITEM = 16, 88, 232, 32, 512, 16, 128
STRING, PER_BYTE = 56, 6
CASES = {
    "an empty set (protocol 4)": (set(), 4, REF + (REF + SET) + (REF + MEMO) + REF),
    "a class by GLOBAL: its name is no string object": (
        collections.OrderedDict,
        2,
        REF + (REF + CALL) + (REF + MEMO) + REF,
    ),
    "a 2-character str": ("ab", 2, REF + (REF + STRING + PER_BYTE * 2) + (REF + MEMO) + REF),
    "3 bytes": (b"abc", 3, REF + (REF + STRING + PER_BYTE * 3) + (REF + MEMO) + REF),
    "a bytearray (BYTEARRAY8, in a frame)": (
        bytearray(b"abc"),
        5,
        REF + REF + (REF + STRING + PER_BYTE * 3) + (REF + MEMO) + REF,
    ),
    "a list of 3 small ints (APPENDS fills nothing extra)": (
        [1, 2, 3],
        2,
        REF + (REF + CONTAINER) + (REF + MEMO) + (REF + MEMO) + 3 * REF + REF + REF,
    ),
    "a dict of one item (SETITEM)": (
        {1: 2},
        2,
        REF + (REF + CONTAINER) + (REF + MEMO) + 2 * REF + (REF + SETITEM) + REF,
    ),
    # SETITEMS at opcode 8, its mark at 3: 48 × 5
    "a dict of two items (SETITEMS)": (
        {1: 2, 3: 4},
        2,
        REF + (REF + CONTAINER) + (REF + MEMO) + (REF + MEMO) + 4 * REF + (REF + 48 * 5) + REF,
    ),
    # FROZENSET at opcode 5, its mark at 2: 64 × 3
    "a frozenset of two": (
        frozenset({1, 2}),
        4,
        REF + REF + (REF + MEMO) + 2 * REF + (REF + SET + 64 * 3) + (REF + MEMO) + REF,
    ),
    # ADDITEMS at opcode 7, its mark at 4: 64 × 3
    "a set of two (ADDITEMS)": (
        {1, 2},
        4,
        REF + REF + (REF + SET) + (REF + MEMO) + (REF + MEMO) + 2 * REF + (REF + 64 * 3) + REF,
    ),
    "a 4-tuple (TUPLE fills nothing extra)": (
        (1, 2, 3, 4),
        2,
        REF + (REF + MEMO) + 4 * REF + (REF + CONTAINER) + (REF + MEMO) + REF,
    ),
    "2**64 (LONG1: 65 bits, 8 bytes more)": (2**64, 2, REF + (REF + NUMBER + 8) + REF),
    "100000 (BININT)": (100000, 2, REF + (REF + NUMBER) + REF),
    "3.5 (BINFLOAT)": (3.5, 2, REF + (REF + NUMBER) + REF),
    "a list in protocol 0 (MARK, LIST, PUT, INT: ints, not strings)": (
        [1, 2],
        0,
        (REF + MEMO) + (REF + CONTAINER) + (REF + MEMO) + 2 * ((REF + NUMBER) + REF) + REF,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_opcode_is_charged_the_documented_bytes(case):
    """The estimate of a small pickle is the sum, opcode by opcode, of the module's table: a reference each, the
    object built, a string's header and 6 per byte (str, bytes and bytearray alike; not GLOBAL's name), a large
    int's bytes, and a fill's bytes per item since its mark."""
    obj, protocol, expected = CASES[case]
    assert check_pickle(pickle.dumps(obj, protocol=protocol), "x") == expected


def test_a_protocol_0_long_is_charged_its_bytes_not_as_a_string():
    """`L…L` (protocol 0's LONG) parses to an int: 32 for the object and a byte per 8 bits, no string charge."""
    data = b"L" + str(2**64).encode() + b"L\n."
    assert check_pickle(data, "x") == (REF + NUMBER + 8) + REF


@pytest.mark.parametrize(
    ("opcode", "index"),
    [(b"q", lambda i: bytes([i])), (b"r", lambda i: i.to_bytes(4, "little")), (b"p", lambda i: b"%d\n" % i)],
)
def test_a_memo_index_below_the_opcodes_so_far_is_taken_and_one_at_it_refused(opcode, index):
    """PROTO and NONE are 2 opcodes: a memo entry 1 after them is a pickler's numbering (taken), entry 2 is not
    (refused, whole message), for BINPUT, LONG_BINPUT and PUT alike."""
    assert check_pickle(b"\x80\x02N" + opcode + index(1) + b".", "x") == REF + REF + (REF + MEMO) + REF
    with pytest.raises(Refused) as raised:
        check_pickle(b"\x80\x02N" + opcode + index(2) + b".", "'f'")
    assert str(raised.value) == (
        "'f': its pickle stores memo entry 2 at byte 3 after 2 opcodes (each entry is an "
        "object an opcode built: a memo bomb); refused before unpickling"
    )


def test_a_frame_of_exactly_the_bytes_left_is_taken_and_one_byte_more_refused():
    """FRAME n with n bytes after it is read; n + 1 is refused in one line saying how many follow."""
    assert check_pickle(b"\x80\x04\x95" + (2).to_bytes(8, "little") + b"N.", "x") == 4 * REF
    with pytest.raises(Refused) as raised:
        check_pickle(b"\x80\x04\x95" + (3).to_bytes(8, "little") + b"N.", "'f'")
    assert str(raised.value) == (
        "'f': its pickle declares a frame of 3 bytes at byte 2, only 2 follow; refused before unpickling"
    )


def test_a_declared_length_past_the_end_is_refused_and_one_within_it_is_parsed():
    """BINUNICODE of 3 with 4 bytes left ("abc."): read. Of 4: it swallows the STOP, and the next opcode's byte is
    past the end (cut short at byte 11). Of 5: refused as declaring more than follows, naming the opcode's byte."""
    assert (
        check_pickle(b"\x80\x02X" + (3).to_bytes(4, "little") + b"abc.", "x")
        == REF + (REF + STRING + PER_BYTE * 3) + REF
    )
    with pytest.raises(Refused) as swallowed:
        check_pickle(b"\x80\x02X" + (4).to_bytes(4, "little") + b"abc.", "'f'")
    assert str(swallowed.value) == (
        "'f': its pickle declares 1 byte for the opcode at byte 11, only 0 follow (cut "
        "short, or a length bomb); refused before unpickling"
    )
    with pytest.raises(Refused) as raised:
        check_pickle(b"\x80\x02X" + (5).to_bytes(4, "little") + b"abc.", "'f'")
    assert str(raised.value) == (
        "'f': its pickle declares 5 bytes for the opcode at byte 2, only 4 follow (cut "
        "short, or a length bomb); refused before unpickling"
    )


def test_the_memory_per_byte_bound_takes_an_estimate_exactly_at_it_and_refuses_one_over(monkeypatch):
    """Floor 0: an estimate of exactly MAX_PICKLE_MEMORY_PER_BYTE × the size is taken, the same over a bound a
    hair lower is refused (whole message); under the floor nothing is compared, however dense."""
    data = pickle.dumps([set() for _ in range(50)], protocol=4)
    estimate = check_pickle(data, "x")
    monkeypatch.setattr(bounded_pickle, "PICKLE_MEMORY_FLOOR", 0)
    monkeypatch.setattr(bounded_pickle, "MAX_PICKLE_MEMORY_PER_BYTE", Fraction(estimate, len(data)))
    assert check_pickle(data, "x") == estimate
    monkeypatch.setattr(bounded_pickle, "MAX_PICKLE_MEMORY_PER_BYTE", Fraction(estimate - 1, len(data)))
    with pytest.raises(Refused) as raised:
        check_pickle(data, "'f'")
    assert str(raised.value) == (
        f"'f': its opcodes build up to {bounded.size_text(estimate)}, "
        f"{estimate / len(data):.0f} bytes per byte of the file; above "
        f"{bounded.size_text(0)} the limit is {Fraction(estimate - 1, len(data))}; refused "
        "before unpickling"
    )
    monkeypatch.setattr(bounded_pickle, "PICKLE_MEMORY_FLOOR", estimate)
    assert check_pickle(data, "x") == estimate  # at the floor: not compared


def test_read_pickle_names_its_label_in_every_refusal(tmp_path):
    """With a label, the opcode walk's refusal and the bounded reader's (a file over `max_bytes`) both name it, not
    the path; without one, the quoted path."""
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02Nq\x02.")
    load = lambda f: pickle.Unpickler(f)  # noqa: E731 (never reached)
    with pytest.raises(Refused) as walked:
        read_pickle(path, 100, load, label="the batch")
    assert str(walked.value).startswith("the batch: its pickle stores memo entry 2 ")
    with pytest.raises(Refused) as unlabelled:
        read_pickle(path, 100, load)
    assert str(unlabelled.value).startswith(f"{str(path)!r}: its pickle stores memo entry 2 ")
    with pytest.raises(Refused) as large:
        read_pickle(path, 5, load, label="the batch")
    assert str(large.value).startswith("the batch: larger than ")
    fine = tmp_path / "fine"
    fine.write_bytes(b"\x80\x02N.")
    assert read_pickle(fine, 100, load, label="the batch") is None


INNER = {  # one value each, built by the opcode named, with no memo entry (so that it also stands alone)
    "APPENDS": b"](K\x02K\x05e",
    "LIST": b"(K\x02l",
    "TUPLE": b"(K\x02K\x05K\x06K\x07t",
    "DICT": b"(K\x02K\x05d",
    "SETITEMS": b"}(K\x02K\x05u",
    "ADDITEMS": b"\x8f(K\x02K\x05\x90",
    "FROZENSET": b"(K\x02K\x05\x91",
    "POP_MARK": b"(K\x02K\x051K\x02",
    "POP right after MARK (pops the mark)": b"(0K\x02",
}


@pytest.mark.parametrize("closes", list(INNER))
def test_a_container_closed_inside_a_dict_leaves_the_dicts_charge_per_item_since_its_own_mark(closes):
    """{1: inner, 3: 4}, the inner value closed by each opcode that pops a mark (and a POP right after a MARK):
    the outer SETITEMS is charged 48 per opcode since the outer MARK (the inner's opcodes, the keys and values),
    and the inner value what it is charged alone; a mark left open by the inner one would shorten the outer
    count."""
    inner = INNER[closes]
    alone = check_pickle(b"\x80\x02" + inner + b".", "x") - 2 * REF  # less its PROTO and STOP
    opcodes = len(list(pickletools.genops(b"\x80\x02" + inner + b"."))) - 2
    whole = check_pickle(b"\x80\x02}(K\x01" + inner + b"K\x03K\x04u.", "x")
    assert whole == REF + (REF + CONTAINER) + (REF + MEMO) + REF + alone + 2 * REF + (REF + 48 * (opcodes + 4)) + REF


@pytest.mark.parametrize(("data", "declared", "left"), [(b"X" + (5).to_bytes(4, "little") + b"ab.", 5, 3), (b"", 1, 0)])
def test_a_first_opcode_cut_short_is_named_at_byte_0(data, declared, left):
    """The opcode that declares more than follows is the file's first (a BINUNICODE at byte 0; an empty file, whose
    first opcode byte is missing): the refusal names byte 0, whole."""
    with pytest.raises(Refused) as raised:
        check_pickle(data, "'f'")
    assert str(raised.value) == (
        f"'f': its pickle declares {declared} byte{'' if declared == 1 else 's'} for the opcode at byte 0, only {left} "
        "follow (cut short, or a length bomb); refused before unpickling"
    )


def test_an_unreadable_pickle_is_refused_as_damaged_and_the_memory_refusal_names_the_file(monkeypatch):
    """An unknown opcode: one whole line naming the file, `over_limit` False (damaged, not over a bound; `why` alone
    for a command that skips it). An estimate one byte over the memory available: refused naming the file."""
    with pytest.raises(Refused) as raised:
        check_pickle(b"\xff.", "'f'")
    assert str(raised.value) == "'f': not a readable pickle (at position 0, opcode b'\\xff' unknown)"
    assert (raised.value.where, raised.value.over_limit) == ("'f'", False)
    data = pickle.dumps([1, 2, 3], protocol=2)
    estimate = check_pickle(data, "x")
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate - 1)
    with pytest.raises(Refused) as memory:
        check_pickle(data, "'f'")
    assert str(memory.value).startswith("'f': unpickling it takes about ")
