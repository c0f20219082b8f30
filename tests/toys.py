"""Throw-away extensions for the tests of the extension points: an attack, a defense and a scenario, each one
class that a test registers for its own duration (`registered`), as a new module plus its registry line would."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from poisonbench.attacks.base import AttackContext, budget_count
from poisonbench.attacks.targeted import TargetedAttack, common_params
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.hashing import short_hash
from poisonbench.core.params import Param
from poisonbench.engine.hooks import Defense
from poisonbench.engine.model_cache import load_or_train
from poisonbench.engine.models import build_model
from poisonbench.engine.training import train_fresh
from poisonbench.experiment.scenarios import ModelRequest, Scenario


class SmallConvNet(nn.Module):
    """One 3×3 convolution with BatchNorm and a linear head, on 8×8 one-channel images, with the `features` and
    `head` that poisonbench's models expose: the model of the defenses' mechanism tests."""

    def __init__(self, classes: int = 3, channels: int = 6):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3), nn.BatchNorm2d(channels), nn.ReLU())
        self.head = nn.Linear(channels * 6 * 6, classes)

    def features(self, x):
        return self.conv(x).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


@contextmanager
def registered(registry, name, entry):
    """`entry` in `registry` under `name` for the block (the test's registration line), removed afterwards."""
    registry.add(name, entry)
    try:
        yield entry
    finally:
        del registry._entries[name]


class ToyTargeted(TargetedAttack):
    """Targeted: poisons drawn from the intended class, each moved a fraction of ε toward the target image (no
    surrogate: quick)."""

    name = "toy-targeted"
    summary = "test attack: intended-class rows nudged toward the target"
    uses_surrogate = False
    PARAMS = (*common_params("scratch"),
              Param("toy_scale", float, 0.5, "Fraction of ε the poisons move.", "tests/toys.py", positive=True,
                    maximum=1))

    def choose_rows(self, dataset, budget, seed, target=None):
        if target is not None and target.rows is not None:
            return super().choose_rows(dataset, budget, seed, target)
        pool = (dataset.train.y == target.intended_class).nonzero().flatten()
        k = budget_count(budget, len(dataset.train))
        if k > len(pool):
            raise PoisonbenchError(f"budget {budget} asks for {k} rows; the intended class has {len(pool)}")
        g = torch.Generator().manual_seed(seed)
        return pool[torch.randperm(len(pool), generator=g)[:k]].sort().values

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        x = ctx.dataset.train.x[ctx.indices].float() / 255
        aim = ctx.dataset.test.x[ctx.target.index].float() / 255
        return (aim - x).clamp(-ctx.eps, ctx.eps) * self.params["toy_scale"]


class ToyDefense(Defense):
    """Notes what each hook saw: raw batches before augmentation, the eval-mode forward, a model trained first."""

    name = "toy"
    summary_text = "test defense"
    PARAMS = (
        Param("toy_level", float, 0.01, "Bernoulli ± noise added to each raw batch.", "tests/toys.py", minimum=0),
        Param("toy_pretrain", bool, False, "Train a model first (as a Deep k-NN filter does).", "tests/toys.py"),
    )

    def prepare(self, ctx):
        self.seen = {"raw_calls": 0, "batch_calls": 0, "raw_unaugmented": True, "eval_forward_training": None,
                     "hooks_see_poison_mask": hasattr(ctx, "poisoned")}
        if self.params["toy_pretrain"]:
            model = train_fresh(ctx)
            with torch.no_grad():
                pred = model(ctx.train_x).argmax(1)
            self.seen.update(pretrained_train_acc=(pred == ctx.train_y).float().mean().item(),
                             pretrained_eval=not model.training,
                             pretrained_frozen=not any(p.requires_grad for p in model.parameters()))
        return None

    def batch_raw(self, ctx, x, y, idx):
        self.seen["raw_calls"] += 1
        self.seen["raw_unaugmented"] &= bool(torch.equal(x, ctx.train_x[idx]))
        signs = torch.randint(0, 2, x.shape, generator=ctx.generator, device=x.device) * 2 - 1
        return (x + self.params["toy_level"] * signs).clamp(0, 1), y

    def batch(self, ctx, x, y, idx):
        self.seen["batch_calls"] += 1
        with ctx.eval_mode() as forward:
            self.seen["eval_forward_training"] = ctx.model.training
            forward(x[:2])
        self.seen["training_after_eval"] = ctx.model.training
        return x, y

    def summary(self, poisoned=None):
        return {**self.seen, "summary_sees_mask": poisoned is not None}


TRANSFER_FRACTION = 0.1


class ToyTransfer(Scenario):
    """Transfer learning in miniature: a feature extractor pre-trained on 90 % of the clean split (cached), frozen,
    a fresh head trained on the other 10 %; adds the size of that set to the metrics."""

    name = "toy-transfer"
    summary = "test scenario"

    def split(self, data):
        g = torch.Generator().manual_seed(7)
        order = torch.randperm(len(data.train), generator=g)
        k = int(TRANSFER_FRACTION * len(order))
        return order[k:].sort().values, order[:k].sort().values  # (pre-training rows, transfer rows)

    def train_rows(self, data, trial, plan):
        return self.split(data)[1]

    def build_model(self, request: ModelRequest) -> nn.Module:
        pretrain_rows, _ = self.split(request.dataset)
        spec = {"dataset_fingerprint": request.dataset.fingerprint, "model": request.model,
                "rows": short_hash(pretrain_rows.tolist()), "epochs": 2}
        model, self.extractor_info = load_or_train("extractors", spec, request.dataset, request.device,
                                                   results_root=request.results_root, rows=pretrain_rows,
                                                   recipe_overrides={"epochs": 2}, accel=request.accel)
        model.requires_grad_(False)
        fresh = build_model(request.model, request.dataset, seed=request.seed)
        model.head = fresh.head.to(request.device)  # re-initialised, trainable
        self.model = model
        return model

    def metrics(self, model, tensors, plan):
        return {"toy_transfer_rows": int(TRANSFER_FRACTION * len(tensors["train"][1]))}
