"""Bad inputs a probe found ending in a traceback, a silent default or running code (issue 29, item 9): each is a
one-line error, exit code 2, and writes nothing."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.records import RunStore

from .conftest import class_images, files_under, one_line_error, write_cifar_dir

QUICK_DEFEND = ["--recipe", "quick", "--epochs", "1", "--compile", "off"]
TINY_CRAFT = ["--attack", "pgd", "--steps", "1", "--budget", "0.1"]


# --- CIFAR-10 batches from --data-dir: a restricted unpickler ------------------------------------------------------


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the official CIFAR-10 batches (protocol 2): `bytes` as Python 2 `str`
    (SHORT_BINSTRING / BINSTRING) and numpy's globals under numpy 1's names (`numpy.core.multiarray`)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(x: np.ndarray, y: np.ndarray, number: int) -> dict:
    """A batch as the official files hold it: uint8 rows of 3072 (the 1024 red, green, then blue pixels)."""
    return {b"batch_label": f"training batch {number} of 5".encode(), b"labels": y.tolist(),
            b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"filenames": [b"img.png"] * len(x)}


@pytest.mark.parametrize("writer", ["python 2 cPickle", "protocol 2", "protocol 5"])
def test_cifar_batches_in_the_official_format_still_load(tmp_path, writer):
    """The restricted unpickler admits what a real batch holds: the official files (Python 2, protocol 2, str keys
    read as latin-1), a batch re-pickled in Python 3 with protocol 2 (bytes keys, bytes through _codecs.encode) and
    numpy's protocol-5 form of an array."""
    dump = {"python 2 cPickle": python2_pickle, "protocol 2": lambda b: pickle.dumps(b, protocol=2),
            "protocol 5": lambda b: pickle.dumps(b, protocol=5)}[writer]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [class_images(250, 32, channels=3, seed=10 + i) for i in range(1, 6)]
    for i, (x, y) in enumerate(train, start=1):
        (folder / f"data_batch_{i}").write_bytes(dump(cifar_batch(x, y, i)))
    test_x, test_y = class_images(50, 32, channels=3, seed=20)
    (folder / "test_batch").write_bytes(dump(cifar_batch(test_x, test_y, 6)))
    data = load_dataset("cifar10", data_dir=tmp_path)
    pool_x, pool_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    assert np.array_equal(data.test.x.numpy(), test_x.transpose(0, 3, 1, 2))
    assert np.array_equal(data.test.y.numpy(), test_y)
    assert np.array_equal(data.train.x.numpy(), pool_x[data.train.indices].transpose(0, 3, 1, 2))
    assert np.array_equal(data.train.y.numpy(), pool_y[data.train.indices])


class WritesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class RunsAShellCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("payload, global_name", [(WritesAFile, "io.open"), (RunsAShellCommand, "posix.system")])
def test_a_cifar_batch_holding_code_is_refused_and_runs_nothing(cli, tmp_path, payload, global_name):
    """A crafted data_batch_1 whose pickle creates a file or runs a shell command when loaded: plain pickle.load
    would do it; `data info cifar10 --data-dir` refuses the file in one line naming it, and nothing runs."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_dir(folder)
    marker = tmp_path / "the-payload-ran"
    blob = pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=2)
    pickle.loads(blob)  # the payload is live: an unrestricted unpickler runs it
    assert marker.exists()
    marker.unlink()
    batch = folder / "data_batch_1"
    batch.write_bytes(blob)
    code, out, err = cli("data", "info", "cifar10", "--data-dir", tmp_path)
    one_line_error(code, err, f"{batch} is not a CIFAR-10 python batch: its pickle asks for {global_name}")
    assert not marker.exists() and out == ""


def test_a_batch_asking_for_another_codec_is_refused(tmp_path):
    """`_codecs.encode` is admitted for the latin-1 of protocol-2 bytes only."""
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    rot13 = pickle.dumps({"data": b"x", "labels": [0]}, protocol=2).replace(b"latin1", b"rot_13")
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(rot13)
    with pytest.raises(PoisonbenchError, match="data_batch_2 is not a CIFAR-10 python batch .*rot_13"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- the results workspace --------------------------------------------------------------------------------------


def test_export_to_an_existing_directory_is_refused_before_crafting(cli, tiny_npz, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    results = tmp_path / "r"
    code, _, err = cli("poisons", "export", "--out", target, "--poison-ratio", "0.1", "--attacks", "pgd",
                       "--order", "train", "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, f"--out {str(target)!r} is a directory")
    assert not results.exists() and list(target.iterdir()) == []


def test_craft_on_a_read_only_workspace(cli, tiny_npz, tmp_path, read_only):
    results = read_only(tmp_path / "ro")
    code, _, err = cli("craft", *TINY_CRAFT, "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, "cannot write PoisonSets into")
    assert list(results.iterdir()) == []


@pytest.mark.parametrize("command", ["craft", "defend"])
@pytest.mark.parametrize("where", ["poisons", "locks"])
def test_a_file_where_a_workspace_directory_belongs(cli, tiny_npz, tmp_path, command, where):
    results = tmp_path / "r"
    results.mkdir()
    (results / where).write_text("")
    args = TINY_CRAFT if command == "craft" else ["--poison-ratio", "0.1", "--attacks", "pgd", *QUICK_DEFEND]
    code, _, err = cli(command, *args, "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, f"{str(results / where)!r} is a file, not a directory")
    assert files_under(results) == [results / where] and list(results.iterdir()) == [results / where]


def test_run_store_ensure_writable(tmp_path, read_only):
    fresh = RunStore(tmp_path / "fresh")
    fresh.ensure_writable()
    assert fresh.runs.is_dir() and list(fresh.runs.iterdir()) == []  # the probe file is gone
    (tmp_path / "file" / "runs").parent.mkdir()
    (tmp_path / "file" / "runs").write_text("")
    with pytest.raises(PoisonbenchError, match="runs' is a file, not a directory: the results workspace is damaged"):
        RunStore(tmp_path / "file").ensure_writable()
    read_only(tmp_path / "ro" / "runs")
    with pytest.raises(PoisonbenchError, match="cannot write run records into"):
        RunStore(tmp_path / "ro").ensure_writable()


def test_defend_on_a_read_only_runs_dir_fails_before_training(cli, tiny_npz, tmp_path, read_only, train_calls):
    """A read-only <results>/runs/ would hold no record: the run must not train first (runner calls
    `RunStore.ensure_writable` before any run)."""
    runs = read_only(tmp_path / "r" / "runs")
    code, _, err = cli("defend", *QUICK_DEFEND, "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, f"cannot write run records into {str(runs)!r}")
    assert train_calls == [] and list(runs.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["defend", *QUICK_DEFEND],
    ["craft", *TINY_CRAFT],
    ["report"],
    ["poisons", "list"],
    ["poisons", "show", "0123456789abcdef"],
    ["poisons", "validate", "0123456789abcdef"],
    ["poisons", "import", "hint.pt"],
    ["poisons", "export", "--out", "hint.pt", "--poison-ratio", "0.1", "--order", "train"],
])
def test_an_empty_results_option_is_refused(cli, tiny_npz, tmp_path, monkeypatch, args):
    """`--results ""` (an unset shell variable) once meant ./results silently."""
    monkeypatch.chdir(tmp_path)
    dataset = ["--dataset", tiny_npz] if {"defend", "craft", "import", "export"} & set(args[:2]) else []
    code, _, err = cli(*args, *dataset, "--results", "")
    one_line_error(code, err, "--results is empty")
    assert files_under(tmp_path) == [tiny_npz]


# --- pickles torch refuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["craft", "import"])
def test_a_refused_pickle_is_one_line_without_torchs_warning(cli, tiny_npz, tmp_path, command):
    """torch.load(weights_only=True) refuses a pickle that calls os.system, but warned first (two lines) about its
    protocol: only our one-line error shows."""
    marker = tmp_path / "the-payload-ran"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(pickle.dumps(RunsAShellCommand(marker), protocol=4))
    args = (["craft", "--attack", "deepconfuse", "--generator-weights", weights] if command == "craft"
            else ["poisons", "import", weights])
    with warnings.catch_warnings(record=True) as caught:  # pytest would otherwise keep warnings off stderr
        warnings.simplefilter("always")
        code, out, err = cli(*args, "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, f"{str(weights)!r} is not a")
    assert [str(w.message) for w in caught] == []
    assert not marker.exists() and not (tmp_path / "r").exists()


# --- the shortcut attacks' bounds and options (lsp: ℓ2, ops: L0) -----------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--attack", "lsp", "--eps", "0", "--patch-size", "4"], "eps must be > 0 and finite (ℓ2 radius"),
    (["--attack", "lsp", "--eps", "-1", "--patch-size", "4"], "got -1.0"),
    (["--attack", "lsp", "--patch-size", "5"], "--patch-size 5 of attack 'lsp' must divide the images' height and "
                                               "width (16×16)"),
    (["--attack", "lsp"], "--patch-size 7 of attack 'lsp' must divide"),  # the MNIST family's default on 16×16
    (["--attack", "ops", "--eps", "0.5"], "eps must be an integer >= 1 (L0"),
])
def test_shortcut_attack_bounds_and_options_are_refused(cli, tiny_npz, tmp_path, args, needle):
    results = tmp_path / "r"
    code, _, err = cli("craft", *args, "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, needle)
    assert files_under(results) == []


def test_an_ops_class_with_no_pixel_to_change_is_refused(cli, tmp_path):
    """Class 2 holds all-black and all-white one-channel images: whatever pixel and colour OPS picks, one of them
    already has it, so no pair changes every image of the class."""
    x, y = class_images(200, 8, classes=4)
    x[:40:2], x[1:40:2], y[:40] = 0, 255, 2
    path = tmp_path / "ops.npz"
    np.savez(path, x=x, y=y)
    results = tmp_path / "r"
    code, _, err = cli("craft", "--attack", "ops", "--margin", "0", "--dataset", path, "--results", results)
    one_line_error(code, err, "no pixel position and colour changes every image of class 2")
    assert files_under(results) == []
