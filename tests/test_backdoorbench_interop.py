"""Backdoor PoisonSets in BackdoorBench's form (issue 85 item 5; poisonbench.poisons.interchange.backdoorbench):
export → import is the same PoisonSet (rows, labels, trigger, ASR), BackdoorBench's own files (its
train_poison_index_list.pickle, info.pickle and trigger PNG, its attack_result.pt) import as its attack trains on
them, and bad inputs are refused in one line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks.backdoor import Trigger
from poisonbench.core.errors import PoisonbenchError
from poisonbench.experiment.scenarios.backdoor import attack_success_rate
from poisonbench.poisons.interchange.backdoorbench import (
    BackdoorOptions,
    export_backdoor,
    import_backdoor,
    read_backdoor,
)

from .conftest import one_line_error
from .helpers import npz_dataset


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """400 learnable 16×16 colour images, 4 classes: train 320 / val 8 / test 72."""
    return npz_dataset(tmp_path_factory.mktemp("bbcolour"), "colour", 16, channels=3, seed=3)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return npz_dataset(tmp_path_factory.mktemp("bbgrey"), "grey", 16, channels=1, seed=4)


def crafted(data, root, attack, budget, **params):
    spec = poisons.craft_spec(data, attack, budget=budget, seed=5, **params)
    poison, _ = poisons.craft(spec, data, root, torch.device("cpu"))
    return spec, poisons.load(root, spec.poison_id, data)


class TriggerSeer(torch.nn.Module):
    """A stand-in victim that says `target` exactly when the image carries `trigger` (T(x) == x), else class 1: the
    ASR it gets is the share of triggered images that the trigger maps to themselves."""

    def __init__(self, trigger, target):
        super().__init__()
        self.trigger, self.target = trigger, target

    def forward(self, x):
        hit = (self.trigger.apply(x) - x).flatten(1).abs().amax(1) < 1e-6
        out = torch.zeros(len(x), 4)
        out[hit, self.target] = 10
        out[~hit, 1] = 10
        return out


def asr_of(data, trigger_made, trigger_seen, target):
    x, y = data.test.x.float() / 255, data.test.y
    model = TriggerSeer(trigger_seen, target)
    return attack_success_rate(model, x, y, trigger_made, target)


def assert_same_poison_set(data, ours, back, target):
    assert torch.equal(back.indices, ours.indices)  # the same rows
    assert torch.equal(back.delta, ours.delta)  # the same poisoned images
    if ours.labels is None:
        assert back.labels is None
    else:
        assert torch.equal(back.labels, ours.labels)
    assert torch.equal(back.trigger.scale, ours.trigger.scale) and torch.equal(back.trigger.add, ours.trigger.add)
    assert back.manifest["backdoor"]["target_class"] == ours.manifest["backdoor"]["target_class"] == target
    assert back.manifest["backdoor"]["label_mode"] == ours.manifest["backdoor"]["label_mode"]
    # the same ASR definition: the imported trigger on the test split is ours, image for image
    x = data.test.x.float() / 255
    assert torch.equal(back.trigger.apply(x), ours.trigger.apply(x))
    assert asr_of(data, back.trigger, ours.trigger, target) == asr_of(data, ours.trigger, ours.trigger, target)


@pytest.mark.parametrize("attack, budget, params, which", [
    ("badnets", 0.1, {"target_class": 2}, "colour"),
    ("badnets", 0.1, {"target_class": 1}, "grey"),
    ("blend", 0.1, {"target_class": 3, "alpha": 0.2}, "colour"),
    ("blend", 0.1, {"target_class": 0, "alpha": 0.3}, "grey"),
    ("sig", 0.05, {"target_class": 1}, "colour"),  # clean label
])
def test_export_then_import_is_the_same_backdoor(colour, grey, tmp_path, cli, attack, budget, params, which):
    data, path = colour if which == "colour" else grey
    res = tmp_path / "res"
    spec, ours = crafted(data, res, attack, budget, **params)
    out = tmp_path / "bb"
    base = ("--dataset", path, "--results", res, "--json")
    code, stdout, err = cli("poisons", "export", "--poison-set", spec.poison_id, "--format", "backdoorbench",
                            "--out", out, *base)
    assert code == 0, err
    written = json.loads(stdout)
    assert written["poisons"] == len(ours) and written["target_class"] == params["target_class"]
    # BackdoorBench's form: a 0/1 indicator over the whole source train set (our train and val splits)
    indicator = np.load(out / "poison_indicator.npy")
    assert indicator.shape == (len(data.train) + len(data.val),) and set(np.unique(indicator)) <= {0.0, 1.0}
    pool = np.sort(np.r_[data.train.indices, data.val.indices])  # the source's train set, in its order
    rows = np.sort(np.asarray(data.train.indices)[ours.indices.numpy()])
    assert np.array_equal(pool[np.flatnonzero(indicator)], rows)
    info = json.loads((out / "info.json").read_text())
    assert info["attack_target"] == params["target_class"] and info["attack_label_trans"] == "all2one"
    assert info["clean_label"] == (attack == "sig")
    code, stdout, err = cli("poisons", "import", out, *base)  # recognised as backdoorbench without --format
    assert code == 0, err
    got = json.loads(stdout)
    assert got["format"] == "backdoorbench" and got["status"] == "imported" and got["attack"] == attack
    back = poisons.load(res, got["poison_id"], data)
    assert got["poison_id"] != spec.poison_id and back.manifest["imported_from"]["left_out_in_val_split"] == 0
    assert_same_poison_set(data, ours, back, params["target_class"])
    if attack == "sig":
        assert back.labels is None and bool((data.train.y[back.indices] == params["target_class"]).all())
    check = poisons.validate(res, got["poison_id"], data)
    assert all(ok for _, ok, _ in check), [c for c in check if not c[1]]


def test_the_png_alone_gives_backdoorbenchs_patch(colour, tmp_path):
    """BadNets through BB's file form: the indicator and trigger.png (uint8: white is 255) without our exact .npy."""
    data, _ = colour
    res = tmp_path / "res"
    spec, ours = crafted(data, res, "badnets", 0.1, target_class=2)
    out = tmp_path / "bb"
    export_backdoor(res, spec.poison_id, data, out)
    (out / "trigger.npy").unlink()
    back, cached = import_backdoor([out], data, tmp_path / "res2")
    assert not cached
    assert_same_poison_set(data, ours, back, 2)


def bb_record(tmp_path, data, indicator, attack="badnet", target=0, trigger=None, **extra):
    """A BackdoorBench record directory as its attack scripts write it: train_poison_index_list.pickle (torch.save of
    the numpy indicator), info.pickle (torch.save of the args dict) and the trigger image."""
    d = tmp_path / "record"
    d.mkdir(exist_ok=True)
    torch.save(np.asarray(indicator), d / "train_poison_index_list.pickle")
    args = {"attack": attack, "attack_target": target, "attack_label_trans": "all2one", "pratio": 0.1,
            "dataset": "cifar10", "save_path": "./record/x", **extra}
    torch.save(args, d / "info.pickle")
    if trigger is not None:
        from PIL import Image

        Image.fromarray(trigger).save(d / "trigger_image.png")
    return d


def bb_patch(data, size=3):
    """BB's resource/badnet/trigger_image.png at the dataset's size: zero but a white square in the corner."""
    c, h, w = data.shape
    t = np.zeros((h, w, 3), np.uint8)
    t[-size:, -size:] = 255
    return t


def indicator_of(data, rows):
    """BB's indicator of our train rows `rows`: over the source's train set (our train and val splits) in order."""
    pool = np.sort(np.r_[data.train.indices, data.val.indices])
    ind = np.zeros(len(pool))
    ind[np.searchsorted(pool, np.asarray(data.train.indices)[rows])] = 1
    return ind


def test_a_backdoorbench_record_imports_as_its_badnet(colour, tmp_path):
    data, _ = colour
    rows = np.arange(0, 60, 2)
    d = bb_record(tmp_path, data, indicator_of(data, rows), target=3, trigger=bb_patch(data))
    back, _ = import_backdoor([d], data, tmp_path / "res", opts=BackdoorOptions(trigger=str(d / "trigger_image.png")))
    assert back.manifest["attack"] == "badnets" and back.manifest["backdoor"]["label_mode"] == "dirty"
    assert torch.equal(back.indices, torch.from_numpy(rows)) and bool((back.labels == 3).all())
    # BB's AddMaskPatchTrigger: img * (t == 0) + t * (t > 0), on uint8 HWC images
    x = data.train.x[rows].permute(0, 2, 3, 1).numpy().astype(np.float64)
    t = bb_patch(data).astype(np.float64)
    bb = x * (t == 0) + t * (t > 0)
    ours = (data.train.x[rows].float() / 255 + back.delta).permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(ours - bb).max() < 1e-3


def test_a_backdoorbench_blended_record_takes_its_alpha(colour, tmp_path):
    data, _ = colour
    rows = np.arange(5, 45, 3)
    kitty = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    d = bb_record(tmp_path, data, indicator_of(data, rows), attack="blended", target=1, trigger=kitty,
                  attack_train_blended_alpha=0.2, attack_test_blended_alpha=0.2)
    back, _ = import_backdoor([d], data, tmp_path / "res", opts=BackdoorOptions(trigger=str(d / "trigger_image.png")))
    assert back.manifest["attack"] == "blend" and back.manifest["backdoor"]["trigger"] == {"kind": "blend",
                                                                                          "alpha": 0.2}
    x = data.train.x[rows].permute(0, 2, 3, 1).numpy().astype(np.float64)
    bb = 0.8 * x + 0.2 * kitty  # BB blendedImageAttack, before its uint8 cast
    ours = (data.train.x[rows].float() / 255 + back.delta).permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(ours - bb).max() < 1e-3
    with pytest.raises(PoisonbenchError, match="α"):  # the command line must agree with the record
        read_backdoor([d], data, BackdoorOptions(trigger=str(d / "trigger_image.png"), alpha=0.3))


def test_a_backdoorbench_sig_record_is_clean_label_and_needs_no_trigger_file(colour, tmp_path):
    data, _ = colour
    rows = np.flatnonzero(data.train.y.numpy() == 2)[:10]
    d = bb_record(tmp_path, data, indicator_of(data, rows), attack="sig", target=2, sig_delta=40, sig_f=6)
    back, _ = import_backdoor([d], data, tmp_path / "res")
    assert back.labels is None and back.manifest["backdoor"]["label_mode"] == "clean"
    _, ours = crafted(data, tmp_path / "ours", "sig", 0.03, target_class=2)
    assert torch.equal(back.trigger.add, ours.trigger.add) and torch.equal(back.trigger.scale, ours.trigger.scale)


def test_attack_result_pt_gives_its_indicator_and_its_labels_are_checked(colour, tmp_path):
    """BB v2.2's attack_result.pt, as its attack scripts save it (poisoned images as PNG paths): read with
    torch.load(weights_only=True); its bd_train labels must be the target (all-to-one)."""
    data, _ = colour
    rows = np.arange(10, 30)
    ind = indicator_of(data, rows)
    ids = np.flatnonzero(ind)

    def record(bd_label):
        table = {int(i): {"path": f"./record/x/bd_train_dataset/0/{int(i)}.png", "other_info": [bd_label, 0]}
                 for i in ids}
        return {"model_name": "preactresnet18", "num_classes": 4, "model": {"w": torch.zeros(2)},
                "data_path": "./data", "img_size": [16, 16, 3], "clean_data": "cifar10",
                "bd_train": {"bd_data_container": {"save_folder_path": "./record/x/bd_train_dataset",
                                                   "data_dict": table, "save_file_format": ".png"},
                             "getitem_all": True, "getitem_all_switch": False,
                             "original_index_array": np.arange(len(ind)), "poison_indicator": ind,
                             "save_folder_path": "./record/x/bd_train_dataset"},
                "bd_test": None}

    d = tmp_path / "rec"
    d.mkdir()
    torch.save(record(3), d / "attack_result.pt")
    trig = tmp_path / "trigger.png"
    from PIL import Image

    Image.fromarray(bb_patch(data)).save(trig)
    back, _ = import_backdoor([d], data, tmp_path / "res", opts=BackdoorOptions(trigger=str(trig), target_class=3))
    assert torch.equal(back.indices, torch.from_numpy(rows)) and bool((back.labels == 3).all())
    torch.save(record(1), d / "attack_result.pt")
    with pytest.raises(PoisonbenchError, match="backdoor label 1"):
        import_backdoor([d], data, tmp_path / "res3", opts=BackdoorOptions(trigger=str(trig), target_class=3))


# ---- bad input: one line each -------------------------------------------------------------------------------------

def export_dir(data, tmp_path, attack="badnets", budget=0.1, **params):
    res = tmp_path / "res"
    spec, ours = crafted(data, res, attack, budget, **params)
    out = tmp_path / "bb"
    export_backdoor(res, spec.poison_id, data, out)
    return out, ours


def npy(path, arr):
    np.save(path, arr)
    return path


@pytest.mark.parametrize("mangle, needles", [
    (lambda d, data: npy(d / "poison_indicator.npy", np.zeros(len(data.train) + len(data.val) - 1)),
     ["indicator of", "entries for a train set of"]),
    (lambda d, data: npy(d / "poison_indicator.npy", np.r_[2.0, np.zeros(len(data.train) + len(data.val) - 1)]),
     ["indicator entry 0 is", "0 (clean) or 1 (poisoned)"]),
    (lambda d, data: npy(d / "poison_indicator.npy", np.r_[0.5, np.ones(len(data.train) + len(data.val) - 1)]),
     ["indicator entry 0 is"]),
    (lambda d, data: npy(d / "poison_indicator.npy", np.zeros(len(data.train) + len(data.val))),
     ["marks no image"]),
    (lambda d, data: npy(d / "trigger.npy", np.zeros((8, 8, 3))), ["trigger of shape", "does not fit"]),
    (lambda d, data: npy(d / "trigger.npy", np.zeros((16, 16, 3))), ["black everywhere"]),
    (lambda d, data: npy(d / "trigger.npy", np.full((16, 16, 3), 300.0)), ["lies in [0, 255]"]),
    (lambda d, data: (d / "info.json").write_text(json.dumps({"attack": "badnet", "attack_target": 9})),
     ["target class 9"]),
    (lambda d, data: (d / "info.json").write_text(json.dumps({"attack": "badnet", "attack_target": 0,
                                                              "attack_label_trans": "all2all"})), ["all2one"]),
    (lambda d, data: (d / "poison_indicator.npy").write_bytes(b"not an npy"), ["not an .npy"]),
])
def test_bad_files_are_refused_in_one_line(colour, tmp_path, cli, mangle, needles):
    data, path = colour
    out, _ = export_dir(data, tmp_path, target_class=0)
    mangle(out, data)
    code, _, err = cli("poisons", "import", out, "--format", "backdoorbench", "--dataset", path, "--results",
                       tmp_path / "r2")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "r2" / "poisons").exists() or not any((tmp_path / "r2" / "poisons").iterdir())


def test_an_index_list_of_the_wrong_range_or_twice_is_refused(colour, tmp_path):
    data, _ = colour
    out, _ = export_dir(data, tmp_path, target_class=0)
    (out / "poison_indicator.npy").unlink()
    pool = len(data.train) + len(data.val)
    npy(out / "poison_index.npy", np.array([1, 2, pool]))
    with pytest.raises(PoisonbenchError, match="outside the train set"):
        read_backdoor([out], data)
    npy(out / "poison_index.npy", np.array([1, 2, 2]))
    with pytest.raises(PoisonbenchError, match="listed twice"):
        read_backdoor([out], data)
    npy(out / "poison_index.npy", np.array([1, 5, 7]))
    pool = np.sort(np.r_[data.train.indices, data.val.indices])  # positions in the source's train set
    assert read_backdoor([out], data).ids.tolist() == pool[[1, 5, 7]].tolist()


def test_a_grey_trigger_for_a_colour_dataset_and_the_reverse(colour, grey, tmp_path):
    data, _ = colour
    out, _ = export_dir(data, tmp_path, target_class=0)
    npy(out / "trigger.npy", np.full((16, 16), 255.0))
    with pytest.raises(PoisonbenchError, match="does not fit"):
        read_backdoor([out], data)
    gdata, _ = grey
    gout, _ = export_dir(gdata, tmp_path / "g", target_class=0)
    rgb = np.zeros((16, 16, 3))
    rgb[..., 0] = 255  # channels that differ: not a grey trigger
    npy(gout / "trigger.npy", rgb)
    with pytest.raises(PoisonbenchError, match="does not fit"):
        read_backdoor([gout], gdata)


def test_clean_label_refuses_rows_of_other_classes(colour, tmp_path):
    data, _ = colour
    out, _ = export_dir(data, tmp_path, target_class=0)  # dirty-label rows of every class
    (out / "info.json").write_text(json.dumps({"attack_target": 0}))  # nothing says which label mode
    with pytest.raises(PoisonbenchError, match="clean label, but poisoned image"):
        import_backdoor([out], data, tmp_path / "r", opts=BackdoorOptions(label_mode="clean"))


@pytest.mark.parametrize("args, needles", [
    (["--alpha", "0.2"], ["--alpha applies to a blend trigger"]),
    (["--target-class", "1"], ["the target class", "--target-class says 1"]),
    (["--label-mode", "sideways"], ["--label-mode 'sideways'"]),
    (["--target", "3"], ["--target", "--target-class"]),
])
def test_bad_options_are_one_line_errors(colour, tmp_path, cli, args, needles):
    data, path = colour
    out, _ = export_dir(data, tmp_path, target_class=0)
    code, _, err = cli("poisons", "import", out, *args, "--dataset", path, "--results", tmp_path / "r2")
    one_line_error(code, err, *needles)


def test_backdoor_options_belong_to_backdoorbench(colour, tmp_path, cli):
    data, path = colour
    f = tmp_path / "p.npz"
    np.savez(f, x=np.zeros((1, 16, 16, 3), np.uint8), idx=np.array([0]), target=np.array(0), intended=np.array(1))
    code, _, err = cli("poisons", "import", f, "--trigger", f, "--dataset", path, "--results", tmp_path / "r")
    one_line_error(code, err, "--trigger", "backdoorbench")


def test_export_refuses_what_backdoorbench_cannot_hold(colour, tmp_path):
    from poisonbench.attacks import ATTACKS
    from poisonbench.attacks.base import PoisonSet

    data, _ = colour
    res = tmp_path / "res"
    spec, _ = crafted(data, res, "badnets", 0.1, target_class=0, trigger_value=0.0)
    with pytest.raises(PoisonbenchError, match="black pixels"):
        export_backdoor(res, spec.poison_id, data, tmp_path / "bb")
    # LC's rows: a PGD perturbation with its trigger stamped after it (stored as `defend` reads it, not crafted here)
    lc = ATTACKS.get("lc")(data.family)
    spec = poisons.CraftSpec("lc", lc.params, 16 / 255, 4 / len(data.train), 0, data.name, data.fingerprint, None)
    poison = PoisonSet(delta=torch.zeros(4, *data.shape), indices=torch.arange(4), trigger=lc.trigger(data.shape))
    poison.manifest = {"backdoor": {"target_class": 0, "label_mode": "clean", "trigger": lc.trigger_spec(),
                                    "train_trigger": True}}
    poisons.save(poison, spec, res)
    with pytest.raises(PoisonbenchError, match="perturbation under the trigger"):
        export_backdoor(res, spec.poison_id, data, tmp_path / "bb2")


def test_export_of_a_targeted_set_is_refused(colour, tmp_path, cli):
    from .test_interop_targeted import toy_set

    data, path = colour
    spec, _ = toy_set(data, tmp_path / "res")
    code, _, err = cli("poisons", "export", "--poison-set", spec.poison_id, "--format", "backdoorbench", "--out",
                       tmp_path / "bb", "--dataset", path, "--results", tmp_path / "res")
    one_line_error(code, err, "not a backdoor's")


# ---- mutants: each realistic slip of an importer or exporter fails a contract above ----------------------------

def test_a_flipped_trigger_is_not_the_same_backdoor(colour, tmp_path):
    """A trigger read upside down (or transposed from H×W×C wrongly) stamps the other corner: not our trigger, and
    our victim's backdoor does not fire on it."""
    data, _ = colour
    out, ours = export_dir(data, tmp_path, target_class=2)
    t = np.load(out / "trigger.npy")
    npy(out / "trigger.npy", t[::-1].copy())
    back, _ = import_backdoor([out], data, tmp_path / "r")
    assert not torch.equal(back.trigger.add, ours.trigger.add)
    assert not torch.equal(back.delta, ours.delta)
    assert asr_of(data, back.trigger, ours.trigger, 2)["asr"] == 0.0 < asr_of(data, ours.trigger, ours.trigger,
                                                                               2)["asr"]


def test_a_target_label_off_by_one_is_caught(colour, tmp_path):
    data, _ = colour
    out, ours = export_dir(data, tmp_path, target_class=2)
    info = json.loads((out / "info.json").read_text())
    info["attack_target"] = 3
    (out / "info.json").write_text(json.dumps(info))
    back, _ = import_backdoor([out], data, tmp_path / "r")
    assert not torch.equal(back.labels, ours.labels)
    assert back.manifest["backdoor"]["target_class"] != ours.manifest["backdoor"]["target_class"]
    with pytest.raises(PoisonbenchError, match="the target class"):  # and a command line that knows better
        read_backdoor([out], data, BackdoorOptions(target_class=2))


def test_clean_label_read_as_relabel_is_not_the_same_backdoor(colour, tmp_path):
    """An importer that ignores clean_label relabels the rows: a different PoisonSet (labels stored, label mode
    dirty), which the round-trip contract catches."""
    data, _ = colour
    out, ours = export_dir(data, tmp_path, attack="sig", budget=0.05, target_class=1)
    info = json.loads((out / "info.json").read_text())
    del info["clean_label"]
    info["attack"] = "sig-variant"  # not BB's sig, so nothing says clean label: read as all-to-one relabel
    (out / "info.json").write_text(json.dumps(info))
    back, _ = import_backdoor([out], data, tmp_path / "r")
    assert back.labels is not None and ours.labels is None
    with pytest.raises(AssertionError):
        assert_same_poison_set(data, ours, back, 1)


def test_the_trigger_maps_match_backdoorbenchs_formulas():
    """The (m, a) maps against BB's patch and blend formulas on random uint8 images (0-255 scale)."""
    from poisonbench.poisons.interchange.backdoorbench import trigger_maps

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 3, 8, 8)).astype(np.float64)
    t = np.zeros((3, 8, 8))
    t[:, -2:, -2:] = 255
    t[1, 0, 0] = 128  # a patch pixel in one channel only: BB's mask is per channel
    m, a = trigger_maps(t, "patch", None, "t")
    ours = Trigger(m, a).apply(torch.from_numpy(img / 255).float()).double().numpy() * 255
    assert np.abs(ours - (img * (t == 0) + t * (t > 0))).max() < 1e-3
    k = rng.integers(0, 256, (3, 8, 8)).astype(np.float64)
    m, a = trigger_maps(k, "blend", 0.25, "t")
    ours = Trigger(m, a).apply(torch.from_numpy(img / 255).float()).double().numpy() * 255
    assert np.abs(ours - ((1 - 0.25) * img + 0.25 * k)).max() < 1e-3


def test_the_export_is_readable_by_backdoorbenchs_own_loaders(colour, tmp_path):
    """What BB's scripts read: the trigger PNG through PIL (as `AddMaskPatchTrigger(np.array(Image.open(...)))`)
    and the indicator as a numpy 0/1 float array of the train set's length."""
    from PIL import Image

    data, _ = colour
    out, ours = export_dir(data, tmp_path, target_class=0)
    t = np.array(Image.open(io.BytesIO((out / "trigger.png").read_bytes())))
    side = int((t.max(axis=2) > 0).any(axis=1).sum())  # BadNets' square, scaled to the 16-pixel side
    assert t.shape == (16, 16, 3) and t.dtype == np.uint8 and 1 <= side < 16
    assert t[-side:, -side:].min() == 255 and t[:-side].max() == 0 and t[:, :-side].max() == 0
    ind = np.load(out / "poison_indicator.npy")
    assert ind.dtype == np.float64 and int(ind.sum()) == len(ours)
