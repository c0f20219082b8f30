"""Shared fixtures: tiny datasets written in real on-disk formats, and an in-process CLI runner."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TEST_DPI = 40  # the figures' PNGs in the tests: a third of `panels.DPI`, a ninth of its pixels


# The sweeps over every defense that test mechanics (tests/test_host_sync.py: no host wait per batch;
# tests/test_checkpoints.py: a resumed run equals an uninterrupted one) run the iterative defenses with fewer
# iterations than their defaults: every iteration runs the same code, so a host wait in one or a state a resume
# fails to restore shows as at the default count, and ATDA (10 PGD steps a batch) and FRIENDS (30 steps of noise
# optimisation) were half of those files' time. Their defaults are tested in their own files.
FEWER_STEPS = {"atda": {"steps": 3}, "friends": {"friendly_steps": 3}}


def pytest_configure(config):
    """Under pytest-xdist (`-n N`, the default in pyproject.toml) the N workers share the cores: each worker's
    torch takes its share of them instead of all, so that the workers do not oversubscribe the machine.

    The report figures are saved at `TEST_DPI`: every artist is still drawn (the texts, mathtext off, the file
    names), but rasterising the PNG at the figures' own 120 dpi was half of a figure's time, and the report tests draw
    many. `tests/test_report_tables.py::test_figures_render` draws every figure at the product's DPI, and
    `test_a_figure_is_saved_at_the_dpi_of_panels` checks that `panels.save` uses it."""
    from poisonbench.report.figures import panels

    panels.DPI = TEST_DPI
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        from poisonbench.sweeps.execute import split_threads

        torch.set_num_threads(split_threads(workers))


@pytest.fixture(autouse=True, scope="session")
def absl_logs_to_the_real_stderr():
    """absl, which dp-accounting imports (DP-SGD's ε), binds its log handler to the `sys.stderr` of its import:
    under pytest, a capture file. `logging.config.dictConfig` (submitit's import does one) closes every handler, and
    absl's `close()` closes its stream unless it is the `sys.stderr` of that moment, which under `capsys` it is not:
    pytest's capture file closed mid-run ("I/O operation on closed file"). The handler writes to the process's own
    stderr instead (captured at the file descriptor all the same)."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # no dp-accounting here
        return
    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


@pytest.fixture(autouse=True, scope="session")
def torch_version_already_named():
    """On a torch other than the pinned one (a GPU machine's own), the once-per-process version warning would be
    an extra stderr line in the tests that read stderr line by line: it counts as given here, and
    tests/test_torch_version.py tests it."""
    from poisonbench.core import provenance

    provenance._torch_checked = True


@pytest.fixture(autouse=True)
def no_inherited_columns(monkeypatch):
    """pytest-xdist's workers inherit COLUMNS=80, which piped output honours (core.console.stdout_console): every
    test starts without it, so that result tables are as wide as a plain pipe makes them; a test of the width sets
    its own."""
    monkeypatch.delenv("COLUMNS", raising=False)


# The test files that take longest, slowest first (seconds of one torch thread, measured 2026-11-30 at commit e18fa89
# with `pytest -n 1 --durations=150`): they run first and the short files fill in at the end, so that no worker
# waits on another's long file (pyproject.toml turns off xdist's own order, files with the most tests first, which
# left the sweep-resilience file, few tests and 2.5 minutes, to start last). A file not named keeps its place.
SLOWEST_FILES = ("test_report_valid_records.py", "test_sweep_resilience.py", "test_effectiveness.py",
                 "test_checkpoints.py", "test_targeted_scenarios.py", "test_sweep.py", "test_records.py",
                 "test_plugins.py", "test_benchmarks.py", "test_manifest_only.py", "test_concurrent_runs.py",
                 "test_dpsgd_privacy.py", "test_run_identity.py", "test_probe_report.py", "test_attacks.py",
                 "test_gpu_check.py", "test_host_sync.py", "test_warm_start.py", "test_termination.py",
                 "test_hardening_round3.py", "test_rem_gpu_script.py")


def pytest_collection_modifyitems(config, items):
    """`SLOWEST_FILES` first (a stable sort: each file's tests keep their order). Tests marked `gpu` (pyproject.toml's
    markers; tests/test_gpu.py) need a CUDA device: where torch sees none, as on this project's CPU machines and CI,
    they are collected and skipped with the reason."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    needs_gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not needs_gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in needs_gpu:
        item.add_marker(skip)


def dies_with_the_test(then=None):
    """The `preexec_fn` of a CLI process a test starts: Linux sends the process SIGTERM when the test process dies
    (PR_SET_PDEATHSIG). A test killed from outside (mutmut's CPU-time limit, SIGXCPU; a cancelled CI job) would
    otherwise leave its `sweep run` or `defend` running, orphaned: the mutation runs of 2026-11-27 (commit c0a9e68)
    piled them up to a load of 38. A sweep's own steps already die with the sweep (sweeps/execute.py). `then`:
    another preexec function, called after."""
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover (runs in the child, between fork and exec)
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: nothing to set
            pass
        else:
            if os.getppid() != parent:  # the test died before the prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
        if then is not None:
            then()

    return preexec


def class_images(n: int, size: int, channels: int = 1, classes: int = 10, seed: int = 0):
    """Learnable synthetic images: each class lights a different horizontal band, plus noise (uint8)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, size, size, channels))
    band = max(1, size // classes)
    for c in range(classes):
        rows = slice((c * band) % size, (c * band) % size + band)
        x[y == c, rows] += 180
    x = np.clip(x, 0, 255).astype(np.uint8)
    return (x[..., 0] if channels == 1 else x), y.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    code = 0x08
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist_dir(directory: Path, n_train: int = 1200, n_test: int = 100, gz: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    x, y = class_images(n_train, 28, seed=1)
    tx, ty = class_images(n_test, 28, seed=2)
    write_idx(directory / "train-images-idx3-ubyte", x, gz)
    write_idx(directory / "train-labels-idx1-ubyte", y, gz)
    write_idx(directory / "t10k-images-idx3-ubyte", tx, gz)
    write_idx(directory / "t10k-labels-idx1-ubyte", ty, gz)


def write_cifar_dir(directory: Path, per_batch: int = 250, n_test: int = 50) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = class_images(per_batch, 32, channels=3, seed=10 + i)
        entry = {"data": x.transpose(0, 3, 1, 2).reshape(per_batch, -1), "labels": y.tolist()}
        (directory / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    x, y = class_images(n_test, 32, channels=3, seed=20)
    (directory / "test_batch").write_bytes(pickle.dumps({"data": x.transpose(0, 3, 1, 2).reshape(n_test, -1),
                                                         "labels": y.tolist()}))


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and robust to a loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_npz(root: Path, n: int = 200, size: int = 16, classes: int = 4, seed: int = 0,
              name: str = "tiny.npz") -> Path:
    """A learnable `.npz` dataset (see `class_images`) under `root`; returns its path."""
    x, y = class_images(n, size, classes=classes, seed=seed)
    path = root / name
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """500 learnable 16×16 grey images, 10 classes: train 400 / val 10 / test 90."""
    x, y = class_images(500, 16)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def cli(capsys):
    """Run `poisonbench ARGS` in-process; returns (exit code, stdout, stderr)."""
    from poisonbench.cli.main import main

    def run(*args: str):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def train_calls(monkeypatch):
    """Every call of the engine's `train` made through the runner, as `(args, kwargs, result)`, recorded before
    the result goes back to the runner. Tests that must alter a result wrap `run_execution.train` themselves."""
    from poisonbench.experiment import one_run as run_execution

    calls: list[tuple[tuple, dict, object]] = []
    real = run_execution.train

    def spy(*args, **kwargs):
        snapshot = (args, dict(kwargs))
        result = real(*args, **kwargs)
        calls.append((*snapshot, result))
        return result

    monkeypatch.setattr(run_execution, "train", spy)
    return calls


def one_line_error(code: int, err: str, *needles: str) -> None:
    """The bad-input contract: exit 2, one line `Error: ...` on stderr (no traceback), naming each of `needles`. On a
    torch other than the pinned one, a child process's own once-per-process version line comes first: not counted."""
    from poisonbench.core.provenance import torch_version_note

    note = torch_version_note()
    lines = [line for line in err.strip().splitlines() if note is None or line != f"Warning: {note}"]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def defend_refused(cli, dataset, cwd: Path, args: list, needle: str) -> None:
    """`defend` on `dataset` with bad `args` (run from `cwd`): the one-line error naming `needle`, exit 2, and no
    results directory written, neither the one asked for nor the default."""
    results = cwd / "res"
    code, _, err = cli("defend", "--dataset", dataset, "--recipe", "quick", "--epochs", "1", *args,
                       "--results", results)
    one_line_error(code, err, needle)
    assert not results.exists() and not (cwd / "results").exists()


def files_under(root: Path) -> list[Path]:
    """Every file below `root` (none when it does not exist), sorted: what a command left behind."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def read_only():
    """`make(path)`: create the directory `path` and make it read-only for this process. chmod does not stop root,
    so as root the directory gets the immutable attribute (chattr +i) instead; both are undone at teardown."""
    made = []

    def make(path):
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                pytest.skip(f"cannot make a directory read-only for root here (chattr +i: {exc})")
        else:
            path.chmod(0o555)
        made.append(path)
        with pytest.raises(OSError):  # the simulation works: nothing can be created in it
            (path / "probe").write_bytes(b"")
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def targeted_spec(path: str, default_attack: str, **given):
    """A `DefendSpec` of a targeted run (`default_attack` unless `given` names another) on the tiny dataset at
    `path`, as cheap as it can be (1-epoch quick recipe, one iteration of one restart, 2 % budget); `given`
    overrides any field."""
    from poisonbench.experiment.spec import DefendSpec

    base = {"dataset": path, "recipe": "quick", "recipe_overrides": {"epochs": 1}, "attack": default_attack,
            "budget": 0.02, "attack_params": {"iterations": 1, "restarts": 1}}
    return DefendSpec(**{**base, **given})


def craft_killed_at_call(monkeypatch, module, name: str, call: int, spec, data, work: Path) -> None:
    """Craft `spec` into the workspace `work` with `module.name` raising KeyboardInterrupt on its `call`-th call (a
    kill in the middle of an iterative attack), then put the function back: the resume tests' first half."""
    from poisonbench import poisons

    original, calls = getattr(module, name), []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, killed)
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, work)
    monkeypatch.setattr(module, name, original)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A 400-row tiny .npz dataset (`tiny.npz`) shared by a test module's end-to-end filter runs."""
    root = tmp_path_factory.mktemp("filters")
    write_npz(root, n=400)
    return root


@pytest.fixture
def toy():
    """The name of a toy targeted attack registered for the test (tests/toys.py `ToyTargeted`)."""
    from poisonbench.attacks import ATTACKS

    from .toys import ToyTargeted, registered

    with registered(ATTACKS, "toy-targeted", ToyTargeted):
        yield "toy-targeted"
