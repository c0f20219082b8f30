"""The results workspace (`--results DIR`): where runs, PoisonSets and cached models live, and its subfolders."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PoisonbenchError

DEFAULT_RESULTS = "results"


def results_dir(path: str | Path | None = None) -> Path:
    """`--results DIR`, else $POISONBENCH_RESULTS, else ./results (need not exist yet; must not be a file). An
    empty `--results ""` (an unset shell variable, say) is refused rather than taken for the default."""
    if isinstance(path, str) and not path.strip():
        raise PoisonbenchError(f"--results is empty ({path!r}); pass a directory, or leave the option out for "
                               f"$POISONBENCH_RESULTS or ./{DEFAULT_RESULTS}")
    root = Path(path or os.environ.get("POISONBENCH_RESULTS") or DEFAULT_RESULTS)
    if root.exists() and not root.is_dir():
        raise PoisonbenchError(f"results workspace {str(root)!r} is a file, not a directory; pass --results DIR")
    return root


def workspace_subdir(root: str | Path | None, name: str) -> Path:
    """`<results>/<name>` (poisons, runs, ...): need not exist yet; a file in its place is refused in one line."""
    path = results_dir(root) / name
    if path.exists() and not path.is_dir():
        raise PoisonbenchError(f"{str(path)!r} is a file, not a directory: the results workspace is damaged; move "
                               "the file away or pass another --results")
    return path


def refuse_links(root: str | Path, path: str | Path) -> None:
    """Refuse in one line (PoisonbenchError naming it) a symbolic link at `path` or at any directory between the
    results workspace `root` and `path`: everything poisonbench writes into a workspace stays inside it, and a
    planted link would send a figure, a record or a log elsewhere. `root` itself may be a link (a workspace kept on
    another disk); a `path` outside `root` is not checked here."""
    root, path = Path(root), Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise linked_directory(current)
        if not current.exists():
            return


def linked_directory(path: str | Path) -> PoisonbenchError:
    """The one-line refusal of a symbolic link at `path`, where a directory of the workspace belongs."""
    try:
        target = f" (to {os.readlink(path)!r})"
    except OSError:
        target = ""
    return PoisonbenchError(f"{str(path)!r} is a symbolic link{target}, not a directory: poisonbench writes into a "
                            "results workspace only through directories of its own; remove the link")


def workspace_dir(root: str | Path | None, *parts: str) -> Path:
    """`<results>/<parts...>` (`runs`, `figures`, `locks`, `poisons/<id>`, ...), a directory poisonbench writes into:
    need not exist yet; refused in one line when it, or a directory between the workspace and it, is a symbolic
    link (`refuse_links`) or a file."""
    base = results_dir(root)
    path = base.joinpath(*parts)
    refuse_links(base, path)
    if path.exists() and not path.is_dir():
        raise PoisonbenchError(f"{str(path)!r} is a file, not a directory: the results workspace is damaged; move "
                               "the file away or pass another --results")
    return path
