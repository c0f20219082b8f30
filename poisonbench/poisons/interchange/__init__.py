"""Targeted poisons made by other toolkits, in and out: `poisons import --format forest|toxic|npz` and `poisons
export --poison-set ID --format forest|toxic|npz` (the formats and their sources: docs/commands.md, "Targeted poisons
made elsewhere").

- **forest** (Witches' Brew's `forest`, with which the paper crafted GM, BP and FC, §1.1): stock `--save packed`
  writes `torch.save([poison_delta, poison_ids])` (`GM:forest/data/kettle.py` `export_poison`); HINT read a patched
  export, a pickle of `{poison_ids, poison_delta, poison_setup: {poison_class, target_class, intended_class: [c],
  …}, target_images: [(image, label, test index)]}` (`HINT:train_utils.py` `load_cifar10_targeted`). forest keeps δ
  in its normalised space, so δ_pixel = poison_delta · σ_forest per channel, with forest's own σ
  (`GM:forest/consts.py`: CIFAR-10 (0.2470, 0.2435, 0.2616), MNIST (0.3081,)), not HINT's (§1.2).
- **toxic** (the "Just How Toxic" benchmark's submission, §10.2): `poisons.pickle` (a list of (PIL image, label)),
  `base_indices.pickle` (the bases' train indices) and `target.pickle` ((PIL image, label)). The target's test
  index is not in them: it comes from `--setup FILE --setup-index i` or `--target I --intended C`.
- **npz**: `x` (uint8 poisoned images, K×H×W or K×H×W×C), `idx` (train indices), `target` (test index), `intended`.

Indices in a file are the source's (torchvision's train and test order for MNIST and CIFAR-10; an .npz dataset's
rows): they are mapped to our splits with `data.train.indices` / `data.test.indices`. A poisoned image that lies in
our val split is left out of the import and counted in the manifest, as `interop.import_hint_file` does (our
val split holds out 1,000 images that the source's train set has).

Pickles are read by `unpickle.ArraysOnlyUnpickler`, which admits numpy's array machinery, torch tensors (their storage
read back with `torch.load(weights_only=True)`) and PIL images decoded as data (a stand-in keeps only mode, size
and bytes): any other global a pickle asks for (`posix.system`, `builtins.eval`, a class) is refused before it is
called, in one line naming it.
"""

from .exchange import export_targeted, import_targeted  # noqa: F401
from .formats import FORMATS, check_format, sniff_format  # noqa: F401
