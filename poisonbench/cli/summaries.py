"""The help text of each `poisonbench` command, in the order `poisonbench --help` lists them, and the context
settings every command group shares.

Kept apart from the command modules (which import torch through the library) so that `poisonbench --help` and
`--version` answer in well under a second: the root group (poisonbench.cli.main.LazyGroup) lists the commands from
this table and imports a command's module only when that command runs or shows its own help."""

from __future__ import annotations

# Every command group's context settings: `-h` beside `--help` (click hands them down to a group's subcommands; each
# group sets them too, for when it is run on its own)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

COMMAND_HELP: dict[str, str] = {
    "defend": (
        'Train on the (optionally poisoned) train split with a defense; one record per trial under '
        'results/runs/.'
    ),
    "report": (
        'Aggregate the run records. Alone: test accuracy mean ± sample std over trials per configuration. '
        "`report table N`: the paper's Tables II–V; `report missing N`: the `poisonbench defend` commands "
        'that would complete table N; `report figure N`: Figures 1–4 and rho as PNGs; `report html OUT.html`:'
        ' every table, the heatmap and the figures on one self-contained HTML page. A record file that cannot'
        ' be trusted is skipped and named on stderr, with why (exit status still 0). --results may name a '
        'packed file (`poisonbench records pack`) instead of a workspace. The older flag form still works, '
        'with the same output: `report --table N [--missing]`, `report --figure N`, with the options of the '
        'subcommand.'
    ),
    "data": "List the datasets; show a dataset's sizes, splits, fingerprints and where its files are read from.",
    "craft": (
        'Craft a PoisonSet with one attack on the train split; a repeat with the same inputs is a cache hit. '
        "Attack options default to the paper's / official values per dataset."
    ),
    "poisons": 'List, show and validate the crafted PoisonSets under results/poisons/.',
    "sweep": (
        "Run a grid of `defend` runs (the paper's tables ship as grids: `sweep grids`) with local workers or "
        'on SLURM; done runs are skipped, so re-running finishes the job.'
    ),
    "records": (
        "Pack a workspace's run records (and PoisonSet manifests) into one shareable .jsonl.gz, or unpack "
        'one; `report --results FILE.jsonl.gz` reads a packed file directly; `pack --grid` packs one sweep '
        "grid's runs."
    ),
    "env": (
        'Show what poisonbench runs with here: Python, torch and its CUDA / cuDNN, the device, torch.compile,'
        ' the optional packages (and what is disabled without each), the poisonbench version and git commit, '
        'the parts that installed plugins add.'
    ),
}
