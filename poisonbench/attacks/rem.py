"""`rem`: Fu et al.'s robust error-minimising noise (ICLR'22; fshp971 = CausalLearning/robust-unlearnable-examples,
`generate_robust_em.py`, `attacks.py` (PGD attacker, `RobustMinimaxPGDDefender`), scripts/cifar10/gen_rem.sh).

δ_u minimises E_T max_{‖δ_a‖∞ ≤ ρ_a} CE(f(T(x + δ_u) + δ_a), y), ‖δ_u‖∞ ≤ ρ_u (ε), while the source model f is
adversarially trained (radius ρ_a) on T(x + δ_u). Per training step, on a batch of `batch_size` rows:

1. δ_u restarts from a uniform random point of the ε-ball and takes `u_steps` signed steps of ε·`u_step_fraction`
   that *descend* the loss averaged over `samples` augmentation draws T, each with its own inner PGD δ_a
   (`a_steps` ascending steps of ρ_a·`a_step_fraction` from a random start);
2. the model takes one SGD step (lr 0.1, momentum 0.9, weight decay 5e-4; lr × 0.1 every `lr_decay_every` steps)
   on T(x + δ_u) + δ_a, δ_a from the same inner PGD.

After the last step, the noise of every poisoned row is generated afresh with the final model (step 1); the
official code has no stop condition. The augmentation draws are batched (`samples` copies of the batch in one
tensor), each a whole-batch `engine.augment` transform: CIFAR-10 crop-flip (REM's crop 32 pad 4 + flip). The
MNIST family's victims do not augment (paper recipe), so T is the identity there (`--eot-augment none`;
`--eot-augment shift` gives forest's ±2 px shifts): the official schedule's 5 draws then differ only in the random
start of their δ_a, and the budget schedule takes 1. The inner searches run with the model in eval mode, the SGD
step in train mode.

Model: the authors' ResNet-18 on CIFAR-10; here the family's default model (ConvNet for the MNIST family) unless
`--model` says otherwise. ε (ρ_u): the authors' 8/255 for both families (they have no MNIST); ρ_a 4/255.

The schedule (`--schedule`, recorded in the PoisonSet's parameters and so in its poison id) sets the five options
`train_steps`, `lr_decay_every`, `u_steps`, `a_steps` and `samples` that are not given explicitly:

- `official` (the default, both families; issue 67): REM's `scripts/cifar10/gen_rem.sh`, 5000 steps of batch 128,
  lr × 0.1 every 2000 steps, 10 descent steps of δ_u, each over 5 augmentation draws with 10 ascent steps of δ_a:
  10 × 5 × (10 + 1) forward/backward passes per row and step, hours of GPU time (docs/fidelity.md has the CPU
  estimate);
- `budget`: the former MNIST-family default, 40 steps, lr × 0.1 every 16 (2/5 of the steps, as officially),
  5 / 2 inner steps and 1 draw (2 on CIFAR-10): mnist-5k in minutes on a 2-core CPU, about 1.3 epochs of
  source-model training against the official 12.8. A table labels a column of budget-schedule runs
  (`report`: "rem (budget)").

The random starts, the augmentation and the batch order draw from attacker seeds derived from the crafting seed and
the parameters. The state (model, optimizer, generator) is kept every `SAVE_EVERY` steps and the final noise batch
by batch, so a killed craft resumes and ends with the δ of an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.params import MAX_BATCH_SIZE, MAX_DRAWS, MAX_STEPS, Param
from ..core.seeds import attacker_seed
from ..engine.augment import apply as augment
from ..engine.models import build_model
from .base import Attack, AttackContext, PartialBatches, batches
from .em import EM_EPS, GRAD_CLIP, BatchStream, StateFile, frozen, model_param, sgd, train_step
from .pgd import linf_pgd

# REM scripts/cifar10/gen_rem.sh: --train-steps 5000 --batch-size 128 --lr 0.1 --lr-decay-rate 0.1 --lr-decay-freq 2000
# --pgd-steps 10 --pgd-step-size 1.6 (ρ_u 8: ρ_u/5) --atk-pgd-steps 10 --atk-pgd-step-size 0.8 (ρ_a 4: ρ_a/5)
# --samp-num 5
OFFICIAL = {"train_steps": 5000, "lr_decay_every": 2000, "u_steps": 10, "a_steps": 10, "samples": 5}
# the budget schedule (poisonbench; the MNIST family's default until issue 67): 40 steps, the decay at 2/5 of them as
# officially, half the inner steps and fewer draws; the MNIST family's victims do not augment, so one draw there
BUDGET = {"train_steps": 40, "lr_decay_every": 16, "u_steps": 5, "a_steps": 2, "samples": {"mnist": 1, "cifar10": 2}}
SCHEDULES = {"official": OFFICIAL, "budget": BUDGET}
SAVE_EVERY = 10  # training steps between two saved states
MAX_TRAIN_STEPS = 50_000  # --train-steps at most: 10× the official 5,000 (core.params, the bounds)
AUGMENTS = ("none", "crop-flip", "shift")


def uniform_start(shape, radius: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, device=device) * 2 - 1).mul_(radius)


def adversarial(model, x: torch.Tensor, y: torch.Tensor, radius: float, steps: int, step: float,
                generator: torch.Generator) -> torch.Tensor:
    """δ_a: `steps` ascending signed steps on CE(model(x + δ_a), y) from a uniform start in the ρ_a-ball (zero for
    ρ_a = 0), in the ball and the pixel box."""
    if radius == 0 or steps == 0:
        return torch.zeros_like(x)
    init = uniform_start(x.shape, radius, generator, x.device)
    return linf_pgd(model, x, y, radius, steps, step, init, maximize=True)


def robust_min(model, x: torch.Tensor, y: torch.Tensor, eps: float, p: dict, generator: torch.Generator,
               transform: str) -> torch.Tensor:
    """δ_u for the rows x (REM's min-min-max, step 1 of the module docstring), the model frozen in eval mode. The
    `samples` augmentation draws are one tensor of samples × rows; the loss is summed over rows and averaged over
    draws, so every row's gradient is its own."""
    rho_a, s = p["adv_radius"], p["samples"]
    u_step, a_step = eps * p["u_step_fraction"], rho_a * p["a_step_fraction"]
    delta = (x + uniform_start(x.shape, eps, generator, x.device)).clamp_(0, 1) - x
    ys = y.repeat(s)
    for _ in range(p["u_steps"]):
        delta.requires_grad_(True)
        xt = augment(transform, (x + delta).repeat(s, 1, 1, 1), generator)
        da = adversarial(model, xt.detach(), ys, rho_a, p["a_steps"], a_step, generator)
        loss = F.cross_entropy(model((xt + da).clamp(0, 1)), ys, reduction="sum") / s
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (x + (delta - u_step * grad.sign()).clamp(-eps, eps)).clamp(0, 1) - x
    return delta.detach()


class REM(Attack):
    name = "rem"
    summary = "Fu et al.: robust error-minimising noise against an adversarially trained model (min-min-max)"
    PARAMS = (
        Param("schedule", str, "official", "The schedule of the five options below that are not given: REM's "
              "official one (5000 steps; hours of GPU time) or a CPU budget (40 steps).",
              "REM gen_rem.sh (official); budget: poisonbench, issue 67", choices=tuple(SCHEDULES)),
        Param("train_steps", int, None, "Source-model training steps (a batch each). Official 5000; budget 40.",
              "REM gen_rem.sh --train-steps 5000", minimum=0, maximum=MAX_TRAIN_STEPS),
        Param("batch_size", int, 128, "Training and noise batch.", "REM gen_rem.sh --batch-size 128", minimum=1,
              maximum=MAX_BATCH_SIZE),
        Param("lr", float, 0.1, "SGD learning rate (momentum 0.9, weight decay 5e-4).", "REM gen_rem.sh --lr 0.1",
              positive=True),
        Param("lr_decay_every", int, None, "Multiply the lr by 0.1 every this many steps. Official 2000; budget 16 "
              "(2/5 of the steps, as officially).", "REM gen_rem.sh --lr-decay-rate 0.1 --lr-decay-freq 2000",
              minimum=1),
        Param("u_steps", int, None, "Signed descent steps of δ_u (from a random start). Official 10; budget 5.",
              "REM gen_rem.sh --pgd-steps 10", minimum=1, maximum=MAX_STEPS),
        Param("u_step_fraction", float, 0.2, "δ_u's step as a fraction of ε (1.6/255 at 8/255).",
              "REM gen_rem.sh --pgd-step-size 1.6 with --pgd-radius 8", positive=True, maximum=1),
        Param("adv_radius", float, 4 / 255, "ρ_a: the L∞ radius of the adversarial δ_a (0: no adversary).",
              "REM gen_rem.sh --atk-pgd-radius 4 (of 255)", minimum=0, maximum=1, below_maximum=True),
        Param("a_steps", int, None, "Signed ascent steps of δ_a. Official 10; budget 2.",
              "REM gen_rem.sh --atk-pgd-steps 10", minimum=0, maximum=MAX_STEPS),
        Param("a_step_fraction", float, 0.2, "δ_a's step as a fraction of ρ_a (0.8/255 at 4/255).",
              "REM gen_rem.sh --atk-pgd-step-size 0.8 with --atk-pgd-radius 4", positive=True, maximum=1),
        Param("samples", int, None, "Augmentation draws T of the expectation (EOT). Official 5; budget 1 on the "
              "MNIST family (no augmentation), 2 on CIFAR-10.", "REM gen_rem.sh --samp-num 5", minimum=1,
              maximum=MAX_DRAWS),
        Param("eot_augment", str, {"mnist": "none", "cifar10": "crop-flip"},
              "The augmentation T (engine.augment): the family's victim augmentation.",
              "REM generate_robust_em.py: crop 32 pad 4 + horizontal flip (CIFAR-10); MNIST victims: none",
              choices=AUGMENTS),
        Param("grad_clip", float, GRAD_CLIP, "Clip the source model's gradient norm at this before each SGD step "
              "(0: no clip, as officially). 5 is EM's clip, which REM's step inherited here; kept as the default "
              "so that the PoisonSets crafted before keep their δ and ids, and labelled `grad_clip=5`.",
              "poisonbench (EM perturbation.py clip_grad_norm_ 5.0); the official REM step does not clip",
              minimum=0),
        model_param(),
    )

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        return EM_EPS  # REM gen_rem.sh --pgd-radius 8 (of 255), for every family

    @classmethod
    def adaptations(cls, params: dict, family: str | None, info: dict | None = None) -> list[str] | None:
        """`grad_clip=5` (or the value given) while the source model's step clips its gradient norm; none for
        `--grad-clip 0`, the official step. The schedule is labelled apart (`schedule_label`)."""
        clip = params.get("grad_clip", GRAD_CLIP)  # absent: the default, 5 (and every craft before issue 83)
        return [f"grad_clip={clip:g}"] if clip else []

    def validate(self) -> None:
        """The options the caller left out take the schedule's values (an explicit option keeps its own)."""
        for name, value in SCHEDULES[self.params["schedule"]].items():
            if self.params[name] is None:
                self.params[name] = value[self.family] if isinstance(value, dict) else value
        if self.params["grad_clip"] == GRAD_CLIP:  # the default stays out of the params: the ids made before it
            self.params.pop("grad_clip")

    @classmethod
    def schedule_label(cls, params: dict, family: str | None) -> str | None:
        """`--schedule`'s name, followed by each option it sets that was given another value
        (`official+train_steps=2590`): a cut or altered schedule is never labelled as the schedule itself. A key
        whose value depends on the family is compared only where the family is known."""
        name = params.get("schedule")
        if name not in SCHEDULES:
            return name
        changed = []
        for key, value in SCHEDULES[name].items():
            expected = value.get(family) if isinstance(value, dict) else value
            if expected is not None and key in params and params[key] != expected:
                changed.append(f"{key}={params[key]}")
        return "+".join([name, *changed])

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # seeds the model's init without touching the caller's global RNG
            return self._perturb(ctx)

    def _perturb(self, ctx: AttackContext) -> torch.Tensor:
        p, device, eps = self.params, ctx.device, ctx.eps
        inputs = {"seed": ctx.seed, "dataset": ctx.dataset.name, "rows": len(ctx.indices),
                  "params": dict(sorted(p.items()))}
        x_all, y_all = ctx.train_tensors()
        rows = ctx.indices.to(device)
        x, y = x_all[rows].contiguous(), y_all[rows]
        del x_all, y_all
        n = len(y)
        model = build_model(p["model"], ctx.dataset, seed=attacker_seed("rem-model", inputs)).to(device)
        opt = sgd(model, p["lr"])
        g = torch.Generator(device=device).manual_seed(attacker_seed("rem-draws", inputs))
        stream = BatchStream(n, p["batch_size"], "rem-order", inputs, device)
        state_file = StateFile(ctx.partial_dir, "rem.safetensors")
        first = 0
        saved = state_file.load(model, opt)
        if saved is not None:  # resume after the last saved step of an interrupted craft
            tensors, counters = saved
            first = counters["step"]
            g.set_state(tensors["rng"])
        description = f"rem · {ctx.dataset.name}"
        total_steps = p["train_steps"]
        noise_batches = -(-n // p["batch_size"])
        total = total_steps + noise_batches
        a_step = p["adv_radius"] * p["a_step_fraction"]
        for step in range(first, total_steps):
            for group in opt.param_groups:
                group["lr"] = p["lr"] * 0.1 ** (step // p["lr_decay_every"])
            idx = stream.batch(step)
            xb, yb = x[idx], y[idx]
            frozen(model)
            delta = robust_min(model, xb, yb, eps, p, g, p["eot_augment"])
            xt = augment(p["eot_augment"], (xb + delta).clamp(0, 1), g)
            xa = (xt + adversarial(model, xt, yb, p["adv_radius"], p["a_steps"], a_step, g)).clamp(0, 1)
            train_step(model, opt, xa, yb, p.get("grad_clip", GRAD_CLIP))
            if (step + 1) % SAVE_EVERY == 0 or step + 1 == total_steps:
                state_file.save(model, opt, {"rng": g.get_state()}, {"step": step + 1})
            ctx.report(description, step + 1, total)
        # the final noise, every row with the final model; each batch from its own generator (resumable batch by batch)
        frozen(model)
        done = PartialBatches(ctx.partial_dir)
        out = torch.empty(x.shape, dtype=torch.float32)
        for j, (a, b) in enumerate(batches(n, p["batch_size"])):
            finished = done.get(a, b)
            if finished is None:
                gb = torch.Generator(device=device).manual_seed(attacker_seed("rem-noise", {**inputs, "batch": a}))
                finished = robust_min(model, x[a:b], y[a:b], eps, p, gb, p["eot_augment"]).cpu()
                done.put(a, b, finished)
            else:
                ctx.resumed_rows += b - a
            out[a:b] = finished
            ctx.report(description, total_steps + j + 1, total)
        self.training_summary = {"schedule": p["schedule"], "train_steps": total_steps}
        if first:
            self.training_summary["resumed_steps"] = first
        return out
