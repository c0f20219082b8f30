"""`poisonbench defend`: train with a defense (or none) and write one record per trial."""

from __future__ import annotations

import inspect
import json
import statistics

import typer
from rich.table import Table

from ..defenses import DEFENSES
from ..engine.recipes import resolve_recipe
from ..experiment.defend import defend as run_defend
from ..experiment.defend import outcome_summary, targeted_fields
from ..experiment.defend import prepare as run_prepare
from ..experiment.options import DEFEND_OPTIONS, method_options, spec_from_values
from ..experiment.records import RunStore
from . import options
from .generated import entry_help_parameter, typer_parameters, with_options
from .options import typer_parameter
from .progress import RichReporter, stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["defend"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module


# `defend --help`'s panels: the options grouped by what they set (the rest, --method first, under Options)
EXECUTION = "Execution and output"
PANELS = {
    "Data": ("dataset", "data_dir", "download", "npz_split"),
    "Training recipe": ("model", "recipe", "epochs", "lr", "batch_size", "momentum", "nesterov", "weight_decay",
                        "milestones", "augment", "precision"),
    "Untargeted poisons": ("scenario", "poison_ratio", "attacks", "poisons", "poison_set"),
    "Targeted attack": ("attack", "eps", "budget", "target", "intended", "setup", "setup_index", "attack_params",
                        "threat", "head_bn", "same_init"),
    "Trials": ("trials", "trial", "seed"),
    EXECUTION: ("device", "compile", "accel", "deterministic", "results", "force", "checkpoint_every"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def defend(**values) -> None:
    """Train on the (optionally poisoned) train split with a defense; one record per trial."""
    prepare_only, as_json = values.pop("prepare_only", False), values.pop("as_json", False)
    spec = spec_from_values(values)
    if prepare_only:
        show_prepared(run_prepare(spec, RichReporter()), as_json)
        return
    outcomes = run_defend(spec, RichReporter())
    show_outcomes(outcomes, RunStore(spec.results), as_json)


def command():
    """`defend` with one option per entry of its option table and per defense parameter of the registry as it is
    now (poisonbench.experiment.options, poisonbench.cli.generated)."""
    from ..experiment.scenarios import SCENARIOS

    listed = {
        "method": f"Defense to train with: {', '.join(DEFENSES)} (`--help-method NAME`: what it does, its options).",
        "scenario": f"What is poisoned and trained: {', '.join(SCENARIOS)}; default: inferred (--attack: scratch for "
                    "gm, transfer for bp, fc; --poison-set: the set's own, else poison-set; --poison-ratio > 0: "
                    "untargeted; else clean).",
    }
    own = [typer_parameter(o, listed.get(o.name), PANEL_OF.get(o.name)) for o in DEFEND_OPTIONS]
    cli_only = [
        inspect.Parameter("prepare_only", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--prepare-only", rich_help_panel=EXECUTION,
            help="Only craft the runs' missing PoisonSets and train the pre-trained models they share (what `sweep` "
                 "does before the runs), then stop: nothing trained, no record.")),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--json", help=options.JSON_HELP, rich_help_panel=EXECUTION)),
    ]
    generated_options = method_options()
    generated = typer_parameters(generated_options, lambda family: resolve_recipe(family))
    help_method = entry_help_parameter("--help-method", "method", {n: DEFENSES.get(n).summary_text for n in DEFENSES},
                                       generated_options)
    return with_options(defend, own + cli_only + [help_method] + generated)


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
            print(json.dumps(outcome_summary(o, store)))
        return
    table = Table(title="defend")
    def kind(o) -> str:
        return ((o.record["config"].get("poison") or {}).get("kind")) or ""

    targeted = any(kind(o) == "targeted" and targeted_fields(o.record) for o in outcomes)
    backdoor = any(kind(o) == "backdoor" for o in outcomes)  # issue 85: the ASR of each run
    for col in ("run", "status", "trial", "seed", "test acc (%)", "seconds") + (("target → prediction",)
                                                                                if targeted else ()) + (
            ("ASR (%)",) if backdoor else ()):
        table.add_column(col)
    accs = []
    for o in outcomes:
        r = o.record
        accs.append(r["metrics"]["test_acc"])
        row = [r["run_id"], o.status, str(r["config"]["trial"]), str(r["config"]["seed"]),
               f"{100 * r['metrics']['test_acc']:.2f}", f"{r['cost']['seconds']:.1f}"]
        if targeted:
            t = targeted_fields(r) if kind(o) == "targeted" else {}
            row.append(f"{t['target_index']} ({t['target_class']}→{t['intended_class']}): {t['target_prediction']} "
                       f"{'attack succeeded' if t['attack_success'] else 'attack failed'}" if t else "")
        if backdoor:
            m = r["metrics"]
            row.append(f"{100 * m['asr']:.2f} ({m['asr_hits']}/{m['asr_n']})" if m.get("asr") is not None else "")
        table.add_row(*row)
    console = stdout_console()
    console.print(table)
    if targeted:
        wins = [bool(targeted_fields(o.record)["attack_success"]) for o in outcomes if kind(o) == "targeted"]
        console.print(f"attack success: {sum(wins)}/{len(wins)} trials")
    for line in privacy_lines(outcomes):
        console.print(line)
    if len(accs) > 1:
        console.print(f"test accuracy: {100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} % "
                      f"(mean ± sample std over {len(accs)} trials)")


def privacy_lines(outcomes) -> list[str]:
    """One line per run whose record carries DP-SGD's accounting: ε from both accountants at δ, and the caveat."""
    from ..report.tables.privacy import caveat

    lines = []
    for o in outcomes:
        acc = (o.record.get("defense") or {}).get("accounting") if isinstance(o.record.get("defense"), dict) else None
        if not isinstance(acc, dict) or "delta" not in acc:
            continue
        eps = "∞" if acc.get("epsilon") is None else f"{acc['epsilon']:.4g}"
        pld = "not computed" if acc.get("epsilon_pld") is None else f"{acc['epsilon_pld']:.4g}"
        lines.append(f"privacy, trial {o.record['config']['trial']}: ε = {eps} (RDP), {pld} (PLD) at δ = "
                     f"{acc['delta']:.3g} ({acc.get('delta_rule')}) — {caveat(acc)}")
    return lines
