"""The one sanitiser for text a command prints that it did not write itself: a record's fields, a failure record's
error, a file's name, a log's last line. Run records, failure records and packed files are shared between people,
and a terminal obeys the control characters it is sent: an ESC sequence in a record's `config.dataset` retitles the
reader's terminal (OSC 0), clears it (CSI 2J) or hides the lines above it (issue 68). Every renderer and every line
printed from such text goes through `printable` (or `printable_json` for JSON text), so that the control
characters are shown, escaped as Python writes them (`\\x1b`, `\\x07`, `\\x9b`), never obeyed.

Escaped: C0 (0x00-0x1f), DEL (0x7f), C1 (0x80-0x9f; 0x9b is an 8-bit CSI to many terminals) and the bidirectional
overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder what the reader sees, and lone surrogates
(U+D800-U+DFFF: a file name's bytes that are not UTF-8, `\\udcff`). Every other character (ρ, ±, ·, accents, CJK) is
printed as it is, and so is a backslash (LaTeX and Windows paths hold them)."""

from __future__ import annotations

import re

# DEL, C1, the bidirectional overrides and isolates, and the lone surrogates that stand for a file name's bytes that
# are not UTF-8 (os.fsdecode): a stream that encodes strictly would fail on them
OTHERS = "\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{OTHERS}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{OTHERS}]")


SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}  # as Python writes them; every other one by its code


def _escaped(match: re.Match) -> str:
    ch = match.group()
    code = ord(ch)
    return SHORT.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object, newlines: bool = False) -> str:
    """`text` with every control character shown escaped (`\\x1b`); `newlines`: keep "\\n" as a line break (a
    multi-line text the command composed, such as a rendered table), else it is escaped too (a field, a one-line
    message)."""
    text = str(text)
    return (_UNSAFE_BUT_NEWLINE if newlines else _UNSAFE).sub(_escaped, text)


def printable_json(text: str) -> str:
    """JSON text (e.g. `json.dumps(..., ensure_ascii=False)`, which leaves DEL and C1 raw) with every control
    character written as a JSON escape (`\\u009b`): still valid JSON of the same values, nothing raw. Raw control
    characters can stand only inside JSON strings, where `\\uXXXX` means the same character; a newline only
    between values (json.dumps escapes one in a string), where it is kept: an indented text stays as it is."""
    return _UNSAFE_BUT_NEWLINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
