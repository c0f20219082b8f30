"""A PoisonSet whose manifest came without its tensors (`records unpack`: a pack carries manifests, not tensors).

Contract (poisons/store.py `exists`, `has_manifest`, `_restore_tensors`): such a PoisonSet is not done (a sweep crafts
it, a `defend` crafts it); the craft puts its tensors beside the packed manifest only if they are the tensors the
manifest pins, keeping the manifest byte for byte (the records trained on it keep pairing with it); other tensors are
refused in one line and nothing is written; `--force` replaces both. Before 2026-11-29 a sweep counted the manifest as
the PoisonSet and every run of a re-unpacked pack failed with "delta.safetensors is missing"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonbench import poisons
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.craft_check import crafts_on_disk
from poisonbench.poisons.store import MANIFEST_FILE, TENSOR_FILE, has_manifest, poison_dir

from .conftest import write_npz
from .test_sweep import plan_json, record_ids, swept  # noqa: F401, F811 (swept: the module's done sweep)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_and_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-only")
    data = load_dataset(str(write_npz(root)))
    return data, poisons.craft_spec(data, "badnets", budget=0.1, seed=2)


def crafted_then_stripped(data, spec, results: Path) -> tuple[bytes, bytes]:
    """Craft into `results`, then take the tensors away as `records unpack` would leave it; returns (manifest bytes,
    tensor bytes) of the whole PoisonSet."""
    poisons.craft(spec, data, results)
    directory = poison_dir(results, spec.poison_id)
    manifest, tensors = (directory / MANIFEST_FILE).read_bytes(), (directory / TENSOR_FILE).read_bytes()
    (directory / TENSOR_FILE).unlink()
    return manifest, tensors


def test_a_manifest_alone_is_not_a_poisonset_but_still_pairs_records(data_and_spec, tmp_path):
    data, spec = data_and_spec
    manifest, _ = crafted_then_stripped(data, spec, tmp_path)
    assert not poisons.exists(tmp_path, spec.poison_id)
    assert has_manifest(tmp_path, spec.poison_id)
    # records pair with the manifest's craft whether or not the tensors are there
    assert crafts_on_disk(tmp_path, [spec.poison_id]) == {spec.poison_id: json.loads(manifest)["tensor_sha256"]}


def test_crafting_again_restores_the_pinned_tensors_and_keeps_the_manifest(data_and_spec, tmp_path):
    data, spec = data_and_spec
    manifest, tensors = crafted_then_stripped(data, spec, tmp_path)
    made, cached = poisons.craft(spec, data, tmp_path)
    directory = poison_dir(tmp_path, spec.poison_id)
    assert not cached and made.path == directory
    assert (directory / TENSOR_FILE).read_bytes() == tensors
    assert (directory / MANIFEST_FILE).read_bytes() == manifest  # created_at and all: the packed one
    assert made.manifest == json.loads(manifest)
    assert poisons.exists(tmp_path, spec.poison_id)
    assert sorted(p.name for p in directory.iterdir()) == sorted([MANIFEST_FILE, TENSOR_FILE])
    assert sorted(p.name for p in directory.parent.iterdir()) == [spec.poison_id]  # no temporary left
    loaded, cached = poisons.craft(spec, data, tmp_path)
    assert cached and loaded.manifest == made.manifest


def pinned_elsewhere(data, spec, results, pinned_sha, **env_changes):
    """A craft stripped to its manifest, which then pins other tensors (`pinned_sha`, as if crafted elsewhere) and,
    for each of `env_changes`, another env value (the craft's own env is one thread). -> (its directory, the hash of
    the tensors this machine crafts)."""
    crafted_then_stripped(data, spec, results)
    directory = poison_dir(results, spec.poison_id)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    crafted_hash, manifest["tensor_sha256"] = manifest["tensor_sha256"], pinned_sha
    assert manifest["env"]["threads"] == 1
    manifest["env"].update(env_changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    return directory, crafted_hash


def refusal(poison_id, crafted_hash, pinned_prefix):
    """The refusal of other tensors, whole, up to where the env's differences would start."""
    return (f"poison set {poison_id}: the craft's tensors (sha256 {crafted_hash[:12]}) are not those its manifest "
            f"pins ({pinned_prefix}), which came without tensors (from a records pack); nothing written. Put the "
            f"PoisonSet's files back from where it was crafted, or craft with --force to replace the manifest (the "
            f"runs recorded on the old tensors then no longer pair with new ones)")


def test_other_tensors_are_refused_in_one_line_and_nothing_is_written(data_and_spec, tmp_path):
    data, spec = data_and_spec
    directory, crafted_hash = pinned_elsewhere(data, spec, tmp_path, "ab" * 32)
    before = (directory / MANIFEST_FILE).read_bytes()
    with pytest.raises(PoisonbenchError) as caught:
        poisons.craft(spec, data, tmp_path)
    assert str(caught.value) == refusal(spec.poison_id, crafted_hash, "abababababab")
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE]
    assert (directory / MANIFEST_FILE).read_bytes() == before
    assert sorted(p.name for p in directory.parent.iterdir()) == [spec.poison_id]
    # --force replaces the manifest with the craft's own
    made, cached = poisons.craft(spec, data, tmp_path, force=True)
    assert not cached and made.manifest["tensor_sha256"] == crafted_hash
    assert json.loads((directory / MANIFEST_FILE).read_text())["tensor_sha256"] == crafted_hash
    assert poisons.exists(tmp_path, spec.poison_id)


def test_defend_on_a_manifest_alone_crafts_the_tensors_again_and_trains(cli, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    npz = write_npz(root, n=400)
    results = tmp_path / "results"
    code, out, err = cli("craft", "--attack", "badnets", "--dataset", npz, "--results", results, "--json")
    assert code == 0, err
    (pid,) = poisons.list_ids(results)
    directory = poison_dir(results, pid)
    manifest, tensors = (directory / MANIFEST_FILE).read_bytes(), (directory / TENSOR_FILE).read_bytes()
    (directory / TENSOR_FILE).unlink()
    code, out, err = cli("defend", "--attack", "badnets", "--dataset", npz, "--recipe", "quick", "--epochs", "1",
                         "--results", results)
    assert code == 0, err
    assert (directory / TENSOR_FILE).read_bytes() == tensors and (directory / MANIFEST_FILE).read_bytes() == manifest
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["config"]["poison"]["poison_id"] == pid


def test_a_sweep_on_an_unpacked_pack_crafts_its_poisonsets_again_and_runs_what_is_missing(swept, cli, tmp_path):  # noqa: F811
    """The reproduction: pack a done workspace, unpack it elsewhere, widen the grid by one run. The unpacked
    PoisonSet is 'missing' (its tensors are not there), the done runs stay done, and the sweep crafts the tensors
    (the packed manifest's own) and runs the new run instead of failing it."""
    packed = tmp_path / "p.jsonl.gz"
    code, _, err = cli("records", "pack", swept.results, packed)
    assert code == 0, err
    fresh = tmp_path / "fresh"
    code, out, err = cli("records", "unpack", packed, fresh)
    assert code == 0, err
    assert out.strip() == (f"unpacked 2 run record(s) and 1 PoisonSet manifest(s) into {fresh}: 3 file(s) written, "
                           "0 already there; the PoisonSets are manifests alone: a run that needs one crafts its "
                           "tensors again and keeps them if the manifest pins them")
    pid = swept.keys[0]
    original = poison_dir(swept.results, pid)
    assert sorted(p.name for p in poison_dir(fresh, pid).iterdir()) == [MANIFEST_FILE]
    code, out, err = cli("poisons", "list", "--results", fresh, "--json")
    assert code == 0 and [(r["poison_id"], r["tensors"]) for r in json.loads(out)] == [(pid, False)], err
    code, out, err = cli("poisons", "list", "--results", fresh)
    assert code == 0 and "manifest only" in out, err
    grid = tmp_path / "wider.toml"
    grid.write_text(swept.grid.read_text().replace("poison_ratio = [0, 0.5]", "poison_ratio = [0, 0.5, 1]"))
    assert [s["state"] for s in plan_json(cli, grid, fresh)] == ["missing", "done", "done", "missing"]
    done_before = record_ids(fresh)
    code, out, err = cli("sweep", "run", grid, "--workers", "1", "--results", fresh, "--no-report")
    assert code == 0, out + err
    assert [s["state"] for s in plan_json(cli, grid, fresh)] == ["done"] * 4
    assert (poison_dir(fresh, pid) / MANIFEST_FILE).read_bytes() == (original / MANIFEST_FILE).read_bytes()
    assert (poison_dir(fresh, pid) / TENSOR_FILE).read_bytes() == (original / TENSOR_FILE).read_bytes()
    assert done_before < record_ids(fresh) and len(record_ids(fresh)) == 3
    code, out, err = cli("poisons", "list", "--results", fresh, "--json")
    assert code == 0 and [(r["poison_id"], r["tensors"]) for r in json.loads(out)] == [(pid, True)], err


def test_the_refusal_names_the_env_that_differs(data_and_spec, tmp_path):
    """Through the craft: the pinned manifest's env (the craft's own, one thread) with `threads` changed is named,
    and nothing else; cpu_capability is the same on both sides, so no dispatch hint."""
    data, spec = data_and_spec
    directory, crafted_hash = pinned_elsewhere(data, spec, tmp_path, "cd" * 32, threads=7)
    with pytest.raises(PoisonbenchError) as caught:
        poisons.craft(spec, data, tmp_path)
    assert str(caught.value) == (refusal(spec.poison_id, crafted_hash, "cdcdcdcdcdcd")
                                 + ". The pinned craft's env differs from this one's in threads 7 (now 1)")
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE]


ENV = {"device": "cpu", "cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 1, "torch": "2.14.1+cu130",
       "code": "292f6ba08214cd8a", "host": "vm", "git_commit": "ce0eaa3"}
HEAD = ". The pinned craft's env differs from this one's in "


@pytest.mark.parametrize(("pinned", "now", "expected"), [
    (None, ENV, ""),
    (ENV, None, ""),
    ("not a dict", ENV, ""),
    (ENV, dict(ENV), ""),
    ({**ENV, "host": "other", "git_commit": "9f77f99"}, ENV, ""),  # not what decides rounding
    ({**ENV, "cpu_capability": "AVX2"}, ENV,
     HEAD + "cpu_capability 'AVX2' (now 'AVX512'): to dispatch as it did, set ATEN_CPU_CAPABILITY=avx2 "
            "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"),
    ({**ENV, "cpu_capability": "DEFAULT"}, ENV,
     HEAD + "cpu_capability 'DEFAULT' (now 'AVX512'): to dispatch as it did, set ATEN_CPU_CAPABILITY=default"),
    ({**ENV, "cpu_capability": "DEFAULT"}, {**ENV, "cpu_capability": "AVX2"},
     HEAD + "cpu_capability 'DEFAULT' (now 'AVX2'): to dispatch as it did, set ATEN_CPU_CAPABILITY=default"),
    (ENV, {**ENV, "cpu_capability": "AVX2"},
     HEAD + "cpu_capability 'AVX512' (now 'AVX2'): craft where ATen dispatches to AVX512 (ATEN_CPU_CAPABILITY=avx512 "
            "on a CPU that has it)"),
    ({**ENV, "cpu_capability": "AVX2"}, {**ENV, "cpu_capability": "DEFAULT"},
     HEAD + "cpu_capability 'AVX2' (now 'DEFAULT'): craft where ATen dispatches to AVX2 (ATEN_CPU_CAPABILITY=avx2 "
            "on a CPU that has it)"),
    ({**ENV, "cpu_capability": "ZVECTOR"}, {**ENV, "cpu_capability": "VSX"},
     HEAD + "cpu_capability 'ZVECTOR' (now 'VSX')"),  # not x86: named, no hint
    ({**ENV, "cpu_capability": "AVX2"}, {**ENV, "cpu_capability": "SVE256"},
     HEAD + "cpu_capability 'AVX2' (now 'SVE256')"),
    ({**ENV, "code": "0000000000000000", "cpu_capability": "AVX2", "device": "cuda"},
     {**ENV, "gpu": "NVIDIA H200"},
     HEAD + "device 'cuda' (now 'cpu'), cpu_capability 'AVX2' (now 'AVX512'), gpu None (now 'NVIDIA H200'), code "
            "'0000000000000000' (now '292f6ba08214cd8a'): to dispatch as it did, set ATEN_CPU_CAPABILITY=avx2 "
            "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"),
    ({**ENV, "cpu": "Intel Xeon", "threads": 2, "torch": "2.13.0+cpu"}, ENV,
     HEAD + "cpu 'Intel Xeon' (now 'AMD EPYC'), threads 2 (now 1), torch '2.13.0+cpu' (now '2.14.1+cu130')"),
    ({k: v for k, v in ENV.items() if k != "cpu_capability"}, ENV, HEAD + "cpu_capability None (now 'AVX512')"),
])
def test_env_differences_name_each_rounding_key_and_the_dispatch_hint(pinned, now, expected):
    from poisonbench.poisons.store import _env_differences

    assert _env_differences(pinned, now) == expected
