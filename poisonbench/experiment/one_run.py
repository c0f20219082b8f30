"""One run of `defend`: apply the scenario's poisons, build the model, train with the defense, assemble the record
(docs/engine.md, "Run records and resume"; fields defined in docs/metrics.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from ..attacks import ATTACKS
from ..core.provenance import environment, peak_memory
from ..core.registry import plugins_used
from ..data.catalog import DATASETS
from ..defenses import DEFENSES
from ..engine.checkpoints import Checkpoint
from ..engine.hooks import hand_poison_mask
from ..engine.models import build_model
from ..engine.training import predict, train
from .prediction_samples import sample_predictions
from .records import SCHEMA_VERSION
from .run_inputs import run_inputs
from .scenarios import SCENARIOS, ModelRequest, PoisonPlan, Scenario
from .spec import DefendSpec, Reporter


def training_seed(config: dict) -> int:
    """The seed the victim is initialised and trained with: the trial's (`config.seed`), or under `--same-init` the
    attacker model's (`config.same_init.seed`)."""
    return (config.get("same_init") or {}).get("seed", config["seed"])


def run_plugins(config: dict) -> dict[str, str]:
    """{distribution: version} of the plugins whose parts a run of `config` used (its dataset, scenario, defense
    and attacks; poisonbench.core.registry, "Plugins"): the record's `env.plugins`, absent when all are built in
    (not part of the run id: like poisonbench's own version, it says which code ran)."""
    poison = config.get("poison") or {}
    attacks = [*(poison.get("attacks") or []), *(poison.get("poison_ids") or {}), poison.get("attack")]
    return plugins_used([(DATASETS, config.get("dataset")), (SCENARIOS, config.get("scenario")),
                         (DEFENSES, (config.get("defense") or {}).get("method")), *((ATTACKS, a) for a in attacks)])


def with_plugins(env: dict, plugins: dict[str, str]) -> dict:
    """`env` with its `plugins` field where a plugin's part was used (records of built-in parts are unchanged)."""
    return {**env, "plugins": plugins} if plugins else env


def execute(spec: DefendSpec, scenario: Scenario, trial, data, tensors: dict, device: torch.device,
            reporter: Reporter | None, load_seconds: float, checkpoint: Checkpoint | None = None,
            on_poisoned: Callable[[PoisonPlan], None] | None = None) -> dict:
    """Train one run, `trial` (a `defend.ResolvedTrial`: its plan, recipe, defense and config, resolved once), and
    return its record (not yet written). `on_poisoned(plan)` is called once the poisons are applied (their tensors
    known), before training."""
    started, cpu_started = time.perf_counter(), time.process_time()
    plan, recipe, defense, config, rid = trial.plan, trial.recipe, trial.defense, trial.config, trial.run_id
    train_x, train_y = tensors["train"]
    train_x = train_x.clone()  # poisons and defenses write into it; the clean copy serves the next trial
    poisoned = None
    if plan is not None:
        train_x = plan.apply(train_x, results_root=spec.results, device=device, reporter=reporter,
                             compile=spec.compile, accel=spec.accel)
        poisoned = plan.mask(len(train_y), device)
        relabel = getattr(plan, "relabel", None)  # a dirty-label backdoor's new labels (a copy: trials share y)
        if relabel is not None:
            train_y = relabel(train_y)
        if checkpoint is not None:  # never resumed on re-crafted poisons (`craft --force` after the kill)
            checkpoint.identity["poison_tensors"] = dict(plan.tensor_sha256)
        if on_poisoned is not None:
            on_poisoned(plan)
    rows = scenario.train_rows(data, config["trial"], plan)
    if rows is not None:  # a scenario that trains on a subset of the split (transfer learning's 10 %)
        rows = rows.to(device)
        train_x, train_y = train_x[rows], train_y[rows]
        poisoned = poisoned[rows] if poisoned is not None else None
    hand_poison_mask(defense, poisoned)  # only a class that sets `sees_poison_mask` (the oracle) gets it
    seed = training_seed(config)
    request = ModelRequest(config["model"], data, seed, device, spec.results, reporter, spec.compile, spec.accel)
    model = scenario.build_model(request)
    victim = scenario.victim_ref(model, request)  # before training: a from-scratch victim's initial weights
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if reporter:
        reporter.start(f"{config['defense']['method']} · {data.name} · trial {config['trial']}", recipe.epochs)
    try:
        result = train(model, train_x, train_y, *tensors["val"], recipe, seed=seed, device=device,
                       num_classes=data.num_classes, defense=defense, compile=spec.compile, accel=spec.accel,
                       precision=spec.precision, deterministic=spec.deterministic,
                       eval_sets={"val": tensors["val"], "test": tensors["test"]},
                       on_batch=reporter.batch if reporter else None,
                       on_epoch=reporter.epoch if reporter else None, checkpoint=checkpoint,
                       model_factory=lambda seed: build_model(config["model"], data, seed=seed))
    finally:
        if reporter:
            reporter.stop()
    last = result.history[-1]
    test_probs = predict(model, tensors["test"][0])
    cost = {k: round(v, 4) for k, v in result.cost.items()}
    cost["data_load"] = round(load_seconds, 4)
    cost["seconds"] = round(time.perf_counter() - started + result.prior_seconds, 4)
    if result.prior_cpu_seconds is not None:  # unknown for a run resumed from a checkpoint older than the field
        cost["cpu_seconds"] = round(time.process_time() - cpu_started + result.prior_cpu_seconds, 4)
    cost.update(peak_memory(device))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": rid,
        "config": config,
        "metrics": {
            "test_acc": last["test_acc"],
            "val_acc": last["val_acc"],
            "train_acc": last["train_acc"],
            "train_loss": last["train_loss"],
            "test_mean_confidence": test_probs.max(1).values.mean().item(),
            "sample_predictions": sample_predictions(test_probs, tensors["test"][1]),
            **scenario.metrics(model, tensors, plan),
        },
        "history": result.history,
        "cost": cost,
        "defense": defense.summary(poisoned),  # the only hook that sees the ground-truth poison mask
        "poison_tensors": dict(plan.tensor_sha256) if plan is not None else None,  # sha256 per attack
        "inputs": run_inputs(config, plan, victim),  # every input by content: poisons, models, dataset
        "compiled": result.compiled,
        "resumed_from_epoch": result.resumed_from,
        "env": with_plugins(environment(device, accel=spec.accel, deterministic=spec.deterministic),
                            run_plugins(config)),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
