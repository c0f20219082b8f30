"""`poisonbench poisons list | show ID | validate ID | import FILE | export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..attacks.targets import SCENARIOS, check_setup_index, check_target_choice
from ..core.printable import printable, printable_json
from . import options
from .progress import stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["poisons"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module
app = typer.Typer(no_args_is_help=True, help=HELP, context_settings=options.CONTEXT_SETTINGS)


@app.command("list", help="List the PoisonSets in the workspace.")
def list_(results: str = options.Results, as_json: bool = options.Json) -> None:
    from .. import poisons

    rows = [{"poison_id": m["poison_id"], "attack": m.get("attack"), "dataset": m.get("dataset"),
             "eps": m.get("eps"), "budget": m.get("budget"), "seed": m.get("seed"), "count": m.get("count"),
             "craft_seconds": m.get("craft_seconds"), "created_at": m.get("created_at"),
             # false: the manifest alone, as `records unpack` leaves it (crafted again when a run needs it)
             "tensors": poisons.exists(results, m["poison_id"])}
            for m in poisons.list_manifests(results)]
    if as_json:
        print(printable_json(json.dumps(rows, indent=2)))
        return
    if not rows:
        Console(stderr=True).print("no poison sets in this workspace")
        return
    table = Table(title="poison sets")
    table.add_column("id", no_wrap=True)
    for col in ("attack", "dataset", "ε", "budget", "seed", "rows", "craft s", "created", "tensors"):
        table.add_column(col)
    for r in rows:  # a manifest's fields, shown: control characters escaped, no markup
        eps = f"{r['eps']:.4g}" if isinstance(r["eps"], (int, float)) else str(r["eps"])
        cells = (r["poison_id"], r["attack"], r["dataset"], eps, r["budget"], r["seed"], r["count"],
                 r["craft_seconds"], str(r["created_at"])[:16], "yes" if r["tensors"] else "manifest only")
        table.add_row(*(escape(printable(c)) for c in cells))
    stdout_console().print(table)


@app.command("show", help="Print a PoisonSet's manifest (every crafting parameter, fingerprints, sha256).")
def show(poison_id: str = typer.Argument(..., help="Poison id (see `poisons list`)."),
         results: str = options.Results) -> None:
    from .. import poisons

    manifest = poisons.read_manifest(results, poison_id)  # its fields may hold anything: nothing printed raw
    print(printable_json(json.dumps(manifest, indent=2, sort_keys=True)))


@app.command("validate", help="Re-check a PoisonSet against its dataset: sha256, dataset fingerprint, indices, "
                              "budget, ε-ball, [0,1] pixel range of x+δ, labels. Exit 1 if a check fails.")
def validate(
    poison_id: str = typer.Argument(..., help="Poison id (see `poisons list`)."),
    dataset: str = typer.Option(None, "--dataset", help="Dataset to check against (default: the one in the "
                                                        "manifest; an .npz path for file datasets)."),
    data_dir: str = options.DataDir,
    npz_split: str = options.NpzSplit,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from .. import poisons
    from ..data import load_dataset, parse_npz_split

    manifest = poisons.read_manifest(results, poison_id)
    name = dataset or manifest["dataset"]
    data = load_dataset(name, data_dir, npz_split=parse_npz_split(npz_split, name))
    checks = poisons.validate(results, poison_id, data)
    ok = all(passed for _, passed, _ in checks)
    if as_json:
        print(json.dumps({"poison_id": poison_id, "ok": ok,
                          "checks": [{"check": c, "passed": p, "detail": d} for c, p, d in checks]}))
    else:
        table = Table(title=f"validate {poison_id}")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        for c, p, d in checks:
            table.add_row(c, "[green]ok[/]" if p else "[red]FAIL[/]", escape(d))
        stdout_console().print(table)
    if not ok:
        sys.exit(1)  # not typer.Exit: the entry point runs click with standalone_mode=False


TARGETED_IMPORT_HELP = (
    "Import poisons as a PoisonSet; train on it with `defend --poison-set ID`. HINT's untargeted file (a .pt of "
    "{'poisoned_images', 'poison_targets'}, e.g. the paper's mnist_eps_0.3_mixed_poison_….pt), or targeted poisons "
    "made elsewhere (docs/commands.md): --format forest (Witches' Brew's packed export or HINT's patched dict), toxic "
    "(the 'Just How Toxic' benchmark's poisons.pickle, base_indices.pickle, target.pickle), npz (x, idx, target, "
    "intended); or a backdoor in BackdoorBench's form, --format backdoorbench: a directory (BackdoorBench's record, "
    "or an export) or its files, a poison indicator (poison_indicator.npy, BackdoorBench's "
    "train_poison_index_list.pickle or attack_result.pt's bd_train) or an index list (.npy), a trigger (--trigger: "
    "a PNG/JPEG or .npy at the dataset's size; patch, or blend with --alpha), the target class and label mode (from "
    "info.json / info.pickle, or --target-class, --label-mode); `defend --poison-set ID` measures its ASR with "
    "that trigger.")


@app.command("import", help=TARGETED_IMPORT_HELP)
def import_(
    files: list[str] = typer.Argument(..., metavar="FILE", help="The file (toxic: a directory, or its three "
                                                                "files). Torch files are read with torch.load("
                                                                "weights_only=True), pickles by an unpickler that "
                                                                "admits only arrays and numbers."),
    fmt: str = typer.Option(None, "--format", help="hint | forest | toxic | npz | backdoorbench (default: a "
                                                   "directory holding a poison indicator → backdoorbench, a "
                                                   "directory or three files → toxic, .npz → npz, a plain pickle → "
                                                   "forest, a torch file → hint, or forest when a target is "
                                                   "named)."),
    attack: str = typer.Option(None, "--attack", metavar="LABEL", help="Targeted formats: the Table III column the "
                                                                       "poisons belong to (gm, bp, fc, mp, …; "
                                                                       "default forest → gm, toxic → bp, npz → "
                                                                       "imported)."),
    victim: str = typer.Option(None, "--victim", help="Targeted formats: the scenario `defend --poison-set` trains "
                                                      f"them in: {' | '.join(SCENARIOS)} (default: transfer for bp "
                                                      "and fc, scratch otherwise)."),
    target: int = options.Target,
    intended: int = options.Intended,
    setup: str = options.Setup,
    setup_index: int = options.SetupIndex,
    threat: str = typer.Option(None, "--threat", metavar="white|gray|unknown",
                               help="Targeted formats: whose model the poisons were made on, as you know it: white "
                                    "(the victim's own extractor), gray (another model of the victim's kind), "
                                    "unknown (the default). Recorded in the PoisonSet and in every run on it "
                                    "(config.threat of transfer runs), and shown in Table III's block titles."),
    forest_std: str = typer.Option(None, "--forest-std", metavar="S1,S2,S3",
                                   help="forest: σ per channel that δ is scaled by (default forest's own, "
                                        "consts.py: 0.2470,0.2435,0.2616 CIFAR-10, 0.3081 MNIST)."),
    trigger: str = typer.Option(None, "--trigger", metavar="FILE",
                                help="backdoorbench: the trigger image (PNG/JPEG, or .npy on the 0-255 scale) at the "
                                     "dataset's size, e.g. BackdoorBench's resource/badnet/trigger_image.png "
                                     "(default: trigger.npy / trigger.png in the directory)."),
    alpha: float = typer.Option(None, "--alpha", help="backdoorbench: the blend ratio α of a blend trigger "
                                                      "(default: info's attack_train_blended_alpha)."),
    target_class: int = typer.Option(None, "--target-class", help="backdoorbench: the all-to-one target class "
                                                                  "(default: info's attack_target)."),
    label_mode: str = typer.Option(None, "--label-mode", metavar="dirty|clean",
                                   help="backdoorbench: dirty (poisoned rows relabelled to the target) or clean "
                                        "(labels kept, target-class rows only; default: clean for BackdoorBench's "
                                        "sig and lc, else dirty)."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Import again even if this file's PoisonSet exists."),
    as_json: bool = options.Json,
) -> None:
    from ..core.errors import PoisonbenchError
    from ..core.workspace import results_dir
    from ..data import load_dataset, parse_npz_split
    from ..poisons.interchange.exchange import Named, import_targeted
    from ..poisons.interchange.formats import BACKDOOR_FORMATS, FORMATS, parse_forest_std, sniff_format
    from ..poisons.interchange.hint_file import import_hint_file

    targeted_options = {"--attack": attack, "--victim": victim, "--target": target, "--intended": intended,
                        "--setup": setup, "--forest-std": forest_std, "--threat": threat}
    backdoor_options = {"--trigger": trigger, "--alpha": alpha, "--target-class": target_class,
                        "--label-mode": label_mode}
    given = [k for k, v in targeted_options.items() if v is not None]
    fmt = fmt if fmt is not None else sniff_format(files, bool(given))
    if fmt not in ("hint", *FORMATS, *BACKDOOR_FORMATS):
        raise PoisonbenchError(f"unknown --format {fmt!r}; valid choices: hint, "
                               f"{', '.join((*FORMATS, *BACKDOOR_FORMATS))}")
    if fmt in BACKDOOR_FORMATS:
        _import_backdoor(files, attack, [k for k in given if k != "--attack"], backdoor_options, dataset, data_dir,
                         download, npz_split, results, force, as_json)
        return
    backdoor_given = [k for k, v in backdoor_options.items() if v is not None]
    if backdoor_given:
        raise PoisonbenchError(f"{', '.join(backdoor_given)}: options of --format backdoorbench, not {fmt}")
    if fmt == "hint" and given:
        raise PoisonbenchError(f"{', '.join(given)}: options of the targeted formats (--format "
                               f"{'|'.join(FORMATS)}); HINT's untargeted file takes none")
    if fmt == "hint" and len(files) != 1:
        raise PoisonbenchError(f"HINT's untargeted format is one file; got {len(files)} paths")
    check_target_choice(target, intended, setup)
    check_setup_index(setup, setup_index)
    if forest_std is not None and fmt != "forest":
        raise PoisonbenchError(f"--forest-std applies to --format forest, not {fmt}")
    std = parse_forest_std(forest_std)
    results_dir(results)  # a bad --results fails before the dataset is loaded
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    if fmt == "hint":
        poison, cached = import_hint_file(files[0], data, results, force=force)
    else:
        poison, cached = import_targeted(fmt, files, data, results, label=attack, victim=victim,
                                         named=Named(target, intended, setup, setup_index), forest_std=std,
                                         force=force, threat=threat)
    m = poison.manifest
    out = {"poison_id": m["poison_id"], "path": str(poison.path), "status": "cached" if cached else "imported",
           "dataset": data.name, "count": m["count"], "eps": m["eps"], **m["imported_from"]}
    if m.get("target") is not None:
        out["attack"] = m["attack"]
    if as_json:
        print(json.dumps(out))
        return
    if fmt != "hint":
        t = out["target"]
        stdout_console().print(
            f"{out['status']} {out['format']} poisons as [bold]{out['poison_id']}[/] ({out['attack']}, "
            f"{out['scenario']}): {out['count']} of {out['poisons_in_file']} in {data.name}'s train split "
            f"({out['left_out_in_val_split']} left out: in our val split), target test image {t['index']} "
            f"({t['true_class']}→{t['intended_class']}), ‖δ‖∞ = {out['eps']:.4g} → {out['path']}")
        return
    stdout_console().print(
        f"{out['status']} poison set [bold]{out['poison_id']}[/] from {escape(out['file'])} ({out['order']} order): "
        f"{out['poisoned_rows']} of {out['rows']} rows poisoned, {out['count']} in {data.name}'s train split "
        f"({out['left_out_in_val_split']} left out: in our val split), ‖δ‖∞ = {out['eps']:.4g} → {out['path']}")


def _import_backdoor(files, attack, targeted_given, backdoor_options, dataset, data_dir, download, npz_split,
                     results, force, as_json) -> None:
    """`poisons import --format backdoorbench` (poisons/interchange/backdoorbench.py)."""
    from ..core.errors import PoisonbenchError
    from ..core.workspace import results_dir
    from ..data import load_dataset, parse_npz_split
    from ..poisons.interchange.backdoorbench import BackdoorOptions, import_backdoor

    if targeted_given:
        raise PoisonbenchError(f"{', '.join(targeted_given)}: options of the targeted formats; a backdoor's target "
                               "is its --target-class")
    opts = BackdoorOptions(backdoor_options["--trigger"], backdoor_options["--alpha"],
                           backdoor_options["--target-class"], backdoor_options["--label-mode"])
    results_dir(results)
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    poison, cached = import_backdoor(files, data, results, label=attack, opts=opts, force=force)
    m = poison.manifest
    out = {"poison_id": m["poison_id"], "path": str(poison.path), "status": "cached" if cached else "imported",
           "dataset": data.name, "count": m["count"], "eps": m["eps"], "attack": m["attack"], **m["imported_from"]}
    if as_json:
        print(json.dumps(out))
        return
    trig = out["trigger"]
    stdout_console().print(
        f"{out['status']} backdoorbench backdoor as [bold]{out['poison_id']}[/] ({out['attack']}, {trig['kind']} "
        f"trigger, {out['label_mode']} label → class {out['target_class']}): {out['count']} of "
        f"{out['poisons_in_file']} in {data.name}'s train split ({out['left_out_in_val_split']} left out: in our val "
        f"split) → {out['path']}")


@app.command("export", help="Write a Table II mix (the train split of one trial of `defend --poison-ratio RHO`) as "
                            "HINT's untargeted poison file, for the official code's --poison_path; or a targeted "
                            "PoisonSet (--poison-set ID) as forest's, the Toxic benchmark's or an .npz file "
                            "(--format forest|toxic|npz); or a backdoor PoisonSet (badnets, blend, sig, or an "
                            "imported one) in BackdoorBench's form (--format backdoorbench: a directory of "
                            "poison_indicator.npy, trigger.npy, trigger.png and info.json).")
def export(
    out: str = typer.Option(..., "--out", help="The file to write (atomically); --format toxic, backdoorbench: a "
                                               "directory. "
                                               "--format forest: a .pkl / .pickle is a plain pickle (HINT's "
                                               "pickle.load), any other name a torch.save file."),
    poison_ratio: float = typer.Option(None, "--poison-ratio", help="ρ: fraction of the train split poisoned by "
                                                                    "the mix."),
    poison_set: str = typer.Option(None, "--poison-set", metavar="ID", help="A targeted (or, with --format "
                                                                            "backdoorbench, a backdoor) PoisonSet "
                                                                            "to write (ours or imported), with "
                                                                            "--format."),
    fmt: str = typer.Option(None, "--format", help="hint (a mix, with --poison-ratio; the default) | forest | toxic "
                                                   "| npz (a targeted PoisonSet, with --poison-set) | backdoorbench "
                                                   "(a backdoor PoisonSet, with --poison-set)."),
    attacks: str = typer.Option(None, "--attacks", help="Comma-separated attacks of the mix (default: pgd,dap,"
                                                        "durp,deepconfuse)."),
    poisons_: str = typer.Option(None, "--poisons", metavar="ATTACK=ID,...",
                                 help="Use these existing PoisonSets instead of the mix's default ones."),
    trial: int = typer.Option(0, "--trial", help="The trial whose poisoned rows are drawn (seed + trial)."),
    seed: int = options.Seed,
    order: str = typer.Option("hint", "--order", help="Row order: hint (HINT's split: mnist, fashion-mnist, "
                                                      "cifar10) | train (this dataset's train split)."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    device: str = options.Device,
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file (never one the command reads: "
                                                      "a record or PoisonSet of the workspace, the dataset)."),
    as_json: bool = options.Json,
) -> None:
    from ..attacks.base import check_seed
    from ..core.device import resolve_device, to_float
    from ..core.errors import PoisonbenchError
    from ..data import load_dataset, parse_npz_split
    from ..experiment.scenarios import parse_poison_sets, plan_untargeted
    from ..experiment.scenarios.untargeted import check_poison_ratio
    from ..poisons.interchange.exchange import check_export_out, export_targeted
    from ..poisons.interchange.formats import BACKDOOR_FORMATS, FORMATS
    from ..poisons.interchange.hint_file import ORDERS, check_export_path, export_hint_file, order_rows
    from .progress import RichReporter

    if poison_set is not None:
        if poison_ratio is not None or attacks is not None or poisons_ is not None:
            raise PoisonbenchError("--poison-set writes one targeted PoisonSet; it takes no --poison-ratio, "
                                   "--attacks or --poisons")
        choices = (*FORMATS, *BACKDOOR_FORMATS)
        if fmt not in choices:
            raise PoisonbenchError(f"--poison-set needs --format {'|'.join(choices)}" if fmt is None else
                                   f"unknown --format {fmt!r} for --poison-set; valid choices: {', '.join(choices)}")
        from ..poisons import check_poison_id

        check_poison_id(poison_set, "--poison-set ")
        inputs = export_inputs(results, dataset, data_dir)
        if fmt in BACKDOOR_FORMATS:
            from ..poisons.interchange.backdoorbench import check_backdoor_out, export_backdoor

            check_backdoor_out(out, force, inputs)
            data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
            written = export_backdoor(results, poison_set, data, out, force, inputs)
            if as_json:
                print(json.dumps(written))
                return
            stdout_console().print(f"wrote {escape(written['path'])} ({fmt}): {written['poisons']} poisoned rows of "
                                   f"[bold]{poison_set}[/] ({written['attack']}, {written['trigger']['kind']} "
                                   f"trigger, {written['label_mode']} label → class {written['target_class']})")
            return
        check_export_out(fmt, out, force, inputs)
        data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
        written = export_targeted(results, poison_set, data, fmt, out, force, inputs)
        if as_json:
            print(json.dumps(written))
            return
        t = written["target"]
        stdout_console().print(f"wrote {escape(written['path'])} ({fmt}): {written['poisons']} poisons of "
                               f"[bold]{poison_set}[/] ({written['attack']}), target test image {t['index']} "
                               f"({t['true_class']}→{t['intended_class']})")
        return
    if fmt not in (None, "hint"):
        raise PoisonbenchError(f"--format {fmt} writes a targeted or backdoor PoisonSet: give --poison-set ID"
                               if fmt in (*FORMATS, *BACKDOOR_FORMATS)
                               else f"unknown --format {fmt!r}; valid choices: hint, "
                                    f"{', '.join((*FORMATS, *BACKDOOR_FORMATS))}")
    if poison_ratio is None:
        raise PoisonbenchError("give --poison-ratio RHO (a Table II mix, as HINT's file) or --poison-set ID --format "
                               f"{'|'.join(FORMATS)} (a targeted PoisonSet)")
    check_poison_ratio(poison_ratio)
    if order not in ORDERS:
        raise PoisonbenchError(f"unknown --order {order!r}; valid choices: {', '.join(ORDERS)}")
    if trial < 0:
        raise PoisonbenchError(f"--trial must be a non-negative integer, got {trial}")
    check_seed(seed + trial, "--seed plus --trial")
    inputs = export_inputs(results, dataset, data_dir)  # a bad --results fails before the dataset is loaded
    check_export_path(out, force, inputs)
    mix = [a.strip() for a in attacks.split(",")] if attacks is not None else None
    chosen = parse_poison_sets(poisons_)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    order_rows(data, order)  # refuse an order the dataset lacks before anything is crafted
    plan = plan_untargeted(data, poison_ratio, mix, seed=seed + trial, results_root=results, poison_sets=chosen)
    train_x = plan.apply(to_float(data.train.x, dev), results_root=results, device=dev, reporter=RichReporter())
    written = export_hint_file(data, train_x, out, order, force, inputs)
    summary = {**written, "dataset": data.name, "poison_ratio": poison_ratio, "attacks": plan.attacks,
               "counts": plan.config["counts"], "poison_ids": plan.config["poison_ids"], "trial": trial,
               "seed": seed + trial}
    if as_json:
        print(json.dumps(summary))
        return
    stdout_console().print(f"wrote {escape(written['path'])}: {written['rows']} rows in {order} order, ρ = "
                           f"{poison_ratio:g} ({', '.join(f'{a} {c}' for a, c in plan.config['counts'].items())}); "
                           f"{written['clean_outside_train_split']} rows left clean (not in {data.name}'s train "
                           "split)")


def export_inputs(results: str | None, dataset: str | None, data_dir: str | None) -> list[Path]:
    """What `poisons export` reads, which its --out never replaces (core.io.check_output): the workspace's runs/ and
    poisons/, the dataset's file (`--dataset FILE.npz`) and `--data-dir`."""
    from ..core.workspace import results_dir

    root = results_dir(results)
    return [root / "runs", root / "poisons", *([Path(dataset)] if dataset and Path(dataset).is_file() else []),
            *([Path(data_dir)] if data_dir else [])]
