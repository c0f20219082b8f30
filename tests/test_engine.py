"""The engine: learning, determinism, augmentation, recipes."""

from __future__ import annotations

import pytest
import torch

from poisonbench.core.device import should_compile, to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.augment import apply as augment_apply
from poisonbench.engine.augment import crop_flip
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

CPU = torch.device("cpu")


def run(data, seed=0, epochs=3, **overrides):
    recipe = resolve_recipe("mnist", "quick", epochs=epochs, lr=0.05, batch_size=32, **overrides)
    model = build_model("convnet", data, seed=seed)
    x, y = to_float(data.train.x, CPU), data.train.y
    test = (to_float(data.test.x, CPU), data.test.y)
    result = train(model, x, y, to_float(data.val.x, CPU), data.val.y, recipe, seed=seed, device=CPU,
                   num_classes=10, compile="off", eval_sets={"test": test})
    return model, result


def test_engine_learns(tiny_npz):
    _, result = run(load_dataset(str(tiny_npz)))
    assert result.history[-1]["test_acc"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.cost["train"] > 0


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_npz):
    data = load_dataset(str(tiny_npz))
    (m1, r1), (m2, r2), (_, r3) = run(data, seed=1), run(data, seed=1), run(data, seed=2)
    assert r1.history == r2.history
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert r1.history != r3.history



def test_the_training_seed_alone_changes_the_batch_order(tiny_npz):
    """Same initial weights, training seeds 1, 1, 2: the seed drives the batch order by itself."""
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=1, lr=0.05, batch_size=32)
    x, y = to_float(data.train.x, CPU), data.train.y
    weights = []
    for seed in (1, 1, 2):
        model = build_model("convnet", data, seed=1)
        train(model, x, y, to_float(data.val.x, CPU), data.val.y, recipe, seed=seed, device=CPU, num_classes=10,
              compile="off")
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_trial_t_uses_seed_plus_t_for_weights_batches_and_poisoned_rows(tiny_npz, tmp_path, monkeypatch,
                                                                       train_calls):
    from poisonbench.experiment import defend as runner
    from poisonbench.experiment.scenarios import base as scenario_base
    from poisonbench.experiment.scenarios import plan_untargeted

    seen = {"init": []}
    build = scenario_base.build_model

    def spy_build(*args, **kwargs):
        seen["init"].append(kwargs["seed"])
        return build(*args, **kwargs)

    monkeypatch.setattr(scenario_base, "build_model", spy_build)
    spec = runner.DefendSpec(dataset=str(tiny_npz), recipe="quick", recipe_overrides={"epochs": 1, "batch_size": 64},
                             poison_ratio=0.3, attacks=["durp"], seed=5, trials=2, compile="off", device="cpu",
                             results=str(tmp_path / "results"))
    configs = [outcome.record["config"] for outcome in runner.defend(spec)]
    assert [c["seed"] for c in configs] == [5, 6] == seen["init"] == [kwargs["seed"] for _, kwargs, _ in train_calls]
    data = load_dataset(str(tiny_npz))
    drawn = [plan_untargeted(data, 0.3, ["durp"], seed=s).config["indices_fingerprint"] for s in (5, 6)]
    assert [c["poison"]["indices_fingerprint"] for c in configs] == drawn and drawn[0] != drawn[1]

def test_trained_weights_come_back_contiguous_and_predict_is_chunk_independent(tiny_npz):
    from poisonbench.engine.training import predict

    data = load_dataset(str(tiny_npz))
    model, _ = run(data, epochs=1)  # trained in channels_last
    assert all(p.is_contiguous() for p in model.parameters())  # safetensors stores contiguous tensors only
    x = to_float(data.test.x, CPU)
    torch.testing.assert_close(predict(model, x, batch_size=7), predict(model, x), rtol=1e-5, atol=1e-6)


def test_augmentation_is_seeded_and_shape_preserving(tiny_npz):
    data = load_dataset(str(tiny_npz))
    _, a = run(data, seed=1, epochs=2, augment="crop-flip")
    _, b = run(data, seed=1, epochs=2, augment="crop-flip")
    _, plain = run(data, seed=1, epochs=2, augment="none")
    assert a.history == b.history
    assert a.history != plain.history  # the augmentation is applied, not only configured


def test_crop_flip_moves_pixels_without_changing_them():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    g = torch.Generator().manual_seed(0)
    out = crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())  # only original pixels or zero padding
    unshifted = crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):  # pad 0: either the image or its mirror
        assert torch.equal(unshifted[i], x[i]) or torch.equal(unshifted[i], x[i].flip(-1))


def test_recipe_defaults_follow_the_paper():
    mnist, cifar = resolve_recipe("mnist"), resolve_recipe("cifar10")
    assert (mnist.epochs, mnist.lr, mnist.batch_size, mnist.momentum) == (30, 0.01, 128, 0.0)
    assert (cifar.epochs, cifar.lr, cifar.momentum, cifar.nesterov, cifar.weight_decay) == (80, 0.1, 0.9, True, 5e-4)
    assert cifar.milestones == (30, 50, 70) and cifar.augment == "crop-flip"
    assert resolve_recipe("cifar10", epochs=40).milestones == (15, 25, 35)
    assert resolve_recipe("cifar10", milestones=[50, 30]) == resolve_recipe("cifar10", milestones=[30, 50])


@pytest.mark.parametrize("override", [{"epochs": 0}, {"epochs": -3}, {"lr": 0.0}, {"batch_size": 0},
                                      {"augment": "mixup"}])
def test_bad_recipe_values_are_refused(override):
    with pytest.raises(PoisonbenchError):
        resolve_recipe("mnist", **override)


def test_milestones_decay_the_learning_rate(tiny_npz):
    _, result = run(load_dataset(str(tiny_npz)), epochs=3, milestones=[1, 2])
    assert [round(r["lr"], 6) for r in result.history] == [0.05, 0.005, 0.0005]


def test_compile_auto_covers_the_default_mnist5k_run_but_not_quick_or_tiny_runs():
    assert should_compile("auto", 3900, 30)  # paper recipe on mnist-5k: 117,000 images
    assert not should_compile("auto", 3900, 10)  # quick recipe (the README's main job)
    assert not should_compile("auto", 200, 400)
    assert should_compile("on", 10, 1) and not should_compile("off", 10**6, 100)


def crop_flip_offsets(x, out):
    """Per image: (row offset, column offset, flipped) of the crop-flip that made `out` from `x` (both 1×h×w)."""
    h, w = x.shape[-2:]
    found = []
    for img in out[:, 0]:
        r_out, c_out = torch.nonzero(img, as_tuple=True)
        v = img[r_out, c_out].long() - 1  # x holds 1 + r·w + c
        r, c = v // w, v % w
        dr = set((r - r_out).tolist())
        straight, mirrored = set((c - c_out).tolist()), set((c - (w - 1 - c_out)).tolist())
        assert len(dr) == 1 and (len(straight) == 1 or len(mirrored) == 1)
        flipped = len(straight) != 1
        found.append((dr.pop(), (mirrored if flipped else straight).pop(), flipped))
    return found


def test_crop_flip_pads_4_shifts_each_axis_independently_and_flips_half():
    """The CIFAR recipe (paper §VI-A1): a crop of the image zero-padded by 4, i.e. offsets −4..4 drawn for rows and
    columns independently, and a horizontal flip with p = 0.5."""
    n, h, w = 600, 12, 12
    x = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).repeat(n, 1, 1, 1)
    out = augment_apply("crop-flip", x, torch.Generator().manual_seed(0))
    found = crop_flip_offsets(x, out)
    rows, cols, flips = zip(*found, strict=True)
    assert set(rows) == set(cols) == set(range(-4, 5))
    assert 0.4 < sum(flips) / n < 0.6
    assert sum(r == c for r, c, _ in found) / n < 0.25  # independent axes: 1/9 expected


def test_crop_flip_draws_only_from_the_runs_generator():
    """Augmentation is part of the run's seeded stream (saved in checkpoints): the global RNG must not matter."""
    x = torch.rand(64, 3, 8, 8)
    torch.manual_seed(1)
    a = augment_apply("crop-flip", x, torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    b = augment_apply("crop-flip", x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_optimizer_takes_every_recipe_field():
    import torch

    from poisonbench.engine.recipes import resolve_recipe
    from poisonbench.engine.training import make_optimizer

    recipe = resolve_recipe("cifar10", "paper", lr=0.05, momentum=0.8, weight_decay=1e-3, lr_decay=0.3,
                            milestones=[2, 5])
    assert recipe.nesterov  # the paper's CIFAR recipe: Nesterov momentum
    opt, sched = make_optimizer(torch.nn.Linear(2, 2), recipe)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.8, True, 1e-3)
    assert sched.gamma == 0.3 and sorted(sched.milestones) == [2, 5]


def test_only_the_full_batch_and_the_datas_last_batch_are_compiled():
    """EPIC's drops and a filter's removals change the last batch's size: those sizes run eagerly rather than
    recompiling the static graph at every drop; the choice depends only on the sizes, so a resume repeats it."""
    from poisonbench.engine.training import compiles_size

    assert compiles_size(True, 128, 128, 3900) and compiles_size(True, 3900 % 128, 128, 3900)
    assert not compiles_size(True, 6, 128, 3900) and not compiles_size(True, 59, 128, 3900)
    assert compiles_size(True, 128, 128, 3840) and not compiles_size(True, 0, 128, 3840)  # no partial batch
    assert not compiles_size(False, 128, 128, 3900)
