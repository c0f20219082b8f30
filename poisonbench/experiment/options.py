"""The options of one `defend` call, declared once: the table the CLI generates `poisonbench defend`'s options from,
the keys a sweep grid may set, and `spec_from_values`, the one translation of option values into a `DefendSpec`.

Each option names its flag(s) as the CLI declares them, its type, default, help and the part of the spec it belongs
to (`PARTS`). The defenses' own options (HINT's `--ratio`, ...) are generated from the DEFENSES registry's `PARAMS`
(`method_options`). Values arrive in two forms, both handled here: the CLI's (typed by Typer, lists and tables as
text such as `--attacks pgd,dap`), and a grid's (TOML values: lists, tables, numbers); the second is turned into the
first (`as_text`) so that both are parsed by the same code and one configuration has one spec, one run id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import PoisonbenchError
from ..core.params import MAX_BATCH_SIZE, MAX_EPOCHS, GeneratedOption, chosen_values, collect_options
from ..data import DEFAULT_DATASET, parse_npz_split
from ..defenses import DEFENSES
from ..engine.checkpoints import CHECKPOINT_EVERY
from .scenarios import parse_poison_sets
from .spec import MAX_TRIALS, DefendSpec

# The parts of a spec, in the order `defend --help` lists them (docs/engine.md, "One defend call").
PARTS = ("training", "threat", "defense", "trials", "execution")


@dataclass(frozen=True)
class DefendOption:
    """One option of `defend`: `flags` as the CLI declares it (`--nesterov/--no-nesterov` for an on/off option with
    an off form), the value's type (bool, int, float or str: lists and tables are comma-separated text), its default
    (None: not given) and its part of the spec."""

    name: str
    flags: str
    type: type
    default: Any
    help: str
    part: str
    metavar: str | None = None
    envvar: str | None = None
    show_default: bool = True
    # may be given more than once on the command line: the values are merged, comma-joined (`--attack-params`)
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return self.flags.split("/")[0]

    @property
    def off_flag(self) -> str | None:
        """The off form of an on/off option (`--no-nesterov`), None where it has none."""
        parts = self.flags.split("/")
        return parts[1] if len(parts) > 1 else None


DEFEND_OPTIONS: tuple[DefendOption, ...] = (
    DefendOption("method", "--method", str, "none", "Defense to train with.", "defense"),
    DefendOption("dataset", "--dataset", str, DEFAULT_DATASET,
                 "Dataset name (mnist-5k, mnist, fashion-mnist, cifar10) or a path to an .npz with x (uint8) and y "
                 "(int). Env: POISONBENCH_DATASET.", "training", envvar="POISONBENCH_DATASET"),
    DefendOption("data_dir", "--data-dir", str, None,
                 "Directory holding the dataset files (torchvision layout or the raw files); default "
                 "$POISONBENCH_DATA_DIR or ~/.cache/poisonbench/data.", "execution"),
    DefendOption("download", "--download", bool, False,
                 "Download the dataset with torchvision if it is not found.", "execution"),
    DefendOption("npz_split", "--npz-split", str, None,
                 "An .npz dataset's validation and test fractions (default 0.02,0.18: 80 / 2 / 18 %).",
                 "training", metavar="VAL,TEST"),
    DefendOption("model", "--model", str, None,
                 "Model (convnet, resnet18; convnet-gn, resnet18-gn: GroupNorm in place of BatchNorm); default: "
                 "the dataset's (Table I), for --method dpsgd its BatchNorm-free one (a BatchNorm model is refused).",
                 "training"),
    DefendOption("recipe", "--recipe", str, None,
                 "Training recipe: paper | quick | forest (default: forest for targeted runs on the MNIST family, else"
                 " paper).", "training"),
    DefendOption("epochs", "--epochs", int, None,
                 f"Override the recipe's epochs (milestones scale with it); at most {MAX_EPOCHS:,} epochs.",
                 "training"),
    DefendOption("lr", "--lr", float, None, "Override the learning rate.", "training"),
    DefendOption("batch_size", "--batch-size", int, None,
                 f"Override the batch size; at most {MAX_BATCH_SIZE:,} rows.", "training"),
    DefendOption("momentum", "--momentum", float, None, "Override the SGD momentum.", "training"),
    DefendOption("nesterov", "--nesterov/--no-nesterov", bool, None, "Override Nesterov momentum.", "training"),
    DefendOption("weight_decay", "--weight-decay", float, None, "Override the weight decay.", "training"),
    DefendOption("milestones", "--milestones", str, None,
                 "Override lr-decay epochs, e.g. 30,50,70 ('' for none).", "training"),
    DefendOption("augment", "--augment", str, None, "Override augmentation: none | crop-flip | shift.", "training"),
    DefendOption("scenario", "--scenario", str, None, "What is poisoned and trained.", "threat"),
    DefendOption("poison_ratio", "--poison-ratio", float, 0.0,
                 "ρ: fraction of the train split poisoned by the untargeted mix (Table II), split equally among "
                 "--attacks.", "threat"),
    DefendOption("attacks", "--attacks", str, None,
                 "Comma-separated attacks of the untargeted mix (default: pgd,dap,durp,deepconfuse).", "threat"),
    DefendOption("poisons", "--poisons", str, None,
                 "Use these existing PoisonSets (from `poisonbench craft ... --budget 1`, e.g. deepconfuse=<id> "
                 "crafted from DC's own generator) instead of the mix's default ones.",
                 "threat", metavar="ATTACK=ID,..."),
    DefendOption("poison_set", "--poison-set", str, None,
                 "Train on exactly this PoisonSet, every row it covers poisoned (e.g. the paper's own mix from "
                 "`poisonbench poisons import FILE`, or a `craft --budget` < 1); instead of --poison-ratio.",
                 "threat", metavar="ID"),
    DefendOption("attack", "--attack", str, None,
                 "Targeted attack (Table III): gm (default scenario scratch), bp, fc (transfer); each trial crafts or "
                 "reuses its poisons.", "threat"),
    DefendOption("eps", "--eps", float, None,
                 "Targeted: L∞ bound in pixel units, in (0, 1); default 16/255.", "threat"),
    DefendOption("budget", "--budget", float, None,
                 "Targeted: fraction of the train split poisoned, all from the intended class; default 0.01 (490 "
                 "CIFAR-10 images).", "threat"),
    DefendOption("target", "--target", int, None,
                 "Targeted: the target test image (index into the test split); default: drawn from the seed (or named "
                 "by the file).", "threat", metavar="I"),
    DefendOption("intended", "--intended", int, None,
                 "Targeted: the class the target should be taken for (≠ its own; goes with --target).",
                 "threat", metavar="C"),
    DefendOption("setup", "--setup", str, None,
                 "Targeted: take the target and intended class (and the base images, where the command chooses them) "
                 "from this setup file (the 'Just How Toxic' benchmark's setups as JSON, schema in docs/engine.md).",
                 "threat", metavar="FILE"),
    DefendOption("setup_index", "--setup-index", int, 0,
                 "Targeted: the setup to take (defend: trial t takes setup I + t).", "threat", metavar="I"),
    DefendOption("attack_params", "--attack-params", str, None,
                 "Targeted: options of --attack (see `craft --help`), e.g. restarts=1,iterations=50; default: the "
                 "attack's defaults. Given twice, the pairs are merged (an option named twice is refused).",
                 "threat", metavar="NAME=VALUE,...", repeatable=True),
    DefendOption("trials", "--trials", int, 1,
                 f"Run trials 0..N-1 with seeds seed+t; at most {MAX_TRIALS:,} trials per call.", "trials"),
    DefendOption("trial", "--trial", int, None,
                 "Run only trial T (seed seed+T; same record as trial T of --trials N), so a sweep can queue trials "
                 "one by one.", "trials"),
    DefendOption("seed", "--seed", int, 0, "Base seed; trial t uses seed + t.", "trials"),
    DefendOption("same_init", "--same-init", bool, False,
                 "Start the victim from the initialisation and seed of the surrogate the poisons were crafted on "
                 "(forest's --retrain_from_init; scratch, untargeted and clean runs); recorded, and reported apart.",
                 "training"),
    DefendOption("threat", "--threat", str, None,
                 "Transfer: gray (default, the paper's: poisons crafted on the attacker's own extractor, pre-trained "
                 "with another seed) | white (on the very extractor the victim freezes).", "threat"),
    DefendOption("head_bn", "--head-bn", str, None,
                 "Transfer: the frozen extractor's BatchNorm while the head trains: train (default, HINT's code: "
                 "running statistics move) | eval (frozen statistics).", "training"),
    DefendOption("precision", "--precision", str, "fp32",
                 "The SGD step's arithmetic: fp32 (the paper's) | bf16 (forward and loss under torch.autocast in "
                 "bfloat16, weights and optimizer in float32; evaluation stays fp32). It changes the numbers, so a "
                 "bf16 run has its own run id (config.precision) and is reported apart.", "training"),
    DefendOption("device", "--device", str, "auto", "auto | cpu | cuda | cuda:N.", "execution"),
    DefendOption("compile", "--compile", str, "auto",
                 "torch.compile the model: auto (long runs only) | on | off.", "execution"),
    DefendOption("accel", "--accel", str, "auto",
                 "Faster kernels (engine.kernels): auto (where they pay off: on the CPU, DFT-domain convolutions and "
                 "moment BatchNorm in training; on any device, frozen copies with BatchNorm folded and ReLU + pooling "
                 "fused; same numbers up to float rounding) | off (plain PyTorch modules everywhere). Execution only: "
                 "recorded in env, not in the run or poison id.", "execution"),
    DefendOption("deterministic", "--deterministic", str, "on",
                 "CUDA algorithms: on (deterministic: the same seed gives the same numbers; an op with no "
                 "deterministic kernel raises) | off (cuDNN autotuning, "
                 "no deterministic pins: faster, not repeatable). No effect on the CPU. Execution only: recorded in "
                 "env, not in the run or poison id.", "execution"),
    DefendOption("results", "--results", str, None,
                 "Results workspace (default ./results). Env: POISONBENCH_RESULTS.",
                 "execution", envvar="POISONBENCH_RESULTS", show_default=False),
    DefendOption("force", "--force", bool, False,
                 "Re-run even if a record exists (and ignore a checkpoint).", "execution"),
    DefendOption("checkpoint_every", "--checkpoint-every", float, CHECKPOINT_EVERY,
                 "Save the run's state after an epoch when this many seconds passed since the last save (0: every "
                 "epoch); a killed run resumes from it with the same numbers.", "execution", metavar="SECONDS"),
)
OPTIONS: dict[str, DefendOption] = {o.name: o for o in DEFEND_OPTIONS}
# names the CLI's `defend` takes besides the spec's (what to do and how to show it): no defense option may take them
CLI_ONLY = ("prepare_only", "as_json")
RECIPE_OVERRIDES = ("epochs", "lr", "batch_size", "momentum", "nesterov", "weight_decay", "milestones", "augment")


def method_options() -> list[GeneratedOption]:
    """The defenses' options, one per flag across the DEFENSES registry as it is now."""
    return collect_options(DEFENSES, [*OPTIONS, *CLI_ONLY])


def all_options() -> dict[str, DefendOption]:
    """{python name: option} of `defend`'s table and of the defenses' generated options (as the CLI declares them:
    an on/off defense option has its `--no-` form)."""
    generated = {o.python_name: DefendOption(o.python_name, o.flag + (f"/--no-{o.flag[2:]}" if o.cli_type is bool
                                                                      else ""), o.cli_type, None, "", "defense")
                 for o in method_options()}
    return {**OPTIONS, **generated}


def spec_from_values(values: Mapping[str, Any]) -> DefendSpec:
    """The `DefendSpec` of `defend` option values ({python name: value}: the CLI's parsed options, or a grid row
    with its execution options): an option left out, or None, takes its default; an unknown name is refused."""
    methods = {o.python_name: o for o in method_options()}
    unknown = [k for k in values if k not in OPTIONS and k not in methods]
    if unknown:
        valid = ", ".join(sorted(k.replace("_", "-") for k in [*OPTIONS, *methods]))
        raise PoisonbenchError(f"unknown defend option {unknown[0]!r}; valid options: {valid}")
    v = {name: option.default for name, option in OPTIONS.items()}
    v.update({k: convert(OPTIONS[k].flag, OPTIONS[k].type, x, k in MAY_BE_EMPTY) for k, x in values.items()
              if k in OPTIONS and x is not None})
    given_methods = {k: convert(methods[k].flag, methods[k].cli_type, x) for k, x in values.items()
                     if k in methods and x is not None}
    method = v["method"] or "none"
    chosen = chosen_values(list(methods.values()), given_methods, "method", method, DEFENSES.get(method).PARAMS)
    return DefendSpec(
        dataset=v["dataset"], data_dir=v["data_dir"], download=v["download"],
        npz_split=parse_npz_split(v["npz_split"], v["dataset"]),
        model=v["model"], recipe=v["recipe"],
        recipe_overrides={k: (parse_milestones(v[k]) if k == "milestones" else v[k]) for k in RECIPE_OVERRIDES},
        scenario=v["scenario"], poison_ratio=v["poison_ratio"],
        attacks=[a.strip() for a in v["attacks"].split(",")] if v["attacks"] is not None else None,
        poison_sets=parse_poison_sets(v["poisons"]), poison_set=v["poison_set"],
        attack=v["attack"], attack_params=parse_attack_params(v["attack"], v["attack_params"]), eps=v["eps"],
        budget=v["budget"], target=v["target"], intended=v["intended"], setup=v["setup"],
        setup_index=v["setup_index"], method=method, method_params=chosen,
        seed=v["seed"], same_init=v["same_init"], threat=v["threat"], head_bn=v["head_bn"], trials=v["trials"],
        trial=v["trial"], precision=v["precision"], device=v["device"], compile=v["compile"], accel=v["accel"],
        deterministic=v["deterministic"], results=v["results"], force=v["force"],
        checkpoint_every=v["checkpoint_every"],
    )


def convert(flag: str, kind: type, value: Any, may_be_empty: bool = True) -> Any:
    """A value as the option's type: the CLI's (already typed, or text) or a grid's (TOML: numbers, lists, tables).
    Lists and tables become the CLI's text (`as_text`), so both are parsed alike; a number for an int option must be
    an integer; a bool only sets an on/off option (the grid refuses it elsewhere, before it gets here). Text that is
    empty (`--method ''`, a grid's `method = ""` or `method = [[]]`) is refused unless `may_be_empty`: an empty value
    never stands for the default."""
    if kind is bool:
        if not isinstance(value, bool):
            raise PoisonbenchError(f"{flag} is an on/off option (true or false), got {value!r}")
        return value
    if kind is str:
        text = as_text(value)
        if not may_be_empty:
            refuse_empty(flag, text)
        return text
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PoisonbenchError(f"{flag} takes {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if isinstance(value, float):
            raise PoisonbenchError(f"{flag} takes an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise PoisonbenchError(f"{flag} takes an integer, got {value!r}") from None
    try:
        return float(value)
    except ValueError:
        raise PoisonbenchError(f"{flag} takes a number, got {value!r}") from None


def refuse_empty(flag: str, value: Any, takes: str | None = None, optional: bool = True) -> None:
    """The one refusal of an empty value (`''`, or only spaces), for every option and argument of every command (the
    CLI's parsing, cli.options.refuse_empty_values; a grid's values and the API's, `convert`): an empty value never
    stands for the default. `takes`: what the option takes, when `what_it_takes` does not know the flag;
    `optional`: an option one may leave out (an argument may not)."""
    if isinstance(value, str) and not value.strip():
        advice = " (leave the option out for its default)" if optional else ""
        raise PoisonbenchError(f"{flag} needs a value, got an empty one ({value!r}); {takes or what_it_takes(flag)}"
                               f"{advice}")


# text options not refused here when empty: `--milestones ''` means no decay, and an empty `--results` is refused by
# core.workspace with its own message (for every command); every other option needs a value
MAY_BE_EMPTY = ("milestones", "results")


def what_it_takes(flag: str, default: str = "give a value") -> str:
    """`valid choices: a, b` (a closed set, as it is now) or what the option takes, for the empty-value error."""
    from ..attacks import ATTACKS
    from ..core.device import COMPILE_MODES, DETERMINISTIC_MODES
    from ..data.catalog import dataset_names
    from ..engine.kernels import ACCEL_MODES
    from ..engine.models import MODELS
    from ..engine.recipes import AUGMENTATIONS, recipe_names
    from ..engine.training import PRECISIONS
    from .scenarios import SCENARIOS
    from .scenarios.targeted import HEAD_BN_MODES, THREATS

    choices = {"--method": DEFENSES.names(), "--model": MODELS.names(), "--recipe": recipe_names(),
               "--augment": AUGMENTATIONS, "--scenario": SCENARIOS.names(), "--attacks": ATTACKS.names(),
               "--attack": ATTACKS.names(), "--precision": PRECISIONS, "--compile": COMPILE_MODES,
               "--accel": ACCEL_MODES, "--deterministic": DETERMINISTIC_MODES, "--threat": THREATS,
               "--head-bn": HEAD_BN_MODES}
    if flag in choices:
        return "valid choices: " + ", ".join(choices[flag])
    takes = {"--dataset": f"a dataset name ({', '.join(dataset_names())}) or the path of an .npz",
             "--npz-split": "VAL,TEST fractions, e.g. 0.02,0.18", "--poisons": "ATTACK=ID pairs",
             "--poison-set": "a PoisonSet ID", "--setup": "a setup FILE", "--attack-params": "NAME=VALUE pairs",
             "--data-dir": "a directory", "--device": "valid choices: auto, cpu, cuda, cuda:N",
             "--out": "a directory", "--partition": "a SLURM partition"}
    return takes.get(flag, default)


def as_text(value: Any) -> str:
    """A value as the CLI writes it: a list as comma-separated values, a table as NAME=VALUE pairs, a float by its
    repr (every digit: 16/255 stays 16/255), a bool as true / false."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={as_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_milestones(text: str | None) -> list[int] | None:
    """`--milestones 30,60` → [30, 60]; `''` → [] (no decay: the one empty value an option takes); an empty entry
    (`,`, `30,,60`, `30,`) is refused, never dropped."""
    if text is None:
        return None
    if not text.strip():
        return []
    items = [m.strip() for m in text.split(",")]
    if not all(items):
        raise PoisonbenchError(f"--milestones: an empty entry in {text!r}; give comma-separated integers (epochs), "
                               "or '' for no decay")
    try:
        return [int(m) for m in items]
    except ValueError:
        raise PoisonbenchError(f"--milestones must be comma-separated integers, got {text!r}") from None


SWITCH = {"true": True, "false": False, "on": True, "off": False, "yes": True, "no": False, "1": True, "0": False}


def parse_attack_params(attack: str | None, text: str | None) -> dict:
    """`--attack-params restarts=1,iterations=50` → {name: value}, each value parsed as its Param's type."""
    if text is None:
        return {}
    if attack is None:
        raise PoisonbenchError("--attack-params sets options of --attack; give --attack too")
    from ..attacks import ATTACKS

    known = {p.name: p for p in ATTACKS.get(attack).PARAMS}
    out = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise PoisonbenchError(f"--attack-params: an empty entry in {text!r}; give NAME=VALUE pairs, "
                                   "comma-separated, each once")
        name, sep, value = (x.strip() for x in item.partition("="))
        name = name.replace("-", "_")
        if not sep or name not in known:
            raise PoisonbenchError(f"--attack-params: {item!r} is not NAME=VALUE with NAME one of attack "
                                   f"{attack!r}'s options ({', '.join(sorted(known))})")
        if not value:
            raise PoisonbenchError(f"--attack-params: {item!r} gives {name} no value; leave it out for attack "
                                   f"{attack!r}'s default")
        if name in out:
            raise PoisonbenchError(f"--attack-params: {name} given twice in {text!r}; give each option once")
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
