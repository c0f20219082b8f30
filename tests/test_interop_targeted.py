"""Targeted poisons made by other toolkits, in and out: `poisons import --format forest|toxic|npz`, `poisons export
--poison-set ID --format …`, and the restricted unpickler (poisonbench.poisons.interchange)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import Target
from poisonbench.poisons.interchange.formats import FOREST_MEAN, FOREST_STD
from poisonbench.poisons.interchange.unpickle import PickledImage, load_pickle

from .helpers import npz_dataset
from .toys import ToyTargeted, registered


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """400 learnable 16×16 colour images, 4 classes (the cifar10 family): train 320 / val 8 / test 72."""
    return npz_dataset(tmp_path_factory.mktemp("colour"), "colour", 16, channels=3, seed=3)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return npz_dataset(tmp_path_factory.mktemp("grey"), "grey", 8, channels=1, seed=4)


def toy_set(data, root, index: int = 0, seed: int = 0):
    """A targeted PoisonSet made by the toy attack (rows of the intended class nudged toward test image `index`)."""
    true = int(data.test.y[index])
    with registered(ATTACKS, "toy-targeted", ToyTargeted):
        spec = poisons.craft_spec(data, "toy-targeted", eps=8 / 255, budget=0.05, seed=seed,
                                  target=Target(index, true, (true + 1) % data.num_classes))
        poison, _ = poisons.craft(spec, data, root, torch.device("cpu"))
    return spec, poison


def ids_written(root) -> list[str]:
    return poisons.list_ids(root) if (root / "poisons").exists() else []


def one_line_exit_2(code, err):
    assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt,name,which", [("forest", "ours.pkl", "colour"), ("forest", "ours.pt", "colour"),
                                            ("toxic", "submission", "colour"), ("toxic", "submission", "grey"),
                                            ("npz", "ours.npz", "colour"), ("npz", "ours.npz", "grey")])
def test_export_then_import_is_the_same_poison_set(colour, grey, tmp_path, cli, one_thread, fmt, name, which):
    data, path = colour if which == "colour" else grey
    res = tmp_path / "res"
    spec, ours = toy_set(data, res)
    out = tmp_path / name
    base = ("--dataset", path, "--results", res, "--json")
    code, stdout, err = cli("poisons", "export", "--poison-set", spec.poison_id, "--format", fmt, "--out", out, *base)
    assert code == 0, err
    written = json.loads(stdout)
    assert written["poisons"] == len(ours) and written["target"]["index"] == spec.target["index"]
    extra = ("--target", spec.target["index"], "--intended", spec.target["intended_class"]) if fmt == "toxic" else ()
    code, stdout, err = cli("poisons", "import", out, *extra, *base)  # the format is recognised without --format
    assert code == 0, err
    info = json.loads(stdout)
    assert info["status"] == "imported" and info["format"] == fmt and info["left_out_in_val_split"] == 0
    theirs = poisons.load(res, info["poison_id"], data)
    assert torch.equal(theirs.indices, ours.indices)  # same rows (the toy's are sorted)
    gap = (theirs.delta - ours.delta).abs().max().item()
    assert gap <= (1e-6 if fmt == "forest" else 0.5 / 255 + 1e-6)  # float rounding, or uint8 rounding
    imported, _ = poisons.spec_of(res, info["poison_id"], data)
    want = {**spec.target, "rows": ours.indices.tolist()}
    assert imported.target == want  # same target, its rows named
    assert imported.attack == {"forest": "gm", "toxic": "bp", "npz": "imported"}[fmt]
    assert imported.params["scenario"] == ("transfer" if fmt == "toxic" else "scratch")
    assert imported.params["format"] == fmt and imported.budget == len(ours) / len(data.train)
    assert all(ok for _, ok, _ in poisons.validate(res, info["poison_id"], data))
    code, stdout, _ = cli("poisons", "import", out, *extra, *base)
    assert code == 0 and json.loads(stdout)["status"] == "cached"


def test_toxic_export_without_pil_writes_arrays_that_import_alike(colour, tmp_path, cli, monkeypatch):
    from poisonbench.poisons.interchange import exchange

    data, path = colour
    res = tmp_path / "res"
    spec, ours = toy_set(data, res)
    named = ("--target", spec.target["index"], "--intended", spec.target["intended_class"])
    base = ("--dataset", path, "--results", res, "--json")
    ids = []
    for pil in (True, False):
        if not pil:
            monkeypatch.setattr(exchange, "_pil_or_array", lambda image: image)
        out = tmp_path / f"pil-{pil}"
        code, _, err = cli("poisons", "export", "--poison-set", spec.poison_id, "--format", "toxic", "--out", out,
                           *base)
        assert code == 0, err
        first = load_pickle(out / "poisons.pickle")[0][0]
        assert isinstance(first, PickledImage if pil else np.ndarray)
        code, stdout, err = cli("poisons", "import", out, *named, *base)
        assert code == 0, err
        ids.append(json.loads(stdout)["poison_id"])
    a, b = (poisons.load(res, i, data) for i in ids)
    assert torch.equal(a.delta, b.delta) and torch.equal(a.indices, b.indices)


def test_forest_files_are_read_in_forests_normalised_units(colour, tmp_path, cli):
    """Files made as forest and HINT make them, without poisonbench: δ_pixel = poison_delta · σ_forest; the stock
    packed list needs the target named, HINT's patched dict names it itself (numpy scalars in its setup)."""
    data, path = colour
    true = int(data.test.y[3])
    intended = (true + 2) % 4
    rows = (data.train.y == intended).nonzero().flatten()[:6]
    ids = torch.as_tensor(data.train.indices[rows.numpy()])
    g = torch.Generator().manual_seed(0)
    x = data.train.x[rows].double() / 255
    pixel = ((x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * 8 / 255).clamp(0, 1) - x)
    sigma = torch.tensor(FOREST_STD["cifar10"], dtype=torch.float64).view(-1, 1, 1)
    normalised = (pixel / sigma).float()
    res = tmp_path / "res"
    base = ("--dataset", path, "--results", res, "--json")
    torch.save([normalised, ids], tmp_path / "packed.pth")
    code, out, err = cli("poisons", "import", tmp_path / "packed.pth", *base)
    one_line_exit_2(code, err)  # a torch file without --format or a target is HINT's untargeted format
    code, out, err = cli("poisons", "import", tmp_path / "packed.pth", "--format", "forest", *base)
    one_line_exit_2(code, err)
    assert "does not name its target" in err and not ids_written(res)
    code, out, err = cli("poisons", "import", tmp_path / "packed.pth", "--target", "3", "--intended", intended, *base)
    assert code == 0, err
    packed = poisons.load(res, json.loads(out)["poison_id"], data)
    assert torch.equal(packed.indices, rows)
    assert torch.allclose(packed.delta.double(), pixel, atol=1e-6)
    torch.save([normalised, ids], tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # older torch
    code, out, err = cli("poisons", "import", tmp_path / "legacy.pth", "--format", "forest", "--target", "3",
                         "--intended", intended, *base)
    assert code == 0, err
    assert torch.equal(poisons.load(res, json.loads(out)["poison_id"], data).delta, packed.delta)
    # HINT's patched dict, pickled as HINT's loader reads it; one poison in our val split is left out and counted
    val_of_class = int(data.val.indices[(data.val.y == intended).nonzero().flatten()[0]])
    image = (data.test.x[3].double() / 255 - torch.tensor(FOREST_MEAN["cifar10"]).view(-1, 1, 1)) / sigma
    hint = {"poison_ids": np.append(ids.numpy(), val_of_class),
            "poison_delta": torch.cat([normalised, torch.zeros(1, *data.shape)]),
            "poison_setup": {"poison_budget": 0.01, "target_num": 1, "poison_class": np.int64(intended),
                             "target_class": np.int64(true), "intended_class": [np.int64(intended)]},
            "target_images": [(image.float(), true, int(data.test.indices[3]))]}
    (tmp_path / "hint.pkl").write_bytes(pickle.dumps(hint, protocol=2))
    code, out, err = cli("poisons", "import", tmp_path / "hint.pkl", "--attack", "BP", *base)
    assert code == 0, err
    info = json.loads(out)
    assert info["left_out_in_val_split"] == 1 and info["poisons_in_file"] == 7 and info["target_from"] == "file"
    assert info["attack"] == "bp" and info["scenario"] == "transfer"
    patched = poisons.load(res, info["poison_id"], data)
    assert torch.equal(patched.delta, packed.delta) and torch.equal(patched.indices, packed.indices)
    # forest's own σ, not HINT's: the same file read with HINT's constants is another PoisonSet, ≈0.8 × δ
    code, out, err = cli("poisons", "import", tmp_path / "hint.pkl", "--forest-std", "0.2023,0.1994,0.2010", *base)
    assert code == 0, err
    scaled = poisons.load(res, json.loads(out)["poison_id"], data)
    ratio = scaled.delta.abs().sum() / patched.delta.abs().sum()
    assert json.loads(out)["poison_id"] != info["poison_id"] and 0.75 < ratio < 0.85
    code, out, err = cli("poisons", "import", tmp_path / "hint.pkl", "--target", "4", "--intended", intended, *base)
    one_line_exit_2(code, err)
    assert "names test image" in err


def toxic_submission(data, directory, index: int, intended: int, k: int = 5, protocol: int = 4, labels=None):
    """The benchmark's three pickles as its how_to.md writes them: PIL images, a numpy array of base indices."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rows = (data.train.y == intended).nonzero().flatten()[:k]
    x = data.train.x[rows].permute(0, 2, 3, 1).numpy().astype(np.int16)
    poisoned = np.clip(x + np.random.default_rng(0).integers(-6, 7, x.shape), 0, 255).astype(np.uint8)
    labels = [intended] * k if labels is None else labels
    with open(directory / "poisons.pickle", "wb") as f:
        pickle.dump([(Image.fromarray(p), lab) for p, lab in zip(poisoned, labels, strict=True)], f, protocol=protocol)
    with open(directory / "base_indices.pickle", "wb") as f:
        pickle.dump(np.asarray(data.train.indices[rows.numpy()]), f, protocol=protocol)
    with open(directory / "target.pickle", "wb") as f:
        pickle.dump((Image.fromarray(data.test.x[index].permute(1, 2, 0).numpy()), int(data.test.y[index])), f,
                    protocol=protocol)
    return rows, poisoned


@pytest.mark.parametrize("protocol", [2, 4])
def test_toxic_submission_with_a_setup_file(colour, tmp_path, cli, protocol):
    data, path = colour
    true = int(data.test.y[5])
    intended = (true + 1) % 4
    rows, poisoned = toxic_submission(data, tmp_path / "sub", 5, intended, protocol=protocol)
    setup = {"setups": [{"target_class": true, "target_index": int(data.test.indices[5]), "base_class": intended,
                         "base_indices": [int(i) for i in data.train.indices[rows.numpy()]]},
                        {"target_class": true, "target_index": int(data.test.indices[5]), "base_class": intended,
                         "base_indices": [int(data.train.indices[0])]}]}
    (tmp_path / "setups.json").write_text(json.dumps(setup))
    res = tmp_path / "res"
    base = ("--dataset", path, "--results", res, "--json")
    code, out, err = cli("poisons", "import", tmp_path / "sub", "--setup", tmp_path / "setups.json", *base)
    assert code == 0, err
    info = json.loads(out)
    assert info["target_from"] == "setup" and info["target"]["index"] == 5 and info["attack"] == "bp"
    poison = poisons.load(res, info["poison_id"], data)
    want = torch.from_numpy(poisoned).permute(0, 3, 1, 2).float() / 255 - data.train.x[rows].float() / 255
    assert torch.equal(poison.indices, rows) and torch.allclose(poison.delta, want, atol=1e-6)
    files = [tmp_path / "sub" / n for n in ("target.pickle", "poisons.pickle", "base_indices.pickle")]
    code, out, err = cli("poisons", "import", *files, "--setup", tmp_path / "setups.json", *base)
    assert code == 0 and json.loads(out)["status"] == "cached", err  # the three files, in any order
    code, out, err = cli("poisons", "import", tmp_path / "sub", "--setup", tmp_path / "setups.json",
                         "--setup-index", "1", *base)
    one_line_exit_2(code, err)
    assert "base indices are not those of setup 1" in err


class Payload:
    """What a hostile pickle does on load: run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __reduce__(self):
        return eval, ("1 + 1",)


class Anything:
    """An arbitrary class of some module."""


@pytest.mark.parametrize("hostile,named", [("system", "'posix.system'"), ("eval", "'builtins.eval'"),
                                           ("class", "test_interop_targeted.Anything'")])
@pytest.mark.parametrize("where", ["poisons.pickle", "base_indices.pickle", "target.pickle", "forest"])
def test_a_pickle_holding_anything_but_arrays_is_refused(colour, tmp_path, cli, hostile, named, where):
    data, path = colour
    true = int(data.test.y[0])
    toxic_submission(data, tmp_path / "sub", 0, (true + 1) % 4)
    marker = tmp_path / "ran"
    evil = {"system": Payload(marker), "eval": Evaluates(), "class": Anything()}[hostile]
    if where == "forest":
        target = tmp_path / "forest.pkl"
        target.write_bytes(pickle.dumps({"poison_ids": [1], "poison_delta": np.zeros((1, 3, 16, 16)),
                                         "poison_setup": {"intended_class": [evil]}}))
        args = (target,)
    else:
        with open(tmp_path / "sub" / where, "wb") as f:
            pickle.dump([(evil, 1)], f)
        args = (tmp_path / "sub", "--target", 0, "--intended", (true + 1) % 4)
    res = tmp_path / "res"
    code, _, err = cli("poisons", "import", *args, "--dataset", path, "--results", res)
    one_line_exit_2(code, err)
    assert named in err and "which is not an array or a number; refused" in err
    assert not marker.exists() and not ids_written(res)


def test_the_unpickler_decodes_pil_images_without_pil(tmp_path):
    from PIL import Image

    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for protocol in (0, 2, 4):
        (tmp_path / "im.pickle").write_bytes(pickle.dumps([Image.fromarray(pixels), Image.fromarray(pixels[..., 0])],
                                                          protocol=protocol))
        colour_image, grey_image = load_pickle(tmp_path / "im.pickle")
        assert isinstance(colour_image, PickledImage) and isinstance(grey_image, PickledImage)
        assert np.array_equal(colour_image.array("x"), pixels) and np.array_equal(grey_image.array("x"),
                                                                                  pixels[..., 0])


def bad_npz(data, directory, **change):
    true = int(data.test.y[0])
    intended = (true + 1) % 4
    rows = (data.train.y == intended).nonzero().flatten()[:4]
    arrays = {"x": np.clip(data.train.x[rows].permute(0, 2, 3, 1).numpy().astype(int) + 3, 0, 255).astype(np.uint8),
              "idx": np.asarray(data.train.indices[rows.numpy()]), "target": np.int64(data.test.indices[0]),
              "intended": np.int64(intended)}
    for key, value in change.items():
        arrays[key] = value(arrays, data, rows) if callable(value) else value
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = directory / "bad.npz"
    np.savez(path, **arrays)
    return path


def _wrong_class(arrays, data, rows):
    other = (data.train.y != int(arrays["intended"])).nonzero().flatten()[0]
    idx = arrays["idx"].copy()
    idx[1] = data.train.indices[int(other)]
    return idx


NPZ_DAMAGE = {
    "base of the wrong class": ({"idx": _wrong_class}, "not the intended class"),
    "index out of range": ({"idx": lambda a, d, r: np.append(a["idx"][:3], 10 ** 6)}, "base index 1000000"),
    "a test image as base": ({"idx": lambda a, d, r: np.append(a["idx"][:3], d.test.indices[1])}, "is not an image"),
    "rows twice": ({"idx": lambda a, d, r: np.append(a["idx"][:3], a["idx"][0])}, "poisoned twice"),
    "no target": ({"target": None}, "lacks target"),
    "target outside the test split": ({"target": np.int64(10 ** 6)}, "test image 1000000 is not in"),
    "intended is the target's class": ({"intended": lambda a, d, r: np.int64(d.test.y[0])}, "intended class"),
    "float images": ({"x": lambda a, d, r: a["x"].astype(np.float32)}, "uint8"),
    "object array": ({"idx": lambda a, d, r: np.array([{"a": 1}], dtype=object)}, "refused"),
    "unperturbed": ({"x": lambda a, d, r: d.train.x[r].permute(0, 2, 3, 1).numpy()}, "no perturbation"),
}


@pytest.mark.parametrize("damage", list(NPZ_DAMAGE))
def test_bad_npz_is_one_line_exit_2_nothing_written(colour, tmp_path, cli, damage):
    data, path = colour
    change, message = NPZ_DAMAGE[damage]
    bad = bad_npz(data, tmp_path, **change)
    res = tmp_path / "res"
    code, _, err = cli("poisons", "import", bad, "--dataset", path, "--results", res)
    one_line_exit_2(code, err)
    assert message in err and not ids_written(res)


@pytest.mark.parametrize("case", ["unknown format", "no target", "wrong label", "target image", "untargeted label",
                                  "victim", "target without intended", "hint with a target", "forest std",
                                  "threat", "hint with a threat"])
def test_bad_import_options_are_one_line_exit_2_nothing_written(colour, tmp_path, cli, case):
    data, path = colour
    true = int(data.test.y[0])
    intended = (true + 1) % 4
    toxic_submission(data, tmp_path / "sub", 0, intended, labels=[intended] * 4 + [true] if case == "wrong label"
                     else None)
    named = ("--target", 0, "--intended", intended)
    args, message = {
        "unknown format": ((tmp_path / "sub", "--format", "mp", *named), "unknown --format 'mp'"),
        "no target": ((tmp_path / "sub",), "does not name its target"),
        "wrong label": ((tmp_path / "sub", *named), f"poison 4 is labelled {true}"),
        "target image": ((tmp_path / "sub", "--target", 1, "--intended", (int(data.test.y[1]) + 1) % 4),
                         "is not test image"),
        "untargeted label": ((tmp_path / "sub", *named, "--attack", "pgd"), "untargeted attack"),
        "victim": ((tmp_path / "sub", *named, "--victim", "finetune"), "unknown --victim 'finetune'"),
        "target without intended": ((tmp_path / "sub", "--target", 0), "go together"),
        "hint with a target": ((tmp_path / "x.pt", "--format", "hint", *named), "HINT's untargeted file takes none"),
        "forest std": ((tmp_path / "sub", *named, "--forest-std", "0.2"), "--forest-std applies to --format forest"),
        "threat": ((tmp_path / "sub", *named, "--threat", "black"), "unknown --threat 'black'; valid choices: white, "
                                                                      "gray, unknown"),
        "hint with a threat": ((tmp_path / "x.pt", "--format", "hint", "--threat", "gray"), "--threat"),
    }[case]
    res = tmp_path / "res"
    code, _, err = cli("poisons", "import", *args, "--dataset", path, "--results", res)
    one_line_exit_2(code, err)
    assert message in err and not ids_written(res)


@pytest.mark.parametrize("case", ["format without set", "set without format", "unknown format", "untargeted set",
                                  "missing set", "out is a file", "set with a ratio"])
def test_bad_export_is_one_line_exit_2_nothing_written(colour, tmp_path, cli, one_thread, case):
    data, path = colour
    res = tmp_path / "res"
    spec, _ = toy_set(data, res)
    (tmp_path / "afile").write_text("")
    code, out, err = cli("craft", "--attack", "durp", "--budget", "0.05", "--dataset", path, "--results", res,
                         "--json")
    assert code == 0, err
    untargeted = json.loads(out)["poison_id"]
    args, message = {
        "format without set": (("--format", "npz", "--poison-ratio", "1", "--out", tmp_path / "o.npz"),
                               "give --poison-set ID"),
        "set without format": (("--poison-set", spec.poison_id, "--out", tmp_path / "o.npz"), "needs --format"),
        "unknown format": (("--poison-set", spec.poison_id, "--format", "hint", "--out", tmp_path / "o.npz"),
                           "unknown --format 'hint'"),
        "untargeted set": (("--poison-set", untargeted, "--format", "npz", "--out", tmp_path / "o.npz"),
                           "is untargeted"),
        "missing set": (("--poison-set", "0123456789abcdef", "--format", "npz", "--out", tmp_path / "o.npz"),
                        "no poison set"),
        "out is a file": (("--poison-set", spec.poison_id, "--format", "toxic", "--out", tmp_path / "afile"),
                          "is a file"),
        "set with a ratio": (("--poison-set", spec.poison_id, "--poison-ratio", "1", "--format", "npz", "--out",
                              tmp_path / "o.npz"), "takes no --poison-ratio"),
    }[case]
    before = ids_written(res)
    code, _, err = cli("poisons", "export", *args, "--dataset", path, "--results", res)
    one_line_exit_2(code, err)
    assert message in err and ids_written(res) == before
    assert not (tmp_path / "o.npz").exists() and (tmp_path / "afile").read_text() == ""


def test_imported_poisons_are_measured_by_defend(colour, tmp_path, cli, one_thread):
    """import → defend → record: a targeted run of the scenario the import names, on exactly those poisons."""
    data, path = colour
    res = tmp_path / "res"
    spec, ours = toy_set(data, res)
    out = tmp_path / "ours.npz"
    code, _, err = cli("poisons", "export", "--poison-set", spec.poison_id, "--format", "npz", "--out", out,
                       "--dataset", path, "--results", res)
    assert code == 0, err
    code, stdout, err = cli("poisons", "import", out, "--attack", "mp", "--dataset", path, "--results", res, "--json")
    assert code == 0, err
    pid = json.loads(stdout)["poison_id"]
    code, stdout, err = cli("defend", "--poison-set", pid, "--dataset", path, "--model", "convnet", "--recipe", "quick",
                            "--epochs", "1", "--compile", "off", "--results", res, "--json")
    assert code == 0, err
    record = json.loads((res / "runs" / f"{json.loads(stdout.splitlines()[-1])['run_id']}.json").read_text())
    poison = record["config"]["poison"]
    assert record["config"]["scenario"] == "scratch" and poison["attack"] == "mp" and poison["poison_id"] == pid
    assert poison["target_index"] == spec.target["index"] and poison["poisoned"] == len(ours)
    assert isinstance(record["metrics"]["attack_success"], bool)
    # nobody said whose model these poisons were made on: `unknown`, in the PoisonSet and in the record's inputs
    (entry,) = record["inputs"]["poisons"]
    assert entry["threat"] == "unknown" and entry["imported_from"] == "npz" and entry["crafted_on"] is None
    assert entry["poison_id"] == pid and entry["tensors_sha256"] == record["poison_tensors"]["mp"]
    assert record["inputs"]["victim"]["kind"] == "from-scratch"


def test_an_import_declares_its_threat_in_its_identity_and_a_transfer_run_records_it(colour, tmp_path, cli,
                                                                                       one_thread):
    """`poisons import --threat` (default unknown) is a parameter of the PoisonSet (another id per threat) and
    becomes `config.threat` of the transfer runs on it (Table III's block), never a silent `white`."""
    data, path = colour
    res = tmp_path / "res"
    spec, _ = toy_set(data, res)
    out = tmp_path / "ours.npz"
    assert cli("poisons", "export", "--poison-set", spec.poison_id, "--format", "npz", "--out", out, "--dataset",
               path, "--results", res)[0] == 0
    ids = {}
    for threat in (None, "gray", "white"):
        given = ["--threat", threat] if threat else []
        code, stdout, err = cli("poisons", "import", out, "--attack", "bp", "--victim", "transfer", *given,
                                "--dataset", path, "--results", res, "--json")
        assert code == 0, err
        ids[threat or "unknown"] = json.loads(stdout)["poison_id"]
    assert len(set(ids.values())) == 3
    for threat, pid in ids.items():
        assert poisons.spec_of(res, pid)[0].params["threat"] == threat
    from poisonbench.experiment.defend import run_config
    from poisonbench.experiment.scenarios import scenario_for
    from poisonbench.experiment.spec import DefendSpec

    for threat, pid in ids.items():
        dspec = DefendSpec(dataset=str(path), poison_set=pid, scenario="transfer", recipe="quick",
                           results=str(res))
        plan = scenario_for(dspec).plan(dspec, data, 0)
        assert run_config(dspec, data, 0, plan)["threat"] == threat
