"""`poisonbench env`: what this machine runs poisonbench with (Python, torch and its CUDA, the device, the optional
packages and what is disabled without them, the poisonbench version and commit, the plugins' parts): the first
command on a new machine, e.g. a GPU node set up offline (docs/install.md)."""

from __future__ import annotations

import importlib
import json
import platform

import torch
import typer
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..attacks import ATTACKS
from ..core.device import resolve_device
from ..core.optional import first_line, installed_version, optional_status
from ..core.printable import printable
from ..core.provenance import TESTED_TORCH, git_state, torch_version_note
from ..data.catalog import DATASETS
from ..defenses import DEFENSES
from ..experiment.options import OPTIONS
from ..experiment.scenarios import SCENARIOS
from . import options
from .progress import stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["env"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module

# the packages every command imports (pyproject.toml's dependencies besides torch and the optional ones)
LIBRARIES = ("torchvision", "numpy", "pandas", "typer", "rich", "safetensors", "scikit-learn", "matplotlib")


def compile_status() -> dict:
    """Whether torch.compile exists and its GPU code generator (triton) imports; Inductor on the CPU needs a C++
    compiler instead, which this does not check."""
    try:
        importlib.import_module("triton")
        triton, error = installed_version("triton") or "present", None
    except Exception as exc:  # ImportError, or a triton built for another torch
        triton, error = None, None if isinstance(exc, ImportError) else first_line(exc)
    return {"torch_compile": hasattr(torch, "compile"), "triton": triton, "triton_error": error}


def plugin_parts() -> list[dict]:
    """The parts installed plugins add (docs/extending.md, "A plugin package"): kind, name, distribution, version."""
    return [{"kind": registry.kind, "name": name, "plugin": plugin.dist, "version": plugin.version}
            for registry in (ATTACKS, DEFENSES, SCENARIOS, DATASETS) for name in registry
            if (plugin := registry.plugin(name)) is not None]


def environment_report(device: str = "auto") -> dict:
    """Everything `poisonbench env --json` prints, as one dict."""
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        resolved = str(resolve_device(device))
    except Exception as exc:  # a bad --device is reported, not raised: env is for finding out what is wrong
        resolved = f"error: {first_line(exc)}"
    commit, dirty = git_state()
    return {
        "poisonbench": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_tested": TESTED_TORCH,
        "torch_note": torch_version_note(),
        "cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU build)
        "cudnn": cudnn,
        "cuda_available": cuda,
        "device_asked": device,
        "device": resolved,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        **compile_status(),
        "libraries": {name: installed_version(name) for name in LIBRARIES},
        "optional": optional_status(),
        "plugins": plugin_parts(),
    }


def command(
    device: str = options.typer_option(OPTIONS["device"], "The device to resolve, as `defend --device` takes it: "
                                       "auto (the first CUDA device, else the CPU) | cpu | cuda | cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the tables."),
) -> None:
    report = environment_report(device)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console = stdout_console()
    table = Table(title="poisonbench environment", show_header=False)
    table.add_column("what")
    table.add_column("value")
    commit = report["git_commit"] or "not a git checkout"
    table.add_row("poisonbench", f"{report['poisonbench']} ({commit}{', modified' if report['git_dirty'] else ''})")
    table.add_row("python", report["python"])
    torch_text = escape(report["torch"]) + (f" [yellow]({escape(report['torch_note'])})[/]" if report["torch_note"]
                                            else "")
    table.add_row("torch", torch_text)
    table.add_row("CUDA / cuDNN", f"{report['cuda'] or 'CPU build'} / {report['cudnn'] or '-'}")
    table.add_row(escape(printable(f"--device {device}")), escape(printable(report["device"])))
    for i, name in enumerate(report["cuda_devices"]):
        table.add_row(f"cuda:{i}", escape(name))
    triton = report["triton"] or ("[yellow]broken: " + escape(report["triton_error"]) + "[/]" if report["triton_error"]
                                  else "[yellow]not installed[/] (torch.compile cannot generate GPU code)")
    table.add_row("torch.compile / triton", f"{'yes' if report['torch_compile'] else 'no'} / {triton}")
    for name, version in report["libraries"].items():
        table.add_row(name, version or "[red]not installed[/]")
    console.print(table)
    optional = Table(title="optional packages")
    for col in ("package", "version", "needed for"):
        optional.add_column(col)
    for p in report["optional"]:
        if p["present"]:
            optional.add_row(p["package"], p["version"] or "present", p["feature"])
        else:
            why = f"broken: {escape(p['error'])}" if p["error"] else "missing"
            optional.add_row(p["package"], f"[red]{why}[/]", f"{p['feature']}: disabled (pip install {p['pip']})")
    console.print(optional)
    if report["plugins"]:
        plugins = Table(title="plugins")
        for col in ("kind", "name", "plugin", "version"):
            plugins.add_column(col)
        for part in report["plugins"]:
            # a plugin's names are another package's text: control characters shown escaped (core.printable)
            plugins.add_row(*(escape(printable(part[k])) for k in ("kind", "name", "plugin", "version")))
        console.print(plugins)
