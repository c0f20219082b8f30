"""experiments/rem_truncated.py (issue 67): a saved state of REM's official craft at step S becomes the state of
the same craft cut at S (`--train-steps S`), whose craft resumes there and makes the final noise with the saved
source model; a state that is not the official craft of the options given is refused, and nothing is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.em import StateFile, sgd
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.experiment.craft import craft

from .conftest import write_npz

ROOT = Path(__file__).resolve().parents[1]
EPS, RADIUS, STEP = 0.3, 0.15, 7


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("rem_truncated", ROOT / "experiments" / "rem_truncated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("rem-cut"), n=40, size=16, classes=4)


def saved_official_state(root: Path, npz: Path, step: int, scale: float = 1.0, name: str | None = None) -> Path:
    """A state of the official craft (ε 0.3, ρ_a 0.15) at `step`: a model and optimizer, as a GPU session keeps
    them (counters in the metadata; a generator state the cut craft must not need), weights × `scale`."""
    data = load_dataset(str(npz))
    official = poisons.craft_spec(data, "rem", eps=EPS, adv_radius=RADIUS)
    model = build_model(official.params["model"], data, seed=5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    directory = root / (name or official.poison_id)
    directory.mkdir(parents=True)
    StateFile(directory, "rem.safetensors").save(model, sgd(model, 0.1), {"rng": torch.zeros(16, dtype=torch.uint8)},
                                                 {"step": step})
    return directory


def cut_craft(script, tmp_path: Path, npz: Path, state: Path, tag: str) -> dict:
    results = tmp_path / f"results-{tag}"
    assert script.main([str(state), "--dataset", str(npz), "--eps", str(EPS), "--adv-radius", str(RADIUS),
                        "--results", str(results)]) == 0
    done = craft("rem", dataset=str(npz), eps=EPS, adv_radius=RADIUS, train_steps=STEP, device="cpu",
                 results=str(results))
    return {"info": done.poison_set.manifest["attack_info"], "delta": done.poison_set.delta,
            "label": ATTACKS.get("rem").schedule_label(done.poison_set.manifest["params"], "mnist")}


def test_the_cut_craft_resumes_at_the_saved_step_with_the_saved_source_model(script, npz, tmp_path):
    state = saved_official_state(tmp_path / "a", npz, STEP)
    first = cut_craft(script, tmp_path, npz, state, "first")
    assert first["info"] == {"schedule": "official", "train_steps": STEP, "resumed_steps": STEP}
    assert first["label"] == f"official+train_steps={STEP}"
    # the final noise is the saved model's: other weights, other noise
    other = cut_craft(script, tmp_path, npz, saved_official_state(tmp_path / "b", npz, STEP, scale=0.5), "other")
    assert not torch.equal(first["delta"], other["delta"])


def test_a_state_of_other_options_or_at_the_end_is_refused(script, npz, tmp_path, capsys):
    results = tmp_path / "results"
    alien = saved_official_state(tmp_path / "a", npz, STEP, name="0123456789abcdef")
    assert script.main([str(alien), "--dataset", str(npz), "--eps", str(EPS), "--adv-radius", str(RADIUS),
                        "--results", str(results)]) == 2
    assert "is not the official craft of these options" in capsys.readouterr().err
    state = saved_official_state(tmp_path / "b", npz, STEP)
    assert script.main([str(state), "--dataset", str(npz), "--eps", "0.2", "--adv-radius", str(RADIUS),
                        "--results", str(results)]) == 2
    done = saved_official_state(tmp_path / "c", npz, 5000)
    assert script.main([str(done), "--dataset", str(npz), "--eps", str(EPS), "--adv-radius", str(RADIUS),
                        "--results", str(results)]) == 2
    assert "would resume it itself" in capsys.readouterr().err
    assert not results.exists()
