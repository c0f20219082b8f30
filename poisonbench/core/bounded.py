"""One bounded reader for every untrusted file poisonbench parses: run and failure records and PoisonSet manifests
(JSON), packed record files (JSON lines, gzip or xz), sweep grids (TOML); `.npz` datasets take their bounds from
`NPZ_*` below (`poisonbench.data.npz`). docs/commands.md, "Limits", lists the bounds and why.

Every file is opened as a regular file only (a FIFO or a device named `*.json` would block or never end), read up
to a size bound, parsed with its nesting depth bounded (Python's parsers recurse: a deep file raised RecursionError,
which escaped the readers), and refused in one line, a `Refused` (a `PoisonbenchError`) naming the file and the
limit, before anything is allocated in proportion to what the file only declares. A command that reads many files
catches `Refused` and skips the file, naming it with `Refused.why`.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import PoisonbenchError
from .memory import available_memory

MB = 1_000_000  # decimal, as the messages print sizes

# JSON files: a run or failure record, a PoisonSet manifest. The largest record in experiments/records/ is 95 kB.
MAX_JSON_FILE_BYTES = 16 * MB
# packed record files: one line holds one record (the same bound); the whole file, uncompressed (the largest in
# experiments/records/ is 10 MB for 317 runs; 256 MB holds a 10,000-run grid of records of 25 kB)
MAX_PACKED_LINE_BYTES = MAX_JSON_FILE_BYTES
MAX_PACKED_BYTES = 256 * MB
# sweep grids (TOML): the builtin grids are under 4 kB
MAX_GRID_BYTES = 1 * MB
# nesting depth of a JSON or TOML document (records nest 5 deep; Python's parsers recurse, about 1,000 at most)
MAX_DEPTH = 64
# Python refuses to parse an integer of more digits than this (sys.get_int_max_str_digits, 4,300 by default)
MAX_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300

# .npz datasets: what loading one (`data.load.load_dataset`: the arrays, the splits' copies, NCHW tensors, their
# fingerprints) allocates per byte its arrays declare, measured (tracemalloc peak, 50,000 CIFAR-sized images: 3.6
# per byte of `x`; 2,000,000 labels of int64: 5.1 per byte of `y`), rounded up; and an absolute bound on the
# declared bytes, whatever the memory (CIFAR-10 as an .npz is 184 MB).
NPZ_BYTES_PER_X_BYTE = 4
NPZ_BYTES_PER_Y_BYTE = 6
MAX_NPZ_BYTES = 16_000 * MB
# and a bound on inflation: above NPZ_INFLATION_FLOOR declared bytes, no more than MAX_NPZ_INFLATION × the file's
# size (image data deflates 2-20×; a few MB of zeros declaring gigabytes is a decompression bomb, and memory that
# happens to be free must not decide whether such a file is inflated)
MAX_NPZ_INFLATION = 100
NPZ_INFLATION_FLOOR = 64 * MB

# safetensors files poisonbench writes and reads back (a PoisonSet's delta.safetensors, an interrupted craft's or
# run's state under partial/, a cached model under models/): a δ is float32 rows of the train images (the whole
# CIFAR-10 train set: 614 MB), so the `.npz` bound holds any of them. Loading one (`safetensors.torch.load` of the
# file's bytes) takes the bytes and the tensors copied out of them: measured 2.0 bytes per byte of the file (peak
# RSS, a 200 MB file), rounded up; a file that would take more than the memory available is refused unread.
MAX_TENSOR_FILE_BYTES = 16_000 * MB
TENSOR_BYTES_PER_BYTE = 3
# a safetensors file's JSON header (names, dtypes, shapes, offsets and the metadata; a run's checkpoint state is a
# few kB of it)
MAX_TENSOR_HEADER_BYTES = MAX_JSON_FILE_BYTES
# pickles read as data (`poisons import`: the Toxic benchmark's three pickles, forest's export): a δ of the whole
# train set at most, as for safetensors files
MAX_PICKLE_BYTES = MAX_TENSOR_FILE_BYTES
# CIFAR-10's python batches under --data-dir: 31 MB each (10,000 rows of 3,073 bytes); 10× that
MAX_CIFAR_BATCH_BYTES = 320 * MB
# IDX datasets (MNIST-family, gzipped or not, under --data-dir): the bytes the header declares, checked before
# anything is inflated or read (MNIST's train images are 47 MB; EMNIST's largest split 0.6 GB). Reading one takes
# the file's data bytes and the array copied out of them (2 per declared byte), and loading the dataset about what
# an .npz's images take (`NPZ_BYTES_PER_X_BYTE`): checked against the memory available. A `.gz` declaring more
# than MAX_IDX_INFLATION × its own size above IDX_INFLATION_FLOOR is a decompression bomb (MNIST's deflates 5×),
# refused uninflated; and inflating never goes past the declared size (+1 byte, to see a file that runs on).
MAX_IDX_BYTES = 4_000 * MB
IDX_BYTES_PER_BYTE = 2 + NPZ_BYTES_PER_X_BYTE
MAX_IDX_INFLATION = MAX_NPZ_INFLATION
IDX_INFLATION_FLOOR = NPZ_INFLATION_FLOOR


def size_text(nbytes: int) -> str:
    """`nbytes` for a message, in decimal units: 1.5 GB, 16.0 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


class Refused(PoisonbenchError):
    """A file refused by a bound or as unreadable: the message is `FILE: why`; `why` alone is what a command that
    skips the file prints after its name. `over_limit`: refused by a bound (size, depth, digits, not a regular
    file), not for being damaged (invalid JSON, not UTF-8)."""

    def __init__(self, where: str, why: str, over_limit: bool = True):
        super().__init__(f"{where}: {why}")
        self.where, self.why, self.over_limit = where, why, over_limit


def _label(path, label: str | None) -> str:
    return label if label is not None else repr(str(path))


def check_regular_file(path: str | Path, label: str | None = None) -> os.stat_result:
    """`path`'s stat when it is a regular file (symlinks followed); else `Refused` (a FIFO, a socket, a device, a
    directory) or `Refused` for an OSError (missing, permission denied)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise Refused(_label(path, label), f"unreadable ({e.strerror or type(e).__name__})", over_limit=False) \
            from None
    _require_regular(st, path, label)
    return st


def _require_regular(st: os.stat_result, path, label) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise Refused(_label(path, label), "unreadable (Is a directory)", over_limit=False)
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "not a plain file")
        raise Refused(_label(path, label), f"{what}, not a regular file; refused unread (only regular files are read)")


def open_regular(path: str | Path, label: str | None = None) -> BinaryIO:
    """`path` opened for binary reading when it is a regular file; a FIFO is opened without blocking
    (O_NONBLOCK) and refused by the descriptor's own stat, so that swapping the file in between changes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        try:  # a socket cannot be opened at all (ENXIO): named for what it is, as the stat check names it
            _require_regular(os.stat(path), path, label)
        except OSError:
            pass
        raise Refused(_label(path, label), f"unreadable ({e.strerror or type(e).__name__})", over_limit=False) \
            from None
    try:
        _require_regular(os.fstat(fd), path, label)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(path, label, max_bytes: int) -> Refused:
    return Refused(_label(path, label), f"larger than {size_text(max_bytes)}, the limit for this file; refused "
                   "unread")


def check_size(f: BinaryIO, max_bytes: int, where: str) -> int:
    """The size of the open regular file `f`; `Refused` (naming `where`), unread, when it is over `max_bytes`."""
    size = os.fstat(f.fileno()).st_size
    if size > max_bytes:
        raise Refused(where, f"larger than {size_text(max_bytes)}, the limit for this file; refused unread")
    return size


def check_memory(needed: int, where: str, what: str) -> None:
    """`Refused` (naming `where`) when `needed` bytes are more than the memory available (where it is known):
    `what` says what needs them."""
    memory = available_memory()
    if memory is not None and needed > memory:
        raise Refused(where, f"{what} takes about {size_text(needed)}, more than the {size_text(memory)} of memory "
                      "available; refused unread")


def read_bytes(path: str | Path, max_bytes: int, label: str | None = None, memory_per_byte: int | None = None) \
        -> bytes:
    """The bytes of the regular file `path`, refused (`Refused`) beyond `max_bytes`: never more is read, and a
    file whose size is already over it is refused unread. `memory_per_byte`: what using the file takes per byte of
    it (the bytes included); a file that would take more than the memory available is refused unread too."""
    with open_regular(path, label) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise _too_large(path, label, max_bytes)
        if memory_per_byte is not None:
            check_memory(memory_per_byte * size, _label(path, label), "reading it")
        try:
            # `read(n)` allocates n bytes before it reads: n is what the file holds (+1, to see one that grew), not
            # `max_bytes` (16 GB for a tensor file: a MemoryError under `ulimit -v`, whatever the file's size)
            data = f.read(size + 1)
            while size < len(data) <= max_bytes:  # it grew since its stat: read on, up to the bound
                more = f.read(min(len(data), max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
        except OSError as e:
            raise Refused(_label(path, label), f"unreadable ({e.strerror or type(e).__name__})", over_limit=False) \
                from None
    if len(data) > max_bytes:
        raise _too_large(path, label, max_bytes)
    return data


def read_tensor_file(path: str | Path, label: str | None = None) -> bytes:
    """The bytes of the safetensors file `path`: a regular file of `MAX_TENSOR_FILE_BYTES` at most whose loading
    (`TENSOR_BYTES_PER_BYTE`) fits in the memory available; else `Refused`, unread."""
    return read_bytes(path, MAX_TENSOR_FILE_BYTES, label, memory_per_byte=TENSOR_BYTES_PER_BYTE)


def loads_tensors(raw: bytes, where: str) -> dict:
    """The tensors of a safetensors file's bytes (`read_tensor_file`); `Refused` naming `where` when they are not
    a readable safetensors file."""
    from safetensors.torch import load

    try:
        return load(raw)
    except Exception as exc:  # safetensors' own errors, a header that is not JSON, a dtype torch lacks
        raise Refused(where, f"not a readable safetensors file ({type(exc).__name__})", over_limit=False) from None


def read_tensors(path: str | Path, label: str | None = None) -> dict:
    """The tensors of the safetensors file `path` (`read_tensor_file`, `loads_tensors`); else `Refused`."""
    return loads_tensors(read_tensor_file(path, label), _label(path, label))


def tensors_metadata(raw: bytes, where: str) -> dict:
    """The `__metadata__` of a safetensors file's bytes (an 8-byte little-endian header length, then the JSON
    header, `MAX_TENSOR_HEADER_BYTES` at most, nested `MAX_DEPTH` deep at most); else `Refused` naming `where`."""
    size = int.from_bytes(raw[:8], "little")
    if len(raw) < 8 or size > min(MAX_TENSOR_HEADER_BYTES, len(raw) - 8):
        raise Refused(where, "not a readable safetensors file (its header is cut or larger than "
                      f"{size_text(MAX_TENSOR_HEADER_BYTES)})", over_limit=False)
    header = loads_json(raw[8:8 + size], where)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def depth_within(obj: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether parsed JSON or TOML data `obj` nests `max_depth` containers deep at most (iterative: never
    recurses)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _too_deep(max_depth: int) -> str:
    return f"nested more than {max_depth} levels deep, the limit"


def loads_json(data: bytes | str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parsed JSON `data` (bytes: UTF-8), nested `max_depth` deep at most; else `Refused` naming `where` and why:
    not UTF-8 text, not valid JSON (message, line, column), an integer of more than `MAX_INT_DIGITS` digits, or
    nested too deep."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(where, "not valid JSON (not UTF-8 text)", over_limit=False) from None
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno}, column {e.colno}"
        raise Refused(where, f"not valid JSON ({e.msg} at {at})", over_limit=False) from None
    except RecursionError:
        raise Refused(where, _too_deep(max_depth)) from None
    except ValueError as e:  # int("1" * 5000): Python's bound on integer digits
        if "digits" in str(e):
            raise Refused(where, f"holds an integer of more than {MAX_INT_DIGITS} digits, the limit") from None
        raise Refused(where, f"not valid JSON ({e})", over_limit=False) from None
    if not depth_within(obj, max_depth):
        raise Refused(where, _too_deep(max_depth))
    return obj


def read_json_file(path: str | Path, max_bytes: int | None = None, max_depth: int = MAX_DEPTH,
                   label: str | None = None) -> Any:
    """The parsed JSON file `path`: a regular file of `max_bytes` (default `MAX_JSON_FILE_BYTES`) at most, nested
    `max_depth` deep at most (`loads_json`); anything else is `Refused`, naming the file (`label`, default its quoted
    path)."""
    max_bytes = MAX_JSON_FILE_BYTES if max_bytes is None else max_bytes
    return loads_json(read_bytes(path, max_bytes, label), _label(path, label), max_depth)


def iter_bounded_lines(stream: BinaryIO, where: str, max_line: int | None = None,
                       max_total: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a binary stream, each line read with `readline(max_line + 1)`: a line longer than
    `max_line` bytes (default MAX_PACKED_LINE_BYTES), or more than `max_total` bytes in all (default
    MAX_PACKED_BYTES), is `Refused` (naming `where`, the line and the limit) without reading the rest. The defaults
    are read at each call, not when the function is defined, so a test can lower the module's limits."""
    max_line = MAX_PACKED_LINE_BYTES if max_line is None else max_line
    max_total = MAX_PACKED_BYTES if max_total is None else max_total
    total = number = 0
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        number += 1
        if len(line) > max_line:
            raise Refused(where, f"line {number} is longer than {size_text(max_line)}, the limit for one line; "
                          "refused")
        total += len(line)
        if total > max_total:
            raise Refused(where, f"more than {size_text(max_total)} uncompressed (at line {number}), the limit for "
                          "one file; refused")
        yield number, line


def loads_toml(text: str, where: str, max_depth: int = MAX_DEPTH) -> dict:
    """Parsed TOML `text`, nested `max_depth` deep at most; `Refused` (naming `where`) for malformed TOML, an
    integer of too many digits or nesting too deep. Callers bound `text` first (`read_text`)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise Refused(where, f"malformed TOML ({e})", over_limit=False) from None
    except RecursionError:
        raise Refused(where, _too_deep(max_depth)) from None
    except ValueError as e:
        if "digits" in str(e):
            raise Refused(where, f"holds an integer of more than {MAX_INT_DIGITS} digits, the limit") from None
        raise Refused(where, f"malformed TOML ({e})", over_limit=False) from None
    if not depth_within(data, max_depth):
        raise Refused(where, _too_deep(max_depth))
    return data


def read_text(path: str | Path, max_bytes: int, label: str | None = None) -> str:
    """The UTF-8 text of the regular file `path`, `max_bytes` at most; else `Refused`."""
    data = read_bytes(path, max_bytes, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(_label(path, label), "not UTF-8 text", over_limit=False) from None

