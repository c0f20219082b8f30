"""Forest's own brew beside ours (issue 54 item 7); the write-up is experiments/forest_differential.md.

Forest (JonasGeiping/poisoning-gradient-matching, commit 90bd7d2) is read and run from a checkout given with
--forest, never vendored and never a dependency. Both brews start from the same surrogate weights (ours, from the
final grid's workspace), the same target, intended class and bases (our PoisonSet's), and, for `steps`, the same δ
initialisation (our restart's randn draw, divided by forest's σ: forest's δ lives in its normalised space).

    python experiments/forest_differential.py steps --forest DIR --results R [--trial 0] [--out FILE.json]
    python experiments/forest_differential.py success --forest DIR --results R [--trials 10] [--out FILE.json]

`steps`: one restart of 250 iterations by each brew, per-step crafting loss and final δ compared, in three
variants: no crafting augmentation; augmentation with the same random draws and black padding (forest's
`RandomTransform` wrapped so that it pads with black pixels, ours does); the same draws with forest's own padding
(zero in its normalised space: the mean grey). Flips are off in the augmented variants (ours has none for digits).

`success`: for each trial, forest's brew as forest runs it (its randn init and augmentation, MNIST flips included,
drawn from the global RNG seeded per trial) with our restarts, written as forest's packed export, imported with
`poisonbench poisons import --format forest --attack gm-forest`, and trained by our victim (`defend --method none
--poison-set ID --trial T`, the same victim seed as our run of trial T); beside it, our `none` run of that trial.

R: the workspace of experiments/grids/targeted_forest_final.toml (its GM PoisonSets and `none` runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext, Target
from poisonbench.attacks.crafting_augment import crafting_augment
from poisonbench.attacks.forest import Brew, poison_tensors
from poisonbench.attacks.gm import GradientMatching
from poisonbench.core.hashing import derived_seed
from poisonbench.data.catalog import FOREST_MEAN, FOREST_STD
from poisonbench.data.load import load_dataset
from poisonbench.poisons.store import load as load_poison_set

ITERATIONS = 250


def none_runs(results: Path) -> dict[str, dict]:
    """{poison id: record} of the `none` runs on targeted PoisonSets in the workspace."""
    out = {}
    for path in sorted((results / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        poison = record["config"].get("poison") or {}
        if record["config"]["defense"]["method"] == "none" and poison.get("poison_id"):
            out[poison["poison_id"]] = record
    return out


FINAL_CELLS = {"gm": (32 / 255, 0.04), "bp": (32 / 255, 0.01), "fc": (32 / 255, 0.01)}  # the final grid's


def our_poison_set(results: Path, trial: int, attack: str = "gm") -> str:
    """The id of our PoisonSet of the final grid's `attack` cell for `trial` (its craft seed is the trial's)."""
    eps, budget = FINAL_CELLS[attack]
    for path in sorted((results / "poisons").glob("*/manifest.json")):
        m = json.loads(path.read_text())
        if (m["attack"], m["seed"], m["budget"], m["params"].get("bases"), m["params"].get("ensemble", 1)) == (
                attack, trial, budget, "random", 1) and abs(m["eps"] - eps) < 1e-9:
            return m["poison_id"]
    raise SystemExit(f"no {attack} PoisonSet of trial {trial} under {results}/poisons: run the final grid first")


def our_setting(results: Path, dataset, trial: int, attack: str = "gm") -> tuple[AttackContext, object]:
    """(the context our craft of `trial` ran in, with its surrogate; the attack), from our PoisonSet."""
    poison_set = load_poison_set(results, our_poison_set(results, trial, attack), dataset)
    manifest = poison_set.manifest
    attack = ATTACKS.get(manifest["attack"])(dataset.family, **manifest["params"])
    target = manifest["target"]
    ctx = AttackContext(dataset, poison_set.indices, manifest["eps"], manifest["budget"], manifest["seed"],
                        torch.device("cpu"), results_root=results,
                        target=Target(target["index"], target["true_class"], target["intended_class"]),
                        loader=attack.load_surrogate)
    ctx.surrogate()
    return ctx, attack


class ForestBody(nn.Module):
    """Our model's penultimate features seen from forest's normalised space: x = x_n·σ + μ, then `features`."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.model.features(x_n * self.std + self.mean)


class ForestView(nn.Module):
    """Our classifier with forest's interface: inputs in forest's normalised space, children (body, head) as
    forest's `bypass_last_layer` expects, and `parameters()` in our model's own order (the head is our model's)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.body = ForestBody(model, mean, std)
        self.head = model.head

    def forward(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x_n))


def forest_modules(forest_dir: Path):
    sys.path.insert(0, str(forest_dir))
    import forest
    from forest.data.diff_data_augmentation import RandomTransform
    from forest.data.kettle import Kettle
    from forest.victims.victim_single import _VictimSingle
    from forest.witchcoven.witch_bullseye import WitchBullsEye
    from forest.witchcoven.witch_matching import WitchGradientMatching
    from forest.witchcoven.witch_poison_frogs import WitchFrogs

    return SimpleNamespace(options=forest.options, RandomTransform=RandomTransform, Kettle=Kettle,
                           Victim=_VictimSingle, witches={"gm": WitchGradientMatching, "bp": WitchBullsEye,
                                                          "fc": WitchFrogs})


def forest_run(fm, ctx: AttackContext, restarts: int, augment: str, draws=None, init=None, attack: str = "gm"):
    """Forest's brew (`_Witch._brew`) on our surrogate and our poisons. Returns (δ in pixels, per-step losses of
    the last restart, final loss). `augment`: off | forest (its MNIST RandomTransform, flips included, global RNG)
    | same-draws-black | same-draws-forest-pad (our draws, no flips; black or forest's padding)."""
    x, y, target = poison_tensors(ctx)
    family = ctx.dataset.family
    mean = torch.tensor(FOREST_MEAN[family]).view(1, -1, 1, 1)
    std = torch.tensor(FOREST_STD[family]).view(1, -1, 1, 1)
    argv = ["--dataset", "MNIST" if family == "mnist" else "CIFAR10", "--eps", repr(ctx.eps * 255),
            "--budget", repr(ctx.budget), "--restarts", str(restarts), "--attackiter", str(ITERATIONS)]
    if augment == "off":
        argv.append("--paugment")  # forest's flag switches its crafting augmentation off
    args = fm.options().parse_args(argv)
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    witch = fm.witches[attack](args, setup=setup)

    victim = fm.Victim.__new__(fm.Victim)  # forest's single-model victim around our surrogate, not built by forest
    model = ForestView(copy.deepcopy(ctx.surrogate()), mean, std).requires_grad_(True)
    victim.args, victim.model, victim.criterion = args, model, nn.CrossEntropyLoss()
    victim.optimizer = victim.scheduler = victim.defs = None

    x_n = (x - mean) / std
    ids = torch.arange(len(x))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_n, y, ids), batch_size=args.pbatch,
                                         shuffle=False)
    side = x.shape[-1]
    params = dict(source_size=side, target_size=side, shift=4 if family == "mnist" else 8)
    transform = fm.RandomTransform(**params, fliplr=augment == "forest", mode="bilinear")
    black = (0 - mean) / std  # a black pixel in forest's normalised space

    def augment_fn(inputs, randgen=None):
        if augment == "same-draws-black":
            return transform(inputs - black, randgen) + black
        return transform(inputs, randgen)

    kettle = SimpleNamespace(targetset=[(((target - mean) / std)[0], ctx.target.true_class, 0)],
                             poison_setup={"intended_class": [ctx.target.intended_class]},
                             poisonloader=loader, poison_lookup={i: i for i in range(len(x))},
                             dm=mean, ds=std, augment=augment_fn, poison_ids=ids, args=args, setup=setup,
                             trainset=_Trainset(x_n[0], FOREST_STD[family]))
    if init is not None:
        kettle.initialize_poison = lambda initializer=None: (init / std).clone()
    else:  # forest's own `Kettle.initialize_poison` (randn·ε/σ/255, clipped), from the global RNG
        kettle.initialize_poison = lambda initializer=None: fm.Kettle.initialize_poison(kettle, initializer)

    if draws is not None:  # our restart's per-iteration draws, in forest's convention (its grid moves the other way)
        feed = iter(draws)

        def control(inputs, labels, poison_slices, batch_positions):
            d = next(feed)
            randgen = torch.stack([1 - d[:, 0], 1 - d[:, 1], torch.zeros(len(d)), torch.zeros(len(d))], dim=1)
            return inputs, labels, poison_slices, batch_positions, randgen

        victim.distributed_control = control

    steps, batch_losses = [], []
    batched_step = witch._batched_step

    def recording_step(*a, **k):
        loss, prediction = batched_step(*a, **k)
        batch_losses.append(loss)
        if len(batch_losses) == len(loader):
            steps.append(sum(batch_losses) / len(batch_losses))
            batch_losses.clear()
        return loss, prediction

    witch._batched_step = recording_step
    delta_n = witch._brew(victim, kettle)
    return (delta_n * std).float(), steps[-ITERATIONS:], witch.stat_optimal_loss


class _Trainset:
    """What forest's `initialize_poison` reads of its trainset: the image shape and σ."""

    def __init__(self, image: torch.Tensor, std):
        self.image, self.data_std = image, std

    def __getitem__(self, i):
        return self.image, 0


def our_run(ctx: AttackContext, attack, augment: bool, jitter: float = 0.0):
    """One restart of our brew (restart 0 of our craft): (δ, per-step losses, final loss, the augmentation draws,
    the objective's gradient at the final δ). `jitter`: the clean images moved by ±jitter (a float-noise floor)."""
    p = attack.params
    x, y, target = poison_tensors(ctx)
    if jitter:
        x = (x + jitter * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)
    if attack.name == "gm":
        matching = GradientMatching(ctx.surrogate(), target, ctx.target.intended_class)
        loss_of = matching.loss
    else:  # forest's bullseye and poison-frogs objectives, as our bp.py and fc.py define them
        from poisonbench.attacks.bp import bullseye_loss
        from poisonbench.attacks.fc import poison_frogs_loss

        model = ctx.surrogate()
        with torch.no_grad():
            target_features = model.features(target)
        feature_loss = bullseye_loss if attack.name == "bp" else poison_frogs_loss

        def loss_of(inputs, labels):
            return feature_loss(model.features(inputs), target_features)
    losses = []

    def objective(inputs, start, stop):
        loss = loss_of(inputs, y[start:stop])
        losses.append(float(loss.detach()))
        return loss

    brew = Brew(ITERATIONS, 1, p["lr"], p["pbatch"], augment, p["lr_space"])
    delta, loss = brew.restart(ctx, attack.name, x, objective, 0)
    rows = delta.detach().clone().requires_grad_(True)
    (final_grad,) = torch.autograd.grad(loss_of(x + rows, y), rows)  # un-augmented: where the objective is flat
    return delta, losses, loss, draws_of(ctx, x, augment, attack.name), final_grad


def draws_of(ctx: AttackContext, x: torch.Tensor, augment: bool, name: str = "gm") -> list:
    """The augmentation draws our restart 0 made (the same generator, after the δ init)."""
    if not augment:
        return []
    g = torch.Generator().manual_seed(derived_seed(ctx.seed, f"{name}:restart-0"))
    torch.randn(x.shape, generator=g)
    aug = crafting_augment(ctx.dataset.family, x.shape[-1])
    return [aug.draw(len(x), g) for _ in range(ITERATIONS)]


def initial_delta(ctx: AttackContext, x: torch.Tensor, name: str = "gm") -> torch.Tensor:
    g = torch.Generator().manual_seed(derived_seed(ctx.seed, f"{name}:restart-0"))
    return (torch.randn(x.shape, generator=g) * ctx.eps).clamp_(-ctx.eps, ctx.eps)


def compare(ours: list[float], theirs: list[float], d_ours: torch.Tensor, d_theirs: torch.Tensor,
            grad: torch.Tensor) -> dict:
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    first = next((i for i, d in enumerate(diffs) if d > 1e-4), None)
    dd = (d_ours - d_theirs).abs()
    differ = dd > 1 / 255
    g = grad.abs() / grad.abs().max()
    return {"max_abs_loss_difference": max(diffs), "first_step_loss_differs_1e-4": first,
            "loss_difference_at": {str(i): diffs[i] for i in (0, 1, 9, 49, 92, 93, 155, 217, ITERATIONS - 1)},
            "final_loss": [ours[-1], theirs[-1]],
            "delta_max_abs_difference": float(dd.max()),
            "delta_share_differing_1e-6": float((dd > 1e-6).float().mean()),
            "delta_share_differing_1/255": float(differ.float().mean()),
            # |∂loss/∂δ| at our final δ (relative to its largest entry): where the two δ differ vs everywhere
            "relative_gradient_median_where_differing": float(g[differ].median()) if differ.any() else None,
            "relative_gradient_median_everywhere": float(g.median()),
            "loss_every_25": {str(i): [ours[i], theirs[i]] for i in range(0, ITERATIONS, 25)}}


def steps_command(args, fm, dataset) -> dict:
    ctx, attack = our_setting(args.results, dataset, args.trial, args.attack)
    x, _, _ = poison_tensors(ctx)
    init = initial_delta(ctx, x, args.attack)
    out = {"attack": args.attack, "trial": args.trial, "target": ctx.target.to_dict(), "poisons": len(x),
           "eps": ctx.eps, "params": attack.params, "variants": {}}
    for variant in args.variants:
        augment = variant != "off"
        start = time.perf_counter()
        d_ours, l_ours, _, draws, grad = our_run(ctx, attack, augment)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        d_forest, l_forest, _ = forest_run(fm, ctx, 1, variant, draws=draws or None, init=init,
                                           attack=args.attack)
        t_forest = time.perf_counter() - start
        result = compare(l_ours, l_forest, d_ours, d_forest, grad)
        result["seconds"] = {"ours": round(t_ours, 1), "forest": round(t_forest, 1)}
        if args.noise_floor:  # ours against ours on images moved by 1e-7: what float rounding alone does
            d_jit, l_jit, *_ = our_run(ctx, attack, augment, jitter=1e-7)
            result["noise_floor"] = {k: v for k, v in compare(l_ours, l_jit, d_ours, d_jit, grad).items()
                                     if k != "loss_every_25"}
        out["variants"][variant] = result
        print(variant, json.dumps({k: v for k, v in result.items() if k != "loss_every_25"}), flush=True)
    return out


def run_cli(*argv: str) -> dict:
    command = [sys.executable, "-m", "poisonbench.cli.main", *argv, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"poisonbench {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def success_command(args, fm, dataset) -> dict:
    """Forest's poisons for trials 0..N-1 (resumable: a trial's forest file, once written, is kept) trained by our
    victim; our `none` run of each trial beside them (pending until the final grid has run it)."""
    out = {"trials": {}}
    ours_by_poison = none_runs(args.results)
    work = args.results / "forest_differential"
    work.mkdir(exist_ok=True)
    std = torch.tensor(FOREST_STD[dataset.family]).view(1, -1, 1, 1)
    name = args.attack
    prefix = "forest" if name == "gm" else f"forest-{name}"  # GM's files kept their first name
    for trial in range(args.start, args.trials):
        ctx, attack = our_setting(args.results, dataset, trial, name)
        file, info_file = work / f"{prefix}-trial{trial}.pt", work / f"{prefix}-trial{trial}.json"
        if not info_file.exists():
            torch.manual_seed(derived_seed(ctx.seed, "forest-differential"))
            start = time.perf_counter()
            delta, _, loss = forest_run(fm, ctx, attack.params["restarts"], "forest", attack=name)
            source_ids = torch.as_tensor(dataset.train.indices)[ctx.indices]
            torch.save([delta / std, source_ids], file)  # forest's `--save packed`: [poison_delta, poison_ids]
            info_file.write_text(json.dumps({"forest_loss": loss,
                                             "forest_craft_seconds": round(time.perf_counter() - start, 1)}))
        info = json.loads(info_file.read_text())
        # gray: BP/FC brewed on our gray-box attacker extractor, GM on our surrogate (seeded apart from the victim)
        imported = run_cli("poisons", "import", str(file), "--format", "forest", "--attack", f"{name}-forest",
                           "--threat", attack.params.get("threat") or "gray",
                           "--victim", attack.params["scenario"], "--target", str(ctx.target.index), "--intended",
                           str(ctx.target.intended_class), "--dataset", dataset.name, "--results", str(args.results))
        trained = run_cli("defend", "--method", "none", "--poison-set", imported["poison_id"], "--trial",
                          str(trial), "--recipe", args.recipe, "--dataset", dataset.name, "--results",
                          str(args.results))
        forest_record = json.loads(Path(trained["path"]).read_text())
        ours_manifest = json.loads((args.results / "poisons" / our_poison_set(args.results, trial, name) /
                                    "manifest.json").read_text())
        row = {"target": ctx.target.to_dict(), "forest_poison_id": imported["poison_id"], **info,
               "ours_loss": min(ours_manifest["attack_info"]["restart_losses"]),
               "forest": {k: forest_record["metrics"].get(k)
                          for k in ("attack_success", "target_intended_prob", "test_acc")},
               "forest_victim_seed": forest_record["config"]["seed"]}
        record = ours_by_poison.get(ours_manifest["poison_id"])
        if record is not None:
            assert record["config"]["trial"] == trial
            row["ours"] = {k: record["metrics"].get(k) for k in ("attack_success", "target_intended_prob", "test_acc")}
            row["ours_victim_seed"] = record["config"]["seed"]
        out["trials"][str(trial)] = row
        print(trial, json.dumps(row), flush=True)
    cells = list(out["trials"].values())
    out["forest_success"] = sum(bool(c["forest"]["attack_success"]) for c in cells)
    out["ours_success"] = sum(bool(c["ours"]["attack_success"]) for c in cells if "ours" in c)
    out["ours_n"] = sum("ours" in c for c in cells)
    out["n"] = len(cells)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("steps", "success"))
    parser.add_argument("--forest", type=Path, required=True, help="a checkout of forest (commit 90bd7d2)")
    parser.add_argument("--results", type=Path, required=True, help="the final grid's workspace")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--trial", type=int, default=0, help="steps: the trial whose target and bases are used")
    parser.add_argument("--attack", choices=("gm", "bp", "fc"), default="gm", help="whose brew")
    parser.add_argument("--trials", type=int, default=10, help="success: trials 0..N-1")
    parser.add_argument("--start", type=int, default=0, help="success: begin at this trial (parallel processes)")
    parser.add_argument("--recipe", default="forest", help="success: the victim's recipe (the final grid's)")
    parser.add_argument("--variants", nargs="+", default=["off", "same-draws-black", "same-draws-forest-pad"])
    parser.add_argument("--noise-floor", action="store_true",
                        help="steps: also run ours on images moved by 1e-7 (what float rounding alone does)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fm = forest_modules(args.forest)
    dataset = load_dataset(args.dataset)
    result = (steps_command if args.command == "steps" else success_command)(args, fm, dataset)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
