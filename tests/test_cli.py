"""The CLI end to end on tiny data: records, skipping, --force, --json, env vars, report, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ["--recipe", "quick", "--epochs", "2", "--batch-size", "64", "--compile", "off"]


def test_defend_writes_records_skips_and_forces(cli, tiny_npz, tmp_path):
    results = tmp_path / "res"
    code, out, err = cli("defend", "--dataset", tiny_npz, *FAST, "--trials", "2", "--results", results, "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in rows] == ["ran", "ran"] and [r["seed"] for r in rows] == [0, 1]
    assert all(0 <= r["test_acc"] <= 1 and r["seconds"] > 0 for r in rows)
    records = sorted((results / "runs").glob("*.json"))
    assert [p.stem for p in records] == sorted(r["run_id"] for r in rows)
    record = json.loads(records[0].read_text())
    assert {"config", "metrics", "history", "cost", "env"} <= set(record)
    assert 50 < record["cost"]["peak_rss_mib"] < 24 * 1024  # docs/metrics.md: peak memory (torch alone takes > 50)
    assert record["env"]["torch"] and record["env"]["device"] == "cpu"
    assert len(record["history"]) == 2

    code, out, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--trials", "2", "--results", results, "--json")
    again = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]

    code, out, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--results", results, "--json", "--force")
    forced = json.loads(out)
    assert forced["status"] == "ran" and forced["test_acc"] == rows[0]["test_acc"]  # same seed, same numbers

    # --trial T is trial T of --trials N: the same record (skipped here), and a new one for T = 2
    code, out, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--trial", "1", "--results", results, "--json")
    one = json.loads(out)
    assert one["status"] == "skipped" and one["run_id"] == rows[1]["run_id"]
    code, out, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--trial", "2", "--results", results, "--json")
    two = json.loads(out)
    assert two["status"] == "ran" and two["trial"] == 2 and two["seed"] == 2


def test_env_vars_pick_dataset_and_workspace(cli, tiny_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_DATASET", str(tiny_npz))
    monkeypatch.setenv("POISONBENCH_RESULTS", str(tmp_path / "env-res"))
    code, out, err = cli("defend", *FAST, "--json")
    assert code == 0, err
    assert json.loads(out)["dataset"] == "tiny.npz"
    assert len(list((tmp_path / "env-res" / "runs").glob("*.json"))) == 1


def test_report_aggregates_mean_and_std(cli, tiny_npz, tmp_path):
    results = tmp_path / "res"
    cli("defend", "--dataset", tiny_npz, *FAST, "--trials", "3", "--results", results)
    code, out, err = cli("report", "--results", results, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    accs = [r["metrics"]["test_acc"] for r in records]
    import statistics

    assert row["n"] == 3
    assert row["test_acc_mean"] == pytest.approx(statistics.mean(accs))
    assert row["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    code, out, _ = cli("report", "--results", results, "--format", "md")
    assert out.startswith("| dataset") and "±" in out
    code, out, _ = cli("report", "--results", results, "--format", "csv")
    assert code == 0 and out.endswith("\n") and not out.endswith("\n\n")


def test_data_list_json_gives_numbers_and_unknown_commands_list_the_valid_ones(cli):
    code, out, _ = cli("data", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["mnist-5k"]["splits"] == {"train": 3900, "val": 100, "test": 1000}
    assert rows["cifar10"]["unit"] == "rows" and rows["PATH.npz"]["unit"] == "percent"
    code, _, err = cli("figure", "noise")
    assert code == 2 and ("No such command 'figure'. Valid choices: defend, report, data, craft, poisons, sweep, "
                          "records, env.") in err


@pytest.mark.parametrize("args, needle", [
    (["defend", "--dataset", "imagenet"], "unknown dataset 'imagenet'; valid choices: mnist"),
    (["defend", "--model", "vgg99"], "unknown model 'vgg99'; valid choices: convnet, convnet-gn, resnet18"),
    (["defend", "--method", "magic"], "unknown method 'magic'; valid choices: none"),
    (["defend", "--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["defend", "--epochs", "-2"], "epochs must be a positive integer, got -2"),
    (["defend", "--dataset", "mnist", "--data-dir", "/no/such/dir"], "data directory '/no/such/dir' does not exist"),
    (["defend", "--recipe", "slow"], "unknown recipe 'slow'; valid choices: paper, quick"),
    (["defend", "--device", "tpu"], "unknown device 'tpu'"),
    (["defend", "--trials", "0"], "trials must be a positive integer"),
    (["defend", "--trial", "-1"], "trial must be a non-negative integer, got -1"),
    (["craft", "--attack", "pgd", "--compile", "fast"], "unknown compile mode 'fast'; valid choices: auto, on, off"),
    (["report", "--per-trial"], "--per-trial only applies to --missing"),
    (["defend", "--trials", "3", "--trial", "1"], "give either --trials N (trials 0..N-1) or --trial T"),
    (["defend", "--poison-ratio", "1.5"], "poison ratio must be in [0, 1], got 1.5"),
    (["defend", "--checkpoint-every", "-5"], "--checkpoint-every must be >= 0 seconds, got -5.0"),
    (["defend", "--ratio", "0.5"], "option --ratio does not apply to method 'none'; it takes none"),
    (["data", "info", "nope"], "unknown dataset 'nope'"),
    (["report", "--format", "xml"], "unknown format 'xml'; valid choices: rich, md"),
    # below: values that once started training or crafting, or ended in a traceback
    (["defend", "--lr", "inf"], "learning rate must be a finite number > 0, got inf"),
    (["defend", "--momentum", "nan"], "momentum must be in [0, 1) and weight decay a finite number >= 0, got nan"),
    (["defend", "--momentum", "1"], "momentum must be in [0, 1)"),
    (["defend", "--milestones", "-5"], "milestone -5 is outside [1, 30]"),
    (["defend", "--epochs", "2", "--milestones", "500"], "milestone 500 is outside [1, 2]"),
    (["defend", "--milestones", "3,1,1"], "milestones list an epoch twice: 3,1,1"),
    (["data", "info", "mnist", "--data-dir", "/etc/passwd"], "'/etc/passwd' is a file, not a directory"),
    (["defend", "--attacks", "foo"], "unknown attack 'foo'"),
    (["defend", "--attacks", "pgd,,dap", "--poison-ratio", "0.2"], "--attacks has an empty entry"),
    (["defend", "--method", "hint", "--beta", "2"], "--beta of method 'hint' must be in (0, 1], got 2"),
    (["defend", "--method", "hint", "--gamma", "inf"], "--gamma of method 'hint' must be a finite number, got inf"),
    (["defend", "--method", "hint", "--quantize", "--beta", "0.001"], "--quantize needs --beta >= 1/255"),
    (["report", "--table", "2", "--rho", "nan"], "--rho must be in [0, 1], got nan"),
    (["defend", "--seed", "-1"], "--seed must be an integer in [0, 2^63 - 1], got -1"),
    (["defend", "--seed", str(2 ** 63 - 1), "--trials", "2"], "--seed plus the last trial must be an integer in"),
    (["craft", "--attack", "durp", "--seed", str(2 ** 64)], "seed must be an integer in [0, 2^63 - 1]"),
    (["craft", "--attack", "deepconfuse", "--gen-lr", "inf"], "must be a finite number, got inf"),
    (["report", "--method", "none,hnit"],
     "unknown method 'hnit'; valid choices: activation-clustering, atda, dpsgd, epic, friends, hint, iss, knn, l2, "
     "none, ocsvm, oracle, random, spectral, ueraser"),
    (["report", "--table", "2", "--missing", "--dataset", "mnist5k"], "unknown dataset 'mnist5k'"),
    (["defend", "--epochs", "abc"], "Invalid value for '--epochs': Input should be a valid integer"),
    (["defend", "--epochs", "abc"], "(got 'abc')"),  # Typer's type errors name the option, not the value
    (["craft", "--eps=0.x"], "(got '0.x')"),
    (["defend", "--epochs", "5", "--epochs", "abc"], "(got 'abc')"),  # the last of a repeated option counts
])
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "res"
    extra = ["--json"] if args[0] == "data" else ["--results", results]
    code, out, err = cli(*args, *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ") and needle in err, err
    assert "Traceback" not in err
    assert not results.exists() and not (tmp_path / "results").exists()


def test_images_too_small_for_the_model(cli, tmp_path):
    import numpy as np

    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((50, 8, 8), np.uint8), y=np.arange(50) % 5)
    code, _, err = cli("defend", "--dataset", small, "--results", tmp_path / "res")
    assert code == 2 and "needs images of at least 16×16" in err and not (tmp_path / "res").exists()


def test_malformed_npz_via_cli(cli, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    code, _, err = cli("defend", "--dataset", bad, "--results", tmp_path / "res")
    assert code == 2 and "not a readable .npz" in err and not (tmp_path / "res").exists()


def test_help_lists_only_working_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("defend", "report", "data"):
        assert command in out


@pytest.mark.parametrize("labels, needle", [
    ([0] * 39 + [1_000_000], "labels must be the classes 0..K-1"),  # once: a model with 1,000,001 classes
    ([0] * 40, "found 1 distinct label(s)"),  # once: a 1-class model trained to the end
])
def test_npz_labels_must_be_the_classes_0_to_k(cli, tmp_path, labels, needle):
    import numpy as np

    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((len(labels), 28, 28), np.uint8), y=np.array(labels))
    code, _, err = cli("defend", "--dataset", str(path), "--results", tmp_path / "res")
    assert code == 2 and needle in err and "Traceback" not in err and not (tmp_path / "res").exists()


def test_a_dataset_too_small_for_its_splits_and_a_file_as_workspace_are_refused(cli, tmp_path):
    import numpy as np

    path = tmp_path / "three.npz"  # 80 / 2 / 18 % of 3 images leaves no validation image
    np.savez(path, x=np.zeros((3, 28, 28), np.uint8), y=np.array([0, 1, 0]))
    code, _, err = cli("defend", "--dataset", str(path), "--results", tmp_path / "res")
    assert code == 2 and "too few images to split (2 train / 0 val / 1 test)" in err, err
    workspace = tmp_path / "a-file"
    workspace.write_text("")
    code, _, err = cli("defend", "--results", workspace)
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err


def test_a_record_of_another_schema_is_refused_and_a_failed_record_write_keeps_the_result(cli, tiny_npz, tmp_path,
                                                                                        monkeypatch):
    """Never lose a result: a record written by another poisonbench version (another schema) is not overwritten
    without --force; when the record cannot be written, the finished record is printed and the command fails."""
    import json

    from poisonbench.experiment.records import RunStore

    results = tmp_path / "r"
    code, out, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--results", results, "--json")
    assert code == 0
    rid = json.loads(out)["run_id"]
    path = RunStore(results).path(rid)
    path.write_text(json.dumps({"run_id": rid, "schema_version": 2}))
    code, _, err = cli("defend", "--dataset", tiny_npz, *FAST, "--results", results, "--json")
    assert code == 2 and "schema version 2" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert json.loads(path.read_text())["schema_version"] == 2
    code, _, _ = cli("defend", "--dataset", tiny_npz, *FAST, "--results", results, "--json", "--force")
    assert code == 0 and RunStore(results).get(rid) is not None

    def disk_full(self, record, replace=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunStore, "put", disk_full)
    code, _, err = cli("defend", "--dataset", tiny_npz, *FAST, "--trial", "1", "--results", results, "--json")
    assert code == 2
    printed = [line for line in err.splitlines() if line.startswith('{"')]
    assert len(printed) == 1 and json.loads(printed[0])["config"]["trial"] == 1
    assert "No space left on device" in err.strip().splitlines()[-1]


FAST_DEFEND = ["--recipe", "quick", "--epochs", "1", "--batch-size", "64", "--compile", "off"]


def test_defend_json_fields_are_the_records(cli, tiny_npz, tmp_path):
    args = ["defend", "--dataset", tiny_npz, *FAST_DEFEND, "--seed", "5", "--results", tmp_path / "r", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    path = Path(json.loads(out)["path"])
    assert path.parent == tmp_path / "r" / "runs"
    record = json.loads(path.read_text())
    # distinct values in every numeric field, so a field printed from the wrong key shows
    record["metrics"].update(test_acc=0.25, val_acc=0.75)
    record["cost"]["seconds"] = 12.5
    path.write_text(json.dumps(record))
    code, out, err = cli(*args)  # skipped: the line is read from the record
    assert code == 0, err
    assert json.loads(out) == {
        "run_id": record["run_id"], "status": "skipped", "dataset": "tiny.npz", "method": "none", "trial": 0,
        "seed": 5, "test_acc": 0.25, "val_acc": 0.75, "seconds": 12.5, "resumed_from_epoch": 0, "path": str(path),
    }
    assert path.stem == record["run_id"]


def test_a_warning_is_one_line_on_stderr(cli, tiny_npz):
    code, out, err = cli("data", "info", tiny_npz, "--download", "--json")
    assert code == 0 and json.loads(out)["name"] == "tiny.npz"
    assert err == "Warning: --download ignored: " + str(tiny_npz) + " is read from its file\n"


def test_data_info_text_names_source_and_split_fingerprints(cli, tiny_npz):
    from poisonbench.data import load_dataset

    data = load_dataset(str(tiny_npz))
    code, out, _ = cli("data", "info", tiny_npz)
    flat = " ".join(out.split())
    assert code == 0 and f"read from: {data.source}".replace(" ", "") in out.replace(" ", "").replace("\n", "")
    for split in (data.train, data.val, data.test):
        assert split.fingerprint[:12] in flat
    summary = data.summary()
    assert {s["fingerprint"] for s in summary["splits"].values()} == {data.train.fingerprint, data.val.fingerprint,
                                                                      data.test.fingerprint}


def test_defend_warns_before_training_on_another_craft_than_the_records(cli, tiny_npz, tmp_path):
    """A re-crafted PoisonSet keeps its id but not its floats: a run about to train on other tensors than the
    workspace's records of that PoisonSet says so in one line, naming the PoisonSet and the other craft; a run on
    the records' own craft, or a --force re-run of the only record on the other craft, says nothing."""
    results = tmp_path / "res"
    args = ["defend", "--dataset", tiny_npz, *FAST_DEFEND, "--poison-ratio", "0.3", "--attacks", "durp",
            "--results", results, "--json"]
    code, out, err = cli(*args, "--trial", "0")
    assert code == 0 and "Warning" not in err
    record_path = results / "runs" / f"{json.loads(out)['run_id']}.json"
    first = json.loads(record_path.read_text())
    pid = first["config"]["poison"]["poison_ids"]["durp"]
    code, _, err = cli(*args, "--trial", "1")
    assert code == 0 and "Warning" not in err  # the same craft

    first["poison_tensors"]["durp"] = "f" * 64  # as if trial 0 had trained on another craft of the PoisonSet
    first["inputs"]["poisons"][0]["tensors_sha256"] = "f" * 64
    record_path.write_text(json.dumps(first))
    code, _, err = cli(*args, "--trial", "2")
    assert code == 0
    (line,) = [w for w in err.splitlines() if w.startswith("Warning:")]
    assert f"PoisonSet {pid} (durp)" in line and "ffffffff… (1 run)" in line and "will not pair" in line
    code, _, err = cli(*args, "--trial", "0", "--force")  # replaces the one record on the other craft, not silently
    (line,) = [w for w in err.splitlines() if w.startswith("Warning:")]
    assert code == 0 and f"{pid[:8]}@ffffffff" in line and "replacing it (--force)" in line
