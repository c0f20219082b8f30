"""`defend --precision fp32|bf16` (the SGD step's arithmetic: part of the run id when not fp32) and
`--deterministic on|off` (CUDA's algorithm choice: execution only, recorded in env): docs/engine.md, "The training
engine"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import poisonbench.core.device as device_module
from poisonbench.core.device import configure_device, deterministic_mode, to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import predict, train
from poisonbench.experiment.defend import run_config
from poisonbench.experiment.options import spec_from_values
from poisonbench.experiment.records import run_id
from poisonbench.sweeps import Execution, load_grid, make_plan

from .conftest import class_images, files_under, one_line_error, write_npz

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def process_mode(monkeypatch):
    """The deterministic mode is process-wide (`configure_device` remembers it): each test leaves it as it was."""
    monkeypatch.setattr(device_module, "_deterministic", device_module._deterministic)


def trained(data, precision: str | None, epochs: int = 1):
    """A ConvNet trained on `data` (CPU, eager) with `precision` (None: the argument left out), the dtypes and
    autocast states its forward saw in training and in the final evaluation, and the result."""
    recipe = resolve_recipe("mnist", "quick", epochs=epochs, lr=0.05, batch_size=32)
    model = build_model("convnet", data, seed=0)
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype,
                                                               torch.is_autocast_enabled("cpu"))))
    kwargs = {} if precision is None else {"precision": precision}
    test = (to_float(data.test.x, CPU), data.test.y)
    result = train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y, recipe,
                   seed=0, device=CPU, num_classes=10, compile="off", eval_sets={"test": test}, **kwargs)
    return model, result, seen


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The 10-class 16×16 problem of `tiny_npz` (band per class: separable), loaded once for the module."""
    x, y = class_images(500, 16)
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path, load_dataset(str(path))


def test_bf16_trains_on_the_cpu_under_autocast_and_learns_the_problem(tiny):
    _, data = tiny
    model, result, seen = trained(data, "bf16", epochs=3)
    losses = [row["train_loss"] for row in result.history]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert result.history[-1]["test_acc"] > 0.9
    training = {(dtype, autocast) for is_training, dtype, autocast in seen if is_training}
    assert training == {(torch.bfloat16, True)}  # every SGD step's forward ran under autocast, in bfloat16
    evaluation = {(dtype, autocast) for is_training, dtype, autocast in seen if not is_training}
    assert evaluation == {(torch.float32, False)}  # the metrics are of the weights, computed in float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    assert predict(model, to_float(data.test.x[:5], CPU)).dtype == torch.float32 and seen[0][1] == torch.float32


def test_fp32_is_the_code_that_ran_before_the_option_and_bf16_gives_other_numbers(tiny):
    """fp32 (named or left out) runs no autocast at all: the same numbers, bit for bit; bf16 changes them beyond
    float rounding."""
    _, data = tiny
    default, named, bf16 = (trained(data, p) for p in (None, "fp32", "bf16"))
    assert default[1].history == named[1].history
    for p1, p2 in zip(default[0].parameters(), named[0].parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert {autocast for _, _, autocast in default[2]} == {False}
    assert {dtype for _, dtype, _ in default[2]} == {torch.float32}
    assert bf16[1].history[0]["train_loss"] != default[1].history[0]["train_loss"]
    assert not all(torch.equal(p1, p2) for p1, p2 in zip(default[0].parameters(), bf16[0].parameters(), strict=True))


def test_an_unknown_precision_in_the_library_fails_before_training(tiny):
    _, data = tiny
    with pytest.raises(KeyError, match="fp16"):
        trained(data, "fp16")


def test_fp32_keeps_the_run_ids_of_before_and_bf16_has_its_own(tiny):
    """A spec that does not mention precision and one that names fp32 have one config, without a precision key
    (the run ids of before the option); bf16 adds `precision` to the config and so has another run id."""
    path, data = tiny
    base = {"dataset": str(path), "recipe": "quick", "method": "hint"}
    unnamed, fp32, bf16 = (run_config(spec_from_values(v), data, 0) for v in
                           (base, {**base, "precision": "fp32"}, {**base, "precision": "bf16"}))
    assert "precision" not in unnamed and unnamed == fp32
    assert bf16 == {**unnamed, "precision": "bf16"}
    assert len({run_id(unnamed), run_id(fp32), run_id(bf16)}) == 2


def defend_json(cli, path: Path, results: Path, *extra: str) -> dict:
    code, out, err = cli("defend", "--dataset", path, "--recipe", "quick", "--epochs", "1", "--device", "cpu",
                         "--compile", "off", "--results", results, "--json", *extra)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_the_record_names_bf16_and_the_tables_keep_it_apart_from_fp32(cli, tiny, tmp_path):
    from poisonbench.report.tables import frame, in_setting, settings

    path, _ = tiny
    results = tmp_path / "results"
    fp32 = defend_json(cli, path, results)
    bf16 = defend_json(cli, path, results, "--precision", "bf16")
    assert fp32["run_id"] != bf16["run_id"] and bf16["status"] == "ran"
    records = [json.loads(Path(o["path"]).read_text()) for o in (fp32, bf16)]
    assert "precision" not in records[0]["config"] and records[1]["config"]["precision"] == "bf16"
    assert records[0]["metrics"]["train_loss"] != records[1]["metrics"]["train_loss"]
    df = frame(records)
    blocks = settings(df)
    assert [s.precision for s in blocks] == ["", "bf16"] and "bf16" in blocks[1].label
    assert [list(in_setting(df, s).run_id) for s in blocks] == [[fp32["run_id"]], [bf16["run_id"]]]


@pytest.mark.parametrize(("flag", "value", "choices"), [("--precision", "fp16", ["fp32", "bf16"]),
                                                          ("--deterministic", "yes", ["on", "off"])])
def test_an_unknown_value_is_refused_in_one_line_and_nothing_is_written(cli, tiny, tmp_path, flag, value, choices):
    path, _ = tiny
    results = tmp_path / "results"
    code, _, err = cli("defend", "--dataset", path, "--device", "cpu", "--results", results, flag, value)
    one_line_error(code, err, repr(value), "valid choices", *choices)
    assert files_under(results) == []


def test_deterministic_off_is_execution_only_and_recorded_in_env(cli, tiny, tmp_path):
    """`env.deterministic` names the mode, in the run's record and in the manifest of the PoisonSet the run crafts
    on its way (before training); `off` has the run id and poison id of `on`, so a run recorded under one is
    skipped under the other (as `--accel` and `--compile`)."""
    from poisonbench.poisons import poison_dir

    path, _ = tiny
    results = tmp_path / "results"
    poisoned = ("--poison-ratio", "0.5", "--attacks", "durp")
    off = defend_json(cli, path, results, *poisoned, "--deterministic", "off")
    record = json.loads(Path(off["path"]).read_text())
    manifest = json.loads((poison_dir(results, record["config"]["poison"]["poison_ids"]["durp"])
                           / "manifest.json").read_text())
    assert record["env"]["deterministic"] == manifest["env"]["deterministic"] == "off"
    on = defend_json(cli, path, results, *poisoned)
    assert on["run_id"] == off["run_id"] and on["status"] == "skipped"
    forced = defend_json(cli, path, results, *poisoned, "--force")
    assert json.loads(Path(forced["path"]).read_text())["env"]["deterministic"] == "on"


@pytest.fixture
def cuda_stand_in(monkeypatch):
    """`configure_device` on `cuda:0` without CUDA: `set_device` and `use_deterministic_algorithms` record their
    calls, cuDNN's flags, Inductor's and CUBLAS_WORKSPACE_CONFIG are set for real and restored afterwards."""
    import torch._inductor.config as inductor_config

    calls = {"set_device": [], "use_deterministic_algorithms": []}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls["set_device"].append(device))
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls["use_deterministic_algorithms"].append((mode, warn_only)))
    for flag in ("deterministic", "benchmark"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    # not monkeypatch: its undo would hide the config entry (delattr); absent before torch 2.10 (core/device.py)
    inductor = getattr(inductor_config, "deterministic", None)
    try:
        yield calls
    finally:
        if hasattr(inductor_config, "deterministic"):
            inductor_config.deterministic = inductor


def flags() -> dict:
    import torch._inductor.config as inductor_config

    cudnn = torch.backends.cudnn
    return {"cudnn.deterministic": cudnn.deterministic, "cudnn.benchmark": cudnn.benchmark,
            "inductor.deterministic": getattr(inductor_config, "deterministic", None)}


def inductor_flag(value: bool) -> bool | None:
    """What Inductor's deterministic flag reads after `configure_device`: `value`, or None on a torch without it
    (before 2.10, where configure_device leaves it unset)."""
    import torch._inductor.config as inductor_config

    return value if hasattr(inductor_config, "deterministic") else None


def test_deterministic_on_pins_cudas_deterministic_algorithms(cuda_stand_in, monkeypatch):
    cuda = torch.device("cuda", 0)
    assert configure_device(cuda, "on") == cuda
    assert flags() == {"cudnn.deterministic": True, "cudnn.benchmark": False,
                       "inductor.deterministic": inductor_flag(True)}
    assert cuda_stand_in == {"set_device": [cuda], "use_deterministic_algorithms": [(True, False)]}
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_off_leaves_torchs_fast_choices_and_none_keeps_the_processs_mode(cuda_stand_in):
    import os

    cuda = torch.device("cuda", 0)
    configure_device(cuda, "on")
    configure_device(cuda, "off")
    off = {"cudnn.deterministic": False, "cudnn.benchmark": True, "inductor.deterministic": inductor_flag(False)}
    assert flags() == off and cuda_stand_in["use_deterministic_algorithms"][-1] == (False, False)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    configure_device(cuda)  # a nested call (a surrogate's training, a craft inside `defend`) keeps "off"
    assert flags() == off and cuda_stand_in["use_deterministic_algorithms"][-1] == (False, False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and deterministic_mode() == "off"
    configure_device(CPU, "on")  # the CPU has no such flags: only the mode is remembered
    assert flags() == off and deterministic_mode() == "on"
    configure_device(cuda)
    assert flags()["cudnn.deterministic"] is True and cuda_stand_in["use_deterministic_algorithms"][-1] == (True, False)


def test_configure_device_refuses_an_unknown_mode():
    with pytest.raises(PoisonbenchError, match="deterministic mode 'yes'; valid choices: on, off"):
        configure_device(CPU, "yes")


def test_a_grid_may_set_precision_but_not_deterministic_which_the_sweep_passes_on(tmp_path):
    npz = write_npz(tmp_path)
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\nmethod = "none"\n\n'
                    '[[runs]]\nprecision = ["fp32", "bf16"]\n')
    plan = make_plan(load_grid(str(grid)), Execution(results=str(tmp_path / "r"), deterministic="off"))
    assert [s.spec.precision for s in plan.runs] == ["fp32", "bf16"]
    assert [s.config.get("precision") for s in plan.runs] == [None, "bf16"]
    assert all(s.spec.deterministic == "off" for s in plan.steps)
    assert plan.runs[1].command(plan.execution)[-2:] == ["--deterministic", "off"]
    assert "--deterministic" not in Execution().argv()
    grid.write_text(f'[defaults]\ndataset = "{npz}"\n\n[[runs]]\ndeterministic = "off"\n')
    with pytest.raises(PoisonbenchError, match="given to `sweep`"):
        load_grid(str(grid))


def test_sweep_and_craft_take_deterministic(cli, tmp_path):
    """`sweep plan|run --deterministic off` passes it to every step (the printed commands carry it); `craft
    --deterministic off` crafts under it and names it in the manifest; a bad value is refused by both."""
    npz = write_npz(tmp_path)
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\npoison_ratio = 0\n')
    results = tmp_path / "results"
    code, out, err = cli("sweep", "plan", grid, "--results", results, "--print-commands", "--deterministic", "off")
    assert code == 0, err
    assert out.strip().endswith("--deterministic off") and len(out.strip().splitlines()) == 1
    one_line_error(*cli("sweep", "plan", grid, "--results", results, "--deterministic", "yes")[::2], "'yes'",
                   "on, off")
    code, out, err = cli("craft", "--attack", "durp", "--dataset", npz, "--device", "cpu", "--results", results,
                         "--deterministic", "off", "--json")
    assert code == 0, err
    manifest = json.loads((Path(json.loads(out)["path"]) / "manifest.json").read_text())
    assert manifest["env"]["deterministic"] == "off"
    one_line_error(*cli("craft", "--attack", "durp", "--dataset", npz, "--results", tmp_path / "other",
                        "--deterministic", "yes")[::2], "'yes'", "on, off")
    assert files_under(tmp_path / "other") == []
