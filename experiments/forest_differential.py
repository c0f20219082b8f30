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
from poisonbench.data.catalog import FOREST_MEAN, FOREST_STD
from poisonbench.data.load import load_dataset
from poisonbench.hashing import derived_seed
from poisonbench.poisons.store import load as load_poison_set

ITERATIONS = 250


def find_runs(results: Path, attack: str = "gm", method: str = "none") -> dict[int, dict]:
    """{trial: record} of the `method` runs on `attack` PoisonSets in the workspace."""
    out = {}
    for path in sorted((results / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        config = record["config"]
        poison = config.get("poison") or {}
        if config["defense"]["method"] == method and poison.get("attack") == attack:
            out[config["trial"]] = record
    return out


def our_setting(results: Path, dataset, trial: int) -> tuple[AttackContext, object, dict]:
    """(the context our craft of `trial` ran in, with its surrogate; the attack; its record), from our PoisonSet."""
    record = find_runs(results)[trial]
    poison_set = load_poison_set(results, record["config"]["poison"]["poison_id"], dataset)
    manifest = poison_set.manifest
    attack = ATTACKS.get(manifest["attack"])(dataset.family, **manifest["params"])
    target = manifest["target"]
    ctx = AttackContext(dataset, poison_set.indices, manifest["eps"], manifest["budget"], manifest["seed"],
                        torch.device("cpu"), results_root=results,
                        target=Target(target["index"], target["true_class"], target["intended_class"]),
                        loader=attack.load_surrogate)
    ctx.surrogate()
    return ctx, attack, record


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
    from forest.witchcoven.witch_matching import WitchGradientMatching

    return SimpleNamespace(options=forest.options, RandomTransform=RandomTransform, Kettle=Kettle,
                           Victim=_VictimSingle, Witch=WitchGradientMatching)


def forest_run(fm, ctx: AttackContext, restarts: int, augment: str, draws=None, init=None):
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
    witch = fm.Witch(args, setup=setup)

    victim = fm.Victim.__new__(fm.Victim)  # forest's single-model victim around our surrogate, not built by forest
    model = ForestView(ctx.surrogate(), mean, std)
    model.requires_grad_(True)
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


def our_run(ctx: AttackContext, attack, augment: bool) -> tuple[torch.Tensor, list[float], float, list]:
    """One restart of our brew (restart 0 of our craft): (δ, per-step losses, final loss, the augmentation draws)."""
    p = attack.params
    x, y, target = poison_tensors(ctx)
    matching = GradientMatching(ctx.surrogate(), target, ctx.target.intended_class)
    losses = []

    def objective(inputs, start, stop):
        loss = matching.loss(inputs, y[start:stop])
        losses.append(float(loss.detach()))
        return loss

    brew = Brew(ITERATIONS, 1, p["lr"], p["pbatch"], augment, p["lr_space"])
    delta, loss = brew.restart(ctx, "gm", x, objective, 0)
    return delta, losses, loss, draws_of(ctx, x, augment)


def draws_of(ctx: AttackContext, x: torch.Tensor, augment: bool) -> list:
    """The augmentation draws our restart 0 made (the same generator, after the δ init)."""
    if not augment:
        return []
    g = torch.Generator().manual_seed(derived_seed(ctx.seed, "gm:restart-0"))
    torch.randn(x.shape, generator=g)
    aug = crafting_augment(ctx.dataset.family, x.shape[-1])
    return [aug.draw(len(x), g) for _ in range(ITERATIONS)]


def initial_delta(ctx: AttackContext, x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(derived_seed(ctx.seed, "gm:restart-0"))
    return (torch.randn(x.shape, generator=g) * ctx.eps).clamp_(-ctx.eps, ctx.eps)


def compare(ours: list[float], theirs: list[float], d_ours: torch.Tensor, d_theirs: torch.Tensor) -> dict:
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    first = next((i for i, d in enumerate(diffs) if d > 1e-4), None)
    dd = (d_ours - d_theirs).abs()
    return {"max_abs_loss_difference": max(diffs), "first_step_loss_differs_1e-4": first,
            "loss_difference_at": {str(i): diffs[i] for i in (0, 1, 9, 49, 92, 93, 155, 217, ITERATIONS - 1)},
            "final_loss": [ours[-1], theirs[-1]],
            "delta_max_abs_difference": float(dd.max()),
            "delta_share_differing_1e-6": float((dd > 1e-6).float().mean()),
            "delta_share_differing_1/255": float((dd > 1 / 255).float().mean()),
            "loss_every_25": {str(i): [ours[i], theirs[i]] for i in range(0, ITERATIONS, 25)}}


def steps_command(args, fm, dataset) -> dict:
    ctx, attack, _ = our_setting(args.results, dataset, args.trial)
    x, _, _ = poison_tensors(ctx)
    init = initial_delta(ctx, x)
    out = {"trial": args.trial, "target": ctx.target.to_dict(), "poisons": len(x), "eps": ctx.eps,
           "params": attack.params, "variants": {}}
    for variant in args.variants:
        augment = variant != "off"
        start = time.perf_counter()
        d_ours, l_ours, _, draws = our_run(ctx, attack, augment)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        d_forest, l_forest, _ = forest_run(fm, ctx, 1, variant, draws=draws or None, init=init)
        t_forest = time.perf_counter() - start
        result = compare(l_ours, l_forest, d_ours, d_forest)
        result["seconds"] = {"ours": round(t_ours, 1), "forest": round(t_forest, 1)}
        out["variants"][variant] = result
        print(variant, json.dumps({k: v for k, v in result.items() if k != "loss_every_25"}), flush=True)
    return out


def run_cli(*argv: str) -> dict:
    done = subprocess.run(["poisonbench", *argv, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"poisonbench {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def success_command(args, fm, dataset) -> dict:
    out = {"trials": {}}
    ours_by_trial = find_runs(args.results)
    work = args.results / "forest_differential"
    work.mkdir(exist_ok=True)
    for trial in range(args.trials):
        ctx, attack, record = our_setting(args.results, dataset, trial)
        torch.manual_seed(derived_seed(ctx.seed, "forest-differential"))
        start = time.perf_counter()
        delta, _, loss = forest_run(fm, ctx, attack.params["restarts"], "forest")
        seconds = time.perf_counter() - start
        file = work / f"forest-trial{trial}.pt"
        source_ids = torch.as_tensor(dataset.train.indices)[ctx.indices]
        std = torch.tensor(FOREST_STD[dataset.family]).view(1, -1, 1, 1)
        torch.save([delta / std, source_ids], file)  # forest's `--save packed`: [poison_delta, poison_ids]
        imported = run_cli("poisons", "import", str(file), "--format", "forest", "--attack", "gm-forest",
                           "--victim", "scratch", "--target", str(ctx.target.index), "--intended",
                           str(ctx.target.intended_class), "--dataset", dataset.name, "--results", str(args.results))
        pid = imported["poison_id"]
        recipe = record["config"]["recipe"]["name"]
        trained = run_cli("defend", "--method", "none", "--poison-set", pid, "--trial", str(trial), "--recipe",
                          recipe, "--dataset", dataset.name, "--results", str(args.results))
        forest_record = trained["records"][0] if "records" in trained else trained
        mine = ours_by_trial[trial]["metrics"]
        theirs = forest_record["metrics"]
        out["trials"][str(trial)] = {
            "target": ctx.target.to_dict(), "forest_poison_id": pid, "forest_craft_seconds": round(seconds, 1),
            "forest_loss": loss, "ours_loss": min(json.loads((args.results / "poisons" / record["config"]["poison"]
                                                              ["poison_id"] / "manifest.json").read_text())
                                                  ["attack_info"]["restart_losses"]),
            "ours": {k: mine.get(k) for k in ("attack_success", "target_intended_prob", "test_acc")},
            "forest": {k: theirs.get(k) for k in ("attack_success", "target_intended_prob", "test_acc")},
            "victim_seed": [ours_by_trial[trial]["config"]["seed"], forest_record["config"]["seed"]]}
        print(trial, json.dumps(out["trials"][str(trial)]), flush=True)
    cells = out["trials"].values()
    out["ours_success"] = sum(bool(c["ours"]["attack_success"]) for c in cells)
    out["forest_success"] = sum(bool(c["forest"]["attack_success"]) for c in cells)
    out["n"] = len(out["trials"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("steps", "success"))
    parser.add_argument("--forest", type=Path, required=True, help="a checkout of forest (commit 90bd7d2)")
    parser.add_argument("--results", type=Path, required=True, help="the final grid's workspace")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--trial", type=int, default=0, help="steps: the trial whose target and bases are used")
    parser.add_argument("--trials", type=int, default=10, help="success: trials 0..N-1")
    parser.add_argument("--variants", nargs="+", default=["off", "same-draws-black", "same-draws-forest-pad"])
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
