"""Where and how a run or a craft executed: the code (git commit, dirty flag, source fingerprint), the library
versions, the device and the host, and the peak memory. None of it is part of a run id or a poison id.

Also the torch version check (`check_torch_version`): poisonbench accepts a range of torch releases and is tested
with one (`TESTED_TORCH`), but an environment often comes with its own (a GPU machine's, docs/install.md), so an older
torch is allowed down to `OLDEST_TORCH` and named once, in one line, rather than refused."""

from __future__ import annotations

import functools
import platform
import re
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from .. import __version__
from .cpu_identity import cpu_identity
from .device import deterministic_mode
from .errors import PoisonbenchWarning
from .hashing import code_fingerprint

# constraints/tested.txt's torch (tests/test_torch_version.py keeps the two equal): the release the tests and the
# numbers run with, the newest in pyproject.toml's range that is tested
TESTED_TORCH = "2.14.1"
# the oldest torch poisonbench imports and runs on: APIs newer than this are guarded (docs/install.md, "A machine
# that already has its torch")
OLDEST_TORCH = "2.4"


def version_tuple(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as `2.11.0+cu130` or `2.5.0a0+git1234` (a local or
    pre-release suffix counts as its release); (0, 0, 0) when it does not start with numbers."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else (0, 0, 0)


def torch_version_note(version: str | None = None) -> str | None:
    """The one-line warning for torch `version` (default: the running one), or None for the tested pin or newer."""
    version = str(torch.__version__ if version is None else version)
    have = version_tuple(version)
    if have < version_tuple(OLDEST_TORCH):
        return (f"torch {version} is older than {OLDEST_TORCH}, the oldest poisonbench runs on (tested with "
                f"{TESTED_TORCH}): expect errors")
    if have < version_tuple(TESTED_TORCH):
        return (f"torch {version} is older than the tested {TESTED_TORCH}: numbers may differ in float rounding "
                "from the tested build's (records name the version in env.torch)")
    return None


_torch_checked = False


def check_torch_version() -> str | None:
    """Warn once per process (a `PoisonbenchWarning`, one line under the CLI) when torch is older than the tested
    pin or than `OLDEST_TORCH`; return the note (None: no warning due). Called where the CLI starts and where a
    run or a craft records its environment, so library callers are told too."""
    global _torch_checked
    note = torch_version_note()
    if note is not None and not _torch_checked:
        _torch_checked = True
        warnings.warn(note, PoisonbenchWarning, stacklevel=2)
    return note


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from, read once per process: `defend` reads it when a
    run starts, so a record names the code that ran even if the checkout moves on before the run ends.
    `dirty`: the package's files (or pyproject.toml) differ from the commit, untracked modules included (None
    outside a git checkout)."""
    commit = _git("rev-parse", "HEAD") or None
    # the package and its metadata only (new untracked modules included); --no-optional-locks: never take the
    # index lock, so a run starting during a commit or merge cannot make that fail
    status = _git("--no-optional-locks", "status", "--porcelain", "--", ":/poisonbench", ":/pyproject.toml") \
        if commit else None
    return commit, (None if status is None else bool(status))


def git_commit() -> str | None:
    return git_state()[0]


def environment(device: torch.device, accel: str = "auto", deterministic: str | None = None) -> dict:
    """Where and how a run or a craft executed (none of it is part of a run id or a poison id); `accel`: the CPU
    kernels' switch it ran with (poisonbench.engine.kernels); `deterministic`: CUDA's algorithm choice (on | off;
    None: the mode the process is configured with, `device.configure_device`). `torch` is the version that ran,
    the tested one or not (`check_torch_version` warns here once when it is older than the tested one)."""
    check_torch_version()
    env = {
        "poisonbench": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_state()[1],
        "code": code_fingerprint(),  # sha256 of the package sources, also where no git checkout is
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "accel": accel,
        "deterministic": deterministic or deterministic_mode(),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if device.type == "cpu":
        env["cpu"] = cpu_model()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env.update(cpu_identity())  # cpu_id, cpu_isa: the generation a model name such as "AMD EPYC" hides
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory (docs/metrics.md, "Run records"), in MiB: `peak_rss_mib`, the process's peak resident set so far
    (Linux `ru_maxrss`: it includes the dataset load and earlier runs or crafts of the same command, never less than
    this one's own peak), and on CUDA `peak_cuda_mib`, the peak memory allocated by tensors since the caller last
    reset CUDA's peak statistics (at the start of a run or craft)."""
    out = {}
    try:
        import resource

        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20, 1)
    except (ImportError, OSError):  # not a Unix system
        pass
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
