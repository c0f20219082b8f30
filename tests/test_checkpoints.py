"""Epoch checkpoints: a run killed midway resumes from its last checkpoint and ends with exactly the numbers of an
uninterrupted run, for every registered defense; a checkpoint that does not match the run is ignored."""

from __future__ import annotations

import pytest
import torch

from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchWarning
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.engine.checkpoints import Checkpoint
from poisonbench.engine.hooks import hand_poison_mask
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

from .conftest import FEWER_STEPS

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

# momentum (optimizer state), a milestone (schedule), crop-flip (the generator draws augmentation as well as order)
RECIPE = dict(epochs=6, lr=0.05, batch_size=64, momentum=0.9, milestones=(3,), augment="crop-flip")


class Killed(Exception):
    pass


def run(data, method: str, checkpoint: Checkpoint | None = None, kill_after: int | None = None, seed: int = 4):
    recipe = resolve_recipe("mnist", "quick", **RECIPE)
    # a targeted threat with a known budget: the filters' defaults (k = 2·budget + 1, drop = the budget's share)
    threat = Threat("targeted", budget=len(data.train) // 20, train_size=len(data.train))
    # HINT: paper schedule scaled to 6 epochs = [1, 3]; ATDA and FRIENDS at fewer iterations (tests/conftest.py)
    defense = build_defense(method, "mnist", recipe, threat, **FEWER_STEPS.get(method, {}))
    hand_poison_mask(defense, poison_mask(len(data.train)))  # as the run executor: only the oracle takes it
    model = build_model("convnet", data, seed=seed)
    train_x = to_float(data.train.x, CPU)

    def on_epoch(epoch, _row):
        if epoch == kill_after:
            raise Killed

    result = train(model, train_x, data.train.y, to_float(data.val.x, CPU), data.val.y, recipe, seed=seed,
                   device=CPU, num_classes=10, defense=defense, compile="off",
                   eval_sets={"test": (to_float(data.test.x, CPU), data.test.y)}, on_epoch=on_epoch,
                   checkpoint=checkpoint, model_factory=lambda s: build_model("convnet", data, seed=s))
    return model, result, defense


def poison_mask(n: int) -> torch.Tensor:
    """The ground-truth mask the tests hand over (every third row)."""
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[::3] = True
    return poisoned


def without_seconds(value):
    """`value` with every timing (keys named `seconds`) removed: wall times differ between any two runs."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def checkpoint(tmp_path, every: float = 0.0) -> Checkpoint:
    return Checkpoint(tmp_path / "partial" / "runs" / "r.safetensors", every)


@pytest.fixture(scope="module")
def uninterrupted() -> dict:
    """{(method, the data's fingerprint): run(data, method)}: each defense's uninterrupted run, trained once for both
    kill points (`run` seeds everything it draws: the killed and resumed runs meet it whichever test trained it)."""
    return {}


@pytest.mark.parametrize("method", DEFENSES.names())
@pytest.mark.parametrize("kill_after", [0, 2])  # HINT: before its selection (epoch 1), between its two updates
def test_resumed_run_equals_uninterrupted_run(tiny_npz, tmp_path, method, kill_after, uninterrupted):
    data = load_dataset(str(tiny_npz))
    key = (method, data.fingerprint)
    if key not in uninterrupted:
        uninterrupted[key] = run(data, method)
    model_ref, ref, defense_ref = uninterrupted[key]
    ckpt = checkpoint(tmp_path)
    with pytest.raises(Killed):
        run(data, method, ckpt, kill_after=kill_after)
    assert ckpt.path.exists()
    model, resumed, defense = run(data, method, ckpt)
    assert resumed.resumed_from == kill_after + 1 and resumed.prior_seconds > 0
    assert resumed.prior_cpu_seconds is not None and resumed.prior_cpu_seconds > 0  # carried like the wall time
    assert resumed.history == ref.history
    for (name, a), (_, b) in zip(model.state_dict().items(), model_ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.context.train_x, ref.context.train_x)  # HINT's noisy rows included
    poisoned = poison_mask(len(data.train))  # the runner hands the summary the poison mask
    assert without_seconds(defense.summary(poisoned)) == without_seconds(defense_ref.summary(poisoned))
    for stage, seconds in ref.cost.items():  # stage costs carry over from the killed segment
        assert resumed.cost.get(stage, 0) > 0 or seconds == 0, stage


def test_hint_noise_changes_the_rows_that_resume_restores(tiny_npz, tmp_path):
    """The test above would be vacuous if HINT's noise were zero: it is not."""
    data = load_dataset(str(tiny_npz))
    _, result, defense = run(data, "hint")
    assert defense.delta.abs().max() > 0
    assert not torch.equal(result.context.train_x, to_float(data.train.x, CPU))


def test_saves_follow_the_interval_and_a_foreign_checkpoint_is_ignored(tiny_npz, tmp_path):
    data = load_dataset(str(tiny_npz))
    rare = checkpoint(tmp_path, every=3600)
    with pytest.raises(Killed):
        run(data, "none", rare, kill_after=3)
    assert not rare.path.exists()  # an hour had not passed: nothing saved

    ckpt = checkpoint(tmp_path)
    with pytest.raises(Killed):
        run(data, "none", ckpt, kill_after=1)
    other = Checkpoint(ckpt.path, 3600, identity={"note": "written by another version"})
    with pytest.warns(PoisonbenchWarning, match="not resumed .*note=None .now 'written by another version'"):
        _, result, _ = run(data, "none", other)
    assert result.resumed_from == 0  # identity differs: trained from the start
    _, result, _ = run(data, "none", ckpt)
    assert result.resumed_from == 2 and len(result.history) == RECIPE["epochs"]
    ckpt.path.write_bytes(b"not a safetensors file")
    _, result, _ = run(data, "none", ckpt)
    assert result.resumed_from == 0


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_run(tiny_npz, tmp_path, monkeypatch):
    """A full disk: the checkpoint (insurance) is skipped with a warning and the run finishes as it would."""
    import poisonbench.engine.checkpoints as checkpoints

    data = load_dataset(str(tiny_npz))
    _, ref, _ = run(data, "none")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_state", disk_full)
    ckpt = checkpoint(tmp_path)
    with pytest.warns(PoisonbenchWarning, match="not saved .No space left on device"):
        _, result, _ = run(data, "none", ckpt)
    assert result.history == ref.history and not ckpt.path.exists()


def test_a_checkpoint_from_another_cpu_thread_count_is_ignored(tiny_npz, tmp_path):
    """oneDNN's reductions round differently with another thread count, so resuming there would give numbers
    that neither an uninterrupted 1-thread nor 2-thread run gives: such a checkpoint trains from the start."""
    data = load_dataset(str(tiny_npz))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ckpt = checkpoint(tmp_path)
        with pytest.raises(Killed):
            run(data, "none", ckpt, kill_after=1)
        torch.set_num_threads(2)
        with pytest.warns(PoisonbenchWarning, match="threads=1 .now 2."):
            _, result, _ = run(data, "none", checkpoint(tmp_path))
        assert result.resumed_from == 0
        torch.set_num_threads(1)
        with pytest.raises(Killed), pytest.warns(PoisonbenchWarning, match="threads=2 .now 1."):
            run(data, "none", checkpoint(tmp_path), kill_after=1)
        _, result, _ = run(data, "none", checkpoint(tmp_path))
        assert result.resumed_from == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("change", ["code", "cpu_capability", "cpu"])
def test_a_checkpoint_from_other_code_or_another_cpu_is_ignored(tiny_npz, tmp_path, monkeypatch, change):
    """Other sources (the version string stays 0.1.0 across commits), another instruction set (ATen / oneDNN
    pick other kernels: e.g. AVX2 vs AVX-512 round differently) or CPU model: the run trains from the start."""
    import poisonbench.engine.checkpoints as checkpoints

    data = load_dataset(str(tiny_npz))
    with pytest.raises(Killed):
        run(data, "none", checkpoint(tmp_path), kill_after=1)
    other = {"code": ("code_fingerprint", lambda: "0" * 16),
             "cpu_capability": ("torch.backends.cpu.get_cpu_capability", lambda: "NO_AVX"),
             "cpu": ("cpu_model", lambda: "another CPU")}[change]
    with monkeypatch.context() as m:
        target, value = other
        if "." in target:
            m.setattr(target, value)
        else:
            m.setattr(checkpoints, target, value)
        with pytest.warns(PoisonbenchWarning, match="not resumed"):
            _, result, _ = run(data, "none", checkpoint(tmp_path))
    assert result.resumed_from == 0
    with pytest.raises(Killed), pytest.warns(PoisonbenchWarning, match="not resumed"):
        run(data, "none", checkpoint(tmp_path), kill_after=1)
    _, result, _ = run(data, "none", checkpoint(tmp_path))
    assert result.resumed_from == 2


def test_the_code_fingerprint_leaves_out_only_modules_that_exist_and_only_read_records():
    """Editing a report-only module keeps a running sweep's checkpoints; the list must name real files, and none
    of them may be imported by the training / crafting side."""
    from pathlib import Path

    import poisonbench
    from poisonbench.core.hashing import REPORT_ONLY, can_change_runs

    root = Path(poisonbench.__file__).parent
    assert all((root / name / "__init__.py").is_file() if name.endswith("/") else (root / name).is_file()
               for name in REPORT_ONLY)
    modules = [p.relative_to(root).as_posix() for p in root.rglob("*.py")]
    left_out = {m for m in modules if not can_change_runs(m)}
    assert {m for m in modules if m.startswith(("report/tables/", "report/figures/"))} <= left_out
    assert {"engine/training.py", "core/hashing.py", "attacks/pgd.py", "defenses/hint.py"} <= set(modules) - left_out
    report_only = {"poisonbench." + m.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                   for m in left_out}
    training_side = [m for m in modules if m.split("/")[0] in
                     ("core", "data", "engine", "attacks", "defenses", "poisons", "experiment") and m not in left_out]
    assert "experiment/defend.py" in training_side and "poisons/crafting.py" in training_side
    for module in training_side:
        imported = imported_modules(root / module, "poisonbench." + module.removesuffix(".py").replace("/", "."))
        assert not imported & report_only, (module, imported & report_only)


def imported_modules(path, name: str) -> set[str]:
    """The dotted names a module imports (relative imports resolved; `from pkg import mod` gives pkg.mod too)."""
    import ast

    package = name.removesuffix(".__init__") if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def test_resume_is_exact_when_the_spectral_layer_trains(tmp_path, monkeypatch):
    """28×28 images: the ConvNet's 40→100 layer trains as `SpectralConv2d` on the CPU (16×16 ones stay direct)."""
    import numpy as np

    import poisonbench.engine.kernels.spectral as spectral_kernels

    from .conftest import class_images

    x, y = class_images(300, 28)
    np.savez(tmp_path / "tiny28.npz", x=x, y=y)
    data = load_dataset(str(tmp_path / "tiny28.npz"))
    swaps = []
    swap = spectral_kernels.swap_spectral
    monkeypatch.setattr(spectral_kernels, "swap_spectral", lambda *a: swaps.append(swap(*a)) or swaps[-1])
    model_ref, ref, defense_ref = run(data, "hint")
    assert swaps[-1], "the spectral layer should train at 28×28"
    ckpt = checkpoint(tmp_path)
    with pytest.raises(Killed):
        run(data, "hint", ckpt, kill_after=2)
    model, resumed, defense = run(data, "hint", ckpt)
    assert resumed.resumed_from == 3 and resumed.history == ref.history
    for (name, a), (_, b) in zip(model.state_dict().items(), model_ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.context.train_x, ref.context.train_x)
    assert all(type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # a checkpoint written on the plain path is not resumed on the spectral / moment one (and the other way round)
    import poisonbench.engine.kernels.moment_bn as moment_bn
    import poisonbench.engine.kernels.spectral as spectral

    for module, switch, name, layers in ((spectral, "MAX_COST_FRACTION", "spectral", "conv.4"),
                                         (moment_bn, "MAX_GRAM_COST", "moment_bn", "conv.0")):
        plain = Checkpoint(tmp_path / "partial" / "runs" / f"plain-{name}.safetensors", 0.0)
        with monkeypatch.context() as m:
            m.setattr(module, switch, 0.0)  # nothing pays off: the layer trains plain
            with pytest.raises(Killed):
                run(data, "hint", plain, kill_after=2)
        assert plain.path.exists()
        with pytest.warns(PoisonbenchWarning, match=rf"{name}=\[\] \(now \['{layers}'\]\)"):
            _, fresh, _ = run(data, "hint", plain)
        assert fresh.resumed_from == 0 and fresh.history == ref.history


def test_a_checkpoint_of_an_eager_run_is_not_resumed_compiled(tiny_npz, tmp_path, monkeypatch):
    """compile on/off round differently: the identity's `compiled` must refuse the resume. torch.compile itself is
    replaced by the identity function (no compile time): only the identity field is under test."""
    import poisonbench.engine.training as training

    data = load_dataset(str(tiny_npz))
    with pytest.raises(Killed):
        run(data, "none", checkpoint(tmp_path), kill_after=1)
    monkeypatch.setattr(training, "should_compile", lambda *a, **k: True)
    monkeypatch.setattr(training, "compile_static", lambda fn: fn)
    with pytest.warns(PoisonbenchWarning, match=r"compiled=False \(now True\)"):
        _, result, _ = run(data, "none", checkpoint(tmp_path))
    assert result.resumed_from == 0


def test_a_poisoned_runs_checkpoint_names_its_poison_tensors(tiny_npz, tmp_path, train_calls):
    """A checkpoint must not be resumed on re-crafted poisons (`craft --force` after the kill): the identity the
    engine checks carries the sha256 of every PoisonSet's tensors."""
    from poisonbench import poisons
    from poisonbench.experiment import defend as runner

    spec = runner.DefendSpec(dataset=str(tiny_npz), recipe="quick", recipe_overrides={"epochs": 1, "batch_size": 64},
                             poison_ratio=0.3, attacks=["durp"], seed=5, compile="off", device="cpu",
                             results=str(tmp_path / "results"))
    (outcome,) = runner.defend(spec)
    pid = outcome.record["config"]["poison"]["poison_ids"]["durp"]
    manifest = poisons.read_manifest(tmp_path / "results", pid)
    assert train_calls[0][1]["checkpoint"].identity["poison_tensors"] == {"durp": manifest["tensor_sha256"]}


def test_a_resumed_filter_does_not_train_its_feature_model_again(tiny_npz, tmp_path, monkeypatch):
    """A filter decides once: the resumed segment restores its decision (and `active`) from the checkpoint instead of
    training a second feature model, and ends with the uninterrupted run's numbers (the test above)."""
    import poisonbench.defenses.filtering as filtering

    data = load_dataset(str(tiny_npz))
    calls = []
    original = filtering.train_fresh

    def counted(ctx, *args, **kwargs):
        calls.append(ctx.epoch)
        return original(ctx, *args, **kwargs)

    monkeypatch.setattr(filtering, "train_fresh", counted)
    ckpt = checkpoint(tmp_path)
    with pytest.raises(Killed):
        run(data, "l2", ckpt, kill_after=1)
    assert len(calls) == 1
    _, resumed, defense = run(data, "l2", ckpt)
    assert resumed.resumed_from == 2 and len(calls) == 1  # no second feature model
    assert defense.summary(None)["removal"]["removed"] > 0 and len(resumed.context.active) < len(data.train)
