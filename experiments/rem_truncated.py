"""REM at the official schedule's inner settings with its source model cut short: finish a saved GPU state here.

Issue 67 asks for REM at its official schedule (`gen_rem.sh`: 5,000 source-model steps, then the final noise). The
GPU sessions saved the source model part way (experiments/rem_official_state/, availability.md); finishing the
5,000 steps needs a GPU (93 hours of this CPU). What this CPU can do is the final noise, 31 batches: this script
turns a saved state at step S of the official craft into the state of the craft `--train-steps S` (the same
official schedule cut at S; the lr decays every 2,000 steps either way, so its first S steps are the official
craft's), saved under this machine's execution identity. `poisonbench craft ... --train-steps S` then resumes at
step S, i.e. goes straight to the final noise, and its PoisonSet says `resumed_steps: S`.

What is not the official craft's, stated wherever the result is used:
- the source model saw S of 5,000 steps;
- the final noise is computed on this CPU, with CPU generators (the GPU craft's would draw other random starts); the
  saved CUDA generator is not used after the last training step, so it is replaced by a fresh CPU one.

The state's poison id is checked first: it must be the id of the full official craft with the options given here,
so the state cannot be grafted onto other parameters.

    python experiments/rem_truncated.py experiments/rem_official_state/6a89e4dc1e627a93 --eps 0.3 \
        --adv-radius 0.15 --results R          # then the `craft` command it prints
    python experiments/rem_truncated.py experiments/rem_official_state/84bd1a9c668bd8d2 --results R   # 8/255
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from poisonbench import poisons
from poisonbench.core.workspace import workspace_dir
from poisonbench.data import load_dataset
from poisonbench.engine.checkpoints import read_state, write_state
from poisonbench.poisons.crafting import prepare_partial

STATE_FILE = "rem.safetensors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state", type=Path, help="a saved REM state directory (named by its poison id)")
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--eps", type=float, help="ε (ρ_u) of the saved craft (default: REM's, 8/255)")
    ap.add_argument("--adv-radius", type=float, help="ρ_a of the saved craft (default: REM's, 4/255)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, required=True)
    a = ap.parse_args(argv)

    tensors, meta = read_state(a.state / STATE_FILE)
    step = json.loads(meta["counters"])["step"]
    data = load_dataset(a.dataset)
    given = {"eps": a.eps, "adv_radius": a.adv_radius}
    options = {"seed": a.seed} | {k: v for k, v in given.items() if v is not None}
    full = poisons.craft_spec(data, "rem", **options)
    if full.poison_id != a.state.name:
        print(f"state {a.state.name} is not the official craft of these options (that is {full.poison_id})",
              file=sys.stderr)
        return 2
    if step >= full.params["train_steps"]:
        print(f"state {a.state.name} is at step {step}: the official craft would resume it itself", file=sys.stderr)
        return 2
    cut = poisons.craft_spec(data, "rem", **options, train_steps=step)
    assert cut.params["lr_decay_every"] == full.params["lr_decay_every"]  # the same lr at every step up to `step`
    partial = workspace_dir(a.results, "partial", cut.poison_id)
    cpu = torch.device("cpu")
    prepare_partial(partial, cpu, force=False)
    tensors["rng"] = torch.Generator().get_state()  # unused after the last step (each noise batch seeds its own)
    write_state(partial / STATE_FILE, tensors, meta)
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in given.items() if v is not None)
    print(json.dumps({"from": a.state.name, "step": step, "poison_id": cut.poison_id, "partial": str(partial),
                      "craft": f"poisonbench craft --attack rem --dataset {a.dataset}{flags} --seed {a.seed} "
                               f"--train-steps {step} --device cpu --results {a.results}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
