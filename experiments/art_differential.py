"""ART's Feature Collision and Bullseye Polytope beside ours on the same inputs (issue 66 item 1); the write-up is
experiments/art_differential.md.

IBM's Adversarial Robustness Toolbox (ART, `adversarial-robustness-toolbox==1.20.1`, the `interop` extra; never a
runtime dependency) is imported here only. The setting is the issue's: Fashion-MNIST (Debian's
`dataset-fashion-mnist`), HINT's MNIST ConvNet pre-trained with the `quick` recipe on the clean 90 % of the train
split (our transfer scenario's extractor, `engine.pretrained`), 60 poisons (≈ 1 % of the 5,900-image transfer set),
ε 32/255, bases = the intended-class transfer images nearest the target in the crafting extractor's features
(`attacks.targets.nearest_rows`), target and intended class drawn from the trial's seed as `defend` draws them
(`attacks.targets.draw_target`). Every crafter gets the same extractor (white-box: the victim's own; gray-box: the
attacker's, `--threat gray`), bases, target and ε; every set of poisons is trained on by the same victims: the
frozen victim extractor with a new linear head trained by the engine (`engine.training.train`, the `quick` recipe:
10 epochs, SGD 0.01, batch 128) on the transfer set with the poisons, the head seeded by the victim seed (the trial
number, as `defend --trial T` seeds it; every attacker model's seed is ≥ 2^63, `core.seeds`).

    python experiments/art_differential.py table [--trials 0 1 2] [--threat white] [--eps 32] [--out FILE.jsonl]
    python experiments/art_differential.py one --crafter C [--kw JSON] [--victims JSON] [--trials ...] [--out F]
    python experiments/art_differential.py summary FILE.jsonl [...]
    python experiments/art_differential.py means FILE.jsonl [--eps 32] [--trials ...]
    python experiments/art_differential.py paired FILE.jsonl --crafter C [--kw JSON] --versus C2 [--versus-kw JSON]
        [--eps 32] [--trials ...]

`table`: per target, ours, ART's FC (its defaults, one round; as its example runs it) and ART's BP. `one`: one
crafter with its keywords (a suspect of issue 66: another objective, step count or selection among restarts, `brew`)
and the victims to train (`--victims`: the head `fresh` or `pretrained`, BatchNorm `train` or `eval`). Each run
appends one JSON line per target (success, p(intended), feature distances); crafted poisons are cached under
RESULTS/art_differential, so other victims on the same poisons cost only their training. `summary` prints the
markdown tables of art_differential.md. `means`: per crafter and keywords, the means over the given trials (the
grid of experiments/art_perpoison.md); `paired`: two crafters on the same targets, paired (its paired table).

Victims: `bn` train is the engine's victim (`engine.training.train`, as `defend --head-bn train`, the default);
`bn` eval (`defend --head-bn eval`) fixes φ, so `victim_eval_bn` trains the same head with the engine's order and
initialisation on precomputed features (about 100× cheaper on this CPU; checked against the engine's).

Crafters (`CRAFTERS`):
- `ours`: our `fc` (forest's poison-frogs recipe, the default: signed Adam, 250 iterations, 8 restarts, lowest
  final loss kept; `--restarts` to shorten) through the attack class, as `craft --attack fc` runs it.
- `art-fc`: ART's `FeatureCollisionAttack` with its defaults (lr 500·255, decay 0.5, 120 iterations, similarity
  coefficient 256), which has no ε bound: it is run in `--art-rounds` rounds, each a call of `poison` started from
  the last round's poisons, followed by the L∞ projection onto the ε-ball around the bases and [0, 1] (the issue's
  protocol; reference/toolkits.md).
- `art-fc-rescaled`: ART's `FeatureCollisionAttack` at settings rescaled to [0, 1] pixels and 1,600 features
  (issue 80 item 5: lr 0.02, similarity coefficient 0.1, 5 iterations a call), one base per call with its learning
  rate reset before each call, `rounds` calls per base each followed by the ε projection (experiments/art_perpoison.md).
- `toxic`: our per-poison FC (`fc --impl toxic`, the Toxic benchmark's forward-backward) through the attack class.
- `art-bp`: ART's `BullseyePolytopeAttackPyTorch` (Adam 0.04, `--art-bp-iterations`, its own ε clip), as shipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext, Target, budget_count, project
from poisonbench.attacks.targets import base_pool, draw_target, nearest_rows
from poisonbench.core.device import to_float
from poisonbench.core.hashing import short_hash
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.engine.pretrained import load_or_train_extractor, transfer_split
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.craft_targeted import art_classifier  # noqa: E402  (the one ART adapter: our model's features, head)

DATA_DIR = "/usr/share/datasets/fashion-mnist"
RECIPE = "quick"  # HINT's MNIST script's 10 epochs, SGD 0.01 (engine.recipes)
POISONS = 60  # the issue's: ≈ 1 % of the 5,900-image transfer set
CPU = torch.device("cpu")


class Setting:
    """The dataset, the victim's extractor and the crafting extractor (the victim's under white-box)."""

    def __init__(self, results: Path, threat: str, eps: float, poisons: int):
        self.results, self.threat, self.eps = results, threat, eps
        self.data = load_dataset("fashion-mnist", DATA_DIR)
        self.budget = (poisons + 0.5) / len(self.data.train)  # ⌊budget·n⌋ = poisons
        assert budget_count(self.budget, len(self.data.train)) == poisons
        self.victim_extractor = self.extractor("victim")
        self.crafting = self.victim_extractor if threat == "white" else self.extractor("attacker")
        self.transfer_rows = transfer_split(self.data)[1]
        self.x_test = to_float(self.data.test.x, CPU)

    def extractor(self, role: str) -> nn.Module:
        model, _ = load_or_train_extractor(self.data, CPU, recipe=RECIPE, results_root=self.results, role=role)
        return model.eval().requires_grad_(False)

    def target(self, trial: int) -> tuple[Target, torch.Tensor]:
        """(the trial's target with its nearest bases, the bases' rows), as `defend --trial T bases=nearest`."""
        drawn = draw_target(self.data, trial, "transfer", self.budget)
        pool = base_pool(self.data, drawn.intended_class, "transfer")
        rows, _ = nearest_rows(self.crafting, self.data, pool, drawn.index, len(drawn.rows), CPU)
        return Target(drawn.index, drawn.true_class, drawn.intended_class, tuple(int(r) for r in rows)), rows

    def tensors(self, rows: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.data.train.x[rows], CPU), self.x_test[target.index:target.index + 1]


# ---------------------------------------------------------------------------------------------------------- crafters

def ours(setting: Setting, trial: int, target: Target, rows: torch.Tensor, **params) -> tuple[torch.Tensor, dict]:
    """Our FC (or `attack=bp`), through the attack class on these rows: (δ, the craft's info)."""
    name = params.pop("attack", "fc")
    attack = ATTACKS.get(name)(setting.data.family, scenario="transfer", threat=setting.threat, bases="nearest",
                               surrogate_recipe=RECIPE, **params)
    ctx = AttackContext(setting.data, rows, setting.eps, setting.budget, trial, CPU, target=target,
                        loader=lambda ctx: (setting.crafting, {}))
    delta = attack.perturb(ctx)
    return delta, {"params": {k: v for k, v in attack.params.items() if not k.startswith("surrogate_")},
                   **getattr(attack, "training_summary", {})}


def art_fc(setting: Setting, trial: int, target: Target, rows: torch.Tensor, rounds: int = 10,
           **kw) -> tuple[torch.Tensor, dict]:
    """ART's FeatureCollisionAttack in `rounds` rounds, each followed by the L∞ projection onto the ε-ball."""
    from art.attacks.poisoning import FeatureCollisionAttack

    x, t = setting.tensors(rows, target)
    classifier = art_classifier(setting.crafting, setting.data, CPU)
    bases, poisons = x.numpy(), x.numpy().copy()
    for _ in range(rounds):  # a fresh attack per round: ART decays its learning rate in place
        attack = FeatureCollisionAttack(classifier, t.numpy(), "features", verbose=False, **kw)
        out, _ = attack.poison(poisons)
        poisons = project(torch.from_numpy(bases), torch.from_numpy(out) - torch.from_numpy(bases),
                          setting.eps).add_(torch.from_numpy(bases)).numpy()
    return torch.from_numpy(poisons) - x, {"rounds": rounds, **kw}


def art_fc_rescaled(setting: Setting, trial: int, target: Target, rows: torch.Tensor, rounds: int = 60,
                    learning_rate: float = 0.02, similarity_coeff: float = 0.1, max_iter: int = 5,
                    **kw) -> tuple[torch.Tensor, dict]:
    """ART's FeatureCollisionAttack at settings rescaled to [0, 1] pixels and the ConvNet's 1,600 features (the
    issue-80 reviewer's protocol): one attack per target; for each base, `rounds` rounds, each ONE call of
    `poison` on that base's current poison alone (`max_iter` iterations) with `attack.learning_rate` reset to
    `learning_rate` before the call (ART halves it in place and shares it across the bases of a call), followed by
    the L∞ projection onto the ε-ball around the clean base and [0, 1]. ART's backward step pulls toward the
    image the call starts from (its `init_attack`), i.e. the last round's projected poison, with
    β = similarity_coeff·(1600/784)². No watermark."""
    from art.attacks.poisoning import FeatureCollisionAttack

    x, t = setting.tensors(rows, target)
    classifier = art_classifier(setting.crafting, setting.data, CPU)
    attack = FeatureCollisionAttack(classifier, t.numpy(), "features", learning_rate=learning_rate,
                                    similarity_coeff=similarity_coeff, max_iter=max_iter, verbose=False, **kw)
    poisons = x.clone()
    decays = 0  # calls that ended with ART's learning rate below the reset value (its rejected first step)
    for i in range(len(x)):
        base = x[i:i + 1]
        poison = base.clone()
        for _ in range(rounds):
            attack.learning_rate = learning_rate
            out, _ = attack.poison(poison.numpy().copy())
            decays += attack.learning_rate < learning_rate
            poison = base + project(base, torch.from_numpy(out) - base, setting.eps)
        poisons[i:i + 1] = poison
    return poisons - x, {"rounds": rounds, "learning_rate": learning_rate, "similarity_coeff": similarity_coeff,
                         "max_iter": max_iter, "decayed_calls": int(decays), **kw}


def toxic(setting: Setting, trial: int, target: Target, rows: torch.Tensor, **params) -> tuple[torch.Tensor, dict]:
    """Our per-poison FC (`fc --impl toxic`: the Toxic benchmark's forward-backward, Shafahi et al. Eq. 1) through
    the attack class, as `craft --attack fc --attack-params impl=toxic` runs it."""
    return ours(setting, trial, target, rows, impl="toxic", **params)


def art_bp(setting: Setting, trial: int, target: Target, rows: torch.Tensor, iterations: int = 1200,
           **kw) -> tuple[torch.Tensor, dict]:
    """ART's BullseyePolytopeAttackPyTorch as shipped (Adam 0.04, its ε clip after every step)."""
    from art.attacks.poisoning import BullseyePolytopeAttackPyTorch

    x, t = setting.tensors(rows, target)
    classifier = art_classifier(setting.crafting, setting.data, CPU)
    attack = BullseyePolytopeAttackPyTorch(classifier, t.numpy(), "features", max_iter=iterations,
                                           learning_rate=0.04, epsilon=setting.eps, net_repeat=1, endtoend=True,
                                           batch_size=len(x), verbose=False, **kw)
    out, _ = attack.poison(x.numpy(), np.full(len(x), target.intended_class))
    return project(x, torch.from_numpy(out) - x, setting.eps), {"iterations": iterations, **kw}


def per_poison_loss(poison_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Each poison's own collision, Poison Frogs' and ART's: mean_i ‖φ(p_i) − φ(t)‖² / D."""
    return (poison_features - target_features).pow(2).mean(1).mean()


def art_norm_loss(poison_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """ART's FC feature term, per poison and not squared: mean_i ‖φ(p_i) − φ(t)‖."""
    return (poison_features - target_features).norm(dim=1).mean()


OBJECTIVES = {"mean": None, "per-poison": per_poison_loss, "art-norm": art_norm_loss}


def brew(setting: Setting, trial: int, target: Target, rows: torch.Tensor, objective: str = "mean",
         restarts: int = 8, iterations: int = 250, lr: float = 0.1, select: str = "loss") -> tuple[torch.Tensor, dict]:
    """Forest's brew (our `forest.Brew`, signed Adam in forest's units) with another objective (`OBJECTIVES`; mean:
    forest's poison-frogs) or another selection among restarts (`select` loss: the lowest final crafting loss,
    forest's; per-poison: the lowest mean per-poison feature distance)."""
    from poisonbench.attacks.fc import poison_frogs_loss
    from poisonbench.attacks.forest import Brew

    x, t = setting.tensors(rows, target)
    model = setting.crafting
    with torch.no_grad():
        phi_t = model.features(t)
    loss_fn = OBJECTIVES[objective] or poison_frogs_loss
    ctx = AttackContext(setting.data, rows, setting.eps, setting.budget, trial, CPU, target=target)
    b = Brew(iterations, 1, lr, 512, False)
    results = [b.restart(ctx, "fc", x, lambda inputs, s, e: loss_fn(model.features(inputs), phi_t), r)
               for r in range(restarts)]
    with torch.no_grad():
        scores = [float(per_poison_loss(model.features(x + d), phi_t)) if select == "per-poison" else loss
                  for d, loss in results]
    best = min(range(restarts), key=scores.__getitem__)
    return results[best][0], {"losses": [round(loss, 5) for _, loss in results], "scores": scores, "best": best}


def watermark(setting: Setting, trial: int, target: Target, rows: torch.Tensor, opacity: float = 0.3,
              blend: bool = False) -> tuple[torch.Tensor, dict]:
    """No optimisation: ART's watermark alone, x = b + opacity·t (`blend`: PB's 0.3·t + 0.7·b), projected onto
    the ε-ball: what ART's FC returns when its collision steps do not move (its example's `watermark=0.3`)."""
    x, t = setting.tensors(rows, target)
    start = opacity * t + (1 - opacity) * x if blend else x + opacity * t
    return project(x, start - x, setting.eps), {"opacity": opacity, "blend": blend}


# ART's FC as its example notebook runs it (notebooks/poisoning_attack_feature_collision*.ipynb)
ART_EXAMPLE = {"rounds": 1, "max_iter": 10, "similarity_coeff": 256, "watermark": 0.3}
CRAFTERS = {"ours": ours, "art-fc": art_fc, "art-fc-rescaled": art_fc_rescaled, "toxic": toxic, "art-bp": art_bp,
            "brew": brew, "watermark": watermark}


# ------------------------------------------------------------------------------------------------------ measurement

@torch.no_grad()
def feature_distance(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, t: torch.Tensor) -> dict:
    """In the victim extractor's features φ (eval mode): mean ‖φ(p_i) − φ(t)‖ (d_pt), the same for the clean bases
    (d_bt), their ratio (1: no move, 0: every poison on the target) and ‖mean φ(p) − φ(t)‖ (d_pm)."""
    phi_t = model.features(t)
    phi_p, phi_b = model.features(x + delta), model.features(x)
    d_pt = (phi_p - phi_t).norm(dim=1).mean()
    d_bt = (phi_b - phi_t).norm(dim=1).mean()
    return {"d_pt": round(float(d_pt), 3), "d_bt": round(float(d_bt), 3), "ratio": round(float(d_pt / d_bt), 3),
            "d_pm": round(float((phi_p.mean(0) - phi_t[0]).norm()), 3),
            "linf": round(float(delta.abs().max()) * 255, 2)}


def victim(setting: Setting, target: Target, rows: torch.Tensor, delta: torch.Tensor, seed: int,
           head: str = "fresh", bn: str = "train") -> dict:
    """The transfer victim (`scenarios.targeted.Transfer`): the victim's extractor frozen, a head `fresh` (the
    ConvNet's initialisation from `seed`, as `defend`) or `pretrained` (the extractor's own), its BatchNorm in
    `bn` mode, trained by the engine with the quick recipe on the transfer set with the poisons; its prediction on
    the target."""
    data = setting.data
    model = copy.deepcopy(setting.victim_extractor).requires_grad_(False)
    model.head = (build_model("convnet", data, seed=seed).head if head == "fresh"
                  else copy.deepcopy(setting.victim_extractor.head)).requires_grad_(True)
    model.frozen_bn = bn
    train_rows = torch.unique(torch.cat([setting.transfer_rows, rows]))
    x = to_float(data.train.x[train_rows], CPU)
    at = torch.searchsorted(train_rows, rows)
    x[at] = (x[at] + delta).clamp_(0, 1)
    y = data.train.y[train_rows].long()
    val = setting.x_test[:2000], data.test.y[:2000].long()
    train(model, x, y, *val, resolve_recipe(data.family, RECIPE), seed=seed, device=CPU,
          num_classes=data.num_classes)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(setting.x_test[target.index:target.index + 1]), 1)[0]
        acc = float((model(val[0]).argmax(1) == val[1]).float().mean())
    return {"success": int(probs.argmax()) == target.intended_class,
            "p_intended": round(float(probs[target.intended_class]), 3),
            "p_true": round(float(probs[target.true_class]), 3), "acc2k": round(100 * acc, 2)}


@torch.no_grad()
def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.features(x[i:i + 512]) for i in range(0, len(x), 512)])


def victim_eval_bn(setting: Setting, target: Target, rows: torch.Tensor, delta: torch.Tensor, seed: int,
                   head: str = "fresh") -> dict:
    """The transfer victim with `--head-bn eval`, computed on its features: with the extractor's BatchNorm in eval
    mode φ is fixed, so the head's training is the engine's (`engine.training.train`: the same head initialisation,
    the same per-epoch `randperm` from the same seeded generator, batch 128, SGD 0.01, 10 epochs) on the
    precomputed φ of the transfer set with the poisons; the clean rows' φ is computed once per process."""
    data, model = setting.data, setting.victim_extractor
    if not hasattr(setting, "clean_phi"):
        setting.clean_phi = features_of(model, to_float(data.train.x[setting.transfer_rows], CPU))
        setting.phi_test = features_of(model, setting.x_test)
    train_rows = torch.unique(torch.cat([setting.transfer_rows, rows]))
    phi = torch.empty(len(train_rows), setting.clean_phi.shape[1])
    known = torch.isin(train_rows, setting.transfer_rows)
    phi[known] = setting.clean_phi[torch.searchsorted(setting.transfer_rows, train_rows[known])]
    at = torch.searchsorted(train_rows, rows)
    phi[at] = features_of(model, (to_float(data.train.x[rows], CPU) + delta).clamp_(0, 1))
    y = data.train.y[train_rows].long()
    recipe = resolve_recipe(data.family, RECIPE)
    linear = (build_model("convnet", data, seed=seed).head if head == "fresh"
              else copy.deepcopy(model.head)).requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(linear.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            loss = nn.functional.cross_entropy(linear(phi[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        probs = torch.softmax(linear(setting.phi_test[target.index:target.index + 1]), 1)[0]
        acc = float((linear(setting.phi_test[:2000]).argmax(1) == data.test.y[:2000]).float().mean())
    return {"success": int(probs.argmax()) == target.intended_class,
            "p_intended": round(float(probs[target.intended_class]), 3),
            "p_true": round(float(probs[target.true_class]), 3), "acc2k": round(100 * acc, 2)}


def one(setting: Setting, trial: int, crafter: str, victims: list[dict], **kw) -> dict:
    target, rows = setting.target(trial)
    key = short_hash({"trial": trial, "crafter": crafter, "kw": kw, "threat": setting.threat, "eps": setting.eps,
                      "budget": setting.budget})
    cache = setting.results / "art_differential" / f"{key}.pt"
    if cache.exists():  # the poisons of an earlier run (other victims on the same poisons)
        delta, info, seconds = torch.load(cache).values()
    else:
        start = time.perf_counter()
        delta, info = CRAFTERS[crafter](setting, trial, target, rows, **kw)
        seconds = time.perf_counter() - start
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"delta": delta, "info": info, "seconds": seconds}, cache)
    x, t = setting.tensors(rows, target)
    row = {"trial": trial, "target": target.index, "true": target.true_class, "intended": target.intended_class,
           "crafter": crafter, "kw": kw, "craft_seconds": round(seconds, 1), "info": info,
           **feature_distance(setting.victim_extractor, x, delta, t)}
    row["victims"] = [  # "engine": train the eval-BN victim through the engine too (a check of victim_eval_bn)
        {**v, **(victim_eval_bn(setting, target, rows, delta, trial, v["head"]) if v["bn"] == "eval" and not
                 v.get("engine") else victim(setting, target, rows, delta, trial, v["head"], v["bn"]))}
        for v in victims]
    print(json.dumps(row), flush=True)
    return row


def label(row: dict) -> str:
    kw = ",".join(f"{k}={v}" for k, v in row["kw"].items())
    return row["crafter"] + (f" ({kw})" if kw else "")


def summary(paths: list[Path]) -> None:
    """Markdown: one line per (target, crafter, victim), then success k/n per cell (threat, ε, crafter, victim)."""
    rows = [json.loads(line) for path in paths if path.exists()
            for line in path.read_text().splitlines() if line.strip()]
    print("| threat | ε/255 | poisons | trial | target (true→intended) | crafter | victim | success | p(intended) "
          "| d_pt / d_bt | d_pm | ‖δ‖∞·255 | craft s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    cells: dict[tuple, list[bool]] = {}
    for r in sorted(rows, key=lambda r: (r["threat"], r["eps"], r.get("poisons", POISONS), r["trial"], label(r))):
        n = r.get("poisons", POISONS)
        for v in r["victims"]:
            who = f"{v['head']} head, BN {v['bn']}"
            print(f"| {r['threat']} | {r['eps']:g} | {n} | {r['trial']} | "
                  f"{r['target']} ({r['true']}→{r['intended']}) | "
                  f"{label(r)} | {who} | {'yes' if v['success'] else 'no'} | {v['p_intended']:.3f} | "
                  f"{r['d_pt']:.1f} / {r['d_bt']:.1f} ({r['ratio']:.2f}) | {r['d_pm']:.1f} | {r['linf']:g} | "
                  f"{r['craft_seconds']:.0f} |")
            cells.setdefault((r["threat"], r["eps"], n, label(r), who), []).append(v["success"])
    print("\n| threat | ε/255 | poisons | crafter | victim | success k/n |\n|---|---|---|---|---|---|")
    for (threat, eps, n, crafter, who), hits in sorted(cells.items()):
        print(f"| {threat} | {eps:g} | {n} | {crafter} | {who} | {sum(hits)}/{len(hits)} |")


def runs_of(paths: list[Path]) -> dict[tuple, dict]:
    """The rows of the JSONL files by (crafter, kw, threat, ε, poisons, trial): a repeated run (the same cached
    poisons) adds the victims its rows had not trained yet."""
    runs: dict[tuple, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.strip():
                r = json.loads(line)
                key = (r["crafter"], json.dumps(r["kw"], sort_keys=True), r["threat"], r["eps"],
                       r.get("poisons", POISONS), r["trial"])
                seen = runs.setdefault(key, {**r, "victims": []})["victims"]
                who = [(v["head"], v["bn"], v.get("engine")) for v in seen]
                seen += [v for v in r["victims"] if (v["head"], v["bn"], v.get("engine")) not in who]
    return runs


def fresh_eval(row: dict) -> dict | None:
    """The row's fresh-head, BN-eval victim (`victim_eval_bn`), the one every crafter here is trained by."""
    return next((v for v in row["victims"] if v["head"] == "fresh" and v["bn"] == "eval" and not v.get("engine")),
                None)


def means(paths: list[Path], threat: str, eps: float, poisons: int, trials: list[int]) -> None:
    """Markdown: per (crafter, kw) at this threat, ε and budget, over the given trials it has: targets, mean d_pt,
    mean d_pt/d_bt, mean d_pm, mean p(intended), success k/n (fresh head, BN eval), mean craft seconds."""
    cells: dict[tuple, list[dict]] = {}
    for (crafter, kw, th, e, n, trial), r in sorted(runs_of(paths).items()):
        if (th, e, n) == (threat, eps, poisons) and trial in trials and fresh_eval(r):
            cells.setdefault((crafter, kw), []).append(r)
    print("| crafter | kw | targets | mean d_pt | mean d_pt/d_bt | mean d_pm | mean p(intended) | success | "
          "mean craft s |\n|---|---|---|---|---|---|---|---|---|")
    for (crafter, kw), rs in cells.items():
        v = [fresh_eval(r) for r in rs]
        print(f"| {crafter} | `{kw}` | {len(rs)} | {np.mean([r['d_pt'] for r in rs]):.2f} | "
              f"{np.mean([r['ratio'] for r in rs]):.3f} | {np.mean([r['d_pm'] for r in rs]):.2f} | "
              f"{np.mean([x['p_intended'] for x in v]):.3f} | {sum(x['success'] for x in v)}/{len(v)} | "
              f"{np.mean([r['craft_seconds'] for r in rs]):.0f} |")


def paired(paths: list[Path], threat: str, eps: float, poisons: int, trials: list[int], first: tuple[str, dict],
           second: tuple[str, dict]) -> None:
    """Markdown: two crafters on the same targets (the given trials both have), per target and paired: success
    (both / first only / second only / neither, Δ with Newcombe's 95 % interval, McNemar's exact p:
    `report.tables.stats.paired_success`), and for p(intended), d_pt/d_bt and d_pm each one's mean, the mean
    paired difference (first − second) with a t 95 % interval and Wilcoxon's signed-rank p."""
    from scipy import stats

    from poisonbench.report.tables.stats import paired_success

    runs = runs_of(paths)
    keys = [(c, json.dumps(kw, sort_keys=True)) for c, kw in (first, second)]
    both = [t for t in trials if all((c, kw, threat, eps, poisons, t) in runs
                                     and fresh_eval(runs[(c, kw, threat, eps, poisons, t)]) for c, kw in keys)]
    a, b = ([runs[(c, kw, threat, eps, poisons, t)] for t in both] for c, kw in keys)
    names = [f"{c} `{kw}`" for c, kw in keys]
    print(f"first: {names[0]}; second: {names[1]}; {threat}-box, ε {eps:g}/255, {poisons} poisons, "
          f"{len(both)} targets (trials {' '.join(map(str, both))})\n")
    print("| trial | target (true→intended) | d_bt | d_pt first / second | d_pm first / second | "
          "p(intended) first / second | success first / second |\n|---|---|---|---|---|---|---|")
    for t, r, s in zip(both, a, b, strict=True):
        vr, vs = fresh_eval(r), fresh_eval(s)
        print(f"| {t} | {r['target']} ({r['true']}→{r['intended']}) | {r['d_bt']:.1f} | {r['d_pt']:.2f} / "
              f"{s['d_pt']:.2f} | {r['d_pm']:.2f} / {s['d_pm']:.2f} | {vr['p_intended']:.3f} / {vs['p_intended']:.3f}"
              f" | {'yes' if vr['success'] else 'no'} / {'yes' if vs['success'] else 'no'} |")
    hits = [[bool(fresh_eval(r)["success"]) for r in rows] for rows in (a, b)]
    ps = paired_success(*hits)
    print(f"\nsuccess: first {sum(hits[0])}/{len(both)}, second {sum(hits[1])}/{len(both)}; both {ps.both}, "
          f"first only {ps.first_only}, second only {ps.second_only}, neither {ps.neither}; "
          f"Δ {100 * ps.diff:+.0f} pp [Newcombe {100 * ps.lo:+.0f}, {100 * ps.hi:+.0f}], McNemar p {ps.p:.3g}\n")
    print("| measure | first (mean) | second (mean) | first − second (mean, t 95 %) | Wilcoxon p |\n"
          "|---|---|---|---|---|")
    for name, get in (("p(intended)", lambda r: fresh_eval(r)["p_intended"]), ("d_pt/d_bt", lambda r: r["ratio"]),
                      ("d_pt", lambda r: r["d_pt"]), ("d_pm", lambda r: r["d_pm"])):
        x, y = np.array([get(r) for r in a]), np.array([get(r) for r in b])
        d = x - y
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        w = stats.wilcoxon(x, y).pvalue if np.any(d != 0) else 1.0
        print(f"| {name} | {x.mean():.3f} | {y.mean():.3f} | {d.mean():+.3f} [{d.mean() - half:+.3f}, "
              f"{d.mean() + half:+.3f}] | {w:.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("table", "one", "summary", "means", "paired"))
    parser.add_argument("files", nargs="*", type=Path, help="summary: the JSONL files the runs appended to")
    parser.add_argument("--results", type=Path, default=Path("results/t66"))
    parser.add_argument("--trials", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threat", choices=("white", "gray"), default="white")
    parser.add_argument("--eps", type=float, default=32, help="ε in 1/255")
    parser.add_argument("--poisons", type=int, default=POISONS)
    parser.add_argument("--crafter", choices=tuple(CRAFTERS), default="ours", help="one: the crafter")
    parser.add_argument("--kw", default="{}", help="one: the crafter's keywords (JSON)")
    parser.add_argument("--victims", default='[{"head": "fresh", "bn": "eval"}]',
                        help='victims (JSON list of {"head": fresh|pretrained, "bn": train|eval})')
    parser.add_argument("--out", type=Path, help="append the JSON rows here")
    parser.add_argument("--versus", choices=tuple(CRAFTERS), default="toxic", help="paired: the second crafter")
    parser.add_argument("--versus-kw", default="{}", help="paired: the second crafter's keywords (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "summary":
        return summary(args.files)
    if args.command == "means":
        return means(args.files, args.threat, args.eps, args.poisons, args.trials)
    if args.command == "paired":
        return paired(args.files, args.threat, args.eps, args.poisons, args.trials,
                      (args.crafter, json.loads(args.kw)), (args.versus, json.loads(args.versus_kw)))
    setting = Setting(args.results, args.threat, args.eps / 255, args.poisons)
    victims = json.loads(args.victims)
    runs = {"one": [(args.crafter, json.loads(args.kw))],
            "table": [("ours", {}), ("art-fc", {"rounds": 1}), ("art-fc", ART_EXAMPLE), ("art-bp", {})]}[args.command]
    for trial in args.trials:
        for crafter, kw in runs:
            row = one(setting, trial, crafter, victims, **kw)
            row["threat"], row["eps"], row["poisons"] = args.threat, args.eps, args.poisons
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
