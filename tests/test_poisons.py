"""PoisonSet artifacts: cache hit, new craft on changed input, tamper / truncation / mismatch refusal, CLI."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from poisonbench import poisons
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset

from .conftest import write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisons")
    path, other = write_npz(root), write_npz(root, seed=5, name="other.npz")
    return load_dataset(str(path)), load_dataset(str(other)), path


def _craft(data, results, **kw):
    spec = poisons.craft_spec(data, kw.pop("attack", "durp"), **kw)
    return spec, *poisons.craft(spec, data, results)


def test_cache_hit_and_new_craft_on_changed_input(tiny, tmp_path):
    data, _, _ = tiny
    spec, first, cached = _craft(data, tmp_path, budget=0.5, seed=1)
    assert not cached and first.path.name == spec.poison_id
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["delta.safetensors", "manifest.json"]
    manifest = json.loads((first.path / "manifest.json").read_text())
    for key in ("attack", "params", "eps", "budget", "seed", "dataset", "dataset_fingerprint", "surrogate",
                "poisonbench", "tensor_sha256", "craft_seconds", "count", "peak_rss_mib"):
        assert key in manifest
    mtime = (first.path / "delta.safetensors").stat().st_mtime_ns
    spec2, second, cached2 = _craft(data, tmp_path, budget=0.5, seed=1)
    assert cached2 and spec2.poison_id == spec.poison_id
    assert (first.path / "delta.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(first.delta, second.delta) and torch.equal(first.indices, second.indices)
    for change in ({"budget": 0.4, "seed": 1}, {"budget": 0.5, "seed": 2}, {"budget": 0.5, "seed": 1, "eps": 0.2}):
        other, _, cached3 = _craft(data, tmp_path, **change)
        assert not cached3 and other.poison_id != spec.poison_id
    assert len(poisons.list_ids(tmp_path)) == 4
    assert not [p for p in (tmp_path / "poisons").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_a_killed_writers_temporary_directory_is_removed_by_the_next_craft(tiny, tmp_path):
    import subprocess
    import sys

    from poisonbench.core.io import writer_tag

    data, _, _ = tiny
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = writer_tag().split("@", 1)[1]
    root = poisons.poison_dir(tmp_path, spec.poison_id).parent
    stale = root / f".{spec.poison_id}.{dead.pid}@{host}.k1ll3d"
    live = root / f".{spec.poison_id}.{os.getpid()}@{host}.l1v3"  # e.g. another node's writer: left alone
    other = root / f".0123456789abcdef.{dead.pid}@{host}.k1ll3d"  # another PoisonSet's: not this write's
    for d in (stale, live, other):
        d.mkdir(parents=True)
        (d / "delta.safetensors").write_bytes(b"half")
    poisons.craft(spec, data, tmp_path)
    assert sorted(p.name for p in root.iterdir()) == sorted([spec.poison_id, live.name, other.name])


def test_poison_id_is_known_before_crafting(tiny, tmp_path):
    data, _, _ = tiny
    spec = poisons.craft_spec(data, "pgd")
    assert spec.surrogate and len(spec.poison_id) == 16
    assert not (tmp_path / "poisons").exists() and not (tmp_path / "surrogates").exists()


def test_tampered_truncated_and_mismatched_artifacts_are_refused(tiny, tmp_path):
    data, other, _ = tiny
    spec, poison, _ = _craft(data, tmp_path, budget=1.0)
    tensor_file = poison.path / "delta.safetensors"
    original = tensor_file.read_bytes()
    with pytest.raises(PoisonbenchError, match="crafted for dataset"):
        poisons.load(tmp_path, spec.poison_id, other)
    with pytest.raises(PoisonbenchError, match="craft spec is for dataset fingerprint"):
        poisons.craft(spec, other, tmp_path)
    flipped = bytearray(original)
    flipped[-10] ^= 0xFF
    tensor_file.write_bytes(bytes(flipped))
    with pytest.raises(PoisonbenchError, match="sha256"):
        poisons.load(tmp_path, spec.poison_id, data)
    with pytest.raises(PoisonbenchError, match="sha256"):
        poisons.craft(spec, data, tmp_path)  # a cache hit on a tampered artifact is refused, not reused
    tensor_file.write_bytes(original[: len(original) // 2])
    with pytest.raises(PoisonbenchError, match="tampered or truncated"):
        poisons.load(tmp_path, spec.poison_id, data)
    tensor_file.write_bytes(original)
    assert poisons.load(tmp_path, spec.poison_id, data).delta.shape[0] == len(data.train)
    with pytest.raises(PoisonbenchError, match="'nope' is not a poison id"):
        poisons.load(tmp_path, "nope")


def test_an_artifact_under_another_poison_id_or_with_edited_inputs_is_refused(tiny, tmp_path):
    """sha256 and fingerprint pass for a valid artifact moved under another id: the id itself must match."""
    import shutil

    data, _, _ = tiny
    spec, poison, _ = _craft(data, tmp_path, budget=1.0, seed=1)
    wanted = poisons.craft_spec(data, "durp", budget=1.0, seed=2)
    shutil.copytree(poison.path, tmp_path / "poisons" / wanted.poison_id)
    with pytest.raises(PoisonbenchError, match="other crafting inputs"):
        poisons.craft(wanted, data, tmp_path)
    manifest_file = poison.path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["eps"] = 0.5  # the id still says the original ε
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(PoisonbenchError, match="other crafting inputs"):
        poisons.load(tmp_path, spec.poison_id, data)


def test_validate_reports_every_check(tiny, tmp_path):
    data, other, _ = tiny
    spec, _, _ = _craft(data, tmp_path, budget=0.5)
    checks = poisons.validate(tmp_path, spec.poison_id, data)
    names = [c for c, _, _ in checks]
    assert names == ["poison id", "sha256", "dataset", "indices", "budget", "shape", "eps-ball", "pixel range",
                     "labels"]
    assert all(ok for _, ok, _ in checks)
    bad = poisons.validate(tmp_path, spec.poison_id, other)
    assert ("dataset", False) in [(c, ok) for c, ok, _ in bad]


def test_cli_craft_list_show_validate(tiny, tmp_path, cli):
    _, _, path = tiny
    results = tmp_path / "res"
    code, out, err = cli("craft", "--attack", "durp", "--dataset", path, "--budget", "0.25", "--results", results,
                         "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["status"] == "crafted" and info["count"] == 40
    code, out, _ = cli("craft", "--attack", "durp", "--dataset", path, "--budget", "0.25", "--results", results,
                       "--json")
    assert json.loads(out)["status"] == "cached" and json.loads(out)["poison_id"] == info["poison_id"]
    code, out, _ = cli("poisons", "list", "--results", results, "--json")
    assert code == 0 and [r["poison_id"] for r in json.loads(out)] == [info["poison_id"]]
    code, out, _ = cli("poisons", "show", info["poison_id"], "--results", results)
    assert code == 0 and json.loads(out)["attack"] == "durp"
    code, out, _ = cli("poisons", "validate", info["poison_id"], "--dataset", path, "--results", results, "--json")
    assert code == 0 and json.loads(out)["ok"]
    (results / "poisons" / info["poison_id"] / "delta.safetensors").write_bytes(b"junk")
    code, out, _ = cli("poisons", "validate", info["poison_id"], "--dataset", path, "--results", results)
    assert code == 1 and "FAIL" in out


@pytest.mark.parametrize("args, needle", [
    (["craft", "--attack", "nope"], "unknown attack 'nope'; valid choices: pgd, "),
    (["craft", "--attack", "pgd", "--eps", "0"], "eps must be in (0, 1)"),
    (["craft", "--attack", "pgd", "--eps", "-0.1"], "eps must be in (0, 1)"),
    (["craft", "--attack", "pgd", "--eps", "1.5"], "eps must be in (0, 1)"),
    (["craft", "--attack", "pgd", "--budget", "-0.5"], "budget must be a fraction in [0, 1]"),
    (["craft", "--attack", "pgd", "--budget", "2"], "budget must be a fraction in [0, 1]"),
    (["craft", "--attack", "durp", "--steps", "3"], "option --steps does not apply to attack 'durp'"),
    (["craft", "--attack", "pgd", "--steps", "0"], "--steps of attack 'pgd' must be in [1, 1000]"),
    (["craft", "--attack", "pgd", "--device", "tpu"], "unknown device 'tpu'"),
    (["poisons", "show", "abc"], "'abc' is not a poison id"),
    (["poisons", "show", "0123456789abcdef"], "no poison set '0123456789abcdef'"),
    (["poisons", "validate", "../../evil"], "'../../evil' is not a poison id"),
    (["craft", "--attack", "pgd", "--generator-weights", "x.pt"],
     "option --generator-weights does not apply to attack 'pgd'"),
    (["defend", "--poison-ratio", "0.5", "--poisons", "durp"], "ATTACK=POISON_ID pairs"),
    (["report", "--attacks", ""], "--attacks needs a value, got an empty one"),
    (["report", "--table", "2", "--missing", "--format", "json"], "--format json does not apply"),
    (["defend", "--poison-ratio", "-0.1"], "poison ratio must be in [0, 1]"),
    (["defend", "--poison-ratio", "0.5", "--attacks", "pgd,nope"], "unknown attack 'nope'"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(cli, tiny, tmp_path, monkeypatch, args, needle):
    _, _, path = tiny
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "res"
    extra = ["--dataset", path] if args[0] in ("craft", "defend") else []
    code, out, err = cli(*args, *extra, "--results", results)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ") and needle in err, err
    assert not results.exists() and not (tmp_path / "results").exists()


def test_concurrent_jobs_craft_a_poison_set_once(tiny, tmp_path, monkeypatch):
    """Sweep jobs sharing a workspace: the second waits on the first's lock and loads its artifact."""
    import threading
    import time

    from poisonbench.attacks import ATTACKS

    data, _, _ = tiny
    durp = ATTACKS.get("durp")
    calls = []
    original = durp.perturb

    def slow_perturb(self, ctx):
        calls.append(1)
        time.sleep(1.0)  # long enough for the other job to arrive while this one crafts
        return original(self, ctx)

    monkeypatch.setattr(durp, "perturb", slow_perturb)
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=4)
    waits, out = [], []

    def job():
        out.append(poisons.craft(spec, data, tmp_path, progress=lambda d, *_: waits.append(d)))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(cached for _, cached in out) == [False, True]
    assert torch.equal(out[0][0].delta, out[1][0].delta)
    assert any("waiting for another process" in d for d in waits)
    assert poisons.list_ids(tmp_path) == [spec.poison_id]
    assert not [p for p in (tmp_path / "poisons").iterdir() if p.name != spec.poison_id]  # locks live elsewhere


def test_concurrent_jobs_train_the_surrogate_once(tiny, tmp_path, monkeypatch):
    import threading
    import time

    from poisonbench.attacks import surrogate
    from poisonbench.engine import model_cache as trained_models

    data, _, _ = tiny
    calls = []
    original = trained_models._train

    def slow_train(*args, **kwargs):
        calls.append(1)
        time.sleep(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(trained_models, "_train", slow_train)
    out = []
    threads = [threading.Thread(target=lambda: out.append(
        surrogate.load_or_train_surrogate(data, tmp_path, torch.device("cpu")))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(info["trained"] for _, info in out) == [False, True]
    assert out[0][1]["weights_sha256"] == out[1][1]["weights_sha256"]

    # edited weights under the original metadata are refused; the poison manifest names the exact weights
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = surrogate.surrogate_path(tmp_path, out[0][1]["id"])
    with safe_open(str(path), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    spec, poison, _ = _craft(data, tmp_path, attack="pgd", steps=1)
    assert poison.manifest["surrogate_info"]["weights_sha256"] == out[0][1]["weights_sha256"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3
    save_file(state, str(path), metadata=meta)
    with pytest.raises(PoisonbenchError, match="weights sha256"):
        surrogate.load_or_train_surrogate(data, tmp_path, torch.device("cpu"))


def test_a_manifest_that_is_not_a_poisonset_manifest_is_refused_in_one_line(tiny, tmp_path, cli):
    data, _, _ = tiny
    spec, poison, _ = _craft(data, tmp_path, budget=1.0)
    (poison.path / "manifest.json").write_text("[1, 2]")
    for command in ("show", "validate"):
        args = ("poisons", command, spec.poison_id, "--results", tmp_path)
        code, _, err = cli(*args, *(("--dataset", str(tiny[2])) if command == "validate" else ()))
        assert code == 2 and "is not a PoisonSet manifest" in err and "Traceback" not in err, err
    code, out, err = cli("poisons", "list", "--results", tmp_path)  # one bad set does not break the list
    assert code == 0 and "Traceback" not in err


def test_a_poison_directory_without_manifest_is_replaced_by_a_new_craft(tiny, tmp_path):
    """An orphan `poisons/<id>/` (an interrupted copy, a hand-deleted manifest) is no PoisonSet: crafting that id
    replaces it instead of failing at the very end with 'directory not empty'."""
    data, _, _ = tiny
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=3)
    orphan = poisons.poison_dir(tmp_path, spec.poison_id)
    orphan.mkdir(parents=True)
    (orphan / "delta.safetensors").write_bytes(b"stale")
    _, poison, cached = _craft(data, tmp_path, budget=0.5, seed=3)
    assert not cached and poisons.load(tmp_path, spec.poison_id).delta.shape == poison.delta.shape
    assert sorted(p.name for p in (tmp_path / "poisons").iterdir()) == [spec.poison_id]


@pytest.mark.parametrize("kwargs, needle", [
    ({"seed": -1}, "seed must be an integer in [0, 2^63 - 1], got -1"),
    ({"seed": 2 ** 63}, "seed must be an integer in [0, 2^63 - 1]"),
    ({"attack": "deepconfuse", "gen_lr": float("inf")}, "must be a finite number, got"),
    ({"attack": "deepconfuse", "gen_lr": float("nan")}, "must be a finite number, got"),
    ({"attack": "pgd", "steps": 10 ** 400}, "must be a finite number, got"),
])
def test_out_of_range_seeds_and_non_finite_options_are_refused_before_anything_is_written(tiny, tmp_path, kwargs,
                                                                                          needle):
    data, _, _ = tiny
    with pytest.raises(PoisonbenchError) as info:
        poisons.craft_spec(data, kwargs.pop("attack", "durp"), budget=0.5, **kwargs)
    assert needle in str(info.value)
    assert not tmp_path.joinpath("partial").exists() and not tmp_path.joinpath("locks").exists()


def test_a_non_finite_delta_is_never_saved(tiny, tmp_path, monkeypatch):
    """An attack whose optimisation diverged (NaN / inf δ) fails loudly instead of caching a poison set."""
    from poisonbench.attacks import ATTACKS

    data, _, _ = tiny
    durp = type(ATTACKS.get("durp")("mnist"))
    real = durp.perturb
    monkeypatch.setattr(durp, "perturb", lambda self, ctx: real(self, ctx) * float("nan"))
    with pytest.raises(PoisonbenchError, match="not finite"):
        _craft(data, tmp_path, budget=0.5, seed=4)
    assert poisons.list_ids(tmp_path) == []


def test_a_failed_forced_craft_keeps_the_existing_poison_set_and_a_new_one_replaces_it(tiny, tmp_path, monkeypatch):
    """`craft --force` swaps the PoisonSet out only once the new one is complete; its directory follows the umask
    (results are shared on clusters), not mkdtemp's 0700."""
    from poisonbench.attacks import ATTACKS

    data, _, _ = tiny
    spec, first, _ = _craft(data, tmp_path, budget=0.5, seed=6)
    from poisonbench.core.io import umask

    assert first.path.stat().st_mode & 0o777 == 0o777 & ~umask()
    durp = type(ATTACKS.get("durp")("mnist"))
    real = durp.perturb

    def crash(self, ctx):
        raise RuntimeError("killed mid-craft")

    monkeypatch.setattr(durp, "perturb", crash)
    with pytest.raises(RuntimeError, match="killed mid-craft"):
        poisons.craft(spec, data, tmp_path, force=True)
    assert torch.equal(poisons.load(tmp_path, spec.poison_id, data).delta, first.delta)
    monkeypatch.setattr(durp, "perturb", lambda self, ctx: real(self, ctx) * 0.5)
    again, cached = poisons.craft(spec, data, tmp_path, force=True)
    assert not cached and torch.equal(poisons.load(tmp_path, spec.poison_id, data).delta, again.delta)
    assert not torch.equal(again.delta, first.delta)
    assert sorted(p.name for p in (tmp_path / "poisons").iterdir()) == [spec.poison_id]


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pv")
    path = write_npz(root)
    return load_dataset(str(path)), path


def _rewrite(results, pid, delta=None, indices=None, **manifest_changes):
    """Edit an artifact consistently (tensor sha256 and count updated, inputs untouched: the id still matches)."""
    d = poisons.poison_dir(results, pid)
    t = st_load((d / "delta.safetensors").read_bytes())
    delta = t["delta"] if delta is None else delta
    indices = t["indices"] if indices is None else indices
    blob = st_save({"delta": delta.contiguous(), "indices": indices.long().contiguous()})
    (d / "delta.safetensors").write_bytes(blob)
    m = json.loads((d / "manifest.json").read_text())
    m.update(count=len(indices), shape=list(delta.shape), tensor_sha256=hashlib.sha256(blob).hexdigest(),
             **manifest_changes)
    (d / "manifest.json").write_text(json.dumps(m))


def _failed(results, pid, data):
    return {c for c, ok, _ in poisons.validate(results, pid, data) if not ok}


def test_validate_fails_exactly_the_broken_property(tiny_artifacts, tmp_path):
    data, _ = tiny_artifacts
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=3)
    for case in ("eps", "range", "budget", "dup", "labels"):
        res = tmp_path / case
        poison, _ = poisons.craft(spec, data, res)
        pid, eps = spec.poison_id, spec.eps
        assert _failed(res, pid, data) == set()
        delta, idx = poison.delta.clone(), poison.indices.clone()
        if case == "eps":  # one coordinate at 1.5 ε where x + δ stays inside [0, 1]
            x0 = data.train.x[idx[0]].float().flatten() / 255
            j = int(torch.nonzero(x0 + 1.5 * eps <= 1)[0])
            flat = delta[0].flatten().clone()
            flat[j] = 1.5 * eps
            delta[0] = flat.view_as(delta[0])
            _rewrite(res, pid, delta=delta)
            assert _failed(res, pid, data) == {"eps-ball"}
        elif case == "range":  # |δ| = ε everywhere, pushed up: bright pixels leave [0, 1]
            _rewrite(res, pid, delta=torch.full_like(delta, eps))
            assert _failed(res, pid, data) == {"pixel range"}
        elif case == "budget":  # one row short of ⌊budget·n⌋
            _rewrite(res, pid, delta=delta[1:], indices=idx[1:],
                     labels_sha256=poisons.labels_hash(idx[1:], data.train.y))
            assert _failed(res, pid, data) == {"budget"}
        elif case == "dup":  # a row poisoned twice
            idx[1], delta[1] = idx[0], delta[0]
            _rewrite(res, pid, delta=delta, indices=idx, labels_sha256=poisons.labels_hash(idx, data.train.y))
            assert _failed(res, pid, data) == {"indices"}
        else:  # the crafting-time labels are not recorded (or differ)
            _rewrite(res, pid, labels_sha256=None)
            assert _failed(res, pid, data) == {"labels"}


def test_cli_craft_force_json_and_list_fields(tiny_artifacts, tmp_path, cli):
    _, path = tiny_artifacts
    res = tmp_path / "res"
    args = ["craft", "--attack", "durp", "--dataset", path, "--budget", "0.25", "--seed", "4", "--results", res,
            "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    first = json.loads(out)
    assert first["dataset"] == "tiny.npz" and first["status"] == "crafted"
    tensor = res / "poisons" / first["poison_id"] / "delta.safetensors"
    before = tensor.stat().st_mtime_ns
    code, out, err = cli(*args, "--force")
    assert code == 0 and json.loads(out)["status"] == "crafted" and json.loads(out)["poison_id"] == first["poison_id"]
    assert tensor.stat().st_mtime_ns != before  # crafted again, not the cache
    code, out, _ = cli("poisons", "list", "--results", res, "--json")
    (row,) = json.loads(out)
    manifest = json.loads((tensor.parent / "manifest.json").read_text())
    for key in ("poison_id", "attack", "dataset", "eps", "budget", "seed", "count", "craft_seconds", "created_at"):
        assert row[key] == manifest[key], key
    assert (row["budget"], row["seed"], row["count"]) == (0.25, 4, 40)
    # a killed writer's or a replaced set's hidden directory is never listed
    hidden = res / "poisons" / f".{first['poison_id']}.orphan-1-2"
    hidden.mkdir()
    (hidden / "manifest.json").write_text(json.dumps(manifest))
    assert poisons.list_ids(res) == [first["poison_id"]]
    # validate --json exits 1 on a failed check, like the table view
    _rewrite(res, first["poison_id"], labels_sha256=None)
    code, out, _ = cli("poisons", "validate", first["poison_id"], "--dataset", path, "--results", res, "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_a_manifest_shape_that_is_not_its_tensors_is_refused_in_one_line(tiny, tmp_path, cli):
    """`shape` is neither a crafting input (the id does not hash it) nor covered by the tensor's sha256: an edited
    shape is caught on load, before `defend` trains on the tensors."""
    data, _, path = tiny
    spec, poison, _ = _craft(data, tmp_path, budget=0.5)
    manifest_file = poison.path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["shape"] = [manifest["shape"][0], 3, *manifest["shape"][2:]]
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(PoisonbenchError, match=r"manifest.json gives shape \[.*, 3, .*damaged or was edited"):
        poisons.load(tmp_path, spec.poison_id, data)
    code, _, err = cli("defend", "--poison-set", spec.poison_id, "--dataset", path, "--recipe", "quick", "--epochs",
                       "1", "--compile", "off", "--results", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "damaged or was edited" in err, err
    assert not list((tmp_path / "runs").glob("*.json"))
