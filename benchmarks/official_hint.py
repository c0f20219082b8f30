"""Run the official HINT code's influence stage itself (not a re-implementation) on our model and data.

Used by `benchmarks/hint_influence.py --official-repo PATH`, where PATH is a local clone of
https://github.com/minhhao97vn/HINT. Nothing of that repository is copied here: its modules are imported from
PATH at run time and its functions are called as `train_mnist_with_hin` calls them at the first HIN epoch
(HINT:train_utils.py L583-612):

  1. `get_indices_to_add_HIN` on a non-shuffled train loader: LiSSA s_test (980 steps of 50 samples drawn by a
     4-worker DataLoader, backbone re-run inside every `vhp`), the batch-1 I_up loop over every training example
     (`dataset[i]` → PIL → ToTensor → collate), the sort by |I|;
  2. `load_mnist_subset_train` (deep copy of the dataset restricted to the selection);
  3. `calc_influence_single_group_pert` (batch-1 loop, `create_graph` head gradient, double backward);
  4. `get_healthy_noise` and `CustomMNIST.set_healthy_noise_no_sign` (O(N·K) index scan, uint8 round trip, and
     the pickle of the noise it writes, here into a temporary directory).

Everything is timed in full (no subsets, no extrapolation). What differs from a real official run, on purpose:
the data are ours (mnist-5k's train/val rows, placed in the official `CustomMNIST` container, so its own
`__getitem__` runs) instead of a reload of MNIST and of the poison file from disk (`load_mnist_untargeted`,
not timed: it would only add to the official side); the model is the official `ConvNet` class holding our
pre-trained weights; the device is the CPU. If `tqdm` is not installed, its progress bars are replaced by a
pass-through (the official code only iterates them and sets a postfix). r = 1 is not supported: the official
code then skips selection and estimates s_test on the subset inside the I_pert call, which returns no s_test to
compare against.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

# every module of the clone that the influence stage imports
OFFICIAL_MODULES = ("train_utils.py", "influence_functions.py", "hessian_functions.py", "grad_functions.py",
                    "dataset.py", "models.py", "utils.py", "diff_data_augmentation.py")

# our ConvNet's parameter names → the official ConvNet's (HINT:models.py L168-202)
KEY_MAP = {"conv.0.": "conv1.0.", "conv.1.": "conv1.1.", "conv.4.": "conv2.0.", "conv.5.": "conv2.1.",
           "head.": "linear."}


def _tqdm_passthrough() -> types.ModuleType:
    class _Bar:
        def __init__(self, iterable=None, *args, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, *args, **kwargs):
            pass

    module = types.ModuleType("tqdm")
    module.tqdm = _Bar
    return module


def check_repo(repo: str) -> Path:
    """`repo` resolved, or exit with a one-line error if it is not a clone of the official code."""
    path = Path(repo).resolve()
    missing = [f for f in OFFICIAL_MODULES if not (path / f).is_file()]
    if missing:
        raise SystemExit(f"--official-repo {repo!r}: not a clone of minhhao97vn/HINT (missing {', '.join(missing)})")
    return path


def import_official(repo: str) -> dict[str, types.ModuleType]:
    """The official modules, imported from the clone at `repo`."""
    path = check_repo(repo)
    importlib.import_module("torchvision")  # before the shim: importing torch._dynamo scans installed modules
    shim = importlib.util.find_spec("tqdm") is None
    if shim:  # only while the official modules import it (`from tqdm import tqdm`), so nobody else sees it
        sys.modules["tqdm"] = _tqdm_passthrough()
    clashing = [n for n in (f[:-3] for f in OFFICIAL_MODULES) if n in sys.modules]
    if clashing:
        raise SystemExit(f"--official-repo: modules named {', '.join(clashing)} are already imported; the "
                         "official code's own would not load")
    sys.path.insert(0, str(path))
    try:
        mods = {name: importlib.import_module(name) for name in ("models", "dataset", "train_utils")}
    finally:
        sys.path.remove(str(path))  # its generic module names must not shadow anything imported later
        if shim:
            del sys.modules["tqdm"]
    for name in (f[:-3] for f in OFFICIAL_MODULES):
        module = sys.modules.get(name)
        if module is not None and Path(module.__file__).resolve().parent != path:
            raise SystemExit(f"--official-repo: {name} was imported from {module.__file__}, not from {path}")
    return mods


def official_model(mods, ours: torch.nn.Module):
    """The official `ConvNet` + `FCNet` top model sharing its `linear` parameters (train_with_HIN_mnist.py)."""
    net = mods["models"].ConvNet()
    state = {}
    for key, value in ours.state_dict().items():
        for a, b in KEY_MAP.items():
            if key.startswith(a):
                state[b + key[len(a):]] = value
    net.load_state_dict(state)  # strict: every official parameter and buffer is set
    top = mods["models"].FCNet(input_size=net.linear.in_features, output_size=net.linear.out_features)
    top = mods["train_utils"].update_top_model(net, top)
    return net, top


def custom_mnist(mods, x: torch.Tensor, y: torch.Tensor):
    """An official `CustomMNIST` holding our rows (uint8 N×28×28, numpy labels), as its loader would leave it."""
    assert x.dtype == torch.uint8, "CustomMNIST holds uint8 images (its ToTensor divides by 255)"
    ds = mods["dataset"].CustomMNIST.__new__(mods["dataset"].CustomMNIST)
    torch.utils.data.Dataset.__init__(ds)
    ds.data = x[:, 0].numpy().copy()
    ds.targets = y.numpy().astype(np.int64)
    ds.original_data = ds.data.copy()
    ds.transform = ds.target_transform = None
    ds.to_tensor = mods["dataset"].transforms.ToTensor()
    for name in ("poison_samples", "selected_indices", "gamma", "noise_indices", "noise_deltas",
                 "poison_indices", "poison_deltas"):
        setattr(ds, name, None)
    return ds


@contextlib.contextmanager
def _quiet_in(directory: str):
    """Run in `directory` (the official code pickles into the working directory), stdout silenced."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        os.chdir(cwd)


def run_official(repo: str, ours: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 val_x: torch.Tensor, val_y: torch.Tensor, ratio: float, gamma: float, beta_255: float) -> dict:
    """Time the official influence stage; return seconds per part and its outputs (s_test, selection, I_up,
    I_pert in selection order) for the agreement checks. Inputs are uint8 N×1×28×28 and int labels."""
    mods = import_official(repo)
    tu = mods["train_utils"]
    net, top = official_model(mods, ours)
    args = types.SimpleNamespace(device=torch.device("cpu"), damp=0.01, scale=50, recur_depth=49000, r_average=1,
                                 hvp_batch_size=50, ratio=ratio, eps=beta_255)
    train_set, val_set = custom_mnist(mods, train_x, train_y), custom_mnist(mods, val_x, val_y)
    loader = torch.utils.data.DataLoader
    train_loader = loader(train_set, batch_size=128, shuffle=True, num_workers=4)
    val_loader = loader(val_set, batch_size=128, shuffle=False, num_workers=4)
    seconds: dict[str, float] = {}
    torch.manual_seed(0)  # the official run's generator state here differs (seed 1 + a randperm): other LiSSA draws
    with tempfile.TemporaryDirectory(prefix="hint_official_") as tmp, _quiet_in(tmp):
        net.eval()
        top.eval()
        t = time.perf_counter()
        noshfl = loader(train_set, batch_size=128, shuffle=False, num_workers=4)
        i_up, _, selected, s_test = tu.get_indices_to_add_HIN(net, top, noshfl, val_loader, args)
        seconds["selection"] = time.perf_counter() - t
        t = time.perf_counter()
        sub = tu.load_mnist_subset_train(selected, train_loader, shuffle_train=False)
        pert = tu.calc_influence_single_group_pert(net, top, sub, val_loader, args, s_test)
        seconds["i_pert"] = time.perf_counter() - t
        t = time.perf_counter()
        noise = tu.get_healthy_noise(pert)
        train_loader.dataset.set_healthy_noise_no_sign(selected, noise, gamma, args.eps, 5)
        seconds["apply"] = time.perf_counter() - t
    seconds["total"] = sum(seconds.values())
    s = torch.cat([s_test[0].detach(), s_test[1].detach()[:, None]], 1)
    return {"seconds": seconds, "s": s, "selected": torch.tensor(selected), "i_up": torch.tensor(np.asarray(i_up)),
            "i_pert": torch.stack([p["infl"][0][0] for p in pert])}
