"""DeepConfuse's networks (DC:MNIST/train.py, CIFAR/models/unet.py, CIFAR/models/vgg.py), as in DC's code: the
generators (MNIST: a small conv autoencoder; CIFAR-10: a U-Net) and the classifiers they are trained against
(MNIST: LeNet-BN `create_net`; CIFAR-10: VGG11 with a 2-d bottleneck). `poisonbench.attacks.deepconfuse` trains
and uses them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_resize_matrix(n_in: int, n_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D linear interpolation with `F.interpolate`'s source-index rule."""
    o = torch.arange(n_out, dtype=torch.float64, device=like.device)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(o)
    else:
        src = ((o + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = (src - lo).unsqueeze(1)
    matrix = (1 - frac) * F.one_hot(lo, n_in) + frac * F.one_hot(hi, n_in)
    return matrix.to(like.dtype)


def resize_bilinear(t: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """`F.interpolate(t, size, mode="bilinear", align_corners=...)` as two matrix products (bilinear is
    separable), the same numbers up to float rounding. Its gradient is two matrix products as well, which CUDA
    computes deterministically; `upsample_bilinear2d`'s backward there accumulates with atomics and has no
    deterministic kernel, so a DeepConfuse run on a GPU would not repeat under its seed."""
    compute = t if t.dtype in (torch.float32, torch.float64) else t.float()  # fp16/bf16 weights: too coarse
    rows = linear_resize_matrix(t.shape[-2], size[0], align_corners, compute)
    cols = linear_resize_matrix(t.shape[-1], size[1], align_corners, compute)
    return (rows @ compute @ cols.T).to(t.dtype)


class GlobalMeanPool(nn.Module):
    """`nn.AdaptiveAvgPool2d(1)` as the mean over H×W (N×C×1×1) that ATen makes of it (the same numbers), spelt out
    so the pool never depends on that fast path to stay off `adaptive_avg_pool2d`'s own kernel, whose CUDA backward
    has no deterministic implementation (it would raise under `--deterministic on`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class MNISTAutoencoder(nn.Module):
    """DC MNIST/models.py generator: conv encoder 1→16→64, transposed-conv decoder 64→128→64→1, BN, tanh."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(16, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.MaxPool2d(2, stride=1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 128, 3, stride=2), nn.BatchNorm2d(128), nn.ReLU(True),
            nn.ConvTranspose2d(128, 64, 5, stride=3, padding=1), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.ConvTranspose2d(64, channels, 2, stride=2, padding=1), nn.BatchNorm2d(channels), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        if out.shape[-2:] != x.shape[-2:]:  # only 28×28 maps exactly onto itself; other sizes are resampled
            out = resize_bilinear(out, x.shape[-2:], align_corners=False)
        return out


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class UNet(nn.Module):
    """DC CIFAR/models/unet.py: double convs 3→64→128→256→512 with AvgPool2d(2) downsampling, bilinear ×2
    upsampling (align_corners=True) with skip concatenation, then Conv1×1(64→3) + BatchNorm2d(3) + tanh."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.down1, self.down2 = _double_conv(channels, 64), _double_conv(64, 128)
        self.down3, self.down4 = _double_conv(128, 256), _double_conv(256, 512)
        self.pool = nn.AvgPool2d(2)
        self.up3, self.up2, self.up1 = _double_conv(768, 256), _double_conv(384, 128), _double_conv(192, 64)
        self.last = nn.Sequential(nn.Conv2d(64, channels, 1), nn.BatchNorm2d(channels), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(t, skip):
            t = resize_bilinear(t, skip.shape[-2:], align_corners=True)
            return torch.cat([t, skip], 1)

        c1 = self.down1(x)
        c2 = self.down2(self.pool(c1))
        c3 = self.down3(self.pool(c2))
        c4 = self.down4(self.pool(c3))
        out = self.up3(up(c4, c3))
        out = self.up2(up(out, c2))
        out = self.up1(up(out, c1))
        return self.last(out)


# ---------------------------------------------------------------- classifiers used inside training


class MNISTNet(nn.Module):
    """DC MNIST `create_net()`: Conv(1→20,k5)-BN-ReLU-AvgPool2, Conv(20→50,k5)-BN-ReLU-AvgPool2,
    FC→500-BN1d-ReLU, FC 500→C, BN1d(C)."""

    def __init__(self, channels: int, num_classes: int, size: int):
        super().__init__()
        side = ((size - 4) // 2 - 4) // 2
        self.net = nn.Sequential(
            nn.Conv2d(channels, 20, 5), nn.BatchNorm2d(20), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(20, 50, 5), nn.BatchNorm2d(50), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(50 * side * side, 500), nn.BatchNorm1d(500), nn.ReLU(),
            nn.Linear(500, num_classes), nn.BatchNorm1d(num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BottleneckVGG11(nn.Module):
    """DC CIFAR/models/vgg.py VGG11 as modified there: the conv stack ends with Conv2d(512, 2, 1) and the
    classifier is Linear(2, C) — a 2-dimensional bottleneck, reproduced as-is."""

    def __init__(self, channels: int, num_classes: int, size: int):
        super().__init__()
        layers, cin = [], channels
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
                cin = v
        layers += [nn.Conv2d(512, 2, 1), GlobalMeanPool(), nn.Flatten()]  # DC: nn.AdaptiveAvgPool2d(1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


GENERATORS = {"mnist": MNISTAutoencoder, "cifar10": UNet}
CLASSIFIERS = {"mnist": MNISTNet, "cifar10": BottleneckVGG11}
