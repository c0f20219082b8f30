"""Holes a probe found (issue 51): a SIGTERM while a model trained for crafting finishes its last epoch, or while an
attack iterates, stops the craft at once (exit 143, no PoisonSet); `--setup-index` without `--setup` is refused;
an `.npz` is checked from its `.npy` headers before anything is inflated, and a file that is no zip says so; a
PoisonSet that cannot be written (a full disk) is one line with the reason, and nothing half-written is left."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import PartialBatches
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine import termination
from poisonbench.engine.models import build_model

from .conftest import files_under, one_line_error, write_npz

CPU = torch.device("cpu")
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-class 16×16 dataset (160 train rows) and its path."""
    root = tmp_path_factory.mktemp("probe")
    path = write_npz(root)
    return load_dataset(str(path)), path


# --- 5. SIGTERM while crafting ------------------------------------------------------------------------------------


def test_a_sigterm_in_the_surrogates_last_epoch_stops_craft_with_143_and_no_poison_set(tiny, tmp_path, cli,
                                                                                      monkeypatch, one_thread):
    """The engine lets a SIGTERM in the last epoch finish the training; the craft must then stop (the surrogate is
    saved), not craft on to the end."""
    from poisonbench.cli import craft as craft_cli

    _, path = tiny
    calls = []
    real = craft_cli._Bar.__call__

    def sigterm_at_the_surrogates_last_batch(self, description, completed, total):
        calls.append(description)
        if description.startswith("surrogate ") and completed == total:
            os.kill(os.getpid(), signal.SIGTERM)  # inside the engine's epoch loop: only a flag
        real(self, description, completed, total)

    monkeypatch.setattr(craft_cli._Bar, "__call__", sigterm_at_the_surrogates_last_batch)
    results = tmp_path / "r"
    code, out, err = cli("craft", "--attack", "gm", "--dataset", path, "--surrogate-epochs", "2", "--iterations",
                         "3", "--restarts", "2", "--compile", "off", "--results", results)
    assert code == termination.EXIT_CODE == 143, err
    assert "Terminated: stopped by SIGTERM after training the surrogate" in err and "Traceback" not in err
    assert out == "" and not poisons.list_ids(results) and files_under(results / "poisons") == []
    assert not any(d.startswith("gm ") for d in calls)  # not one crafting step after the SIGTERM
    (surrogate,) = (results / "surrogates").glob("*.safetensors")  # what was trained is kept
    assert not termination.requested()  # the CLI forgets the request on the way out (in-process callers)


CASES = {  # attack -> (params, the report at which the SIGTERM flag is set)
    "gm": ({"iterations": 4, "restarts": 2, "surrogate_epochs": 1}, lambda d, done, total: "restart 1/2" in d
           and done == 2),
    "pgd": ({"steps": 2, "batch_size": 20}, lambda d, done, total: done == 20),
    "deepconfuse": ({"outer_epochs": 2, "inner_epochs": 1, "batch_size": 32}, lambda d, done, total: done == 2),
}


@pytest.mark.parametrize("attack", list(CASES))
def test_a_pending_sigterm_stops_an_iterating_attack_at_its_next_step(attack, tiny, tmp_path, monkeypatch,
                                                                      one_thread):
    """A SIGTERM the engine deferred is seen between the attack's batches, iterations or restarts: the craft stops
    at the next one, and no PoisonSet is written."""
    data, _ = tiny
    params, when = CASES[attack]
    cls = ATTACKS.get(attack)
    if attack == "pgd":  # an untrained surrogate is as good as any for this (no 30-epoch training)
        monkeypatch.setattr(cls, "load_surrogate", lambda self, ctx: (build_model("convnet", ctx.dataset, seed=0)
                                                                      .to(ctx.device), {"id": "untrained"}))
    target = None
    budget = 0.5
    if cls.targeted:
        from poisonbench.attacks.targets import draw_target

        budget = 0.025
        target = draw_target(data, 1, "scratch", budget)
    spec = poisons.craft_spec(data, attack, budget=budget, seed=1, target=target, **params)
    seen, flagged = [], []

    def progress(description, done, total):
        if description.startswith(("surrogate", "extractor")):
            return
        seen.append((description, done))
        if not flagged and when(description, done, total):
            flagged.append((description, done))
            monkeypatch.setattr(termination, "_requested", True)  # what a deferred SIGTERM leaves

    with pytest.raises(termination.Terminated, match="stopped by SIGTERM while crafting"):
        poisons.craft(spec, data, tmp_path, CPU, progress=progress, compile="off")
    assert flagged and seen[-1] == flagged[0]  # nothing after the step that saw it
    assert not poisons.exists(tmp_path, spec.poison_id) and not poisons.list_ids(tmp_path)


# --- 9a. --setup-index without --setup ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["defend", "craft", "import"])
def test_setup_index_without_setup_is_refused(command, tiny, tmp_path, cli):
    _, path = tiny
    results = tmp_path / "r"
    args = {"defend": ("defend", "--recipe", "quick", "--epochs", "1", "--compile", "off"),
            "craft": ("craft", "--attack", "gm", "--surrogate-epochs", "1", "--iterations", "1", "--restarts", "1",
                      "--compile", "off"),
            "import": ("poisons", "import", tmp_path / "p.npz", "--format", "npz")}[command]
    code, out, err = cli(*args, "--setup-index", "3", "--dataset", path, "--results", results)
    one_line_error(code, err, "--setup-index 3 needs --setup FILE")
    assert out == "" and files_under(results) == []


# --- 9b / 9c. .npz files: headers first, and a file that is no zip ------------------------------------------------


def npy_header(shape, dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def zeros_npz(path: Path, arrays: dict[str, np.ndarray | tuple | bytes]) -> Path:
    """An .npz (deflated, as np.savez_compressed writes it) whose members are given arrays, raw bytes or, for a
    (shape, dtype) tuple, an array of zeros of that shape streamed in without ever being held in memory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, value in arrays.items():
            if isinstance(value, bytes):
                z.writestr(f"{name}.npy", value)
                continue
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                if isinstance(value, np.ndarray):
                    np.lib.format.write_array(f, value, allow_pickle=False)
                    continue
                shape, dtype = value
                f.write(npy_header(shape, dtype))
                left, chunk = int(np.prod(shape)) * np.dtype(dtype).itemsize, bytes(1 << 22)
                while left:
                    f.write(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))
    return path


def peak_bytes(fn) -> tuple[int, object]:
    """(peak traced allocation, what `fn` raised or returned): numpy's array buffers are traced."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except PoisonbenchError as e:
            result = e
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


HUGE = 32 << 20  # 32 MB declared by a file of about 140 kB


def poison_arrays(data, **change):
    true = int(data.test.y[0])
    intended = (true + 1) % 4
    rows = (data.train.y == intended).nonzero().flatten()[:4]
    arrays = {"x": np.clip(data.train.x[rows].permute(0, 2, 3, 1).numpy().astype(int) + 3, 0, 255).astype(np.uint8),
              "idx": np.asarray(data.train.indices[rows.numpy()]), "target": np.asarray(data.test.indices[0]),
              "intended": np.asarray(intended)}
    arrays.update(change)
    return arrays


@pytest.mark.parametrize("case, change, needle", [
    ("images of the wrong shape", {"x": ((HUGE // (17 * 16), 17, 16), np.uint8)}, "do not fit this dataset's"),
    ("more images than the train set", {"x": ((HUGE // 256, 16, 16, 1), np.uint8)}, "more than the"),
    ("float images", {"x": ((HUGE // 1024, 16, 16, 1), np.float32)}, "uint8 images"),
    ("a huge index array", {"idx": ((HUGE // 8,), np.int64)}, "idx holds"),
    ("a huge target", {"target": ((HUGE // 8,), np.int64)}, "target holds"),
])
def test_poisons_import_checks_the_declared_shapes_before_inflating(case, change, needle, tiny, tmp_path):
    """A small .npz that declares a huge array is refused from its headers: the peak memory stays far below the
    declared size."""
    from poisonbench.poisons.interchange.formats import read_npz_poisons

    data, _ = tiny
    path = zeros_npz(tmp_path / "bomb.npz", poison_arrays(data, **change))
    assert path.stat().st_size < HUGE // 100
    peak, result = peak_bytes(lambda: read_npz_poisons(path, data))
    assert peak < HUGE // 8, f"{peak / 1e6:.1f} MB allocated for a file declaring {HUGE / 1e6:.1f} MB ({result})"
    assert isinstance(result, PoisonbenchError) and needle in str(result), result


def test_a_good_poisons_npz_still_imports(tiny, tmp_path, cli):
    data, path = tiny
    good = zeros_npz(tmp_path / "good.npz", poison_arrays(data))
    code, out, err = cli("poisons", "import", good, "--dataset", path, "--results", tmp_path / "r", "--json")
    assert code == 0, err
    assert json.loads(out)["count"] == 4


def test_a_member_smaller_than_its_header_declares_is_refused(tiny, tmp_path):
    """The zip's declared size of a member must hold the array its .npy header declares (here 8 GB in 100 bytes)."""
    from poisonbench.poisons.interchange.formats import read_npz_poisons

    data, _ = tiny
    lying = npy_header((1 << 30,), np.int64) + bytes(100)
    path = zeros_npz(tmp_path / "lies.npz", poison_arrays(data, idx=lying))
    with pytest.raises(PoisonbenchError, match=r"array 'idx' declares int64 \(1073741824,\) \(8\.6 GB\), but "
                                               r"its member holds 100 bytes"):
        read_npz_poisons(path, data)


@pytest.mark.parametrize("case, arrays, needle", [
    ("x of the wrong layout", {"x": ((HUGE // 256, 1, 16, 16), np.uint8), "y": ((HUGE // 256,), np.int64)},
     "looks like N×C×H×W"),
    ("y longer than x", {"x": ((HUGE // 256, 16, 16), np.uint8), "y": ((HUGE // 256 + 1,), np.int64)},
     "one non-negative int label per image"),
    ("one class only", {"x": ((HUGE // 256, 16, 16), np.uint8), "y": ((HUGE // 256,), np.int64)},
     "labels must be the classes 0..K-1"),
])
def test_a_dataset_npz_is_checked_before_its_images_are_inflated(case, arrays, needle, tmp_path):
    path = zeros_npz(tmp_path / "data.npz", arrays)
    peak, result = peak_bytes(lambda: load_dataset(str(path)))
    assert peak < HUGE // 2, f"{peak / 1e6:.1f} MB allocated for a file declaring {HUGE / 1e6:.1f} MB ({result})"
    assert isinstance(result, PoisonbenchError) and needle in str(result), result


def test_an_array_larger_than_the_available_memory_is_refused_before_it_is_inflated(tiny, tmp_path, monkeypatch):
    from poisonbench.data import npz

    _, path = tiny
    monkeypatch.setattr(npz, "available_memory", lambda: 10_000)
    # what loading takes (4 bytes per byte of x, 6 per byte of y: core/bounded.py), not the arrays' bytes alone
    with pytest.raises(PoisonbenchError, match=r"tiny\.npz: declares 52\.8 kB of arrays \(x uint8 \(200, 16, 16\), y "
                                               r"int64 \(200,\)\); loading it takes about 214\.4 kB, more than the "
                                               r"10\.0 kB of memory available"):
        load_dataset(str(path))


@pytest.mark.parametrize("command", ["import", "dataset"])
def test_a_text_file_named_npz_is_not_called_a_pickle(command, tiny, tmp_path, cli):
    _, path = tiny
    text = tmp_path / "x.npz"
    text.write_text("hello, I am a text file\n")
    args = (("poisons", "import", text, "--dataset", path, "--results", tmp_path / "r") if command == "import"
            else ("data", "info", text))
    code, _, err = cli(*args)
    one_line_error(code, err, "is not a readable .npz: it is not a zip archive")
    assert "pickle" not in err


def test_an_object_array_in_an_npz_is_refused_without_unpickling(tiny, tmp_path):
    from poisonbench.poisons.interchange.formats import read_npz_poisons

    data, _ = tiny
    path = tmp_path / "obj.npz"
    np.savez(path, **poison_arrays(data, idx=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(PoisonbenchError, match="array 'idx' is an object array \\(a pickle\\).*refused"):
        read_npz_poisons(path, data)


# --- 7. a PoisonSet save on a full disk -------------------------------------------------------------------------


def test_a_full_disk_while_saving_a_poison_set_is_one_line_and_leaves_nothing(tiny, tmp_path, cli, monkeypatch):
    """The tensor file is half written when the disk fills: one line with the reason, the temporary directory and
    its half file are gone, no PoisonSet."""
    from poisonbench.poisons import store

    _, path = tiny
    half_written = []

    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:len(data) // 2])
            half_written.append(Path(self.name))
            raise ENOSPC

    monkeypatch.setattr(store, "open", lambda file, mode="r", *a, **k: FullDisk(file, mode.replace("b", "")),
                        raising=False)
    results = tmp_path / "r"
    code, out, err = cli("craft", "--attack", "durp", "--budget", "0.1", "--dataset", path, "--results", results)
    assert code == 2 and out == "" and "Traceback" not in err, err
    *progress_bar, last = err.strip().splitlines()  # the crafting bar, then the error
    assert last.startswith(f"Error: cannot write PoisonSet to '{results / 'poisons'}/") and \
        last.endswith("': No space left on device") and not any("Error" in line for line in progress_bar), err
    assert half_written and not half_written[0].exists()  # the half file was written, then removed
    assert list((results / "poisons").iterdir()) == [] and not poisons.list_ids(results)


def test_a_full_disk_while_saving_an_interrupted_crafts_state_is_one_line(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isfile(f"/proc/self/fd/{fd}"):
            raise ENOSPC
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(PoisonbenchError, match=r"cannot write an interrupted craft's state to '.*rows-000000000-"
                                               r"000000002\.safetensors': No space left on device"):
        PartialBatches(tmp_path).put(0, 2, torch.zeros(2, 1, 4, 4))
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed too
