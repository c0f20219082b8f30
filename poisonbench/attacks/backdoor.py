"""The backdoor family (issue 85): BadNets and Blend (dirty label), SIG and Label-Consistent (clean label). Sources
and deviations: docs/fidelity.md, "Backdoor attacks"; defaults: BackdoorBench (BB) `config/attack/<name>/default.yaml`.

A backdoor attack poisons ⌊budget·n⌋ train rows with a *trigger* and, dirty-label, relabels them to the target class;
at test time the same trigger is stamped on the test images of every other class, and the attack succeeds on one
when the victim predicts the target class (ASR: docs/metrics.md, "Attack success rate").

Every trigger here is one affine map per pixel, applied to a whole batch at once:

    T(x) = clamp((1 − m) ⊙ x + a, 0, 1)          m, a: C×H×W (`Trigger.scale`, `Trigger.add`)

- BadNets (Gu et al. 2017; BB `attack/badnet.py`): a `trigger_size`² patch of value `trigger_value` (white) in the
  bottom-right corner: m = 1 and a = value on the patch, 0 elsewhere (BB's 32×32 trigger image is a 3×3 white
  square at rows/cols 29–31).
- Blend (Chen et al. 2017; BB `utils/bd_img_transform/blended.py`): T(x) = (1 − α) x + α t, m = α everywhere and
  a = α t, t a fixed pattern (BB: the Hello-Kitty image; here seeded uniform noise, `pattern_seed`).
- SIG (Barni et al. 2019; BB `utils/bd_img_transform/sig.py`): T(x) = clamp(x + Δ sin(2π j f / m)), j the column,
  m the width: m = 0 and a = the signal.

δ = T(x) − x for the poisoned rows, so a PoisonSet stores the triggered images as every PoisonSet stores its poisons;
it stores the trigger (m, a) and, dirty-label, the poisoned rows' new labels beside δ (poisons/store.py, format 2),
so `defend` applies the very trigger to the test split without rebuilding the attack (and an imported BackdoorBench
set carries its own). ε is the trigger's own bound (BadNets: its patch's pixel positions, L0; Blend: α; SIG: Δ/255,
L∞): a smaller `--eps` would clip the trigger and is refused.

- Label-Consistent (Turner, Tsipras and Madry 2019; BB `attack/lc.py`, `utils/bd_img_transform/lc.py`, MadryLab
  `label-consistent-backdoor-code`): target-class rows made hard by an error-maximising L∞ PGD against the clean
  surrogate (the `pgd` attack's machinery), then the trigger: MadryLab's `bottom-right` 3×3 pattern added at
  `amplitude` (1: white where +1, black where −1): m = 0, a = ±amplitude on the 9 pixels. Here δ is the PGD
  perturbation alone (within ε) and `defend` stamps the trigger on the rows after it (`train_trigger`).
- Sleeper Agent (Souri et al. 2022; attacks/sleeper_agent.py): target-class rows gradient-matched within ε, never
  triggered; its trigger is a patch pasted at a random place per image (`Trigger.placement_seed`, `patch`), and its
  ASR counts the source class's test images only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.errors import PoisonbenchError
from ..core.params import MAX_BATCH_SIZE, MAX_STEPS, Param
from .base import Attack, AttackContext, PoisonSet, budget_count

BB = "BackdoorBench config/attack/{}/default.yaml"
TARGET_PARAM = Param("target_class", int, 0, "The class a triggered input should be taken for (all-to-one).",
                     "BackdoorBench `attack_target: 0`", minimum=0)
DIRTY_BUDGET = 0.1  # BB `pratio: 0.1` (BadNets, Blend)
CLEAN_BUDGET = 0.05  # BB leaderboard's 5 % row: half of CIFAR-10's target class; 10 % is all of it (docs/fidelity.md)
LABEL_MODES = ("dirty", "clean")


@dataclass
class Trigger:
    """T(x) = clamp((1 − scale) ⊙ x + add, 0, 1), `scale` and `add` C×H×W float32 (module docstring).

    A patch at a random place per image (Sleeper Agent, attacks/sleeper_agent.py): `patch` = (h, w) and
    `placement_seed` set, `scale` and `add` hold the patch's map in their top-left h×w corner (zero elsewhere), and
    image i of a batch gets it at row r_i, column c_i, drawn uniformly from [0, H − h] × [0, W − w] by a CPU
    generator seeded with `placement_seed` (all rows first, then all columns: `positions`), so one batch always
    gets the same places."""

    scale: torch.Tensor
    add: torch.Tensor
    placement_seed: int | None = None
    patch: tuple[int, int] | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered batch (N×C×H×W float in [0, 1]), one elementwise op on the batch's device."""
        if self.placement_seed is not None:
            return self.apply_at(x, self.positions(len(x), tuple(x.shape[-2:])))
        scale = self.scale.to(x.device, x.dtype)
        return torch.addcmul(self.add.to(x.device, x.dtype), x, 1 - scale).clamp_(0, 1)

    def positions(self, n: int, size: tuple[int, int]) -> torch.Tensor:
        """n×2 (row, column) top-left corners of the patch for n images of `size` (H, W), int64 on the CPU."""
        h, w = self.patch
        g = torch.Generator().manual_seed(self.placement_seed)
        rows = torch.randint(0, size[0] - h + 1, (n,), generator=g)
        cols = torch.randint(0, size[1] - w + 1, (n,), generator=g)
        return torch.stack([rows, cols], 1)

    def apply_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The batch with the patch's map at `positions` (N×2, row and column of each image's top-left corner),
        whole-batch: each image's C×H×W maps are gathered from the patch by index arithmetic."""
        h, w = self.patch
        height, width = x.shape[-2:]
        at = positions.to(x.device)
        di = torch.arange(height, device=x.device).view(1, -1) - at[:, :1]  # N×H: row within the patch
        dj = torch.arange(width, device=x.device).view(1, -1) - at[:, 1:]  # N×W
        inside = (((di >= 0) & (di < h)).unsqueeze(2) & ((dj >= 0) & (dj < w)).unsqueeze(1)).unsqueeze(1)
        di, dj = di.clamp(0, h - 1).unsqueeze(2), dj.clamp(0, w - 1).unsqueeze(1)
        scale = self.scale[:, :h, :w].to(x.device, x.dtype)[:, di, dj].transpose(0, 1) * inside  # N×C×H×W
        add = self.add[:, :h, :w].to(x.device, x.dtype)[:, di, dj].transpose(0, 1) * inside
        return torch.addcmul(add, x, 1 - scale).clamp_(0, 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.placement_seed is not None:  # other names: a reader without placements refuses it (no trigger)
            return {"trigger_patch_scale": self.scale.float().contiguous(),
                    "trigger_patch_add": self.add.float().contiguous(),
                    "trigger_patch_placement": torch.tensor([self.placement_seed, *self.patch], dtype=torch.int64)}
        return {"trigger_scale": self.scale.float().contiguous(), "trigger_add": self.add.float().contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict) -> Trigger | None:
        if "trigger_patch_scale" in tensors:
            seed, h, w = (int(v) for v in tensors["trigger_patch_placement"].tolist())
            return cls(tensors["trigger_patch_scale"].float(), tensors["trigger_patch_add"].float(), seed, (h, w))
        if "trigger_scale" not in tensors:
            return None
        return cls(tensors["trigger_scale"].float(), tensors["trigger_add"].float())


def is_backdoor(cls) -> bool:
    return bool(getattr(cls, "backdoor", False))


class BackdoorAttack(Attack):
    """Base class: `trigger(shape)` (the attack's `Trigger` for C×H×W images), `label_mode` dirty (rows drawn from
    the whole split, relabelled to the target) or clean (rows drawn from the target class, labels kept)."""

    backdoor: ClassVar[bool] = True
    label_mode: ClassVar[str] = "dirty"
    default_scenario: ClassVar[str] = "backdoor"
    # False: δ is the trigger itself (T(x) − x). True (LC): δ is the attack's own perturbation within ε, and
    # `defend` stamps the stored trigger on the poisoned rows after adding it (x_poison = T(x + δ))
    train_trigger: ClassVar[bool] = False

    @classmethod
    def default_budget(cls) -> float:
        return DIRTY_BUDGET if cls.label_mode == "dirty" else CLEAN_BUDGET

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        return cls(family).trigger_eps(shape)

    def trigger_eps(self, shape: tuple[int, int, int]) -> float:
        """The trigger's own bound in the attack's norm (what `default_eps` gives for these params)."""
        raise NotImplementedError

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        raise NotImplementedError

    def trigger_spec(self) -> dict:
        """The trigger as the manifest names it (the parameters that make it)."""
        return {"kind": self.name}

    @property
    def target_class(self) -> int:
        return int(self.params["target_class"])

    def check_data(self, dataset, eps: float) -> None:
        if self.target_class >= dataset.num_classes:
            raise PoisonbenchError(f"--target-class {self.target_class} is not a class of {dataset.name!r} "
                                   f"(classes 0..{dataset.num_classes - 1})")
        need = self.trigger_eps(tuple(dataset.shape))
        if eps < need - 1e-9:
            raise PoisonbenchError(f"--eps {eps:g} is below {self.name}'s trigger bound {need:g} (it would clip the "
                                   "trigger); leave --eps out")

    def choose_rows(self, dataset, budget: float, seed: int, target=None) -> torch.Tensor:
        """Dirty label: ⌊budget·n⌋ rows of the whole split (BB draws from every class, the target's included).
        Clean label: ⌊budget·n⌋ rows of the target class (BB's pratio counts over all samples), refused where the
        class holds fewer. Both drawn from `seed` and sorted."""
        if self.label_mode == "dirty":
            return super().choose_rows(dataset, budget, seed)
        n = len(dataset.train)
        k = budget_count(budget, n)
        pool = (dataset.train.y == self.target_class).nonzero().flatten()
        if k > len(pool):
            raise PoisonbenchError(f"{self.name} poisons only target-class rows: budget {budget:g} asks for {k} of "
                                   f"{n} rows, class {self.target_class} has {len(pool)} (budget at most "
                                   f"{len(pool) / n:.4g})")
        g = torch.Generator().manual_seed(seed)
        return pool[torch.randperm(len(pool), generator=g)[:k]].sort().values

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        x = ctx.dataset.train.x[ctx.indices].float().div_(255)
        return self.trigger(tuple(x.shape[1:])).apply(x) - x

    def craft(self, ctx: AttackContext) -> PoisonSet:
        poison = super().craft(ctx)
        shape = tuple(ctx.dataset.train.x.shape[1:])
        poison.trigger = self.trigger(shape)
        if self.label_mode == "dirty":
            poison.labels = torch.full((len(poison.indices),), self.target_class, dtype=torch.long)
        poison.manifest = {"backdoor": {"target_class": self.target_class, "label_mode": self.label_mode,
                                        "trigger": self.trigger_spec(),
                                        **({"train_trigger": True} if self.train_trigger else {})}}
        return poison


def scaled(value: int, shape: tuple[int, int, int]) -> int:
    """`value` pixels of BB's 32-pixel images at this image size (at least 1): 3 → 3 on 32×32, 3 on 28×28."""
    return max(1, math.floor(value * min(shape[1:]) / 32 + 0.5))  # half up (round() gives 2.5 → 2)


class BadNets(BackdoorAttack):
    name = "badnets"
    summary = "BadNets: a white patch in the bottom-right corner, poisoned rows relabelled to the target (dirty)"
    norm = "l0"
    PARAMS = (
        TARGET_PARAM,
        Param("trigger_size", int, 3, "Side of the square patch, in pixels of a 32×32 image (scaled to the image "
              "size, at least 1).", "BackdoorBench resource/badnet/trigger_image.png: 3×3 at rows/cols 29-31 of 32",
              minimum=1, maximum=32),
        Param("trigger_value", float, 1.0, "The patch's pixel value (1: white).",
              "BackdoorBench trigger_image.png (255)", minimum=0, maximum=1),
    )

    def side(self, shape) -> int:
        return scaled(self.params["trigger_size"], shape)

    def trigger_eps(self, shape) -> float:
        return float(self.side(shape) ** 2)

    def trigger(self, shape) -> Trigger:
        s = self.side(shape)
        mask = torch.zeros(shape)
        mask[:, -s:, -s:] = 1
        return Trigger(mask, mask * self.params["trigger_value"])

    def trigger_spec(self) -> dict:
        return {"kind": "patch", "size": self.params["trigger_size"], "value": self.params["trigger_value"],
                "corner": "bottom-right"}


class Blend(BackdoorAttack):
    name = "blend"
    summary = "Blend (Chen et al.): (1 − α)·x + α·pattern, a seeded noise pattern, relabelled to the target (dirty)"
    norm = "linf"
    PARAMS = (
        TARGET_PARAM,
        Param("alpha", float, 0.2, "Blend ratio α of the pattern, train and test.",
              "BackdoorBench attack_train_blended_alpha = attack_test_blended_alpha = 0.2", positive=True,
              maximum=1, below_maximum=True),
        Param("pattern_seed", int, 0, "Seed of the uniform-noise pattern (BackdoorBench blends the Hello-Kitty "
              "image; docs/fidelity.md).", "poisonbench (the pattern; Chen et al. also blend random noise)",
              minimum=0),
    )

    def trigger_eps(self, shape) -> float:
        return float(self.params["alpha"])

    def pattern(self, shape) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.params["pattern_seed"])
        return torch.rand(shape, generator=g)

    def trigger(self, shape) -> Trigger:
        alpha = self.params["alpha"]
        return Trigger(torch.full(shape, alpha), alpha * self.pattern(shape))

    def trigger_spec(self) -> dict:
        return {"kind": "blend", "alpha": self.params["alpha"], "pattern": "uniform-noise",
                "pattern_seed": self.params["pattern_seed"]}


class SIG(BackdoorAttack):
    name = "sig"
    summary = "SIG (Barni et al.): a horizontal sinusoid on target-class rows, labels kept (clean label)"
    norm = "linf"
    label_mode = "clean"
    PARAMS = (
        TARGET_PARAM,
        Param("delta", float, 40.0, "Amplitude Δ of the signal, in 0-255 pixel units.",
              "BackdoorBench sig_delta: 40", positive=True, maximum=255, below_maximum=True),
        Param("frequency", float, 6.0, "Frequency f: periods across the image's width.", "BackdoorBench sig_f: 6",
              positive=True),
    )

    def trigger_eps(self, shape) -> float:
        return self.params["delta"] / 255

    def trigger(self, shape) -> Trigger:
        c, h, w = shape
        j = torch.arange(w, dtype=torch.float64)
        signal = (self.params["delta"] / 255 * torch.sin(2 * math.pi * j * self.params["frequency"] / w)).float()
        return Trigger(torch.zeros(shape), signal.expand(c, h, w).clone())

    def trigger_spec(self) -> dict:
        return {"kind": "sinusoid", "delta": self.params["delta"], "frequency": self.params["frequency"]}


# MadryLab's `bottom-right` trigger (BB utils/bd_img_transform/lc.py): (row, col) from the bottom-right corner, sign
LC_BOTTOM_RIGHT = (((-1, -1), 1), ((-1, -2), -1), ((-1, -3), 1), ((-2, -1), -1), ((-2, -2), 1), ((-2, -3), -1),
                   ((-3, -1), 1), ((-3, -2), -1), ((-3, -3), -1))
LC_EPS = {"mnist": 0.3, "cifar10": 16 / 255}  # CIFAR-10: BB's `_16_` adversarial bases; MNIST: Madry's MNIST bound


class LabelConsistent(BackdoorAttack):
    name = "lc"
    summary = ("Label-Consistent (Turner et al.): PGD-hardened target-class rows plus a 3×3 corner trigger, labels "
               "kept (clean label)")
    norm = "linf"
    label_mode = "clean"
    uses_surrogate = True
    train_trigger = True
    maximize = True  # error-maximising PGD (the `pgd` attack's loop)
    PARAMS = (
        TARGET_PARAM,
        Param("amplitude", float, 1.0, "Trigger amplitude: each of its 9 pixels moves by ± amplitude (clipped); 1 "
              "sets them white or black.", "BackdoorBench lc `reduced_amplitude: 1`; MadryLab config null (= 1)",
              positive=True, maximum=1),
        Param("steps", int, {"mnist": 40, "cifar10": 100}, "PGD steps of the adversarial bases.",
              "MNIST: MadryLab mnist_challenge; CIFAR-10: BB resource/label-consistent (100 steps)", minimum=1,
              maximum=MAX_STEPS),
        Param("step_size", float, {"mnist": 0.01, "cifar10": 1.5 / 255}, "PGD signed step (pixel units).",
              "MNIST: MadryLab mnist_challenge; CIFAR-10: BB resource/label-consistent (α 1.5/255)", positive=True),
        Param("random_start", bool, True, "Start from a uniform point of the ε-ball.", "MadryLab config"),
        Param("batch_size", int, {"mnist": 1000, "cifar10": 500}, "Crafting batch (per-example objective).",
              "poisonbench (speed)", minimum=1, maximum=MAX_BATCH_SIZE),
    )

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y  # the rows' own (target) class: PGD makes them hard to classify as what they are

    def trigger_eps(self, shape) -> float:
        return LC_EPS[self.family]  # ε of the PGD part, the family's default; the trigger is stamped after it

    def check_data(self, dataset, eps: float) -> None:
        if self.target_class >= dataset.num_classes:
            raise PoisonbenchError(f"--target-class {self.target_class} is not a class of {dataset.name!r} "
                                   f"(classes 0..{dataset.num_classes - 1})")

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        from .pgd import _SurrogatePGD

        return _SurrogatePGD.perturb(self, ctx)  # the PGD attack's batched, resumable loop, with these params

    def trigger(self, shape) -> Trigger:
        add = torch.zeros(shape)
        for (r, c), sign in LC_BOTTOM_RIGHT:
            add[:, r, c] = sign * self.params["amplitude"]
        return Trigger(torch.zeros(shape), add)

    def trigger_spec(self) -> dict:
        return {"kind": "lc-bottom-right", "amplitude": self.params["amplitude"]}
