"""Fetching the official dataset files with torchvision (`--download`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.errors import PoisonbenchError


def download(tv_name: str, root: Path) -> None:
    """torchvision's download of `tv_name` into `root` (it fetches what is missing and checks md5s); a failure is
    a one-line error, and a directory this call created is removed again."""
    import torchvision.datasets as tvd

    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            getattr(tvd, tv_name)(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 (urllib, HTTP, md5 and extraction errors alike)
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = " ".join(str(exc).split())  # torchvision lists every mirror tried, one per line
        raise PoisonbenchError(f"downloading {tv_name} into {str(root)!r} failed ({type(exc).__name__}: "
                               f"{reason}); without internet, copy the files there and pass --data-dir") from None
