"""`sleeper-agent`: Sleeper Agent, a hidden-trigger clean-label backdoor (Souri et al., NeurIPS 2022; the official
code: SA = `hsouri/Sleeper-Agent`, a fork of forest; sources and deviations: docs/fidelity.md, "sleeper-agent").

Threat model (SA `forest/options.py` defaults: `--threatmodel single-class`, `--backdoor_poisoning`): the poisons
are ⌊budget·n⌋ train rows of the TARGET class, labels kept, each moved by δ within an L∞ ε and never patched. At
test time a trigger patch stamped on an image of the SOURCE class should make the victim say "target".

- Trigger: a `patch_size`² patch (8 px of a 32×32 image, scaled to the image size as BadNets' square), pasted over
  the image (m = 1, a = the pattern on the patch) at a random place per image (SA `--random_patch`,
  witch_matching.py `patch_sources`). The pattern is a seeded Bernoulli(½) patch, the one SA draws when no image is
  given (`_create_patch`); SA's default loads `patches/trigger_10.png` instead (not shipped: docs/fidelity.md).
  The places of the source images used while crafting and those of the test images are drawn from two streams of
  the craft's seed (`attacks.backdoor.Trigger`, `placement_seed`).
- Poisons (SA kettle_base.py `select_poisons`, `max_gradient`): of the target class's train rows (at most
  `--num_raw_poisons` 5000, drawn from the seed where the class holds more), the ⌊budget·n⌋ whose parameter
  gradient ‖∇θ CE(f(x), y)‖ on the clean surrogate (eval mode) is largest; per-example gradients by
  `torch.func.vmap(grad)` over chunks of rows.
- Objective (SA witch_matching.py `_passenger_loss` with `--loss similarity`, witch_base.py `_initialize_brew`):
  gm's matching loss, 1 − cos(∇θ CE(f(aug(x_p + δ)), y_target), g_s), where g_s = ∇θ mean CE(f(patched source
  images), target class) over the source class's train rows (at most `--sources_train` 5000), computed once per
  model on the un-augmented patched images with the model in eval mode (`SourceMatching`).
- Optimiser: forest's brew (attacks/forest.py): randn init within ε, signed Adam at lr 0.1 in forest's normalised
  units, ×0.1 at 3/8, 5/8, 7/8 of the 250 iterations, differentiable augmentation, projection onto the ε-ball and
  the pixel box; SA's default is one restart.
- Retraining (SA witch_base.py `_run_trial`, `--retrain_scenario from-scratch`, `--retrain_iter 50`): after
  iteration i with i % retrain_iter == 0, i ≠ 0 and i ≠ T − 1 (50, 100, 150, 200 of 250: four times), a model is
  initialised afresh (its own attacker seed, never the previous weights) and trained with the surrogate's recipe
  on the train split with the current δ on the poisons (`retrain_max_epoch` None: all its epochs); g_s is
  recomputed on it and the brew goes on (Adam's state and the learning-rate schedule carry over, as SA's).

Resume: each retrain ends a segment whose state (δ, Adam's moments, the restart's generator, the retrained
model's weights) goes to `ctx.partial_dir`, and each finished restart to the brew's `RestartStore`; a killed craft
goes on from its last retrain with the numbers an uninterrupted one has.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..core.io import atomic_write_bytes, os_error_in_one_line
from ..core.params import MAX_BATCH_SIZE, MAX_DRAWS, MAX_EPOCHS, MAX_ITERATIONS, Param
from ..core.seeds import attacker_seed
from ..engine.recipes import recipe_names
from .backdoor import BackdoorAttack, Trigger, scaled
from .base import Attack, AttackContext, PoisonSet, batches, project
from .forest import Adam, RestartStore, lr_factor, milestones, step_std
from .gm import GradientMatching, parameter_gradient

SA_EPS = 16 / 255  # SA --eps 16 (options.py): the same on every dataset, as gm's (TARGETED_EPS)
SA_BUDGET = 0.01  # SA --budget 0.01
RAW_POISONS = 5000  # SA --num_raw_poisons 5000: the pool the largest gradients are chosen from
SOURCES_TRAIN = 5000  # SA --sources_train 5000: source-class train images whose patched gradient is matched
SOURCE_CHUNK = 500  # rows per chunk of g_s (execution only: the mean over all rows, up to float rounding)
NORM_CHUNK_FLOATS = 1 << 25  # per-example gradients held at once while selecting (128 MiB of float32)
RETRAIN_SEED_DOMAIN = "sleeper-agent-retrain"


def retrain_due(iteration: int, iterations: int, every: int) -> bool:
    """Whether SA retrains after 0-based `iteration` (witch_base.py `_run_trial`): every `every` iterations, never
    after the first nor the last."""
    return iteration % every == 0 and iteration != 0 and iteration != iterations - 1


def gradient_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∇θ CE(model(x_i), y_i)‖ over all trainable parameters, per row (N, float), the model as it is (eval mode
    for the selection): `torch.func.vmap(grad)` over chunks sized to hold `NORM_CHUNK_FLOATS` gradient floats."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    size = sum(v.numel() for v in params.values())

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    chunk = max(1, NORM_CHUNK_FLOATS // max(size, 1))
    out = []
    for start, stop in batches(len(x), chunk):
        grads = per_example(params, x[start:stop], y[start:stop])
        out.append(torch.sqrt(sum(g.flatten(1).double().pow(2).sum(1) for g in grads.values())))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class SourceMatching(GradientMatching):
    """gm's objective (`GradientMatching.loss`: `matching_loss` of the poison batch's gradient) against g_s, the mean
    cross-entropy gradient of the patched source images towards the target class, on a private copy of `model` in
    eval mode."""

    def __init__(self, model: torch.nn.Module, sources: torch.Tensor, target_class: int):
        self.model = copy.deepcopy(model).eval().requires_grad_(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in self.params]
        for start, stop in batches(len(sources), SOURCE_CHUNK):
            labels = torch.full((stop - start,), target_class, dtype=torch.long, device=sources.device)
            grads = parameter_gradient(self.model, self.params, sources[start:stop], labels, False)
            for t, g in zip(total, grads, strict=True):
                t.add_(g.detach(), alpha=stop - start)
        self.target_grad = [t / len(sources) for t in total]
        self.target_norm = torch.sqrt(sum(g.pow(2).sum() for g in self.target_grad))


class SegmentStore:
    """A restart's state after its last retrain (`segment-<r>.safetensors` in `directory`): δ, Adam's moments and
    step, the restart's generator, the next iteration, the retrains done, and the retrained model's weights."""

    def __init__(self, directory):
        from pathlib import Path

        self.directory = Path(directory) if directory is not None else None

    def _path(self, restart: int):
        return self.directory / f"segment-{restart:04d}.safetensors"

    def get(self, restart: int) -> dict | None:
        if self.directory is None or not self._path(restart).exists():
            return None
        try:
            return load_file(self._path(restart))
        except Exception:  # unreadable (writes are atomic, so should not happen): craft the restart again
            return None

    def put(self, restart: int, state: dict[str, torch.Tensor]) -> None:
        if self.directory is None:
            return
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        with os_error_in_one_line("an interrupted craft's state", self._path(restart)):
            atomic_write_bytes(self._path(restart), st_save(tensors))


class SleeperAgent(BackdoorAttack):
    name = "sleeper-agent"
    summary = ("Sleeper Agent (Souri et al.): target-class rows gradient-matched to patched source images, the "
               "surrogate retrained from scratch; a hidden trigger patch at test time (clean label)")
    norm = "linf"
    label_mode = "clean"
    uses_surrogate = True
    PARAMS = (
        Param("target_class", int, 0, "The class a patched source image should be taken for; the poisons are "
              "its train rows.", "poisonbench (the backdoor family's target 0; SA draws a random pair per "
              "--poisonkey: docs/fidelity.md)", minimum=0),
        Param("source_class", int, 1, "The class whose patched images should be taken for the target (the "
              "attack success rate counts its test images only).", "poisonbench (SA draws a random pair per "
              "--poisonkey, kettle_random_experiment.py: docs/fidelity.md)", minimum=0),
        Param("patch_size", int, 8, "Side of the square trigger patch, in pixels of a 32×32 image (scaled to the "
              "image size, at least 1: 7 on 28×28).", "SA --patch_size 8 (options.py)", minimum=1, maximum=32),
        Param("pattern_seed", int, 0, "Seed of the patch's Bernoulli(½) pattern (SA's default loads "
              "patches/trigger_10.png; docs/fidelity.md).", "SA witch_matching.py `_create_patch` (the pattern "
              "without --load_patch)", minimum=0),
        Param("iterations", int, 250, "Optimisation steps (per restart).", "SA --attackiter 250", minimum=1,
              maximum=MAX_ITERATIONS),
        Param("restarts", int, 1, "Restarts from a random δ (each from the clean surrogate); the lowest final loss "
              "is kept.", "SA --restarts 1", minimum=1, maximum=MAX_DRAWS),
        Param("lr", float, 0.1, "Learning rate (signed Adam in forest's normalised units: δ steps lr·σ_c pixels).",
              "SA --tau 0.1, --attackoptim signAdam", positive=True),
        Param("pbatch", int, 512, "Poisons per objective batch (gradients of all batches make one step).",
              "SA --pbatch 512", minimum=1, maximum=MAX_BATCH_SIZE),
        Param("augment", bool, True, "Forest's differentiable augmentation of the poisons while crafting (no flips "
              "for the MNIST family).", "SA --paugment (on), --data_aug default"),
        Param("retrain_iter", int, 50, "Retrain the surrogate from scratch on the poisoned split after every this "
              "many iterations (never after the first or the last).", "SA --retrain_iter 50, --retrain_scenario "
              "from-scratch", minimum=1, maximum=MAX_ITERATIONS),
        Param("retrain_epochs", int, None, "Epochs of each retraining (the recipe's schedule cut there); unset: "
              "all of the recipe's.", "SA --retrain_max_epoch None", minimum=1, maximum=MAX_EPOCHS),
        Param("surrogate_recipe", str, "forest", "Recipe of the surrogate and of every retraining (on the "
              "family's default model).", "SA --optimization conservative (hyperparameters.py: forest's "
              "strategy, 40 epochs)", choices=tuple(recipe_names())),
    )

    @classmethod
    def default_budget(cls) -> float:
        return SA_BUDGET

    def trigger_eps(self, shape) -> float:
        return SA_EPS  # ε bounds δ, not the trigger (which never touches a train row)

    def validate(self) -> None:
        if self.params["source_class"] == self.params["target_class"]:
            raise PoisonbenchError(f"sleeper-agent: --source-class and --target-class are both "
                                   f"{self.target_class}; the patch should turn one class into another")

    @property
    def source_class(self) -> int:
        return int(self.params["source_class"])

    def check_data(self, dataset, eps: float) -> None:
        for flag, c in (("--target-class", self.target_class), ("--source-class", self.source_class)):
            if c >= dataset.num_classes:
                raise PoisonbenchError(f"{flag} {c} is not a class of {dataset.name!r} "
                                       f"(classes 0..{dataset.num_classes - 1})")
        if not (dataset.train.y == self.source_class).any():
            raise PoisonbenchError(f"sleeper-agent: the train split of {dataset.name!r} has no image of the source "
                                   f"class {self.source_class} to patch")
        side = self.side(tuple(dataset.shape))
        if side > min(dataset.shape[1:]):
            raise PoisonbenchError(f"--patch-size {self.params['patch_size']} gives a {side}-pixel patch, larger "
                                   f"than the {dataset.shape[1]}×{dataset.shape[2]} images")

    # ---- the trigger ------------------------------------------------------------------------------------------

    def side(self, shape) -> int:
        return scaled(self.params["patch_size"], shape)

    def pattern(self, shape) -> torch.Tensor:
        """The C×s×s Bernoulli(½) patch (SA `_create_patch`), from `pattern_seed`."""
        s = self.side(shape)
        g = torch.Generator().manual_seed(self.params["pattern_seed"])
        return torch.bernoulli(torch.full((shape[0], s, s), 0.5), generator=g)

    def trigger(self, shape, placement_seed: int = 0) -> Trigger:
        """The patch, pasted (m = 1) at a place per image drawn from `placement_seed`."""
        s = self.side(shape)
        scale, add = torch.zeros(shape), torch.zeros(shape)
        scale[:, :s, :s] = 1
        add[:, :s, :s] = self.pattern(shape)
        return Trigger(scale, add, placement_seed, (s, s))

    def trigger_spec(self) -> dict:
        return {"kind": "patch", "size": self.params["patch_size"], "pattern": "bernoulli",
                "pattern_seed": self.params["pattern_seed"], "placement": "random"}

    # ---- the surrogate and its retrainings --------------------------------------------------------------------

    def model_spec(self, dataset) -> tuple[str, dict]:
        from .surrogate import KIND, surrogate_spec

        return KIND, surrogate_spec(dataset, None, self.params["surrogate_recipe"])

    def load_surrogate(self, ctx: AttackContext):
        from .surrogate import load_or_train_surrogate

        return load_or_train_surrogate(ctx.dataset, ctx.results_root, ctx.device, progress=ctx.progress,
                                       accel=ctx.accel, recipe=self.params["surrogate_recipe"])

    def retrain_recipe(self):
        """The surrogate's recipe, cut after `retrain_epochs` where given (its milestones kept, as SA's
        `_iterate(max_epoch=...)` keeps the scheduler of the full training)."""
        from ..engine.recipes import resolve_recipe

        recipe = resolve_recipe(self.family, self.params["surrogate_recipe"])
        epochs = self.params["retrain_epochs"]
        if epochs is None or epochs >= recipe.epochs:
            return recipe
        return resolve_recipe(self.family, self.params["surrogate_recipe"], epochs=epochs,
                              milestones=[m for m in recipe.milestones if m < epochs])

    def retrain_seed(self, dataset, seed: int, restart: int, retrain: int) -> int:
        """The attacker seed (core.seeds) of retraining `retrain` (1, 2, ...) of `restart` of the craft of `seed`."""
        from ..core.hashing import short_hash

        return attacker_seed(RETRAIN_SEED_DOMAIN, {"surrogate": short_hash(self.model_spec(dataset)[1]),
                                                   "seed": seed, "restart": restart, "retrain": retrain})

    def retrain(self, ctx: AttackContext, delta: torch.Tensor, restart: int, retrain: int) -> torch.nn.Module:
        """A model initialised afresh from its own seed and trained with `retrain_recipe` on the train split with δ
        on the poisons (labels kept); eval mode, frozen."""
        from ..core.device import to_float
        from ..engine import training
        from ..engine.models import build_model

        data, seed = ctx.dataset, self.retrain_seed(ctx.dataset, ctx.seed, restart, retrain)
        model = build_model(self.model_spec(data)[1]["model"], data, seed=seed)
        tx, ty = ctx.train_tensors()
        rows = ctx.indices.to(tx.device)
        tx[rows] = (tx[rows] + delta.to(tx.device)).clamp_(0, 1)
        vx, vy = to_float(data.val.x, ctx.device), data.val.y.to(ctx.device)
        recipe = self.retrain_recipe()
        total = recipe.epochs * ((len(ty) + recipe.batch_size - 1) // recipe.batch_size)
        description = f"{self.name} · retrain {retrain} of restart {restart + 1}"

        def on_batch(epoch: int, step: int, steps: int) -> None:
            if ctx.progress is not None:
                ctx.progress(description, epoch * steps + step, total)

        training.train(model, tx, ty, vx, vy, recipe, seed=seed, device=ctx.device, num_classes=data.num_classes,
                       on_batch=on_batch, accel=ctx.accel)
        return model.eval().requires_grad_(False)

    # ---- rows, sources, crafting -------------------------------------------------------------------------------

    def raw_pool(self, dataset, seed: int) -> torch.Tensor:
        """The target class's train rows the poisons are chosen from: all, or `RAW_POISONS` of them drawn from
        `seed` where it holds more (SA kettle_random_experiment.py `_choose_poisons_randomly`)."""
        pool = (dataset.train.y == self.target_class).nonzero().flatten()
        if len(pool) > RAW_POISONS:
            g = torch.Generator().manual_seed(derived_seed(seed, f"{self.name}:raw-poisons"))
            pool = pool[torch.randperm(len(pool), generator=g)[:RAW_POISONS]].sort().values
        return pool

    def rows_for(self, ctx: AttackContext) -> torch.Tensor:
        """⌊budget·n⌋ rows of the raw pool with the largest gradient norm on the clean surrogate (SA `max_gradient`),
        sorted; the budget refused as `choose_rows` refuses it."""
        k = len(self.choose_rows(ctx.dataset, ctx.budget, ctx.seed))
        pool = self.raw_pool(ctx.dataset, ctx.seed)
        if k > len(pool):
            raise PoisonbenchError(f"{self.name}: budget {ctx.budget:g} asks for {k} poisons, the pool of class "
                                   f"{self.target_class} holds {len(pool)}")
        if k == 0:
            return pool[:0]
        from ..core.device import to_float

        model = ctx.surrogate()
        norms = gradient_norms(model, to_float(ctx.dataset.train.x[pool], ctx.device),
                               ctx.dataset.train.y[pool].to(ctx.device))
        return pool[torch.topk(norms.cpu(), k).indices].sort().values

    def source_rows(self, dataset, seed: int) -> torch.Tensor:
        """The source class's train rows whose patched gradient is matched: all, or `SOURCES_TRAIN` of them drawn
        from `seed` where it holds more (SA `--sources_train`)."""
        pool = (dataset.train.y == self.source_class).nonzero().flatten()
        if len(pool) > SOURCES_TRAIN:
            g = torch.Generator().manual_seed(derived_seed(seed, f"{self.name}:sources"))
            pool = pool[torch.randperm(len(pool), generator=g)[:SOURCES_TRAIN]].sort().values
        return pool

    def patched_sources(self, ctx: AttackContext) -> torch.Tensor:
        """The source rows with the patch at a place per image drawn from the craft's `source-patches` stream."""
        from ..core.device import to_float

        x = to_float(ctx.dataset.train.x[self.source_rows(ctx.dataset, ctx.seed)], ctx.device)
        seed = derived_seed(ctx.seed, f"{self.name}:source-patches")
        return self.trigger(tuple(x.shape[1:]), seed).apply(x)

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        from ..core.device import to_float

        x = to_float(ctx.dataset.train.x[ctx.indices], ctx.device)
        y = ctx.dataset.train.y[ctx.indices].to(ctx.device)
        sources = self.patched_sources(ctx)
        surrogate = ctx.surrogate()
        store, restarts = RestartStore(ctx.partial_dir), self.params["restarts"]
        results, resumed, self.retrains = [], 0, 0
        for r in range(restarts):
            saved = store.get(r)
            if saved is None:
                saved = self.restart(ctx, x, y, sources, surrogate, r)
                store.put(r, *saved)
            else:
                resumed += 1
            results.append(saved)
        losses = [loss for _, loss in results]
        best = min(range(len(losses)), key=losses.__getitem__)
        self.training_summary = {"restart_losses": losses, "best_restart": best, "resumed_restarts": resumed,
                                 "retrains": self.retrains, "source_images": len(sources)}
        return results[best][0]

    def restart(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, sources: torch.Tensor,
                surrogate: torch.nn.Module, restart: int) -> tuple[torch.Tensor, float]:
        """One restart of the brew with SA's retraining: (δ on the CPU, the mean batch loss of its last iteration).
        Without a retrain it is `forest.Brew.restart` step for step (the same generator stream and draws)."""
        from .crafting_augment import crafting_augment

        p = self.params
        iterations, eps = p["iterations"], ctx.eps
        g = torch.Generator().manual_seed(derived_seed(ctx.seed, f"{self.name}:restart-{restart}"))
        delta = (torch.randn(x.shape, generator=g) * eps).clamp_(-eps, eps).to(x.device)
        sigma = step_std(ctx.dataset, x, "forest")
        augment = crafting_augment(ctx.dataset.family, x.shape[-1]) if p["augment"] else None
        steps, adam = milestones(iterations), Adam(delta)
        segments, model, start, retrains = SegmentStore(ctx.partial_dir), surrogate, 0, 0
        saved = segments.get(restart)
        if saved is not None:  # resume after the last retrain of an interrupted craft
            delta = saved["delta"].to(x.device)
            adam.m, adam.v, adam.t = saved["adam_m"].to(x.device), saved["adam_v"].to(x.device), int(saved["adam_t"])
            g.set_state(saved["generator"])
            start, retrains = int(saved["iteration"]), int(saved["retrains"])
            model = self.model_like(ctx, {k[len("model."):]: v for k, v in saved.items() if k.startswith("model.")})
        matching = SourceMatching(model, sources, self.target_class)
        grad = torch.empty_like(delta)
        description, total = f"{self.name} · {ctx.dataset.name} · restart {restart + 1}/{p['restarts']}", (
            p["restarts"] * iterations)
        loss = float("nan")
        for i in range(start, iterations):
            draws = augment.draw(len(x), g) if augment is not None else None
            losses = []
            for first, stop in batches(len(x), p["pbatch"]):
                rows = delta[first:stop].detach().requires_grad_(True)
                inputs = x[first:stop] + rows
                if augment is not None:
                    inputs = augment.apply(inputs, draws[first:stop])
                batch_loss = matching.loss(inputs, y[first:stop])
                (grad[first:stop],) = torch.autograd.grad(batch_loss, rows)
                losses.append(batch_loss.detach())
            loss = float(torch.stack(losses).mean())
            with torch.no_grad():
                step = adam.direction(grad.sign()).mul_(sigma * (p["lr"] * lr_factor(i, steps)))
                delta = project(x, delta - step, eps)
            ctx.report(description, restart * iterations + i + 1, total)
            if retrain_due(i, iterations, p["retrain_iter"]):
                retrains += 1
                self.retrains += 1
                model = self.retrain(ctx, delta, restart, retrains)
                matching = SourceMatching(model, sources, self.target_class)
                segments.put(restart, {"delta": delta, "adam_m": adam.m, "adam_v": adam.v,
                                       "adam_t": torch.tensor([adam.t]), "generator": g.get_state(),
                                       "iteration": torch.tensor([i + 1]), "retrains": torch.tensor([retrains]),
                                       **{f"model.{k}": v for k, v in model.state_dict().items()}})
        return delta.cpu(), loss

    def model_like(self, ctx: AttackContext, state: dict) -> torch.nn.Module:
        """A model of the surrogate's kind holding the weights `state` (a resumed segment's), eval mode, frozen."""
        from ..engine.models import build_model

        model = build_model(self.model_spec(ctx.dataset)[1]["model"], ctx.dataset)
        model.load_state_dict(state)
        return model.to(ctx.device).eval().requires_grad_(False)

    def craft(self, ctx: AttackContext) -> PoisonSet:
        """δ on the target-class poisons (no patch on any train row), labels kept; the PoisonSet carries the test
        trigger, its places drawn from the craft's `test-patches` stream."""
        poison = Attack.craft(self, ctx)
        shape = tuple(ctx.dataset.train.x.shape[1:])
        poison.trigger = self.trigger(shape, derived_seed(ctx.seed, f"{self.name}:test-patches"))
        poison.manifest = {"backdoor": {"target_class": self.target_class, "source_class": self.source_class,
                                        "label_mode": self.label_mode, "trigger": self.trigger_spec(),
                                        "hidden_trigger": True}}
        return poison

