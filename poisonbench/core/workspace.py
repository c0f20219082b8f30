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
