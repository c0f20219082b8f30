"""Model registry (paper Table I). Images enter in [0, 1]; each model normalises internally, so every ε and β
is in pixel units. Every model exposes `features(x)` (penultimate activations) and `head` (the final Linear),
which HINT, EPIC, BP, FC and Deep k-NN need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import PoisonbenchError
from ..core.registry import Registry


def probe(model: nn.Module, sample: torch.Tensor, hooks: list) -> None:
    """Run `model` on one row of `sample` in eval mode without gradients (BatchNorm statistics untouched), for
    the forward `hooks` already registered on it to observe; then remove them and restore the model's mode."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(sample[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def conv_sharing(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A `cls` (an `nn.Conv2d` or a subclass) with `conv`'s hyperparameters and mode, holding `conv`'s own weight
    and bias Parameters (built on the meta device, so nothing is allocated): an optimizer over `conv` keeps
    training it."""
    shell = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
    shell.weight, shell.bias = conv.weight, conv.bias
    return shell.train(conv.training)


def has_hooks(module: nn.Module) -> bool:
    """Whether a caller registered hooks on `module` itself (a module swapped for a faster one would drop them)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`forward(x) = head(features(x))`; subclasses define `body` (normalised input → feature vector)."""

    head: nn.Linear

    def __init__(self, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvNet(Classifier):
    """HINT's MNIST CNN (HINT:models.py:L168-202): Conv(1→40,k5)-BN-ReLU-AvgPool2, Conv(40→100,k5)-BN-ReLU-
    AvgPool2, flatten (1600 for 28×28), Linear(1600→classes)."""

    name: ClassVar[str] = "convnet"

    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std):
        super().__init__(mean, std)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 40, 5), self.norm(40), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(40, 100, 5), self.norm(100), nn.ReLU(), nn.AvgPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.feature_dim = 100 * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)

    @staticmethod
    def norm(channels: int) -> nn.Module:
        """The normalisation after each convolution: HINT's BatchNorm."""
        return nn.BatchNorm2d(channels)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def opacus_groups(channels: int) -> int:
    """GroupNorm's group count for `channels`: gcd(32, channels), as Opacus replaces a BatchNorm (opacus 1.6
    `validators/batch_norm.py`, `_batchnorm_to_groupnorm`: 32 groups after Wu & He 2018, reduced to a divisor of the
    channels). The ConvNet's 40 and 100 channels: 8 and 4 groups."""
    return math.gcd(32, channels)


class ConvNetGN(ConvNet):
    """HINT's MNIST CNN with GroupNorm in place of each BatchNorm (`opacus_groups`), the rest unchanged: a
    BatchNorm-free victim for DP-SGD. Under BatchNorm an example's gradient depends on the whole batch through its
    statistics, so per-example clipping (Abadi et al. 2016, Algorithm 1) is not defined on it; GroupNorm normalises
    each example by its own channels. Opacus refuses BatchNorm and swaps in GroupNorm (`ModuleValidator.fix`); Hong
    et al.'s DP-SGD networks have no normalisation at all (Gradient-Shaping `networks/cnns.py`). docs/fidelity.md,
    "dpsgd"."""

    name: ClassVar[str] = "convnet-gn"

    @staticmethod
    def norm(channels: int) -> nn.Module:
        return group_norm(channels)


def group_norm(channels: int) -> nn.Module:
    """GroupNorm as Opacus swaps it in for a BatchNorm (`opacus_groups`)."""
    return nn.GroupNorm(opacus_groups(channels), channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Classifier):
    """CIFAR ResNet-18 as in HINT (kuangliu layout, HINT:models.py:L73-113): 3×3 stem, no max-pool,
    four stages of two BasicBlocks (64-128-256-512), global average pool, 512-d features."""

    name: ClassVar[str] = "resnet18"

    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std):
        super().__init__(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), self.norm(64), nn.ReLU())
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(in_planes, planes, stride, self.norm), BasicBlock(planes, planes, 1, self.norm)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 512
        self.head = nn.Linear(512, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        # the global average pool, spelt as the mean over H×W that ATen makes of `adaptive_avg_pool2d(·, 1)` (bit for
        # bit the same, gradients too: test_deterministic.py), so it never depends on that fast path to stay off
        # adaptive_avg_pool2d's own kernel, whose CUDA backward has no deterministic implementation
        return self.layers(self.stem(x)).mean((2, 3))


    @staticmethod
    def norm(channels: int) -> nn.Module:
        """The normalisation after each convolution: HINT's BatchNorm."""
        return nn.BatchNorm2d(channels)


class ResNet18GN(ResNet18):
    """ResNet-18 with GroupNorm in place of each BatchNorm (stem, blocks and shortcuts; `opacus_groups`: 32 groups
    of 64-512 channels), the rest unchanged: the BatchNorm-free CIFAR victim for DP-SGD, as Opacus's
    `ModuleValidator.fix` makes it (docs/fidelity.md, "dpsgd")."""

    name: ClassVar[str] = "resnet18-gn"

    @staticmethod
    def norm(channels: int) -> nn.Module:
        return group_norm(channels)


ModelFactory = Callable[..., Classifier]
MODELS: Registry[ModelFactory] = Registry.of("model", (ConvNet, ConvNetGN, ResNet18, ResNet18GN))

# convnet, convnet-gn: two valid 5×5 convs and two 2× pools; resnet18: three stride-2 stages, and at least a 2×2 last
# stage (on a 1×1 one a final batch of one image leaves BatchNorm a single value per channel, which it cannot train on)
MIN_IMAGE_SIZE = {"convnet": 16, "convnet-gn": 16, "resnet18": 16, "resnet18-gn": 16}
DEFAULT_MODEL = {"mnist": "convnet", "cifar10": "resnet18"}  # per dataset family, paper Table I
# per dataset family, the default model with GroupNorm in place of BatchNorm: the victim of a defense that needs
# each example's gradient to be its own (`Defense.per_example`: DP-SGD)
BATCHNORM_FREE_MODEL = {"mnist": "convnet-gn", "cifar10": "resnet18-gn"}


def has_batchnorm(name: str, dataset) -> bool:
    """Whether model `name`, built for `dataset`'s shape, has a BatchNorm layer (built once per name and shape,
    on the meta device, leaving the global random stream as it was)."""
    channels, height, _ = dataset.shape
    return _has_batchnorm(name, channels, dataset.num_classes, height)


@functools.lru_cache(maxsize=64)
def _has_batchnorm(name: str, channels: int, classes: int, size: int) -> bool:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = MODELS.get(name)(channels, classes, size, [0.0] * channels, [1.0] * channels)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_fits(name: str, dataset) -> None:
    """Refuse (one line) a dataset whose images are too small for the architecture."""
    _, height, width = dataset.shape
    minimum = MIN_IMAGE_SIZE.get(name, 1)
    if min(height, width) < minimum:
        raise PoisonbenchError(f"model {name!r} needs images of at least {minimum}×{minimum} pixels; "
                               f"{dataset.name} has {height}×{width}")


def build_model(name: str, dataset, seed: int | None = None) -> Classifier:
    """Instantiate `name` for `dataset` (channels, classes, image size, normalisation). Seeded init if given."""
    factory = MODELS.get(name)
    check_fits(name, dataset)
    channels, height, _ = dataset.shape
    if seed is not None:
        torch.manual_seed(seed)
    return factory(channels, dataset.num_classes, height, dataset.mean, dataset.std)
