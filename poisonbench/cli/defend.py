"""`poisonbench defend`: train with a defense (or none) and write one record per trial."""

from __future__ import annotations

import functools
import inspect
import json

import typer
from rich.table import Table

from ..core.errors import PoisonbenchError
from ..data import parse_npz_split
from ..defenses import DEFENSES
from ..engine.checkpoints import CHECKPOINT_EVERY
from ..engine.recipes import resolve_recipe
from ..experiment.defend import defend as run_defend
from ..experiment.defend import prepare as run_prepare
from ..experiment.records import RunStore
from ..experiment.scenarios import parse_poison_sets
from ..experiment.spec import DefendSpec
from . import options
from .generated import chosen_values, collect_options, typer_parameters, with_options
from .progress import RichReporter, stdout_console

HELP = "Train on the (optionally poisoned) train split with a defense; one record per trial under results/runs/."


def _milestones(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise PoisonbenchError(f"--milestones must be comma-separated integers, got {text!r}") from None


def defend(
    method: str = typer.Option("none", "--method", help="Defense to train with."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    model: str = typer.Option(None, "--model", help="Model (convnet, resnet18); default: the dataset's (Table I)."),
    recipe: str = typer.Option(None, "--recipe", help="Training recipe: paper | quick | forest (default: forest for "
                                                       "targeted runs on the MNIST family, else paper)."),
    epochs: int = typer.Option(None, "--epochs", help="Override the recipe's epochs (milestones scale with it)."),
    lr: float = typer.Option(None, "--lr", help="Override the learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the batch size."),
    momentum: float = typer.Option(None, "--momentum", help="Override the SGD momentum."),
    nesterov: bool = typer.Option(None, "--nesterov/--no-nesterov", help="Override Nesterov momentum."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="Override the weight decay."),
    milestones: str = typer.Option(None, "--milestones", help="Override lr-decay epochs, e.g. 30,50,70 ('' for none)."),
    augment: str = typer.Option(None, "--augment", help="Override augmentation: none | crop-flip | shift."),
    scenario: str = typer.Option(None, "--scenario", help="What is poisoned and trained."),
    poison_ratio: float = typer.Option(0.0, "--poison-ratio",
                                       help="ρ: fraction of the train split poisoned by the untargeted mix "
                                            "(Table II), split equally among --attacks."),
    attacks: str = typer.Option(None, "--attacks",
                                help="Comma-separated attacks of the untargeted mix (default: pgd,dap,durp,"
                                     "deepconfuse)."),
    poisons: str = typer.Option(None, "--poisons", metavar="ATTACK=ID,...",
                                help="Use these existing PoisonSets (from `poisonbench craft ... --budget 1`, e.g. "
                                     "deepconfuse=<id> crafted from DC's own generator) instead of the mix's "
                                     "default ones."),
    poison_set: str = typer.Option(None, "--poison-set", metavar="ID",
                                   help="Train on exactly this PoisonSet, every row it covers poisoned (e.g. the "
                                        "paper's own mix from `poisonbench poisons import FILE`, or a `craft "
                                        "--budget` < 1); instead of --poison-ratio."),
    attack: str = typer.Option(None, "--attack", help="Targeted attack (Table III): gm (default scenario scratch), "
                                                       "bp, fc (transfer); each trial crafts or reuses its poisons."),
    eps: float = typer.Option(None, "--eps", help="Targeted: L∞ bound in pixel units, in (0, 1); default 16/255."),
    budget: float = typer.Option(None, "--budget", help="Targeted: fraction of the train split poisoned, all from "
                                                        "the intended class; default 0.01 (490 CIFAR-10 images)."),
    target: int = options.Target,
    intended: int = options.Intended,
    setup: str = options.Setup,
    setup_index: int = options.SetupIndex,
    attack_params: str = typer.Option(None, "--attack-params", metavar="NAME=VALUE,...",
                                      help="Targeted: options of --attack (see `craft --help`), e.g. "
                                           "restarts=1,iterations=50; default: the attack's defaults."),
    trials: int = typer.Option(1, "--trials", help="Run trials 0..N-1 with seeds seed+t."),
    trial: int = typer.Option(None, "--trial", help="Run only trial T (seed seed+T; same record as trial T of "
                                                   "--trials N), so a sweep can queue trials one by one."),
    seed: int = options.Seed,
    same_init: bool = typer.Option(False, "--same-init",
                                   help="Start the victim from the initialisation and seed of the surrogate the "
                                        "poisons were crafted on (forest's --retrain_from_init; scratch, untargeted "
                                        "and clean runs); recorded, and reported apart."),
    threat: str = typer.Option(None, "--threat", help="Transfer: gray (default, the paper's: poisons crafted on the "
                                                      "attacker's own extractor, pre-trained with another seed) | "
                                                      "white (on the very extractor the victim freezes)."),
    head_bn: str = typer.Option(None, "--head-bn", help="Transfer: the frozen extractor's BatchNorm while the head "
                                                        "trains: train (default, HINT's code: running statistics "
                                                        "move) | eval (frozen statistics)."),
    device: str = options.Device,
    compile: str = typer.Option("auto", "--compile",
                                help="torch.compile the model: auto (long runs only) | on | off."),
    accel: str = options.Accel,
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Re-run even if a record exists (and ignore a checkpoint)."),
    checkpoint_every: float = typer.Option(
        CHECKPOINT_EVERY, "--checkpoint-every", metavar="SECONDS",
        help="Save the run's state after an epoch when this many seconds passed since the last save (0: every "
             "epoch); a killed run resumes from it with the same numbers."),
    prepare_only: bool = typer.Option(False, "--prepare-only",
                                      help="Only craft the runs' missing PoisonSets and train the pre-trained models "
                                           "they share (what `sweep` does before the runs), then stop: nothing "
                                           "trained, no record."),
    as_json: bool = options.Json,
    **method_options,
) -> None:
    """Train on the (optionally poisoned) train split with a defense; one record per trial."""
    spec = spec_from_options(dict(locals()))
    if prepare_only:
        show_prepared(run_prepare(spec, RichReporter()), as_json)
        return
    reporter = RichReporter()
    outcomes = run_defend(spec, reporter)
    store = RunStore(results)
    show_outcomes(outcomes, store, as_json)


def spec_from_options(given: dict) -> DefendSpec:
    """The `DefendSpec` of `defend`'s parsed options ({python name: value}, generated method options included):
    the one translation of options into a spec, shared by `defend` and the sweeps (poisonbench.sweeps)."""
    own = set(inspect.signature(defend).parameters) - {"method_options"}
    method_options = {k: v for k, v in given.items() if k not in own and k != "method_options"}
    method_options.update(given.get("method_options") or {})
    g = {k: given.get(k, p.default) for k, p in inspect.signature(defend).parameters.items() if k in own}
    g = {k: (v.default if isinstance(v, typer.models.OptionInfo) else v) for k, v in g.items()}  # not given
    method, attack, attacks, milestones = g["method"] or "none", g["attack"], g["attacks"], g["milestones"]
    chosen = chosen_values(method_option_list(), method_options, "method", method, DEFENSES.get(method).PARAMS)
    return DefendSpec(
        dataset=g["dataset"], data_dir=g["data_dir"], download=bool(g["download"]),
        npz_split=parse_npz_split(g["npz_split"], g["dataset"]),
        model=g["model"], recipe=g["recipe"],
        recipe_overrides={"epochs": g["epochs"], "lr": g["lr"], "batch_size": g["batch_size"],
                          "momentum": g["momentum"], "nesterov": g["nesterov"], "weight_decay": g["weight_decay"],
                          "milestones": _milestones(milestones), "augment": g["augment"]},
        scenario=g["scenario"], poison_ratio=g["poison_ratio"],
        attacks=[a.strip() for a in attacks.split(",")] if attacks is not None else None,
        poison_sets=parse_poison_sets(g["poisons"]), poison_set=g["poison_set"],
        attack=attack, attack_params=parse_attack_params(attack, g["attack_params"]), eps=g["eps"],
        budget=g["budget"], target=g["target"], intended=g["intended"], setup=g["setup"],
        setup_index=g["setup_index"], method=method, method_params=chosen,
        seed=g["seed"], same_init=bool(g["same_init"]), threat=g["threat"], head_bn=g["head_bn"], trials=g["trials"],
        trial=g["trial"], device=g["device"],
        compile=g["compile"],
        accel=g["accel"], results=g["results"], force=bool(g["force"]), checkpoint_every=g["checkpoint_every"],
    )


def show_prepared(prepared: list[dict], as_json: bool) -> None:
    """`--prepare-only`'s output: one line (or JSON object) per PoisonSet the runs need."""
    console = stdout_console()
    for item in prepared:
        if as_json:
            print(json.dumps(item))
        else:
            console.print(f"{item['attack']} PoisonSet {item['poison_id']}: {item['status']}")
    if not prepared and not as_json:
        console.print("nothing to prepare: these runs need no PoisonSet")


def show_outcomes(outcomes: list, store: RunStore, as_json: bool) -> None:
    """`defend`'s output: a table of the runs (or one JSON object per run)."""
    if as_json:
        for o in outcomes:
            r = o.record
            print(json.dumps({
                "run_id": r["run_id"], "status": o.status, "dataset": r["config"]["dataset"],
                "method": r["config"]["defense"]["method"], "trial": r["config"]["trial"],
                "seed": r["config"]["seed"], "test_acc": r["metrics"]["test_acc"],
                "val_acc": r["metrics"]["val_acc"], "seconds": r["cost"]["seconds"],
                "resumed_from_epoch": r.get("resumed_from_epoch", 0),
                "path": str(store.path(r["run_id"])),
                **targeted_fields(r),
            }))
        return
    table = Table(title="defend")
    targeted = any(targeted_fields(o.record) for o in outcomes)
    for col in ("run", "status", "trial", "seed", "test acc (%)", "seconds") + (("target → prediction",)
                                                                                if targeted else ()):
        table.add_column(col)
    accs = []
    for o in outcomes:
        r = o.record
        accs.append(r["metrics"]["test_acc"])
        row = [r["run_id"], o.status, str(r["config"]["trial"]), str(r["config"]["seed"]),
               f"{100 * r['metrics']['test_acc']:.2f}", f"{r['cost']['seconds']:.1f}"]
        if targeted:
            t = targeted_fields(r)
            row.append(f"{t['target_index']} ({t['target_class']}→{t['intended_class']}): {t['target_prediction']} "
                       f"{'attack succeeded' if t['attack_success'] else 'attack failed'}" if t else "")
        table.add_row(*row)
    console = stdout_console()
    console.print(table)
    if targeted:
        wins = [bool(targeted_fields(o.record)["attack_success"]) for o in outcomes]
        console.print(f"attack success: {sum(wins)}/{len(wins)} trials")
    if len(accs) > 1:
        import statistics

        console.print(f"test accuracy: {100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} % "
                      f"(mean ± sample std over {len(accs)} trials)")


def targeted_fields(record: dict) -> dict:
    """A targeted run's target, intended class, final prediction and success ({} for other runs)."""
    poison, metrics = record["config"].get("poison") or {}, record["metrics"]
    if poison.get("kind") != "targeted":
        return {}
    return {"attack": poison["attack"], "target_index": poison["target_index"],
            "target_class": poison["target_class"], "intended_class": poison["intended_class"],
            "target_prediction": metrics.get("target_prediction"), "attack_success": metrics.get("attack_success")}


def parse_attack_params(attack: str | None, text: str | None) -> dict:
    """`--attack-params restarts=1,iterations=50` → {name: value}, each value parsed as its Param's type."""
    if text is None:
        return {}
    if attack is None:
        raise PoisonbenchError("--attack-params sets options of --attack; give --attack too")
    from ..attacks import ATTACKS

    known = {p.name: p for p in ATTACKS.get(attack).PARAMS}
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = (x.strip() for x in item.partition("="))
        name = name.replace("-", "_")
        if not sep or name not in known:
            raise PoisonbenchError(f"--attack-params: {item!r} is not NAME=VALUE with NAME one of attack "
                                   f"{attack!r}'s options ({', '.join(sorted(known))})")
        kind = known[name].cli_type
        if kind is bool:
            if value.lower() not in SWITCH:
                raise PoisonbenchError(f"--attack-params: {name} is a switch (true or false), got {value!r}")
            out[name] = SWITCH[value.lower()]
            continue
        try:
            out[name] = kind(value)
        except ValueError:
            raise PoisonbenchError(f"--attack-params: {name} of attack {attack!r} takes a {kind.__name__}, got "
                                   f"{value!r}") from None
    return out


SWITCH = {"true": True, "false": False, "on": True, "off": False, "yes": True, "no": False, "1": True, "0": False}


def method_option_list():
    """The defense options, one per flag across the DEFENSES registry (read when the command is built)."""
    reserved = inspect.signature(defend).parameters
    return collect_options(DEFENSES, reserved)


def command():
    """`defend` with one option per defense parameter of the registry as it is now (poisonbench.cli.generated)."""
    from ..experiment.scenarios import SCENARIOS

    methods = ", ".join(f"{n} ({DEFENSES.get(n).summary_text})" for n in DEFENSES)
    listed = {
        "method": typer.Option("none", "--method", help=f"Defense to train with: {methods}."),
        "scenario": typer.Option(None, "--scenario", help=f"What is poisoned and trained: {', '.join(SCENARIOS)}; "
                                                          "default: inferred (--attack: scratch for gm, transfer "
                                                          "for bp, fc; --poison-set: the set's own, else "
                                                          "poison-set; --poison-ratio > 0: untargeted; else "
                                                          "clean)."),
    }
    return with_options(defend, typer_parameters(method_option_list(), lambda family: resolve_recipe(family)), listed)


def spec_from_argv(argv: list[str]) -> DefendSpec:
    """`defend`'s arguments (without the command name) parsed exactly as the CLI parses them, into their spec: how
    a sweep turns the runs of its grid into specs. A usage error is one line (PoisonbenchError)."""
    try:
        ctx = click_command().make_context("defend", list(argv))
    except Exception as exc:  # click's (or Typer's vendored click's) usage errors: exit_code 2 and a message
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            raise PoisonbenchError(f"{exc.format_message()} (in `defend {' '.join(argv)}`)") from None
        raise
    return spec_from_options(ctx.params)


@functools.lru_cache(maxsize=1)
def click_command():
    """`defend` as a click command, built once per process: a sweep parses hundreds of runs with it (and the
    registries do not change once the command exists)."""
    import typer.main

    app = typer.Typer(add_completion=False)
    app.command("defend")(command())
    return typer.main.get_command(app)
