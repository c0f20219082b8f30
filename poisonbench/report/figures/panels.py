"""What the figures share: the records' test images, image panels, class names, file names and saving
(matplotlib on the Agg backend: figures are files, never windows). Every figure is drawn `literal_text`: no text
of a record (a method, an attack, a dataset) is parsed as mathtext."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ...core.errors import PoisonbenchError  # noqa: E402
from ...core.hashing import short_hash  # noqa: E402
from ...core.io import write_new_file  # noqa: E402
from ..tables import Setting  # noqa: E402

CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RED, BLACK = "#d62728", "black"
MAX_COLUMNS = 5


SLUG_MAX = 80  # characters of a file-name part: a long record field cannot push a name past the filesystem's limit


def literal_text(draw):
    """`draw` (a function that makes and saves figures) with matplotlib's mathtext off for every text it draws:
    a record's `$…$` (a method called `$\\alpha$`, a dataset `$x^$` that mathtext cannot parse) is shown as
    written, never interpreted (issue 82). `text.parse_math` is set for the call only (a caller's own figures
    keep parsing math); the figures write ρ, β, ± and Δ as Unicode, never as mathtext."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def safe_slug(text: object, limit: int = SLUG_MAX) -> str:
    """A file-name part made of `text` (any string, e.g. a record or manifest field): only `A-Za-z0-9._-`
    (anything else becomes `_`), no `..`, no leading or trailing `.`, `_` or `-`, at most `limit` characters (a
    longer one keeps its start and a hash of the whole), never empty. Every file-name part a figure makes of a
    record field goes through it: a dataset named `x/../../ESCAPED` or `/etc/x` cannot leave `--out`."""
    text = str(text)
    part = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", text)).strip("._-")
    if len(part) > limit:
        part = f"{part[:limit - 17].rstrip('._-')}_{short_hash(text)}"
    return part or f"x{short_hash(text, 8)}"


def slug(s: Setting) -> str:
    """A file-name part naming setting `s` (`setting_slug` of its fields)."""
    return setting_slug(f"{s.dataset}_{s.model}_{s.recipe}{s.epochs}{s.tag}", (s.dataset, s.model, s.recipe))


def setting_slug(text: str, named: tuple) -> str:
    """`safe_slug(text)`, `text` made of a setting's fields; where that had to alter one of the names in `named`
    (dataset, model, recipe), a hash of them follows, so that two settings never share a file (`a b.npz` and
    `a_b.npz` have one `safe_slug`). Every figure named per setting takes its name from here."""
    part = safe_slug(text)
    if any(safe_slug(v) != v for v in named):
        part = safe_slug(f"{part[:SLUG_MAX - 9]}_{short_hash(list(named), 8)}")
    return part


def class_name(dataset: str, c: int | None) -> str:
    if c is None:
        return "?"
    return f"{c} {CIFAR10_CLASSES[c]}" if dataset == "cifar10" and 0 <= c < 10 else str(c)


def reduced_suffix(s: Setting) -> str:
    return " — reduced scale" if s.reduced else ""


def by_run_id(records: list[dict]) -> dict[str, dict]:
    return {r["run_id"]: r for r in records}


@functools.lru_cache(maxsize=4)
def split_test_images(dataset: str, data_dir: str | None, npz_split: str = "", fingerprint: str = ""):
    """The test images of the records' dataset: of their `--npz-split`, and only if the data loaded has the
    records' fingerprint (else None: the figure draws placeholders rather than another split's images)."""
    from ...data import load_dataset

    split = tuple(float(v) for v in npz_split.split(",")) if npz_split else None
    candidates = [dataset]
    # a record names an .npz by its plain file name (`record_name`): only such a name is looked up in data_dir
    # (`../../x.npz` is not joined to it); a path is tried as given, and its images are shown only if they are
    # the records' data (fingerprint)
    if dataset.endswith(".npz") and data_dir and Path(dataset).name == dataset:
        candidates.insert(0, str(Path(data_dir) / dataset))
    for name in candidates:
        try:
            with warnings.catch_warnings():  # a --data-dir the dataset does not read: harmless for a figure
                warnings.simplefilter("ignore")
                data = load_dataset(name, data_dir if not name.endswith(".npz") else None,
                                    npz_split=split if name.endswith(".npz") else None)
        except Exception:  # noqa: BLE001 — any failure: draw placeholders
            continue
        return data.test.x.numpy() if not fingerprint or data.fingerprint == fingerprint else None
    return None


def test_image(s: Setting, index: int | None, data_dir: str | None) -> np.ndarray | None:
    """Test image `index` of setting `s` (dataset, fingerprint, npz split), or None."""
    x = split_test_images(s.dataset, data_dir, s.npz_split, s.fingerprint)
    if x is None or index is None or not 0 <= index < len(x):
        return None
    return to_hwc(x[index])


def to_hwc(a) -> np.ndarray:
    """C×H×W, H×W×C or H×W (uint8 or float) → H×W(×3) floats in [0, 1] for imshow."""
    a = np.asarray(a, dtype=np.float64)
    if a.dtype != np.uint8 and a.max(initial=0) > 1.0:
        a = a / 255.0
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return np.clip(a, 0, 1)


def show(ax, img: np.ndarray | None) -> None:
    """One image panel without ticks; a grey placeholder when the image is unavailable."""
    if img is None:
        ax.imshow(np.full((8, 8), 0.85), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "image\nunavailable", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


_OUT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("figure_out", default=None)


@contextlib.contextmanager
def confined_to(out: Path) -> Iterator[None]:
    """While in the block, `save` refuses to write anywhere but inside `out` (`figures.draw`: the `--out`
    directory), whatever a figure's file name was made of."""
    token = _OUT.set(Path(out))
    try:
        yield
    finally:
        _OUT.reset(token)


_CAPTURED: contextvars.ContextVar[list[tuple[str, bytes]] | None] = contextvars.ContextVar("figure_capture",
                                                                                           default=None)


@contextlib.contextmanager
def captured() -> Iterator[list[tuple[str, bytes]]]:
    """While in the block, `save` writes nothing: it appends (the file name it would have written, the PNG's bytes)
    to the list this yields (`report html` inlines the figures into its page)."""
    kept: list[tuple[str, bytes]] = []
    token = _CAPTURED.set(kept)
    try:
        yield kept
    finally:
        _CAPTURED.reset(token)


DPI = 120  # the figures' resolution (a PNG of a 10-inch figure is 1,200 pixels wide)


def save(fig, path: Path, **savefig) -> Path:
    """Write `fig` as a PNG, atomically (creating the directory), and close it; an OS error (a full disk, a
    read-only directory, a file in the path) is one line naming the path and the reason, and leaves neither a
    temporary file nor a directory this call created. Inside `confined_to(out)` the last guard: a path that does
    not resolve to a file directly in `out` (symbolic links followed) is refused, nothing written. Inside
    `captured()` the PNG's bytes are kept in memory instead, nothing written."""
    path = Path(path)
    out = _OUT.get()
    try:
        if out is not None and path.resolve().parent != out.resolve():
            raise PoisonbenchError(f"refusing to write figure {str(path)!r}: it is not a file in --out {str(out)!r} "
                                   "(a file name made of a record field?)")
        buffer = io.BytesIO()
        fig.savefig(buffer, **{"format": "png", "dpi": DPI, "bbox_inches": "tight", **savefig})
    finally:
        plt.close(fig)
    kept = _CAPTURED.get()
    if kept is not None:  # `captured()`: the bytes, no file
        kept.append((path.name, buffer.getvalue()))
        return path
    write_new_file(path, buffer.getvalue(), "figure")  # an OSError: one line, nothing half-made left
    return path
