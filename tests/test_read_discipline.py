"""Issue 82, item 3, "one read discipline": every file read from a workspace (a PoisonSet's delta.safetensors, an
interrupted craft's or run's state, partial/<id>/identity.json), a `--setup` file or a `--data-dir` goes through the
bounded reader (poisonbench/core/bounded.py): a FIFO refused unread (never a hang), a size bound (a file at it read,
one byte over refused), a depth bound (a one-line refusal, never a RecursionError), a `.gz` refused before it
inflates past its bound.

A FIFO test that regresses must not hang the suite: `fifo` makes the FIFO and, after `RELEASE_S`, a separate process
(a reader blocked in native code may hold the GIL) keeps opening it for writing and closing it, so that a reader
blocked on it sees end of file; the test then fails on time or on the message instead of hanging."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from poisonbench.core import bounded
from poisonbench.core.errors import PoisonbenchError

from .conftest import dies_with_the_test, one_line_error, write_mnist_dir, write_npz

RELEASE_S = 4.0


@pytest.fixture
def fifo():
    """`make(path)`: a FIFO at `path` (replacing what is there), released after RELEASE_S (see the module's
    docstring) by a shell loop: opening a FIFO read-write never blocks and counts as a writer, so a reader blocked
    in its open goes on and reads end of file."""
    releasers = []

    def make(path: Path) -> Path:
        path = Path(path)
        if path.exists() or path.is_symlink():
            path.unlink()
        os.mkfifo(path)
        loop = f'sleep {RELEASE_S}; while [ -p "$0" ]; do exec 3<>"$0"; exec 3>&-; sleep 0.05; done'
        releasers.append(subprocess.Popen(["bash", "-c", loop, str(path)], preexec_fn=dies_with_the_test()))
        return path

    yield make
    for process in releasers:
        process.kill()
        process.wait()


def quick(started: float) -> None:
    """The call returned before the FIFO was released: it never waited on it."""
    assert time.monotonic() - started < RELEASE_S, "the read waited on the FIFO (a hang without the release)"


def deep_json(levels: int = 100_000) -> str:
    return "[" * levels + "]" * levels


# --- a PoisonSet's delta.safetensors (`poisons validate`, `defend --poison-set`, store.load) ---------------------


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """(dataset path, results, poison id) of one `durp` PoisonSet on a tiny .npz, crafted once; tests copy it."""
    from poisonbench.cli.main import main

    root = tmp_path_factory.mktemp("discipline")
    npz = write_npz(root)
    results = root / "res"
    try:
        main(["craft", "--attack", "durp", "--dataset", str(npz), "--budget", "0.25", "--results", str(results)])
    except SystemExit as exc:
        assert not exc.code
    (pid,) = [p.name for p in (results / "poisons").iterdir() if not p.name.startswith(".")]
    return npz, results, pid


@pytest.fixture
def workspace(crafted, tmp_path):
    npz, results, pid = crafted
    copy = tmp_path / "res"
    shutil.copytree(results, copy)
    return npz, copy, pid, copy / "poisons" / pid / "delta.safetensors"


def test_a_fifo_for_delta_safetensors_fails_validation_without_hanging(workspace, fifo, cli):
    npz, results, pid, delta = workspace
    fifo(delta)
    started = time.monotonic()
    code, out, err = cli("poisons", "validate", pid, "--dataset", npz, "--results", results)
    quick(started)
    assert code == 1 and "a FIFO, not a regular file" in out and "Traceback" not in err + out, (code, out, err)


def test_a_fifo_for_delta_safetensors_is_one_line_for_defend(workspace, fifo, cli):
    npz, results, pid, delta = workspace
    fifo(delta)
    started = time.monotonic()
    code, _, err = cli("defend", "--dataset", npz, "--poison-set", pid, "--recipe", "quick", "--epochs", "1",
                       "--results", results)
    quick(started)
    one_line_error(code, err, "delta.safetensors", "a FIFO, not a regular file")


def test_delta_safetensors_at_the_size_limit_is_read_and_one_byte_over_refused(workspace, monkeypatch):
    from poisonbench import poisons

    _, results, pid, delta = workspace
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", delta.stat().st_size)
    assert poisons.load(results, pid).delta.ndim == 4
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", delta.stat().st_size - 1)
    with pytest.raises(PoisonbenchError) as raised:
        poisons.load(results, pid)
    assert str(raised.value) == (f"poison set {pid}: delta.safetensors: larger than "
                                 f"{bounded.size_text(delta.stat().st_size - 1)}, the limit for this file; refused "
                                 "unread")


def test_delta_safetensors_whose_loading_exceeds_the_memory_is_refused_unread(workspace, monkeypatch):
    from poisonbench import poisons

    _, results, pid, delta = workspace
    size = delta.stat().st_size
    monkeypatch.setattr(bounded, "available_memory", lambda: bounded.TENSOR_BYTES_PER_BYTE * size)
    assert poisons.load(results, pid).delta.ndim == 4
    monkeypatch.setattr(bounded, "available_memory", lambda: bounded.TENSOR_BYTES_PER_BYTE * size - 1)
    with pytest.raises(PoisonbenchError, match="more than the .* of memory available; refused unread"):
        poisons.load(results, pid)


# --- an interrupted run's checkpoint, an interrupted craft's batches and restarts ----------------------------------


def _state_file(path: Path) -> Path:
    from poisonbench.engine.checkpoints import META_KEY

    path.write_bytes(st_save({"delta": torch.zeros(2, 3), "loss": torch.zeros(1, dtype=torch.float64)},
                             metadata={META_KEY: json.dumps({"identity": {}})}))
    return path


def test_a_fifo_for_a_run_checkpoint_is_not_resumed_and_never_waited_on(tmp_path, fifo):
    from poisonbench.engine.checkpoints import Checkpoint

    path = fifo(tmp_path / "run.safetensors")
    started = time.monotonic()
    assert Checkpoint(path, identity={}).load() is None
    quick(started)
    with pytest.raises(bounded.Refused, match="a FIFO, not a regular file"):
        bounded.read_tensors(path)


def test_a_run_checkpoint_at_the_size_limit_is_resumed_and_one_byte_over_is_not(tmp_path, monkeypatch):
    from poisonbench.engine.checkpoints import Checkpoint

    path = _state_file(tmp_path / "run.safetensors")
    checkpoint = Checkpoint(path, identity={})
    checkpoint.identity = {}
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size)
    assert checkpoint.load() is not None
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size - 1)
    assert checkpoint.load() is None


@pytest.mark.parametrize("store", ["batches", "restarts"])
def test_an_interrupted_crafts_state_a_fifo_or_over_the_limit_is_crafted_again(tmp_path, fifo, monkeypatch, store):
    from poisonbench.attacks.base import PartialBatches
    from poisonbench.attacks.forest import RestartStore

    saved = PartialBatches(tmp_path) if store == "batches" else RestartStore(tmp_path)
    get = (lambda: saved.get(0, 2)) if store == "batches" else (lambda: saved.get(0))
    path = saved._path(0, 2) if store == "batches" else saved._path(0)
    _state_file(path)
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size)
    assert get() is not None
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size - 1)
    assert get() is None
    fifo(path)
    started = time.monotonic()
    assert get() is None
    quick(started)


# --- partial/<poison id>/identity.json -------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["fifo", "deep", "over the limit"])
def test_an_unreadable_identity_json_starts_the_craft_over_without_hanging_or_recursing(tmp_path, fifo, monkeypatch,
                                                                                        what):
    from poisonbench.poisons.crafting import prepare_partial

    partial = tmp_path / "partial" / "0123456789abcdef"
    partial.mkdir(parents=True)
    identity = partial / "identity.json"
    if what == "fifo":
        fifo(identity)
    elif what == "deep":
        identity.write_text(deep_json())
    else:
        prepare_partial(partial, torch.device("cpu"), force=False)
        (partial / "rows-000000000-000000002.safetensors").write_bytes(b"state")
        size = identity.stat().st_size
        monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", size)  # at the limit: resumed, the state kept
        prepare_partial(partial, torch.device("cpu"), force=False)
        assert (partial / "rows-000000000-000000002.safetensors").exists()
        monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", size - 1)
    started = time.monotonic()
    prepare_partial(partial, torch.device("cpu"), force=False)
    quick(started)
    assert identity.is_file() and json.loads(identity.read_text())["forced"] is False
    assert not (partial / "rows-000000000-000000002.safetensors").exists()


# --- craft --setup FILE ---------------------------------------------------------------------------------------


def _setup_file(path: Path, pad: int = 0) -> Path:
    one = {"target_class": 0, "target_index": 0, "base_class": 1, "base_indices": [0]}
    path.write_text(json.dumps({"setups": [one]}) + " " * pad)
    return path


def test_a_fifo_for_craft_setup_is_one_line_without_hanging(tmp_path, fifo, cli):
    npz = write_npz(tmp_path)
    setups = fifo(tmp_path / "setups.json")
    started = time.monotonic()
    code, _, err = cli("craft", "--attack", "bp", "--dataset", npz, "--setup", setups, "--results", tmp_path / "res")
    quick(started)
    one_line_error(code, err, f"setup file {str(setups)!r}: a FIFO, not a regular file")


def test_a_deep_craft_setup_is_one_line_not_a_recursion_error(tmp_path, cli):
    npz = write_npz(tmp_path)
    setups = tmp_path / "setups.json"
    setups.write_text(deep_json())
    code, _, err = cli("craft", "--attack", "bp", "--dataset", npz, "--setup", setups, "--results", tmp_path / "res")
    one_line_error(code, err, f"setup file {str(setups)!r}: nested more than {bounded.MAX_DEPTH} levels deep")


def test_a_setup_file_at_the_size_limit_is_read_and_one_byte_over_refused(tmp_path, monkeypatch):
    from poisonbench.attacks.targets import read_setups

    setups = _setup_file(tmp_path / "setups.json", pad=10)
    monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", setups.stat().st_size)
    assert len(read_setups(setups)) == 1
    monkeypatch.setattr(bounded, "MAX_JSON_FILE_BYTES", setups.stat().st_size - 1)
    with pytest.raises(PoisonbenchError) as raised:
        read_setups(setups)
    assert str(raised.value) == (f"setup file {str(setups)!r}: larger than "
                                 f"{bounded.size_text(setups.stat().st_size - 1)}, the limit for this file; refused "
                                 "unread")


# --- IDX files under --data-dir ---------------------------------------------------------------------------------


@pytest.fixture
def inflated(monkeypatch):
    """The data bytes gzip inflated for the readers (every `GzipFile.read`'s result, summed)."""
    counted = [0]
    real = gzip.GzipFile.read

    def read(self, *args):
        data = real(self, *args)
        counted[0] += len(data)
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", read)
    return counted


def _bomb(directory: Path, images: int = 2000, extra: bytes = b"") -> Path:
    """An MNIST folder whose train images (a .gz) declare `images` 100×100 images of zeros (20 MB for 2,000; a few
    kB compressed); `extra`: bytes after the declared data."""
    write_mnist_dir(directory, n_train=10, n_test=10)
    (directory / "train-images-idx3-ubyte").unlink()
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", images, 100, 100)
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + bytes(images * 100 * 100) + extra, compresslevel=9))
    return path


def test_an_idx_gz_bomb_in_data_dir_is_one_line_refused_before_it_inflates(tmp_path, cli, monkeypatch, inflated):
    path = _bomb(tmp_path)
    monkeypatch.setattr(bounded, "IDX_INFLATION_FLOOR", 1_000_000)  # 20 MB of zeros from a few kB
    code, _, err = cli("data", "info", "mnist", "--data-dir", tmp_path)
    one_line_error(code, err, str(path), "20.0 MB of data", "refused uninflated")
    assert inflated[0] <= 16, inflated[0]  # the header alone


def test_an_idx_at_the_declared_size_limit_is_read_and_one_byte_over_refused_uninflated(tmp_path, monkeypatch,
                                                                                         inflated):
    from poisonbench.data.formats import read_idx

    path = _bomb(tmp_path, images=20)  # 200 kB declared
    monkeypatch.setattr(bounded, "MAX_IDX_BYTES", 200_000)
    assert read_idx(path).shape == (20, 100, 100)
    inflated[0] = 0
    monkeypatch.setattr(bounded, "MAX_IDX_BYTES", 199_999)
    with pytest.raises(PoisonbenchError) as raised:
        read_idx(path)
    assert str(raised.value) == (f"{str(path)!r}: its header declares 200.0 kB of data, more than the limit of "
                                 "200.0 kB for an IDX file; refused uninflated")
    assert inflated[0] <= 16


def test_an_idx_whose_loading_exceeds_the_memory_is_refused_uninflated(tmp_path, monkeypatch, inflated):
    from poisonbench.data.formats import read_idx

    path = _bomb(tmp_path, images=20)
    monkeypatch.setattr(bounded, "available_memory", lambda: bounded.IDX_BYTES_PER_BYTE * 200_000)
    assert read_idx(path).shape == (20, 100, 100)
    inflated[0] = 0
    monkeypatch.setattr(bounded, "available_memory", lambda: bounded.IDX_BYTES_PER_BYTE * 200_000 - 1)
    with pytest.raises(PoisonbenchError, match="of memory available; refused unread"):
        read_idx(path)
    assert inflated[0] <= 16


def test_an_idx_gz_running_past_its_declared_size_is_inflated_one_byte_past_it(tmp_path, inflated):
    from poisonbench.data.formats import read_idx

    path = _bomb(tmp_path, images=20, extra=bytes(5_000_000))
    with pytest.raises(PoisonbenchError, match="truncated or corrupt: more than 200000 data bytes"):
        read_idx(path)
    assert inflated[0] <= 16 + 200_001


# --- pickles of `poisons import` (the Toxic benchmark's three, forest's export) and the model cache ----------------


def _toxic_dir(directory: Path) -> Path:
    import pickle

    import numpy as np

    directory.mkdir()
    (directory / "poisons.pickle").write_bytes(pickle.dumps([(np.zeros((16, 16), np.uint8), 1)]))
    (directory / "base_indices.pickle").write_bytes(pickle.dumps([0]))
    (directory / "target.pickle").write_bytes(pickle.dumps((np.zeros((16, 16), np.uint8), 0)))
    return directory


def test_a_fifo_for_a_toxic_pickle_is_one_line_for_poisons_import(tmp_path, fifo, cli):
    npz = write_npz(tmp_path)
    submission = _toxic_dir(tmp_path / "sub")
    poisons_pickle = fifo(submission / "poisons.pickle")
    started = time.monotonic()
    code, _, err = cli("poisons", "import", submission, "--dataset", npz, "--results", tmp_path / "res")
    quick(started)
    one_line_error(code, err, str(poisons_pickle), "a FIFO, not a regular file")


def test_a_pickle_at_the_size_limit_is_read_and_one_byte_over_refused_unread(tmp_path, monkeypatch):
    from poisonbench.poisons.interchange.unpickle import load_pickle, load_torch_or_pickle

    path = _toxic_dir(tmp_path / "sub") / "base_indices.pickle"
    monkeypatch.setattr(bounded, "MAX_PICKLE_BYTES", path.stat().st_size)
    assert load_pickle(path) == [0] and load_torch_or_pickle(path) == [0]
    monkeypatch.setattr(bounded, "MAX_PICKLE_BYTES", path.stat().st_size - 1)
    for load in (load_pickle, load_torch_or_pickle):
        with pytest.raises(PoisonbenchError) as raised:
            load(path)
        assert str(raised.value) == (f"{str(path)!r}: larger than {bounded.size_text(path.stat().st_size - 1)}, "
                                     "the limit for this file; refused unread")


def test_a_cached_model_file_a_fifo_or_over_the_limit_is_one_line_never_waited_on(tmp_path, fifo, monkeypatch):
    from poisonbench.data.load import load_dataset
    from poisonbench.engine import model_cache
    from poisonbench.engine.models import build_model

    data = load_dataset(str(write_npz(tmp_path)))
    spec = {"model": "convnet"}
    path = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in build_model("convnet", data, seed=0).state_dict().items()}
    path.write_bytes(st_save(state, metadata={"spec": model_cache.canonical_json(spec), "info": "{}"}))
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size)
    model_cache._load(path, spec, "m", data, torch.device("cpu"), 0)
    monkeypatch.setattr(bounded, "MAX_TENSOR_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(PoisonbenchError, match="the limit for this file; refused unread; delete it to retrain"):
        model_cache._load(path, spec, "m", data, torch.device("cpu"), 0)
    fifo(path)
    started = time.monotonic()
    with pytest.raises(PoisonbenchError, match="a FIFO, not a regular file"):
        model_cache._load(path, spec, "m", data, torch.device("cpu"), 0)
    quick(started)


@pytest.mark.parametrize("weights", ["weights.pt", "weights.safetensors"])
def test_a_fifo_for_generator_weights_is_one_line_without_hanging(tmp_path, fifo, cli, weights):
    npz = write_npz(tmp_path)
    path = fifo(tmp_path / weights)
    started = time.monotonic()
    code, _, err = cli("craft", "--attack", "deepconfuse", "--generator-weights", path, "--dataset", npz,
                       "--results", tmp_path / "res")
    quick(started)
    one_line_error(code, err, str(path), "a FIFO, not a regular file")


def test_a_torch_file_at_the_size_limit_is_read_and_one_byte_over_refused_unread(tmp_path, monkeypatch):
    from poisonbench.core.io import torch_load_tensors

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(bounded, "MAX_PICKLE_BYTES", path.stat().st_size)
    assert torch_load_tensors(path)["w"].shape == (3,)
    monkeypatch.setattr(bounded, "MAX_PICKLE_BYTES", path.stat().st_size - 1)
    with pytest.raises(bounded.Refused, match="the limit for this file; refused unread"):
        torch_load_tensors(path)


def test_a_cifar_batch_over_the_size_limit_in_data_dir_is_one_line(tmp_path, cli, monkeypatch):
    from .conftest import write_cifar_dir

    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    largest = max(p.stat().st_size for p in batch.parent.iterdir())
    monkeypatch.setattr(bounded, "MAX_CIFAR_BATCH_BYTES", largest)
    code, _, err = cli("data", "info", "cifar10", "--data-dir", tmp_path)
    assert code == 0, err
    batch.write_bytes(batch.read_bytes() + b"\0" * (largest + 1 - batch.stat().st_size))
    code, _, err = cli("data", "info", "cifar10", "--data-dir", tmp_path)
    one_line_error(code, err, str(batch), "the limit for this file; refused unread")
