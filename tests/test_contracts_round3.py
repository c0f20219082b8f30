"""Issue 82, "Tests from contracts" (round 3): behaviours an independent reviewer planted bugs in and no test caught.
Each test states the contract whole; the bug planted to see it fail is named in its docstring."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from poisonbench.defenses import build_defense, dpsgd, privacy
from poisonbench.engine.recipes import resolve_recipe

from .test_dpsgd import context, mlp, toy_batch

pytestmark = pytest.mark.usefixtures("one_thread")


# --- 1. a Poisson-sampled DP-SGD run on a BatchNorm model is no guarantee --------------------------------------

def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


def poisson_run(model: nn.Module, rows: int = 40, batch: int = 10) -> dict:
    """One Poisson-sampled epoch of DP-SGD on `model` (σ 1), stepping on each drawn batch: the defense's summary."""
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=batch)
    x, y = toy_batch(rows)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson", noise_multiplier=1.0)
    ctx = context(model, x, y, 7, recipe)
    defense.prepare(ctx)
    for b in defense.epoch_batches(ctx, 0):
        model.zero_grad(set_to_none=True)
        defense.gradient(ctx, x[b], y[b], contextlib.nullcontext)
    return defense.summary()


def test_a_poisson_dpsgd_run_on_a_batchnorm_model_is_not_recorded_as_a_guarantee():
    """Library callers can train a BatchNorm model under DP-SGD (the CLI refuses it): with Poisson sampling the
    record still says the ε is no guarantee, names the BatchNorm handling and gives both caveats; the same run
    without BatchNorm is a guarantee. (Planted: `guarantee` = Poisson and ε finite, BatchNorm forgotten.)"""
    figures = poisson_run(bn_mlp())
    acc = figures["accounting"]
    assert figures["batchnorm"] == dpsgd.BN_HANDLING
    assert acc["sampling"] == "poisson" and acc["steps"] == 4 and acc["sample_rate"] == 0.25
    assert acc["epsilon"] == privacy.epsilon(0.25, 1.0, 4, 1e-5) and math.isfinite(acc["epsilon"])
    assert acc["epsilon_note"] == f"{privacy.POISSON_NOTE}; {privacy.BATCHNORM_NOTE}"
    assert acc["guarantee"] is False

    plain = poisson_run(mlp())["accounting"]
    assert plain["guarantee"] is True and plain["epsilon_note"] == privacy.POISSON_NOTE
    assert plain["epsilon"] == acc["epsilon"]


# --- 2. Poisson DP-SGD takes ⌈n/B⌉ steps an epoch ----------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(min_value=1, max_value=120), batch=st.integers(min_value=1, max_value=150))
def test_poisson_sampling_takes_ceil_n_over_b_steps_an_epoch(rows, batch):
    """⌈n/B⌉ batches an epoch at q = 1/⌈n/B⌉, also when B does not divide n and when n < B (one step, q = 1: every
    row); each batch is rows in use, without repeats. (Planted: `len(rows) // batch_size` steps.)"""
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=batch)
    x, y = toy_batch(rows)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson")
    ctx = context(mlp(), x, y, 7, recipe)
    defense.prepare(ctx)
    steps = -(-rows // batch)
    batches = defense.epoch_batches(ctx, 0)
    assert len(batches) == steps and defense.sample_rate == 1 / steps
    for b in batches:
        assert b.tolist() == sorted(set(b.tolist())) and all(0 <= r < rows for r in b.tolist())
    if rows <= batch:
        assert [b.tolist() for b in batches] == [list(range(rows))]


# --- 3. bases=nearest picks the same rows whatever the feature chunk -------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from poisonbench.data import load_dataset

    from .conftest import write_npz

    return load_dataset(str(write_npz(tmp_path_factory.mktemp("contracts-round3"), n=400)))


def test_nearest_bases_are_the_same_rows_whatever_the_feature_chunk(tiny):
    """`nearest_rows` over a pool larger than a chunk (chunks of 3 and 7, neither dividing the pool) gives the rows
    and distances of one pass over the whole pool, which are the k smallest Euclidean distances of the features.
    (Planted: the chunk loop stops at `len(pool) - chunk + 1`, dropping the pool's tail.)"""
    from poisonbench.attacks.targets import base_pool, nearest_rows
    from poisonbench.engine.models import build_model

    data = tiny
    model = build_model("convnet", data, seed=11).eval().requires_grad_(False)
    true_class = int(data.test.y[7])
    pool = base_pool(data, (true_class + 1) % data.num_classes, "scratch")
    k = 6
    assert len(pool) > 7 and len(pool) % 3 and len(pool) % 7
    whole_rows, whole_dist = nearest_rows(model, data, pool, 7, k, torch.device("cpu"), chunk=len(pool))
    for chunk in (3, 7):
        for many in (k, len(pool)):  # the whole pool ranked: every chunk's rows count, the last one's too
            rows, dist = nearest_rows(model, data, pool, 7, many, torch.device("cpu"), chunk=chunk)
            ref_rows, ref_dist = nearest_rows(model, data, pool, 7, many, torch.device("cpu"), chunk=len(pool))
            assert rows.tolist() == ref_rows.tolist() and len(rows) == many
            torch.testing.assert_close(dist, ref_dist)
    from poisonbench.core.device import to_float

    with torch.no_grad():
        feats = model.features(to_float(data.train.x[pool], torch.device("cpu"))).flatten(1).double()
        target = model.features(to_float(data.test.x[7:8], torch.device("cpu"))).flatten(1).double()
    reference = ((feats - target) ** 2).sum(1).sqrt()
    nearest = pool[torch.sort(reference, stable=True).indices[:k]].sort().values
    assert whole_rows.tolist() == nearest.tolist()
    assert model.training is False


# --- 4. forest's FC objective is the bullseye loss for one target ----------------------------------------------

@pytest.mark.parametrize("poisons, dim", [(1, 5), (4, 7), (25, 3)])
def test_forests_fc_objective_is_the_bullseye_loss_for_one_target(poisons, dim):
    """`fc.poison_frogs_loss` (forest's poison-frogs) equals `bp.bullseye_loss` for one target, and both are
    (1/D) Σ_d ((1/K) Σ_i φ(x_i)_d − φ(t)_d)², written out here. (Planted: the poisons' features summed, not
    averaged.)"""
    from poisonbench.attacks.bp import bullseye_loss
    from poisonbench.attacks.fc import poison_frogs_loss

    g = torch.Generator().manual_seed(poisons * 100 + dim)
    feats = torch.randn(poisons, dim, generator=g, dtype=torch.float64)
    target = torch.randn(1, dim, generator=g, dtype=torch.float64)
    written = sum((sum(float(feats[i, d]) for i in range(poisons)) / poisons - float(target[0, d])) ** 2
                  for d in range(dim)) / dim
    fc, bp = poison_frogs_loss(feats, target), bullseye_loss(feats, target)
    assert fc.shape == bp.shape == ()
    assert fc.item() == pytest.approx(bp.item(), rel=1e-12, abs=1e-15)
    assert fc.item() == pytest.approx(written, rel=1e-12, abs=1e-15)


# --- 5. the ε range of a table's privacy note is min–max -------------------------------------------------------

def test_the_privacy_notes_epsilon_range_is_min_to_max_whatever_the_records_order():
    """Four DP-SGD runs of one setting whose ε (RDP and PLD) are not in order: the note's ranges are min–max, the
    whole note pinned. (Planted: `epsilon_text` without the sort, first–last.)"""
    from poisonbench.report.tables.privacy import privacy_notes
    from poisonbench.report.tables.records import frame
    from tests.report_records import make_record

    params = {"clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson", "delta": None}
    acc = {"accountant": "RDP", "sampling": "poisson", "noise_multiplier": 1.0, "sample_rate": 1 / 31, "steps": 310,
           "rows": 3900, "delta": 1e-5, "delta_rule": "min(1e-5, n^-1.1)", "epsilon_pld_note": None,
           "guarantee": True, "epsilon_note": privacy.POISSON_NOTE}
    rows = []
    for trial, (eps, pld) in enumerate(((4.5, 3.5), (2.25, 3.75), (9.5, 1.25), (3.0, 2.0))):
        record = make_record(method="dpsgd", acc=0.5, params=params, trial=trial)
        record["defense"] = {"accounting": {**acc, "epsilon": eps, "epsilon_pld": pld}}
        rows.append(record)
    for order in (rows, rows[::-1], [rows[2], rows[0], rows[3], rows[1]]):
        assert privacy_notes(frame(order)) == [
            "dpsgd (clip 1, noise_multiplier 1, sampling poisson): ε = 2.25–9.5 (4 runs) at δ = min(1e-5, n^-1.1) "
            "= 1e-05 (RDP, dp-accounting; q 0.03226, σ 1, 310 steps; PLD ε = 1.25–3.75 (4 runs)) — Poisson-sampled "
            "batches: the RDP bound holds"]


# --- 6. the HTML page keeps Table III's Wilson intervals --------------------------------------------------------

def test_the_html_pages_table_iii_gives_each_success_count_its_wilson_interval():
    """Every Table III success count of ours shows on the page as `k/n [lo–hi%]`, the 95 % Wilson interval computed
    here (the whole CSP is pinned by test_report_html.py::test_the_content_security_policy_is_pinned). (Planted:
    `table_options` with `wilson=False`, which the JSON-table comparison lets through as a cell's prefix.)"""
    from poisonbench.report import html as report_html
    from poisonbench.report import tables
    from poisonbench.report.tables.stats import wilson
    from tests.report_records import synthetic_records
    from tests.test_report_html import Page

    records = synthetic_records()
    filters = {"dataset": None, "model": None, "recipe": None, "epochs": None, "methods": None}
    page = Page(report_html.page(records, "ws", filters, trials=5, with_figures=False))
    cells = [c for rows in page.sections["table-3"].values() for r in rows for c in r]
    built = tables.build("3", records, tables.Options(trials=5, paper=True, ci=True),
                         **report_html.table_filters("3", filters))
    counts = [(row["successes"], row["trials"]) for row in built.data if row["trials"]]
    assert len(counts) > 3
    for k, n in counts:
        lo, hi = wilson(k, n)
        assert f"{k}/{n} [{100 * lo:.0f}–{100 * hi:.0f}%]" in cells, (k, n)
    shown = [c for c in cells if c.split(" ")[0].count("/") == 1 and c.split(" ")[0].replace("/", "").isdigit()]
    ours = [c for c in shown if " [" in c]
    assert len(ours) == len(counts)


# --- 7, 8. one run id, one craft: the refusal, and a legacy targeted record ------------------------------------

PID = "ab" * 8
OURS, DISK = "1" * 64, "2" * 64


def legacy_targeted(sha: str, acc: float = 0.5) -> dict:
    """A targeted (bp) record from before `inputs`: its craft only in `config.poison.poison_id` and
    `poison_tensors`."""
    from poisonbench.core.hashing import short_hash
    from tests.report_records import make_record

    record = make_record(targeted={"attack": "bp", "target_index": 7, "target_class": 3, "intended_class": 5,
                                   "success": True}, acc=acc)
    record["config"]["poison"]["poison_id"] = PID
    record["run_id"] = short_hash(record["config"])
    record["poison_tensors"] = {"bp": sha}
    assert "inputs" not in record
    return record


def test_a_craft_clash_with_the_disk_names_the_records_craft_and_the_disks_the_right_way_round():
    """`defend`'s refusal of a record trained on another craft than the PoisonSet on disk, whole: the record's craft
    first, the disk's second. (Planted: the pair unpacked as `(disk, ours)` in `clash_message`.)"""
    from poisonbench.experiment.craft_check import clash_message, clash_with_disk

    record = legacy_targeted(OURS)
    clash = clash_with_disk(record, "unused", cache={PID: DISK})
    assert clash == {PID: (OURS, DISK)}
    assert clash_message("r1", clash, "res") == (
        "run r1: its record trained on another craft than the PoisonSets in res (PoisonSet abababababababab as craft "
        "abababab@11111111 in the record, abababab@22222222 on disk); the record is not of these poisons (a re-craft: "
        "another machine, torch or code version). Put back the files of the record's craft, or pass --force to train "
        "on the one on disk and replace the record")


def test_a_legacy_targeted_record_takes_part_in_one_run_id_one_craft(tmp_path):
    """A targeted record with `poison_tensors` and no `inputs` names its craft ({poison id: sha256}); the store
    refuses a record of the same run on another craft, in one whole line naming the stored craft and then the new
    one, and replaces it with `replace`, warning with both. (Planted: the targeted branch of `record_crafts` maps
    id → attack; the --force warning without the crafts.)"""
    from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
    from poisonbench.experiment.records import RunStore
    from poisonbench.experiment.run_inputs import record_crafts, record_crafts_or_unknown

    stored, new = legacy_targeted(DISK), legacy_targeted(OURS, acc=0.6)
    assert record_crafts(stored) == record_crafts_or_unknown(stored) == {PID: DISK}
    store = RunStore(tmp_path / "res")
    store.put(stored)
    path = store.path(stored["run_id"])
    before = path.read_bytes()
    with pytest.raises(PoisonbenchError) as refused:
        store.put(new)
    assert str(refused.value) == (
        f"run {new['run_id']}: {path} holds its record trained on craft(s) abababab@22222222; this one trained on "
        "abababab@11111111: refusing to replace it (one run id, one craft); keep this run in another --results, or "
        "re-run with --force to replace it")
    assert path.read_bytes() == before
    with pytest.warns(PoisonbenchWarning) as warned:
        store.put(new, replace=True)
    assert [str(w.message) for w in warned] == [  # --force: the same two crafts, whole
        f"run {new['run_id']}: {path} holds its record trained on craft(s) abababab@22222222; this one trained on "
        "abababab@11111111: replacing it (--force)"]
    assert store.get(new["run_id"])["poison_tensors"] == {"bp": OURS}


# --- 9. api.report(table=…) keeps the CLI's notes ---------------------------------------------------------------

def test_the_api_tables_notes_are_the_clis_whole_lines_and_none_left_out(cli, tmp_path):
    """`api.report(table=2)`'s `attrs["notes"]` are exactly the notes `report table 2 --format json` gives (table
    notes, then each block's), and each is a whole line of the Markdown output; DP-SGD's ε and the mixed crafts
    among them. (Planted: the table-level notes left out of `attrs`, which test_hardening_round3's subset check
    lets through.)"""
    import json

    from poisonbench import api

    from .helpers import dpsgd_mix_workspace
    from .test_run_identity import IDS

    root = tmp_path / "res"
    dpsgd_mix_workspace(root)
    notes = api.report(str(root), table=2).attrs["notes"]
    code, out, err = cli("report", "table", "2", "--results", root, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert notes == [*doc["table_notes"], *(n for b in doc["notes"] for n in b["notes"])]
    assert any(n.startswith("dpsgd (clip 1, noise_multiplier 1.1, sampling poisson)") and "ε = 2.5 at δ" in n
               for n in notes)
    assert any(f"PoisonSet {IDS['pgd'][:8]} in 2 crafts among the runs shown" in n for n in notes)
    code, out, err = cli("report", "table", "2", "--results", root, "--format", "md")
    assert code == 0, err
    lines = out.splitlines()
    for note in notes:
        assert f"- {note}" in lines, note


# --- 10. a blank --results ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["poisons", "list"], ["report"], ["report", "table", "2"],
                                  ["defend", "--method", "none"], ["craft", "--attack", "pgd"]])
def test_a_blank_results_is_refused_in_one_whole_line_and_writes_nothing(cli, tmp_path, monkeypatch, args):
    """`--results "  "` (an unset variable in quotes, say) is never a directory named by blanks nor the default:
    exit 2, this one line, nothing written. (Planted: `results_dir` tests `not path`, not `not path.strip()`.)"""
    from .conftest import one_line_error

    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args, "--results", "  ")
    one_line_error(code, err)
    assert err.strip() == ("Error: --results is empty ('  '); pass a directory, or leave the option out for "
                           "$POISONBENCH_RESULTS or ./results")
    assert list(tmp_path.iterdir()) == []


def test_unpacks_craft_conflict_names_the_stored_craft_and_the_packed_one_the_right_way_round(tmp_path):
    """`records unpack`'s reason for not replacing a stored record of the same run on another craft, whole: the
    file's craft, then the packed record's. (Planted: `stored` and `ours` swapped in `packed_records._conflict`.)"""
    import json

    from poisonbench.experiment.packed_records import _conflict

    stored, packed = legacy_targeted(DISK), legacy_targeted(OURS, acc=0.6)
    path = tmp_path / "runs" / f"{stored['run_id']}.json"
    assert _conflict(path, json.dumps(stored).encode(), packed) == (
        f"run {packed['run_id']}: {str(path)!r} trained on craft abababab@22222222, the packed record on craft "
        "abababab@11111111")
    assert _conflict(path, b"{}", packed) == f"{str(path)!r} exists with other contents"


# --- 10. every bounded reader takes a file exactly at its limit and refuses one byte more ------------------------

def padded(data: bytes, size: int, fill: bytes = b" ") -> bytes:
    """`data` then `fill` (JSON or TOML whitespace) up to exactly `size` bytes."""
    assert len(data) <= size
    return data + fill * (size - len(data))


def test_the_bounded_reader_takes_a_file_of_exactly_max_bytes_and_refuses_one_more(tmp_path):
    """`read_bytes`, `read_json_file` and `read_text` at a bound of 100 bytes: 100 read whole, 101 refused unread,
    the whole line; 0 bytes read as nothing. (Planted: `len(data) >= max_bytes`.)"""
    from poisonbench.core import bounded

    path = tmp_path / "f.json"
    for size in (0, 1, 99, 100):
        path.write_bytes(padded(b"", size))
        assert bounded.read_bytes(path, 100) == b" " * size
    path.write_bytes(padded(b'{"a": [1]}', 100))
    assert bounded.read_json_file(path, max_bytes=100) == {"a": [1]}
    assert bounded.read_text(path, 100, "here") == padded(b'{"a": [1]}', 100).decode()
    path.write_bytes(padded(b'{"a": [1]}', 101))
    for read in (lambda: bounded.read_bytes(path, 100), lambda: bounded.read_json_file(path, max_bytes=100)):
        with pytest.raises(bounded.Refused) as refused:
            read()
        assert str(refused.value) == f"{str(path)!r}: larger than 100 bytes, the limit for this file; refused unread"
        assert refused.value.over_limit is True
    with pytest.raises(bounded.Refused) as refused:
        bounded.read_text(path, 100, "here")
    assert str(refused.value) == "here: larger than 100 bytes, the limit for this file; refused unread"


def test_bounded_lines_take_a_line_and_a_file_exactly_at_their_limits_and_refuse_one_byte_more():
    """A line of exactly `max_line` bytes (its newline counted; the last one without) is read, one of `max_line` + 1
    refused, whole; `max_total` bytes in all are read, one more refused at the line that passes it. (Planted:
    `len(line) >= max_line`; `total >= max_total`; `readline(max_line)`, which cuts the long line in two.)"""
    import io

    from poisonbench.core.bounded import Refused, iter_bounded_lines

    def lines(data: bytes, max_line: int = 10, max_total: int = 1000):
        return list(iter_bounded_lines(io.BytesIO(data), "f", max_line=max_line, max_total=max_total))

    assert lines(b"a" * 9 + b"\n" + b"b" * 10) == [(1, b"a" * 9 + b"\n"), (2, b"b" * 10)]
    for data, number in ((b"a" * 10 + b"\n", 1), (b"ab\n" + b"c" * 11, 2)):
        with pytest.raises(Refused) as refused:
            lines(data)
        assert str(refused.value) == f"f: line {number} is longer than 10 bytes, the limit for one line; refused"
    assert lines(b"abcd\n" * 4, max_total=20) == [(n, b"abcd\n") for n in (1, 2, 3, 4)]
    with pytest.raises(Refused) as refused:
        lines(b"abcd\n" * 4 + b"x", max_total=20)
    assert str(refused.value) == ("f: more than 20 bytes uncompressed (at line 5), the limit for one file; "
                                  "refused")


def test_a_run_record_of_exactly_the_json_limit_is_read_and_one_byte_more_is_skipped_and_named(tmp_path):
    """`runs/<id>.json` at `MAX_JSON_FILE_BYTES` exactly (whitespace after the record) is the run's record for
    `get` and `all`; one byte more is skipped, named with why, by both. (Planted: the store reading with
    `max_bytes=MAX_JSON_FILE_BYTES - 1`.)"""
    from poisonbench.core.bounded import MAX_JSON_FILE_BYTES
    from poisonbench.core.errors import PoisonbenchWarning

    from .test_run_identity import craft, mix_record, workspace

    record = mix_record(0, craft("a"))
    store = workspace(tmp_path / "res", [record])
    path, rid = store.path(record["run_id"]), record["run_id"]
    text = path.read_bytes()
    path.write_bytes(padded(text, MAX_JSON_FILE_BYTES))
    assert store.get(rid) == record and store.all() == [record] and store.skipped == []
    path.write_bytes(padded(text, MAX_JSON_FILE_BYTES + 1))
    why = f"larger than {MAX_JSON_FILE_BYTES / 1e6:.1f} MB, the limit for this file; refused unread"
    with pytest.warns(PoisonbenchWarning) as warned:
        assert store.get(rid) is None
    assert [str(w.message) for w in warned] == [f"skipped {path}: {why}"]
    assert store.all() == [] and store.skipped == [(path, why)]


def test_a_manifest_of_exactly_the_json_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    """A PoisonSet's `manifest.json` at `MAX_JSON_FILE_BYTES` exactly loads (its tensors checked against it); one
    byte more is refused in one whole line naming the PoisonSet. (Planted: `read_manifest` reading with
    `max_bytes=MAX_JSON_FILE_BYTES - 1`.)"""
    from poisonbench import poisons
    from poisonbench.core.bounded import MAX_JSON_FILE_BYTES
    from poisonbench.core.errors import PoisonbenchError
    from poisonbench.data import load_dataset

    from .conftest import write_npz

    data = load_dataset(str(write_npz(tmp_path)))
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=1)
    crafted, _ = poisons.craft(spec, data, tmp_path / "res")
    manifest = crafted.path / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(padded(text, MAX_JSON_FILE_BYTES))
    loaded = poisons.load(tmp_path / "res", spec.poison_id, data)
    assert torch.equal(loaded.delta, crafted.delta) and torch.equal(loaded.indices, crafted.indices)
    manifest.write_bytes(padded(text, MAX_JSON_FILE_BYTES + 1))
    with pytest.raises(PoisonbenchError) as refused:
        poisons.load(tmp_path / "res", spec.poison_id, data)
    assert str(refused.value) == (f"poison set {spec.poison_id}: manifest.json: larger than "
                                  f"{MAX_JSON_FILE_BYTES / 1e6:.1f} MB, the limit for this file; refused unread")


def test_a_packed_line_of_exactly_the_line_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    """A packed file's run line of `MAX_PACKED_LINE_BYTES` exactly, its newline counted, is read as its record;
    one byte more is refused in one whole line naming the file and the line. (Planted: `len(line) >= max_line`;
    the pack reader passing `max_line=MAX_PACKED_LINE_BYTES - 1`.)"""
    import json

    from poisonbench.core.bounded import MAX_PACKED_LINE_BYTES, Refused
    from poisonbench.experiment.packed_records import gzip_bytes, read_pack

    from .test_bounded_reader import header_line
    from .test_run_identity import craft, mix_record

    record = mix_record(0, craft("a"))
    head = b'{"kind":"run","record":' + json.dumps(record).encode()
    pack = tmp_path / "one.jsonl.gz"
    for size in (MAX_PACKED_LINE_BYTES, MAX_PACKED_LINE_BYTES + 1):
        line = padded(head, size - 2) + b"}\n"
        assert len(line) == size
        pack.write_bytes(gzip_bytes(header_line(1) + line))
        if size == MAX_PACKED_LINE_BYTES:
            assert read_pack(pack).runs == [(2, record)]
            continue
        with pytest.raises(Refused) as refused:
            read_pack(pack)
        assert str(refused.value) == (f"{str(pack)!r}: line 2 is longer than {MAX_PACKED_LINE_BYTES / 1e6:.1f} MB, "
                                      "the limit for one line; refused")


def test_a_grid_of_exactly_the_grid_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    """A sweep grid of `MAX_GRID_BYTES` exactly (a comment fills it) is loaded; one byte more is refused in one
    whole line naming the grid. (Planted: `load_grid` reading with `MAX_GRID_BYTES - 1`.)"""
    from poisonbench.core.bounded import MAX_GRID_BYTES, Refused
    from poisonbench.sweeps import load_grid

    from .test_probe_sweep_run import write_grid

    grid = write_grid(tmp_path)
    text = grid.read_bytes()
    reference = load_grid(str(grid))
    for size in (MAX_GRID_BYTES, MAX_GRID_BYTES + 1):
        grid.write_bytes(padded(text + b"#", size - 1, b"x") + b"\n")
        assert grid.stat().st_size == size
        if size == MAX_GRID_BYTES:
            assert load_grid(str(grid)).runs == reference.runs and len(reference.runs) == 2
            continue
        with pytest.raises(Refused) as refused:
            load_grid(str(grid))
        assert str(refused.value) == (f"grid {grid}: larger than {MAX_GRID_BYTES / 1e6:.1f} MB, the limit for this "
                                      "file; refused unread")


# --- more of the same kinds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, batch, expected", [(11, 3, 2), (10, 4, 3), (3, 5, 3), (40, 10, 10)])
def test_a_poisson_step_divides_by_floor_n_q_also_when_the_batch_does_not_divide_n(rows, batch, expected):
    """The noised sum over the expected batch ⌊n·q⌋, q = 1/⌈n/B⌉ (Opacus: `int(len(dataset) * sample_rate)`): 2
    for n 11, B 3 (not B, not ⌈2.75⌉ nor round(2.75)); n itself when n < B. test_dpsgd_privacy's case (n 40, B 10)
    is the one where ⌊n·q⌋ = B. (Planted: the Poisson divisor `self.recipe.batch_size`; `expected_batch` with
    `round`.)"""
    from poisonbench.defenses.dpsgd import trainable

    from .test_dpsgd_privacy import flat, poisson_defense

    defense, ctx = poisson_defense(rows=rows, batch=batch, clip=1e6, noise_multiplier=0.0)
    assert privacy.expected_batch(rows, defense.sample_rate) == expected
    x, y = ctx.train_x[:2], ctx.train_y[:2]  # a draw of 2 rows
    ctx.model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(ctx.model(x), y, reduction="sum").backward()
    summed = flat({n: p.grad.clone() for n, p in trainable(ctx.model).items()})
    ctx.model.zero_grad(set_to_none=True)
    defense.gradient(ctx, x, y, contextlib.nullcontext)
    torch.testing.assert_close(flat({n: p.grad for n, p in trainable(ctx.model).items()}), summed / expected,
                               atol=1e-6, rtol=1e-5)


def test_each_privacy_note_caveat_and_epsilon_shape_whole():
    """The privacy note's other branches, each whole: a Poisson run on a BatchNorm model (its accounting from a real
    run, item 1) is no guarantee in the table either; shuffled and BatchNorm, both caveats; σ 0, ε ∞ and why (a
    record from before the PLD ε); runs of one setting some of which have no ε ("or ∞"), their δ a range (the 1/n
    rule of older records); a δ given (no rule named). (Planted: `caveat` testing `acc.get("batchnorm")`; the σ 0
    caveat reading `acc.get("sigma")`; the " or ∞" dropped; the δ range first–last.)"""
    from poisonbench.report.tables.privacy import privacy_notes
    from poisonbench.report.tables.records import frame
    from tests.report_records import make_record

    def run(accounting: dict, trial: int = 0, **params) -> dict:
        record = make_record(method="dpsgd", acc=0.5, trial=trial, params={
            "clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson", "delta": None, **params})
        record["defense"] = {"accounting": accounting}
        return record

    real = poisson_run(bn_mlp())["accounting"]
    base = {"accountant": "RDP", "sampling": "poisson", "noise_multiplier": 1.0, "sample_rate": 0.25, "steps": 4,
            "rows": 40, "delta": 1e-5, "delta_rule": "min(1e-5, n^-1.1)", "epsilon": 4.5, "epsilon_pld": 4.0,
            "epsilon_pld_note": None, "guarantee": True, "epsilon_note": privacy.POISSON_NOTE}
    shuffled = {**base, "sampling": "shuffle", "guarantee": False,
                "epsilon_note": f"{privacy.SHUFFLE_NOTE}; {privacy.BATCHNORM_NOTE}"}
    silent = {**{k: v for k, v in base.items() if k != "epsilon_pld"}, "noise_multiplier": 0.0, "epsilon": None,
              "guarantee": False, "epsilon_note": f"ε = ∞: σ = 0 adds no noise; {privacy.POISSON_NOTE}"}
    old = {**base, "noise_multiplier": 2.0, "delta_rule": "1/n"}
    rows = [run(real), run(shuffled, sampling="shuffle"), run(silent, noise_multiplier=0.0),
            run({**old, "delta": 1 / 3000, "epsilon": 3.0, "epsilon_pld": 2.5}, 0, noise_multiplier=2.0),
            run({**old, "delta": 1 / 3900, "epsilon": None, "epsilon_pld": None}, 1, noise_multiplier=2.0),
            run({**old, "delta": 1 / 3500, "epsilon": 2.0, "epsilon_pld": 1.5}, 2, noise_multiplier=2.0),
            run({**base, "delta": 2e-6, "delta_rule": "given"}, delta=2e-6)]
    head = "dpsgd (clip 1, noise_multiplier {}, sampling {}): ε = "
    assert privacy_notes(frame(rows)) == [
        head.format(1, "poisson") + f"{real['epsilon']:.3g} at δ = min(1e-5, n^-1.1) = 1e-05 (RDP, dp-accounting; "
        f"q 0.25, σ 1, 4 steps; PLD ε = {real['epsilon_pld']:.3g}) — BatchNorm statistics not privatised: no "
        "guarantee",
        head.format(1, "shuffle") + "4.5 at δ = min(1e-5, n^-1.1) = 1e-05 (RDP, dp-accounting; q 0.25, σ 1, 4 "
        "steps; PLD ε = 4) — shuffled batches: the Poisson figure, not a proven bound (Chua et al. 2024); BatchNorm "
        "statistics not privatised: no guarantee",
        head.format(0, "poisson") + "∞ at δ = min(1e-5, n^-1.1) = 1e-05 (RDP, dp-accounting; q 0.25, σ 0, 4 steps) "
        "— σ = 0: no noise",
        head.format(2, "poisson") + "2–3 (3 runs) or ∞ at δ = 1/n = 0.000256–0.000333 (RDP, dp-accounting; q "
        "0.25, σ 2, 4 steps; PLD ε = 1.5–2.5 (3 runs) or ∞) — Poisson-sampled batches: the RDP bound holds",
        "dpsgd (clip 1, delta 2e-06, noise_multiplier 1, sampling poisson): ε = 4.5 at δ = 2e-06 (RDP, "
        "dp-accounting; q 0.25, σ 1, 4 steps; PLD ε = 4) — Poisson-sampled batches: the RDP bound holds"]


def test_nearest_bases_break_ties_to_the_lower_row_across_chunk_boundaries():
    """Equal distances go to the lower row wherever the chunks cut the pool: twelve pool rows, six of them at the
    same distance (rows 2, 3, 5, 6, 9 and 11, across the chunks of 2, 4 and 5), k 5 cutting the tie after three;
    every chunk size gives the same rows and distances. (Planted: `torch.topk(distances, k, largest=False)` for the
    stable sort.)"""
    from types import SimpleNamespace

    from poisonbench.attacks.targets import nearest_rows

    class Flat(nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    # one pixel each: the target 100; rows at 100 ± 20 tie (distance 20/255), the rest 40/255 or 10/255 away
    pixels = [60, 140, 80, 120, 110, 80, 120, 140, 90, 80, 60, 120]
    train = torch.tensor(pixels, dtype=torch.uint8).reshape(12, 1, 1, 1)
    data = SimpleNamespace(train=SimpleNamespace(x=train),
                           test=SimpleNamespace(x=torch.tensor([100], dtype=torch.uint8).reshape(1, 1, 1, 1)))
    pool = torch.arange(12)
    tied = [r for r in range(12) if abs(pixels[r] - 100) == 20]
    assert tied == [2, 3, 5, 6, 9, 11]
    for chunk in (2, 4, 5, 12):
        rows, dist = nearest_rows(Flat(), data, pool, 0, 5, torch.device("cpu"), chunk=chunk)
        assert rows.tolist() == [2, 3, 4, 5, 8]  # 4 and 8 nearer (10/255); then the tie's three lowest rows
        torch.testing.assert_close(dist, torch.tensor([20, 20, 10, 20, 10]) / 255)


@pytest.mark.parametrize("args", [
    ["poisons", "show", "ab" * 8], ["poisons", "validate", "ab" * 8], ["poisons", "import", "{dir}/nothing"],
    ["report", "missing", "2"], ["report", "figure", "1"], ["report", "html", "{dir}/page.html"],
    ["sweep", "plan", "{grid}"], ["sweep", "status", "{grid}"], ["sweep", "run", "{grid}"]])
def test_every_other_command_refuses_a_blank_results_in_the_same_line(cli, tmp_path, monkeypatch, args):
    """The commands item 10's test leaves out, each with `--results "  "`: exit 2, the same one line, nothing
    written beside the inputs. (Planted: `poisons import` without its early `results_dir(results)` check; a
    sweep's store made from `Path(results)`.)"""
    from .conftest import one_line_error
    from .test_probe_sweep_run import write_grid

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    grid = write_grid(inputs)
    before = sorted(p.name for p in inputs.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = cli(*(a.format(dir=inputs, grid=grid) for a in args), "--results", "  ")
    one_line_error(code, err)
    assert err.strip() == ("Error: --results is empty ('  '); pass a directory, or leave the option out for "
                           "$POISONBENCH_RESULTS or ./results")
    assert list(work.iterdir()) == [] and sorted(p.name for p in inputs.iterdir()) == before


def test_defend_trials_stop_at_the_last_setup_and_one_past_it_is_refused_before_anything_runs(cli, tmp_path):
    """`defend --setup F --setup-index I --trials N` takes setups I..I+N-1: with 2 setups, index 1 and 2 trials is
    refused in one line before any craft or training (nothing written), and index 0 with 2 trials plans both, the
    second on the last setup. (Planted: `setup_target`'s check `0 <= i <= len(setups)`, an IndexError after the
    first trial's plan.)"""
    import json

    import numpy as np

    from poisonbench.data import load_dataset
    from poisonbench.experiment.scenarios import scenario_for
    from poisonbench.experiment.spec import DefendSpec

    from .conftest import one_line_error, write_npz

    npz = write_npz(tmp_path, n=200)
    data = load_dataset(str(npz))
    true = int(data.test.y[5])
    intended = (true + 1) % 4
    bases = [int(data.train.indices[r]) for r in np.flatnonzero(data.train.y.numpy() == intended)[:2]]
    one = {"target_class": true, "target_index": int(data.test.indices[5]), "base_class": intended,
           "base_indices": bases}
    setups = tmp_path / "setups.json"
    setups.write_text(json.dumps({"setups": [one, one]}))
    results = tmp_path / "res"
    code, _, err = cli("defend", "--scenario", "scratch", "--attack", "bp", "--dataset", npz, "--setup", setups,
                       "--setup-index", "1", "--trials", "2", "--recipe", "quick", "--epochs", "1", "--compile",
                       "off", "--results", results)
    one_line_error(code, err)
    assert err.strip() == "Error: --setup-index 2 is outside the setup file's [0, 2)"
    assert not results.exists()
    spec = DefendSpec(dataset=str(npz), scenario="scratch", attack="bp", setup=str(setups), setup_index=0, trials=2)
    scenario = scenario_for(spec)
    plans = [scenario.plan(spec, data, t) for t in (0, 1)]
    assert [p.config["setup"]["index"] for p in plans] == [0, 1]


def test_the_api_plain_reports_notes_are_the_clis_lines_whole(cli, tmp_path):
    """`api.report()` without a table (the plain summary) keeps, in `attrs["notes"]`, exactly the note lines
    `poisonbench report` prints on stderr: the runs not shown (a trial repeated under another seed) and the mixed
    crafts. (The table branch: test_the_api_tables_notes_are_the_clis_whole_lines_and_none_left_out. Before: the API's
    "not shown" note was the CLI's cut short.)"""
    from poisonbench import api
    from poisonbench.core.hashing import short_hash

    from .test_run_identity import craft, mix_record, workspace

    again = mix_record(0, craft("a"), method="none")
    again["config"]["seed"] = 17  # trial 0 again under another --seed: not shown
    again["run_id"] = short_hash(again["config"])
    root = tmp_path / "res"
    workspace(root, [mix_record(t, craft("a"), method="none") for t in range(2)]
              + [mix_record(2, craft("b"), method="none"), again])
    notes = api.report(str(root)).attrs["notes"]
    code, out, err = cli("report", "--results", root, "--format", "md")
    assert code == 0, err
    assert len(notes) == 6 and notes[0].startswith("not shown: 1 run(s) ")
    assert notes[1].startswith("mixed crafts in the cell ") and all(" in 2 crafts " in n for n in notes[2:])
    assert notes == err.splitlines()


def test_an_npz_exactly_at_each_declared_size_bound_loads_and_one_byte_more_is_refused(monkeypatch, tmp_path):
    """`check_declared_size`, each bound probed at its edge (bounds made small here): declared bytes equal to
    `MAX_NPZ_BYTES`, equal to `MAX_NPZ_INFLATION` × the file (above the floor), anything up to the floor itself,
    and a load needing exactly the memory available pass; one byte more is refused, whole. (Planted: `>=` for `>` in
    each of the four comparisons.)"""
    import numpy as np

    from poisonbench.core.errors import PoisonbenchError
    from poisonbench.data import npz as npz_module
    from poisonbench.data.npz import NpyHeader, check_declared_size

    def heads(x_bytes: int) -> tuple:  # x: uint8 rows; y: 1 int64 label (8 bytes)
        return NpyHeader((x_bytes,), np.dtype(np.uint8), 128, 0), NpyHeader((1,), np.dtype(np.int64), 128, 0)

    def refused(path, x_bytes: int) -> str:
        with pytest.raises(PoisonbenchError) as info:
            check_declared_size(path, *heads(x_bytes))
        return str(info.value)

    monkeypatch.setattr(npz_module, "available_memory", lambda: 1 << 60)
    monkeypatch.setattr(npz_module, "MAX_NPZ_BYTES", 1008)
    nowhere = tmp_path / "absent.npz"  # no size on disk: the inflation bound does not apply
    check_declared_size(nowhere, *heads(1000))
    assert refused(nowhere, 1001) == (f"{nowhere}: declares 1.0 kB of arrays (x uint8 (1001,), y int64 (1,)), more "
                                      "than the limit of 1.0 kB for an .npz dataset; refused before reading it")

    monkeypatch.setattr(npz_module, "MAX_NPZ_BYTES", 1 << 40)
    monkeypatch.setattr(npz_module, "NPZ_INFLATION_FLOOR", 500)
    small = tmp_path / "small.npz"
    small.write_bytes(b"\0" * 10)  # 10 bytes on disk: 100× is 1,000 declared
    check_declared_size(small, *heads(992))
    assert refused(small, 993) == (f"{small}: declares 1.0 kB of arrays (x uint8 (993,), y int64 (1,)) from 10 "
                                   "bytes on disk, more than 100× the file (the limit: images deflate far less; a "
                                   "decompression bomb?); refused before reading it")
    monkeypatch.setattr(npz_module, "NPZ_INFLATION_FLOOR", 2000)
    check_declared_size(small, *heads(1992))  # 2,000 declared: at the floor, whatever the file's size
    assert "more than 100× the file" in refused(small, 1993)

    monkeypatch.setattr(npz_module, "NPZ_INFLATION_FLOOR", 1 << 40)
    monkeypatch.setattr(npz_module, "available_memory", lambda: 4 * 1000 + 6 * 8)  # the load of x 1000, y 8 bytes
    check_declared_size(small, *heads(1000))
    assert refused(small, 1001) == (f"{small}: declares 1.0 kB of arrays (x uint8 (1001,), y int64 (1,)); loading "
                                    "it takes about 4.1 kB, more than the 4.0 kB of memory available; refused before "
                                    "reading it")
