"""HINT's untargeted poison file in and out (`poisons import`, `poisons export`) and `defend --poison-set`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from poisonbench import poisons
from poisonbench.data import load_dataset
from poisonbench.poisons.interchange.hint_file import hint_rows, pool_arrays

from .conftest import write_mnist_dir, write_npz


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """MNIST's IDX files with 1,200 training images: our split keeps 200 for training and 1,000 for val."""
    d = tmp_path_factory.mktemp("mnist")
    write_mnist_dir(d, n_train=1200, n_test=100)
    return d


def hint_file_like_the_paper(mnist_dir, path, poison_rows: int, seed: int = 0):
    """A file made the way HINT's own loader reads one, built without poisonbench: the IDX images in HINT's split
    order (`torch.manual_seed(1); randperm(60000)` in CustomMNIST, here over 1,200), the first `poison_rows`
    perturbed within ε = 0.3, float N×28×28 in [0, 1], int64 labels."""
    from poisonbench.data.formats import read_idx

    x = torch.from_numpy(read_idx(mnist_dir / "train-images-idx3-ubyte").astype(np.float32) / 255)
    y = torch.from_numpy(read_idx(mnist_dir / "train-labels-idx1-ubyte").astype(np.int64))
    torch.manual_seed(1)
    order = torch.randperm(len(x), generator=torch.default_generator)[:len(x) - 1000]
    images, targets = x[order].clone(), y[order].clone()
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand((poison_rows, 28, 28), generator=g) * 2 - 1) * 0.3
    images[:poison_rows] = (images[:poison_rows] + noise).clamp(0, 1)
    torch.save({"poisoned_images": images, "poison_targets": targets}, path)
    return order, images


def test_import_of_a_file_in_hints_layout(mnist_dir, tmp_path, cli):
    name = "mnist_eps_0.3_mixed_poison_clean_100_pgd_25_p1_25_p5_25_DC_25.pt"
    order, images = hint_file_like_the_paper(mnist_dir, tmp_path / name, poison_rows=100)
    res = tmp_path / "res"
    code, out, err = cli("poisons", "import", tmp_path / name, "--dataset", "mnist", "--data-dir", mnist_dir,
                         "--results", res, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["order"] == "hint" and info["rows"] == 200 and info["poisoned_rows"] == 100
    assert info["declared"] == {"eps": 0.3, "rows": {"clean": 100, "pgd": 25, "p1": 25, "p5": 25, "DC": 25}}
    data = load_dataset("mnist", mnist_dir)
    assert torch.equal(hint_rows(data), order)  # our HINT order is the official loader's
    # every poisoned row of the file is either in our train split (imported) or in our val split (left out)
    train_of = {int(p): i for i, p in enumerate(data.train.indices)}
    expected = sorted(train_of[int(p)] for p in order[:100] if int(p) in train_of)
    assert info["count"] == len(expected) and info["left_out_in_val_split"] == 100 - len(expected)
    assert 0 < len(expected) < 100
    poison = poisons.load(res, info["poison_id"], data)
    assert poison.indices.tolist() == expected
    # δ is what HINT trains on: the file's image truncated to uint8, minus the clean image
    file_row = {int(p): r for r, p in enumerate(order.tolist())}
    for i, row in zip(poison.indices.tolist(), poison.delta, strict=True):
        r = file_row[int(data.train.indices[i])]
        want = images[r].mul(255).to(torch.uint8).float() / 255 - data.train.x[i, 0].float() / 255
        assert torch.allclose(row[0], want, atol=1e-6)
    assert poison.delta.abs().max() <= 0.3 + 1 / 255
    assert all(ok for _, ok, _ in poisons.validate(res, info["poison_id"], data))
    code, out, _ = cli("poisons", "import", tmp_path / name, "--dataset", "mnist", "--data-dir", mnist_dir,
                       "--results", res, "--json")
    assert code == 0 and json.loads(out)["status"] == "cached"


def test_export_then_import_round_trip(mnist_dir, tmp_path, cli):
    """Our mix written for the official code and read back: the same δ on every row both splits share."""
    res, out_file = tmp_path / "res", tmp_path / "ours.pt"
    code, out, err = cli("poisons", "export", "--dataset", "mnist", "--data-dir", mnist_dir, "--poison-ratio", "1",
                         "--attacks", "durp", "--out", out_file, "--results", res, "--json")
    assert code == 0, err
    written = json.loads(out)
    data = load_dataset("mnist", mnist_dir)
    blob = torch.load(out_file, weights_only=True)
    assert set(blob) == {"poisoned_images", "poison_targets"}
    assert blob["poisoned_images"].shape == (200, 28, 28) and blob["poisoned_images"].dtype == torch.float32
    rows = hint_rows(data)
    _, pool_y = pool_arrays(data)
    assert torch.equal(blob["poison_targets"], pool_y[rows])
    in_val = torch.as_tensor(np.isin(rows.numpy(), data.val.indices))
    assert written["clean_outside_train_split"] == int(in_val.sum()) > 0
    pool_x, _ = pool_arrays(data)
    assert torch.equal(blob["poisoned_images"][in_val], pool_x[rows][in_val][:, 0].float() / 255)  # no δ for those
    code, out, err = cli("poisons", "import", out_file, "--dataset", "mnist", "--data-dir", mnist_dir,
                         "--results", res, "--json")
    assert code == 0, err
    imported = poisons.load(res, json.loads(out)["poison_id"], data)
    durp = poisons.load(res, written["poison_ids"]["durp"], data)
    assert len(imported) == int((~in_val).sum())
    assert (imported.delta - durp.rows_for(imported.indices)).abs().max() <= 1 / 255 + 1e-6  # uint8 truncation


@pytest.mark.parametrize("damage", ["labels", "not-a-dict", "shape", "far"])
def test_import_refuses_foreign_files(mnist_dir, tmp_path, cli, damage):
    path = tmp_path / "bad.pt"
    order, images = hint_file_like_the_paper(mnist_dir, path, poison_rows=10)
    blob = torch.load(path, weights_only=True)
    if damage == "labels":
        blob["poison_targets"] = (blob["poison_targets"] + 1) % 10
    elif damage == "not-a-dict":
        blob = [blob["poisoned_images"], blob["poison_targets"]]
    elif damage == "shape":
        blob["poisoned_images"] = blob["poisoned_images"][:, :27]
    else:
        blob["poisoned_images"] = 1 - blob["poisoned_images"]
    torch.save(blob, path)
    res = tmp_path / "res"
    code, out, err = cli("poisons", "import", path, "--dataset", "mnist", "--data-dir", mnist_dir, "--results", res)
    assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1, err
    assert "bad.pt" in err and "Traceback" not in err
    assert not (res / "poisons").exists() or not poisons.list_ids(res)


def test_defend_on_a_poison_set_trains_exactly_its_rows(tmp_path, cli, train_calls, one_thread):
    """`--poison-set` of a budget-1 PoisonSet is the ρ = 1 mix of that attack alone, number for number; of a
    budget-0.5 one, exactly its rows are poisoned."""
    npz = write_npz(tmp_path, n=200, size=16)
    res = tmp_path / "res"
    common = ("--dataset", npz, "--results", res, "--epochs", "2", "--json")
    code, out, err = cli("craft", "--attack", "durp", "--dataset", npz, "--results", res, "--json")
    assert code == 0, err
    full = json.loads(out)["poison_id"]
    code, out, err = cli("defend", "--poison-set", full, *common)
    assert code == 0, err
    by_set = json.loads(out)
    code, out, err = cli("defend", "--poison-ratio", "1", "--attacks", "durp", *common)
    assert code == 0, err
    by_mix = json.loads(out)
    assert by_set["run_id"] != by_mix["run_id"] and by_set["test_acc"] == by_mix["test_acc"]
    assert torch.equal(train_calls[0][0][1], train_calls[1][0][1])  # the same poisoned train tensor
    record = json.loads((res / "runs" / f"{by_set['run_id']}.json").read_text())
    assert record["config"]["scenario"] == "poison-set"
    assert record["config"]["poison"]["poison_id"] == full and record["config"]["poison"]["ratio"] == 1.0
    code, out, err = cli("craft", "--attack", "durp", "--budget", "0.5", "--dataset", npz, "--results", res, "--json")
    half = json.loads(out)["poison_id"]
    code, out, err = cli("defend", "--poison-set", half, *common)
    assert code == 0, err
    clean = load_dataset(str(npz)).train.x.float().div(255)
    changed = (train_calls[2][0][1].cpu() != clean).flatten(1).any(1)  # the rows the run trained poisoned
    assert changed.nonzero().flatten().tolist() == sorted(poisons.load(res, half).indices.tolist())


@pytest.mark.parametrize("args", [
    ("defend", "--poison-set", "0123456789abcdef", "--poison-ratio", "0.5"),
    ("defend", "--poison-set", "../etc"),
    ("defend", "--poison-set", "0123456789abcdef"),
    ("poisons", "export", "--poison-ratio", "1", "--out", "x.pt"),  # mnist-5k has no HINT order
    ("poisons", "export", "--poison-ratio", "1", "--out", "x.pt", "--order", "sorted"),
    ("poisons", "export", "--poison-ratio", "1.5", "--order", "train", "--out", "x.pt"),
    ("poisons", "import", "missing.pt"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, cli, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args, "--results", tmp_path / "res")
    assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "res" / "poisons").exists()
    assert not (tmp_path / "res" / "runs").exists() or not list((tmp_path / "res" / "runs").iterdir())
