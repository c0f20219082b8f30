"""The paths that differ on CUDA (issue 55): `torch.compile` of the training step and of the defenses' eval forward,
the event-based timing of the per-batch defense hooks (`engine.hooks.HookClock`), crafting and training with every
tensor on the device, the GPU check's own code path, and a CPU and a CUDA run of the quick recipe that agree.

Every test is marked `gpu`: collected everywhere, skipped where torch sees no CUDA device (tests/conftest.py), as on
this project's CPU machines and CI. On a GPU machine: `python -m pytest -q -n 0 tests/test_gpu.py`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from poisonbench.core.device import to_float
from poisonbench.data import load_dataset
from poisonbench.defenses import Threat, build_defense
from poisonbench.engine.hooks import HookClock
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

from .conftest import targeted_spec, write_npz

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-5k")


def rows_on(data, device: torch.device, n: int = 1024):
    return to_float(data.train.x[:n], device), data.train.y[:n].to(device)


def test_compiled_training_on_cuda_follows_the_eager_one(digits):
    """Static-shape compilation on CUDA (the full and the last batch's graphs): from one seed, two epochs compiled
    and two eager end at nearly the same loss (Inductor fuses and reorders float operations; nothing else differs),
    with the model on the device and torch's deterministic algorithms on (`configure_device`)."""
    x, y = rows_on(digits, CUDA, 1000)  # 1000 = 7 × 128 + 104: a last batch of another size
    recipe = resolve_recipe("mnist", "quick", epochs=2)
    results = {}
    for mode in ("on", "off"):
        model = build_model("convnet", digits, seed=0)
        results[mode] = train(model, x, y, x[:1], y[:1], recipe, seed=0, device=CUDA, num_classes=10, compile=mode)
        assert next(model.parameters()).device.type == "cuda"
    assert results["on"].compiled and not results["off"].compiled
    compiled, eager = (results[m].history[-1]["train_loss"] for m in ("on", "off"))
    assert compiled == pytest.approx(eager, rel=0.05)
    assert torch.are_deterministic_algorithms_enabled()


def test_hook_clock_reads_cuda_events_once_per_epoch():
    """On CUDA a per-batch hook is timed by a pair of events, with no synchronisation per call; `collect` reads them
    all after one synchronisation, and the time counted is within the wall time around it."""
    clock = HookClock(CUDA)
    a = torch.randn(2048, 2048, device=CUDA)
    torch.cuda.synchronize(CUDA)
    start = time.perf_counter()
    for _ in range(5):
        with clock.timing():
            a = (a @ a).tanh_()
    assert clock.cuda and len(clock.events) == 5  # recorded, not yet read
    seconds = clock.collect()
    wall = time.perf_counter() - start
    assert 0 < seconds <= wall + 1e-3
    assert clock.events == [] and clock.collect() == 0.0


def test_a_per_batch_defense_trains_compiled_on_cuda(digits):
    """ATDA's adversarial examples come from the compiled eval-mode forward on a GPU (`TrainContext.eval_forward`),
    their time from the event clock (`cost.defense_batch`)."""
    x, y = rows_on(digits, CUDA, 512)
    recipe = resolve_recipe("mnist", "quick", epochs=1)
    defense = build_defense("atda", "mnist", recipe, Threat("targeted", budget=5, train_size=len(y)))
    model = build_model("convnet", digits, seed=0)
    result = train(model, x, y, x[:1], y[:1], recipe, seed=0, device=CUDA, num_classes=10, defense=defense,
                   compile="on")
    assert result.compiled and 0 < result.cost["defense_batch"] <= result.cost["train"]
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))


def test_crafting_and_training_a_targeted_run_on_cuda(tmp_path):
    """GM end to end on the device (`experiment.defend`): the surrogate trained and the poisons crafted on CUDA,
    the victim trained on them; the record names the GPU."""
    from poisonbench.experiment.defend import defend

    path = write_npz(tmp_path, n=400, size=16, classes=4)
    (outcome,) = defend(targeted_spec(str(path), "gm", device="cuda", results=str(tmp_path / "results")))
    record = outcome.record
    assert record["env"]["device"] == "cuda:0" and record["env"]["gpu"] == torch.cuda.get_device_name(0)
    assert record["metrics"]["attack_success"] in (True, False) and 0 <= record["metrics"]["test_acc"] <= 1


def test_cpu_and_cuda_runs_of_the_quick_recipe_agree(tmp_path):
    """`defend --method none --recipe quick` on mnist-5k (10 epochs over 3,900 digits), same seed, on the CPU and on
    CUDA. The two differ only in float rounding (other convolution algorithms and summation orders, TF32
    convolutions on CUDA, the CPU's own kernels), which compounds over 310 SGD steps into other weights but not a
    worse model: the test accuracies on the 1,000 test digits agree within 1 point (10 digits), about what two
    seeds of this recipe differ by. Bitwise equality is not expected, and not tested."""
    from poisonbench.experiment.defend import defend
    from poisonbench.experiment.spec import DefendSpec

    acc = {}
    for device in ("cpu", "cuda"):
        spec = DefendSpec(dataset="mnist-5k", recipe="quick", method="none", device=device,
                          results=str(tmp_path / device))
        (outcome,) = defend(spec)
        acc[device] = outcome.record["metrics"]["test_acc"]
    assert acc["cpu"] > 0.9 and acc["cuda"] > 0.9, acc
    assert abs(acc["cpu"] - acc["cuda"]) <= 0.01, acc


def test_the_gpu_check_runs_its_tiny_mode_on_cuda(tmp_path):
    """benchmarks/gpu_check.py's code path on the device: every figure, naming the GPU, CUDA peak memory."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        out = tmp_path / "gpu.jsonl"
        assert gpu_check.main(["--tiny", "--device", "cuda", "--out", str(out)]) == 0
    finally:
        sys.path.remove(str(BENCHMARKS))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["device_name"] for line in lines} == {torch.cuda.get_device_name(0)}
    train = [line for line in lines if line["figure"] == "train_throughput"]
    assert train and all(t["peak_memory"] == "torch.cuda.max_memory_allocated" for t in train)
    assert not [line for line in lines if "error" in line]
