"""The pack's parsed-JSON memory bound (`experiment/packed_records.py`: `json_memory_estimate` and the checks in
`read_pack`) stated whole (issue 82, the mutation runs of 2026-11-29): the token count's documented bytes per token
and its sum over any line (Hypothesis), the memory-per-byte bound exactly at its limit and a hair under it, an
unknown memory, and the file named in each refusal, whole; a line's JSON read as it is (whitespace, trailing junk),
and the line named in a bad run or poison id."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poisonbench.core import bounded
from poisonbench.core.bounded import Refused
from poisonbench.core.errors import PoisonbenchError
from poisonbench.experiment import packed_records as pr

# the module docstring's figures: 88 bytes a `[` or `{`, 24 a `,`, 48 a `:`, 28 a `"`, and 4 every byte
TOKEN = {
    b"[": 88 + 4,
    b"{": 88 + 4,
    b",": 24 + 4,
    b":": 48 + 4,
    b'"': 28 + 4,
    b"]": 4,
    b"}": 4,
    b"a": 4,
    b"1": 4,
    b" ": 4,
    b"\n": 4,
}


@pytest.mark.parametrize("token", list(TOKEN))
def test_each_token_is_charged_its_documented_bytes(token):
    assert pr.json_memory_estimate(token) == TOKEN[token]


@given(st.lists(st.sampled_from(list(TOKEN)), max_size=200), st.lists(st.sampled_from(list(TOKEN)), max_size=200))
def test_a_lines_estimate_is_the_sum_of_its_tokens_and_adds_up_over_pieces(first, second):
    """Any sequence of tokens: the sum of each one's charge, and the estimate of two pieces joined is the sum of
    theirs (the bound is summed line by line, and a line is its pieces)."""
    a, b = b"".join(first), b"".join(second)
    assert pr.json_memory_estimate(a) == sum(TOKEN[t] for t in first)
    assert pr.json_memory_estimate(a + b) == pr.json_memory_estimate(a) + pr.json_memory_estimate(b)


def _pack(tmp_path, record: dict, manifests: tuple = ()):
    lines = [
        pr._line({"format": pr.FORMAT, "kind": "header", "poison_manifests": len(manifests), "runs": 1, "version": 1}),
        pr._line({"kind": "run", "record": record}),
        *(pr._line({"kind": "poison_manifest", "manifest": m}) for m in manifests),
    ]
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(pr.gzip_bytes(b"".join(lines)))
    return path, sum(map(pr.json_memory_estimate, lines)), sum(map(len, lines))


def test_the_per_byte_bound_reads_a_pack_exactly_at_it_and_refuses_one_a_hair_over(tmp_path, monkeypatch):
    """Floor 0: lines estimating exactly MAX_PACKED_MEMORY_PER_BYTE × their text are read; with the limit a hair
    lower they are refused at the last line, in one whole message naming the file and the ratio."""
    path, estimate, text = _pack(tmp_path, {"run_id": "r1", "junk": [[] for _ in range(50)]})
    monkeypatch.setattr(pr, "PACKED_MEMORY_FLOOR", 0)
    monkeypatch.setattr(pr, "MAX_PACKED_MEMORY_PER_BYTE", Fraction(estimate, text))
    assert len(pr.read_pack(path).runs) == 1
    limit = Fraction(estimate - 1, text)
    monkeypatch.setattr(pr, "MAX_PACKED_MEMORY_PER_BYTE", limit)
    with pytest.raises(Refused) as raised:
        pr.read_pack(path)
    assert str(raised.value) == (
        f"{str(path)!r}: its JSON up to line 2 would take about "
        f"{bounded.size_text(estimate)}, {estimate / text:.0f} bytes per byte of text; "
        f"above {bounded.size_text(0)} the limit is {limit} (genuine records take 9-11); "
        "refused"
    )


def test_the_memory_bound_names_the_file_and_an_unknown_memory_reads_the_pack(tmp_path, monkeypatch):
    """Memory one byte under the estimate: refused at line 2, the file named, whole; exactly the estimate: read;
    memory unknown (`available_memory` None, as off Linux): read, not an error."""
    path, estimate, _ = _pack(tmp_path, {"run_id": "r1"})
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate - 1)
    with pytest.raises(Refused) as raised:
        pr.read_pack(path)
    assert str(raised.value) == (
        f"{str(path)!r}: parsing it up to line 2 takes about {bounded.size_text(estimate)}, "
        f"more than the {bounded.size_text(estimate - 1)} of memory available; refused unread"
    )
    monkeypatch.setattr(bounded, "available_memory", lambda: estimate)
    assert len(pr.read_pack(path).runs) == 1
    monkeypatch.setattr(bounded, "available_memory", lambda: None)
    assert len(pr.read_pack(path).runs) == 1


def _raw_pack(tmp_path, body: bytes):
    header = pr._line({"format": pr.FORMAT, "kind": "header", "poison_manifests": 0, "runs": 1, "version": 1})
    path = tmp_path / "raw.jsonl.gz"
    path.write_bytes(pr.gzip_bytes(header + body))
    return path


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"   \n", "not valid JSON (Expecting value at column 4)"),
        (b'{"kind":"run","record":{"run_id":"r1"}}X\n', "not valid JSON (Extra data at column 40)"),
        (b'{"kind":"run","record":{"run_id":"r1"}}\n\n', "not valid JSON (Expecting value at column 1)"),
    ],
)
def test_a_lines_json_is_read_as_it_is_only_its_newline_dropped(tmp_path, body, why):
    """A line of blanks, a line with junk after its object, an empty line: each refused in one whole message, the
    column counted in the line as written (only the newline that ends it is dropped)."""
    path = _raw_pack(tmp_path, body)
    line = 3 if body.endswith(b"\n\n") else 2
    with pytest.raises(Refused) as raised:
        pr.read_pack(path)
    assert str(raised.value) == f"{str(path)!r} line {line}: {why}"


def test_a_bad_run_id_or_poison_id_names_the_line_whole(tmp_path):
    path, _, _ = _pack(tmp_path, {"run_id": "../x"})
    with pytest.raises(PoisonbenchError) as raised:
        pr.read_pack(path)
    assert str(raised.value) == f"{str(path)!r} line 2: '../x' is not a run id (16 hex digits)"
    path, _, _ = _pack(tmp_path, {"run_id": "r1"}, ({"poison_id": "../p"},))
    with pytest.raises(PoisonbenchError) as raised:
        pr.read_pack(path)
    assert str(raised.value) == (
        f"{str(path)!r} line 3: '../p' is not a poison id (16 hex digits; see `poisonbench poisons list`)"
    )
