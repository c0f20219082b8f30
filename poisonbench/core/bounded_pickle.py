"""Every pickle poisonbench reads (CIFAR-10's python batches under --data-dir, `poisons import`'s Toxic-benchmark
and forest pickles) goes through `read_pickle`: the file's bytes through the bounded reader (core/bounded.py: a
regular file, a size bound), then `check_pickle` walks its opcodes (`pickletools.genops`, which builds nothing)
before any unpickler sees them, and the unpickler reads those same bytes (a file rewritten in between changes
nothing). A restricted unpickler (`find_class`) stops a pickle from running code, not from making Python allocate:

- a memo index: `LONG_BINPUT 2**28` (9 bytes in all) makes CPython's C unpickler grow its memo array to that
  index, 2 GB (measured: 4.1 GB peak RSS). A pickler numbers its memo entries 0, 1, 2, …, one per object it
  has built, and each object takes at least one opcode, so an index not below the number of opcodes before it
  is refused (`PUT`, `BINPUT`, `LONG_BINPUT`; `MEMOIZE` takes the next index itself);
- a declared length (`BINBYTES`, `BINUNICODE8`, `BYTEARRAY8`, `FRAME`, ...) larger than the bytes left;
- an opcode no data pickle needs: persistent ids (`PERSID`, `BINPERSID`), the extension registry (`EXT1/2/4`),
  out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`), Python 2's old-style instances (`INST`, `OBJ`);
- memory per byte: one-byte opcodes build objects of 50-220 bytes (`EMPTY_SET` a 216-byte set), so the walk adds
  up what each opcode builds, at most (`_estimate`: 16 bytes for the reference every opcode leaves, an object's
  size for those that build one, 4 bytes per byte of a string, which covers its text and the copies numpy makes
  of an array's bytes); above `PICKLE_MEMORY_FLOOR` that estimate may be `MAX_PICKLE_MEMORY_PER_BYTE` × the
  file's size at most (a CIFAR-10 batch estimates 4.0 per byte, a list of ints 16), and it must fit in the memory
  available. docs/commands.md, "Limits", lists these bounds.

Each refusal is one `Refused` line naming the file and what was refused, before anything is unpickled.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import bounded
from .bounded import Refused, check_memory, read_bytes, size_text

# above this many bytes estimated, no more than MAX_PICKLE_MEMORY_PER_BYTE × the file's size (a list of small
# ints, the densest genuine pickle, estimates 16 per byte: 3 bytes, `BININT2`, for a 28-byte int and its reference)
MAX_PICKLE_MEMORY_PER_BYTE = 24
PICKLE_MEMORY_FLOOR = 64 * bounded.MB

# opcodes no data pickle poisonbench reads needs (the restricted unpicklers would fail on or refuse most of them;
# refusing them here names them)
REFUSED_OPCODES = frozenset({"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER", "INST",
                             "OBJ"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
# what building each opcode's object takes beyond the 16 bytes every opcode is charged (sys.getsizeof, 64-bit)
_BUILDS = {
    **dict.fromkeys(("EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"), 88),
    **dict.fromkeys(("EMPTY_SET", "FROZENSET"), 232),
    **dict.fromkeys(("INT", "BININT", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"), 32),
    **dict.fromkeys(("REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "GLOBAL", "STACK_GLOBAL"), 512),
    **dict.fromkeys(("MARK", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"), 16),
    "SETITEM": 128,  # a dict's first entry allocates its table
}
# opcodes filling a container with what lies above the mark: bytes per stack item, charged per opcode since the mark
_FILLS = {"SETITEMS": 48, "DICT": 48, "ADDITEMS": 64, "FROZENSET": 64}
_PER_OPCODE = 16
# a string's or bytes' object header; then per character of the argument: the bytes the unpickler reads (UTF-8: up
# to 4 per character), the object, and numpy's copy when they are an array's data
_PER_STRING = 56
_PER_STRING_BYTE = 6


class _Short(Exception):
    def __init__(self, wanted: int, left: int):
        super().__init__(wanted, left)
        self.wanted, self.left = wanted, left


class _Bytes(io.BytesIO):
    """The pickle's bytes for `genops`: a read past the end is stopped before anything is read."""

    def read(self, n: int = -1) -> bytes:
        left = len(self.getbuffer()) - self.tell()
        if n is not None and n > left:
            raise _Short(n, left)
        return super().read(n)


def _refuse(where: str, why: str) -> Refused:
    return Refused(where, f"{why}; refused before unpickling")


def check_pickle(data: bytes, where: str) -> int:
    """The memory unpickling `data` takes at most (`_estimate`'s sum) when its opcodes are all admitted; else
    `Refused` naming `where`: an opcode of `REFUSED_OPCODES`, a memo index not below the opcodes before it, a
    length declared past the end, an estimate over `MAX_PICKLE_MEMORY_PER_BYTE` × its size above
    `PICKLE_MEMORY_FLOOR` or more than the memory available, or bytes `pickletools` cannot parse."""
    stream = _Bytes(data)
    count = estimate = 0
    marks: list[int] = []
    start = 0
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            name = opcode.name
            if name in REFUSED_OPCODES:
                raise _refuse(where, f"its pickle holds opcode {name} at byte {pos}, which no data pickle needs")
            if name in _PUTS and arg >= count:
                raise _refuse(where, f"its pickle stores memo entry {arg} at byte {pos} after {count} opcodes (each "
                              "entry is an object an opcode built: a memo bomb)")
            if name == "FRAME" and arg > len(data) - stream.tell():
                raise _refuse(where, f"its pickle declares a frame of {arg} bytes at byte {pos}, only "
                              f"{len(data) - stream.tell()} follow")
            estimate += _estimate(name, arg, count, marks)
            count += 1
            start = stream.tell()  # where the next opcode starts (genops reads nothing ahead)
    except _Short as e:
        raise _refuse(where, f"its pickle declares {e.wanted} byte{'' if e.wanted == 1 else 's'} for the opcode at "
                      f"byte {start}, only {e.left} follow (cut short, or a length bomb)") from None
    except Refused:
        raise
    except Exception as e:  # pickletools' ValueError for bytes it cannot parse (no STOP, an unknown opcode, ...)
        raise Refused(where, f"not a readable pickle ({e})", over_limit=False) from None
    if estimate > PICKLE_MEMORY_FLOOR and estimate > MAX_PICKLE_MEMORY_PER_BYTE * len(data):
        raise _refuse(where, f"its opcodes build up to {size_text(estimate)}, {estimate / len(data):.0f} bytes per "
                      f"byte of the file; above {size_text(PICKLE_MEMORY_FLOOR)} the limit is "
                      f"{MAX_PICKLE_MEMORY_PER_BYTE}")
    check_memory(estimate, where, "unpickling it")
    return estimate


def _estimate(name: str, arg: Any, count: int, marks: list[int]) -> int:
    """What opcode `name` (the `count`th) builds, at most: `_PER_OPCODE`, the object it builds (`_BUILDS`), its
    string argument's bytes × `_PER_STRING_BYTE`, or per opcode since the mark for those that fill a dict or a
    set (`_FILLS`). `marks` holds the opcode counts of the open marks."""
    cost = _PER_OPCODE + _BUILDS.get(name, 0)
    if isinstance(arg, (str, bytes, bytearray)) and name not in ("GLOBAL", "INT", "LONG", "FLOAT"):
        cost += _PER_STRING + _PER_STRING_BYTE * len(arg)
    elif name in ("LONG1", "LONG4") or (name == "LONG" and isinstance(arg, int)):
        cost += arg.bit_length() // 8
    if name == "MARK":
        marks.append(count)
    elif name in ("APPENDS", "LIST", "TUPLE", "DICT", "SETITEMS", "ADDITEMS", "FROZENSET", "POP_MARK"):
        mark = marks.pop() if marks else count
        cost += _FILLS.get(name, 0) * (count - mark)
    elif name == "POP" and marks and marks[-1] == count - 1:
        marks.pop()  # POP right after MARK pops the mark (pickletools.dis does the same)
    return cost


def read_pickle(path: str | Path, max_bytes: int, unpickler: Callable[[io.BytesIO], Any],
                label: str | None = None) -> Any:
    """The object in the pickle at `path`: its bytes read by the bounded reader (`max_bytes` at most), checked by
    `check_pickle`, then loaded by `unpickler(stream).load()` (a restricted `pickle.Unpickler` over those bytes).
    A refusal is `Refused`, naming the file (`label`, default its quoted path); the unpickler's own errors pass."""
    where = label if label is not None else repr(str(path))
    data = read_bytes(path, max_bytes, label)
    check_pickle(data, where)
    return unpickler(io.BytesIO(data)).load()
