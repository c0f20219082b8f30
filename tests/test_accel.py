"""accel: one switch for the CPU kernels. `auto` swaps them in where they pay off (the behaviour from before the
switch), `off` runs plain PyTorch modules everywhere, down to HINT's influence code and an attack's surrogate;
the engine hands the caller its own modules back in both modes, the two modes train to the same loss up to float
rounding, the checkpoint identity tells them apart, and runs and crafts record the mode."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from poisonbench import poisons
from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.provenance import environment
from poisonbench.data import load_dataset
from poisonbench.defenses import build_defense
from poisonbench.engine import kernels as accel
from poisonbench.engine.checkpoints import Checkpoint
from poisonbench.engine.kernels.input_grad import ReluAvgPool2d, StemConv2d
from poisonbench.engine.kernels.moment_bn import MomentBatchNorm2d, MomentConv2d
from poisonbench.engine.kernels.spectral import SpectralConv2d
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

CPU = torch.device("cpu")
KERNELS = (SpectralConv2d, MomentConv2d, MomentBatchNorm2d, StemConv2d, ReluAvgPool2d)
BAD_MODE = r"unknown accel mode 'fast'; valid choices: auto, off"


def kernels_in(model: torch.nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if isinstance(m, KERNELS)]


@pytest.fixture(scope="module")
def mnist_rows():
    """256 mnist-5k rows (28×28: the ConvNet's stem takes moment BatchNorm and its 40→100 layer the DFT form)."""
    data = load_dataset("mnist-5k")
    rows = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:256]
    return data, to_float(data.train.x[rows], CPU), data.train.y[rows]


@pytest.fixture(scope="module")
def runs(mnist_rows, tmp_path_factory):
    """One short training per mode: {mode: (model, result, what the engine ran with during training, the checkpoint
    identity, the model's module names and types before training)}."""
    data, x, y = mnist_rows
    recipe = replace(resolve_recipe(data.family, "paper"), epochs=2)
    out = {}
    for mode in accel.ACCEL_MODES:
        model = build_model("convnet", data, seed=0)
        before = [(name, m, type(m)) for name, m in model.named_modules()]
        during = {}

        def on_epoch(_epoch, _row, model=model, during=during):
            during.update(types={name: type(m) for name, m in model.named_modules()}, mode=accel.current_mode())

        checkpoint = Checkpoint(tmp_path_factory.mktemp(mode) / "c.safetensors", every=float("inf"))  # never saved
        result = train(model, x, y, x[:64], y[:64], recipe, seed=0, device=CPU, num_classes=10, compile="off",
                       accel=mode, on_epoch=on_epoch, checkpoint=checkpoint)
        out[mode] = (model, result, during, checkpoint.identity, before)
    return out


def test_auto_trains_with_the_cpu_kernels_and_off_with_plain_modules_and_both_hand_the_model_back(runs):
    for mode, (model, result, during, identity, before) in runs.items():
        if mode == "auto":
            assert during["types"]["conv.0"] is MomentConv2d and during["types"]["conv.1"] is MomentBatchNorm2d
            assert during["types"]["conv.4"] is SpectralConv2d
            assert identity["moment_bn"] == ["conv.0"] and identity["spectral"] == ["conv.4"]
        else:
            assert not any(issubclass(t, KERNELS) for t in during["types"].values())
            assert identity["moment_bn"] == [] and identity["spectral"] == []
        assert during["mode"] == mode and result.context.accel == mode and identity["accel"] == mode
        assert not kernels_in(model)  # the caller's own modules are back, the very same objects
        assert [(name, m, type(m)) for name, m in model.named_modules()] == before
    assert accel.current_mode() == "auto"  # the engine's mode ended with its training
    assert runs["auto"][3] != runs["off"][3]  # a checkpoint written in one mode is not resumed in the other


def test_auto_and_off_train_to_the_same_loss_up_to_float_rounding(runs):
    (model_a, auto, *_), (model_o, off, *_) = runs["auto"], runs["off"]
    for a, o in zip(auto.history, off.history, strict=True):
        assert a["train_loss"] == pytest.approx(o["train_loss"], rel=1e-3)
    for (name, a), (_, o) in zip(model_a.state_dict().items(), model_o.state_dict().items(), strict=True):
        torch.testing.assert_close(a.float(), o.float(), rtol=1e-3, atol=1e-4, msg=name)


def test_an_off_inference_copy_keeps_the_models_own_modules(mnist_rows):
    data, x, _ = mnist_rows
    model = build_model("convnet", data, seed=0)
    auto, off = accel.inference_copy(model, x[:1], "auto"), accel.inference_copy(model, x[:1], "off")
    assert {"StemConv2d", "SpectralConv2d", "ReluAvgPool2d"} <= set(kernels_in(auto))
    assert [type(m) for m in off.modules()] == [type(m) for m in model.modules()]
    assert not off.training and not any(p.requires_grad for p in off.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())  # the model is untouched
    with accel.use_mode("off"):  # the current mode, as the engine sets it for the hooks' frozen copies
        assert not kernels_in(accel.inference_copy(model, x[:1]))
    assert kernels_in(accel.inference_copy(model, x[:1]))  # auto again outside
    expected = model.eval()(x[:8])
    torch.testing.assert_close(off(x[:8]), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(auto(x[:8]), expected, rtol=1e-4, atol=1e-4)


def test_hints_influence_copies_follow_the_runs_mode(tiny_npz, monkeypatch):
    """HINT reaches `inference_copy` inside `influence.head_inputs` / `influence_pert` without passing the mode."""
    import poisonbench.defenses.influence as influence

    data = load_dataset(str(tiny_npz))
    x, y = to_float(data.train.x, CPU), data.train.y
    copies: dict[str, list] = {mode: [] for mode in accel.ACCEL_MODES}
    real = influence.inference_copy
    for mode in accel.ACCEL_MODES:
        monkeypatch.setattr(influence, "inference_copy", lambda *a, m=mode, **k: copies[m].append(real(*a, **k))
                            or copies[m][-1])
        recipe = resolve_recipe("mnist", "quick", epochs=2, batch_size=100)
        train(build_model("convnet", data, seed=0), x, y, to_float(data.val.x, CPU), data.val.y, recipe, seed=0,
              device=CPU, num_classes=10, defense=build_defense("hint", "mnist", recipe), compile="off",
              accel=mode)
    assert copies["auto"] and all("StemConv2d" in kernels_in(c) for c in copies["auto"])
    assert copies["off"] and not any(kernels_in(c) for c in copies["off"])


def test_pgd_steps_on_the_copy_its_context_asks_for(tiny_npz, monkeypatch):
    from poisonbench.attacks import ATTACKS, pgd
    from poisonbench.attacks.base import AttackContext

    data = load_dataset(str(tiny_npz))
    copies = []
    real = pgd.inference_copy
    monkeypatch.setattr(pgd, "inference_copy", lambda *a: copies.append(real(*a)) or copies[-1])
    deltas = []
    for mode in accel.ACCEL_MODES:
        ctx = AttackContext(data, torch.arange(8), 0.3, 0.02, 0, CPU, compile="off", accel=mode)
        ctx._surrogate = build_model("convnet", data, seed=0).eval().requires_grad_(False)  # no training here
        deltas.append(ATTACKS.get("pgd")("mnist", steps=2).perturb(ctx))
    assert kernels_in(copies[0]) and not kernels_in(copies[1])
    assert (deltas[0] == deltas[1]).float().mean() > 0.99  # float rounding may flip a near-zero gradient's sign


def test_a_bad_accel_mode_is_a_one_line_error_before_anything_runs(mnist_rows, tiny_npz, tmp_path):
    data, x, y = mnist_rows
    model = build_model("convnet", data, seed=0)
    recipe = resolve_recipe(data.family, "quick")
    with pytest.raises(PoisonbenchError, match=BAD_MODE):
        train(model, x, y, x, y, recipe, seed=0, device=CPU, num_classes=10, accel="fast")
    assert model.conv[0].weight.is_contiguous()  # not even moved to the training layout
    for call in (lambda: accel.inference_copy(model, x[:1], "fast"), lambda: accel.training_kernels(model, x, "fast"),
                 lambda: accel.use_mode("fast").__enter__(), lambda: accel.check_accel_mode("AUTO")):
        with pytest.raises(PoisonbenchError, match="valid choices: auto, off"):
            call()
    assert not kernels_in(model) and accel.current_mode() == "auto"
    tiny = load_dataset(str(tiny_npz))
    results = tmp_path / "results"
    with pytest.raises(PoisonbenchError, match=BAD_MODE):
        poisons.craft(poisons.craft_spec(tiny, "durp", budget=0.5, seed=1), tiny, results, accel="fast")
    assert not results.exists()  # nothing written


def test_runs_and_crafts_record_the_accel_mode(tiny_npz, tmp_path):
    assert environment(CPU)["accel"] == "auto" and environment(CPU, accel="off")["accel"] == "off"
    data = load_dataset(str(tiny_npz))
    spec = poisons.craft_spec(data, "durp", budget=0.5, seed=1)
    poison, cached = poisons.craft(spec, data, tmp_path, accel="off")
    assert not cached and poison.manifest["env"]["accel"] == "off"
    assert poisons.read_manifest(tmp_path, spec.poison_id)["env"]["accel"] == "off"
