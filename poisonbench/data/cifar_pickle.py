"""Reading CIFAR-10's python batches without running what a pickle asks for.

A pickle can call any importable function while it loads (`os.system`, `builtins.open`, ...), so `pickle.load`
on a `data_batch_1` from `--data-dir` would run whatever the file holds. A real batch holds only a dict of
strings, a list of int labels, a list of file names and one numpy uint8 array. Python's pickle builds the
containers, strings and numbers itself; the only functions (pickle "globals") it looks up are numpy's array
machinery, and this unpickler admits exactly those:

- `numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`: how numpy pickles an array with the
  protocol-2 pickles of the official files (Python 2's cPickle; numpy < 2 names its core `numpy.core`, numpy 2
  `numpy._core`), `numpy.core.multiarray.scalar` for a numpy scalar, `numpy.core.numeric._frombuffer` for an
  array pickled with protocol 5;
- `_codecs.encode(text, "latin1")`: how Python 3 writes `bytes` in a pickle of protocol 2 or lower (a batch
  rewritten with `pickle.dump(batch, f, protocol=2)`), admitted for the latin-1 encoding only.

Any other global is refused before it is called, in one line naming the file and the global. The batch is read
by `core.bounded_pickle.read_pickle`, as every pickle poisonbench reads: a regular file of `MAX_CIFAR_BATCH_BYTES`
at most whose opcodes are checked (memo indices, declared lengths, memory per byte) before it is unpickled.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from ..core import bounded
from ..core.bounded_pickle import read_pickle
from ..core.errors import PoisonbenchError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of `bytes` use it (latin-1 only: no other codec can be asked for)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # Python 2 `str` (keys, the array's bytes) as the files hold it
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PoisonbenchError(f"{self.path} is not a CIFAR-10 python batch: its pickle asks for {module}.{name}, "
                                   "which a batch never holds (refused before anything ran)") from None


def load_batch(path: Path) -> dict:
    """The unpickled batch at `path`; its keys as text (a batch pickled in Python 3 may have bytes keys,
    b"data" for "data"). Raises PoisonbenchError for a refused global; any other failure as the unpickler
    raises it."""
    # a regular file of MAX_CIFAR_BATCH_BYTES at most, its opcodes checked before it is unpickled
    entry = read_pickle(path, bounded.MAX_CIFAR_BATCH_BYTES, lambda f: _BatchUnpickler(f, path))
    if not isinstance(entry, dict):
        raise ValueError(f"a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
