"""ATDA: adversarial training against delusive attacks (Tao et al., NeurIPS 2021; ATDA:train.py, attacks/;
FAT:earlystop.py; HINT paper §V "ATDA" and §VI-A3).

Every batch (after augmentation) is replaced by adversarial examples crafted against the current model in eval mode,
and the model trains on them only (official `adv_loss`: CE on x̃, no clean term; ATDA:train.py:L15-22).

`--variant fat` (default; the HINT paper uses FAT as ATDA's representation, §VI-A3) is FAT's early-stopped PGD
(FAT:earlystop.py:L5-113), the paper's x̃ = argmin_{‖x̃ − x‖ ≤ β} l(f(x̃), y) s.t. a margin τ past
misclassification (HINT paper §V): each example starts at x + U(±β) (ℓ∞) or on the ℓ2 sphere of radius β, clamped
to [0, 1], and at each of up to `steps` iterations an example already misclassified stops there if its budget
`control` (= τ) is spent, else spends one; the others step x ← Π(x + α·sign(∇CE) + ω·N(0, 1)) (ℓ2:
α·∇/‖∇‖₂). Vectorised with boolean masks over the whole batch (FAT loops over examples in Python), so shapes stay
static; the loop ends early once no example is left, which the host learns without waiting for the device
(`FinishedFlags`: nothing in a batch synchronises a GPU with the host). On the CPU, where reading the device costs
nothing, each step forwards only the examples still moving, as FAT's own loop does (`compacted_fat`). τ follows
FAT's dynamic schedule (0, then 1 after 50 of 120 epochs, 2 after 90), scaled to the recipe's epochs, unless `--tau`
fixes it.

`--variant pgd` is the official ATDA code's plain PGD adversarial training (Madry): one random start, 7 steps of
α = β/5, no early stop (ATDA:attacks/adv.py, attacks/step.py, main.py:L76-79).

β and the norm depend on the threat (HINT paper §VI-A3): β = 0.25 in ℓ2 against untargeted attacks (and clean
training): ATDA's budgets are ℓ2 (official `--constraint L2`, ε 0.5 on CIFAR-10; the ATDA paper's ℓ2 budgets 0.25
/ 0.5); β = 0.062 in ℓ∞ against targeted ones, "for a fair comparison with the other baselines", whose budgets are
ℓ∞ 16/255 (HINT, FRIENDS). FAT's code is ℓ∞ only: its early stop with ℓ2 steps is our generalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..core.params import MAX_STEPS, Param
from ..engine.hooks import Defense
from ..engine.threat import Threat

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext
    from ..engine.recipes import Recipe

VARIANTS = ("fat", "pgd")
NORMS = ("linf", "l2")
FAT_EPOCHS, FAT_TAU_EPOCHS = 120, (50, 90)  # FAT.py:L14 epochs; adjust_tau (FAT.py:L77-86), 1-based epochs
FAT_STEP_RATIO = 0.007 / 0.031  # FAT.py:L18-20: step size 0.007 for ε 0.031
PGD_DEFAULTS = {"steps": 7, "step_ratio": 0.2}  # ATDA main.py:L76-79: 7 steps of ε/5
NORM_EPS = 1e-10  # ATDA attacks/step.py: g / (‖g‖ + 1e-10), r / (‖r‖ + 1e-10)


def tau_bounds(epochs: int) -> tuple[int, int]:
    """The 0-based epochs from which FAT's dynamic τ is 1 and 2, scaled from 50 and 90 of 120 to `epochs`."""
    first = max(1, round(FAT_TAU_EPOCHS[0] * epochs / FAT_EPOCHS))
    return first, max(first, round(FAT_TAU_EPOCHS[1] * epochs / FAT_EPOCHS))


def dynamic_tau(epoch: int, epochs: int) -> int:
    """FAT's τ before 0-based `epoch` of `epochs`: 0, 1 from the first bound on, 2 from the second."""
    return sum(epoch >= bound for bound in tau_bounds(epochs))


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def random_start(generator: torch.Generator, x: torch.Tensor, beta: float, norm: str) -> torch.Tensor:
    """The random start's perturbation: U(±β) per pixel (ℓ∞), or a Gaussian direction scaled to norm β (ℓ2)."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * beta
    r = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return beta * r / (_per_example(r.flatten(1).norm(dim=1), r) + NORM_EPS)


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """‖δ‖ per example in `norm`."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


class FinishedFlags:
    """Whether every row of a batch has finished its early-stopped PGD, as the host can learn it without waiting for
    the device: what `adversarial_examples`' early exit reads.

    Reading `active.any()` on the host at each step (`bool(...)`) makes a GPU run wait for the device at every PGD
    step: the queue of launched work drains and the device idles while the host launches the next step, so the
    exit was off on CUDA and every batch ran all its steps. Here each step's flag goes into page-locked host memory
    by a copy that does not block, behind a CUDA event (`post`), and `finished` reads the newest flag whose event
    has completed, never waiting. The host stops launching steps once it sees a step after which no row was left,
    maybe a few steps after the device got there; those extra steps change nothing (a finished row keeps its x̃, its
    steps taken and its budget), so the results are the same whichever step the loop ends at. Checking every k
    steps with a sync would still wait once per k steps, and compacting the batch to the rows left would need their
    count on the host (a sync too) and give the forward shapes that vary.

    Elsewhere (the CPU) the copy blocks and every flag is read at once: the loop ends at the first step with no
    row left, as `bool(active.any())` ended it. `arrived` is the one device-dependent rule (a test's stand-in for
    a device that runs behind the host overrides it)."""

    def __init__(self, steps: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.ones(steps, dtype=torch.bool, pin_memory=self.cuda)  # flag k: rows left after step k
        self.values = self.host.numpy()  # the same memory, read without a device op
        self.events: list[torch.cuda.Event] = []
        self.posted = self.seen = 0  # flags sent; flags known to have arrived (they arrive in order)

    def post(self, active: torch.Tensor) -> None:
        """Send whether any row of `active` is left after this step."""
        self.host[self.posted].copy_(active.any(), non_blocking=self.cuda)
        if self.cuda:
            self.events.append(torch.cuda.Event())
            self.events[-1].record()
        self.posted += 1

    def arrived(self, step: int) -> bool:
        """Whether flag `step` is in host memory (never waits)."""
        return not self.cuda or self.events[step].query()

    def finished(self) -> bool:
        """Whether a flag that has arrived says no row was left (the rows left only shrink: the newest decides)."""
        while self.seen < self.posted and self.arrived(self.seen):
            self.seen += 1
        return self.seen > 0 and not self.values[self.seen - 1]


def pgd_step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, *, beta: float, alpha: float, norm: str,
             noise: torch.Tensor | None) -> torch.Tensor:
    """One ascent step from `x_adv` along `grad` (ℓ∞: α·sign; ℓ2: α·∇/‖∇‖₂), plus `noise`, projected onto the
    `norm` β-ball around `x` and [0, 1]."""
    if norm == "linf":
        moved = x_adv + alpha * grad.sign()
    else:
        moved = x_adv + alpha * grad / (_per_example(grad.flatten(1).norm(dim=1), grad) + NORM_EPS)
    if noise is not None:
        moved = moved + noise
    delta = moved - x
    delta = delta.clamp(-beta, beta) if norm == "linf" else delta.renorm(2, 0, beta)
    return (x + delta).clamp_(0, 1)


def compacts(device: torch.device) -> bool:
    """Whether FAT's loop forwards only the examples still moving (`compacted_fat`): on the CPU, where reading how
    many are left costs nothing. A GPU keeps the masked loop, which never makes the host wait for the device."""
    return device.type == "cpu"


def adversarial_examples(forward, x: torch.Tensor, y: torch.Tensor, *, beta: float, alpha: float, steps: int,
                         norm: str, tau: int | None, start: torch.Tensor, noise: torch.Tensor | None = None,
                         early_exit: bool | FinishedFlags = False,
                         compact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD ascent on CE from x + `start` within the `norm` β-ball and [0, 1]; FAT's early stop when `tau` is an
    int (None: plain PGD, every example takes `steps` steps). `noise[k]` is added at step k (FAT's ω·N(0, 1)).

    Returns (x̃, steps taken per example, stopped early per example). Every iteration forwards the whole batch;
    stopped examples keep their x̃ (masks, static shapes, no host sync). `early_exit` (FAT only) ends the loop once
    the host knows that no example is left, without waiting for the device (`FinishedFlags`; an instance: that
    one); the results are those of the full loop.

    `compact` (FAT only; for the CPU, where reading the device costs nothing) forwards only the examples still
    moving (`compacted_fat`): the same examples up to float rounding, at a cost in proportion to the steps taken."""
    if compact and tau is not None:
        return compacted_fat(forward, x, y, beta=beta, alpha=alpha, steps=steps, norm=norm, tau=tau, start=start,
                             noise=noise)
    x = x.detach()
    x_adv = (x + start).clamp(0, 1)
    n = len(x)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    taken = torch.zeros(n, dtype=torch.long, device=x.device)
    control = None if tau is None else torch.full((n,), tau, dtype=torch.long, device=x.device)
    flags = None
    if early_exit and control is not None:
        flags = early_exit if isinstance(early_exit, FinishedFlags) else FinishedFlags(steps, x.device)
    for k in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = forward(x_adv)
            loss = F.cross_entropy(logits, y, reduction="sum")  # per-example gradients, as FAT's mean up to scale
        if control is not None:
            wrong = logits.detach().argmax(1) != y
            spent = control == 0
            active = active & ~(wrong & spent)  # misclassified with no budget left: stop here
            control = control - (active & wrong).long()  # misclassified with budget left: spend one, continue
            if flags is not None:
                flags.post(active)
                if flags.finished():
                    x_adv = x_adv.detach()
                    break
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            moved = pgd_step(x, x_adv, grad, beta=beta, alpha=alpha, norm=norm,
                             noise=None if noise is None else noise[k])
            x_adv = torch.where(_per_example(active, x), moved, x_adv.detach())
            taken += active
    x_adv = x_adv.detach()
    stopped = ~active if control is not None else torch.zeros_like(active)
    return x_adv, taken, stopped


def compacted_fat(forward, x: torch.Tensor, y: torch.Tensor, *, beta: float, alpha: float, steps: int, norm: str,
                  tau: int, start: torch.Tensor,
                  noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FAT's early-stopped PGD as `adversarial_examples` computes it, forwarding at each step only the examples
    still moving, as FAT's own loop does (FAT:earlystop.py keeps the unfinished examples in `iter_adv` and forwards
    them alone). Each example's step depends on itself alone (eval mode, a summed loss), so the examples are the
    masked loop's up to float rounding (a batch of another size may round a logit differently), with the same
    steps taken and stops; the random start and `noise` are the masked loop's, row for row.

    The masked loop forwards the whole batch at every step until its last example stops, and the ~5–10 % of
    examples that never stop keep nearly every batch going for all `steps`: on the Fashion-MNIST gray-box cell of
    Table III (issue 80) examples took 1.0–4.7 steps on average of 10 at β 0.3 (4.5–8.2 at β 0.062), and an ATDA
    run 325–380 CPU-seconds against W/o Defense's ~31. Here the cost follows the steps taken
    (experiments/atda_cpu_cost.md). Each step reads how many examples are left, which waits for a GPU: so the
    CPU only (`compacts`)."""
    x = x.detach()
    x_adv = (x + start).clamp(0, 1)
    n = len(x)
    taken = torch.zeros(n, dtype=torch.long, device=x.device)
    control = torch.full((n,), tau, dtype=torch.long, device=x.device)
    live = torch.arange(n, device=x.device)  # the examples still moving, in batch order
    for k in range(steps):
        xs = x_adv[live].requires_grad_(True)
        with torch.enable_grad():
            logits = forward(xs)
            loss = F.cross_entropy(logits, y[live], reduction="sum")
        wrong = logits.detach().argmax(1) != y[live]
        spent = control[live] == 0
        moving = ~(wrong & spent)  # misclassified with no budget left: stops here, as in the masked loop
        control[live] -= (moving & wrong).long()
        if not bool(moving.any()):
            live = live[:0]
            break
        (grad,) = torch.autograd.grad(loss, xs)
        with torch.no_grad():
            moved = pgd_step(x[live], xs.detach(), grad, beta=beta, alpha=alpha, norm=norm,
                             noise=None if noise is None else noise[k][live])
            live = live[moving]
            x_adv[live] = moved[moving]
            taken[live] += 1
    stopped = torch.ones(n, dtype=torch.bool, device=x.device)
    stopped[live] = False
    return x_adv, taken, stopped


class Atda(Defense):
    name = "atda"
    summary_text = "adversarial training against delusive attacks (FAT's early-stopped PGD)"
    PARAMS = (
        Param("variant", str, "fat", "fat (FAT's early-stopped PGD, the HINT paper's ATDA) | pgd (the official ATDA "
              "code's plain PGD adversarial training: 7 steps of β/5 unless given).",
              "HINT paper §VI-A3; ATDA train.py:L15-22, attacks/adv.py; FAT earlystop.py", choices=VARIANTS),
        Param("beta", float, 0.25, "β, the defender's budget: radius of the norm ball (pixel units); 0.25 (ℓ2) "
              "against untargeted attacks and clean runs, 0.062 (ℓ∞) against targeted ones.",
              "HINT paper §VI-A3", positive=True),
        Param("norm", str, "l2", "linf | l2: the norm of the budget (l2 against untargeted attacks, linf against "
              "targeted ones).", "ATDA main.py:L54-55 (L2 default); HINT paper §VI-A3 (see atda.py)",
              choices=NORMS),
        Param("steps", int, 10, "PGD iterations (FAT: the most an example takes; pgd variant: 7 unless given).",
              "FAT.py:L19 num-steps 10; ATDA main.py:L76-79 7 steps", minimum=1,
              maximum=MAX_STEPS),
        Param("step_ratio", float, FAT_STEP_RATIO, "α/β, the PGD step size as a fraction of β (FAT: 0.007/0.031; "
              "pgd variant: 0.2 unless given).", "FAT.py:L18-20; ATDA main.py:L76-79 step ε/5", positive=True),
        Param("tau", int, None, "FAT's τ, fixed (default: FAT's dynamic τ 0/1/2 at 50 and 90 of 120 epochs, scaled "
              "to the recipe's epochs). fat variant only.", "FAT.py:L24, L77-86", minimum=0),
        Param("omega", float, 0.001, "ω, scale of the Gaussian noise added at each FAT step. fat variant only.",
              "FAT.py:L26", minimum=0),
    )

    def __init__(self, family: str, recipe: Recipe, threat: Threat | None = None, **params: Any):
        super().__init__(family, recipe, threat, **params)
        self._reset()

    @classmethod
    def threat_defaults(cls, family: str, recipe: Recipe, threat: Threat) -> dict[str, Any]:
        return {"beta": 0.062, "norm": "linf"} if threat.targeted else {"beta": 0.25, "norm": "l2"}

    def validate(self) -> None:
        p = self.params
        if p["norm"] == "linf" and p["beta"] > 1:
            raise PoisonbenchError(f"--beta of method 'atda' with --norm linf must be in (0, 1], got {p['beta']:g}")
        if p["variant"] == "pgd":
            fat_only = [k for k in ("tau", "omega") if k in self.explicit]
            if fat_only:
                raise PoisonbenchError(f"--{fat_only[0]} of method 'atda' applies to --variant fat only")
            # the official PGD's values replace FAT's defaults, not given options; ω and τ do not apply
            p.update({k: v for k, v in PGD_DEFAULTS.items() if k not in self.explicit}, omega=None)

    def _reset(self) -> None:
        self._generator: torch.Generator | None = None
        self._totals: torch.Tensor | None = None  # this epoch: Σ steps, Σ stopped early, examples, Σ ‖x̃ − x‖
        self._totals_epoch: int | None = None
        self._totals_tau: int | None = None  # the τ this epoch's attacks were given (the record's, not recomputed)
        self.epochs: list[dict] = []

    def prepare(self, ctx: TrainContext) -> None:
        self._reset()
        # own stream (random starts, ω noise): the engine's order/augmentation stream stays as `--method none`'s
        self._generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, "atda-pgd"))
        return None

    def tau(self, epoch: int) -> int | None:
        if self.params["variant"] != "fat":
            return None
        return self.params["tau"] if self.params["tau"] is not None else dynamic_tau(epoch, self.recipe.epochs)

    @property
    def alpha(self) -> float:
        return self.params["beta"] * self.params["step_ratio"]

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        self._close_epoch()

    def batch(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        if self._generator is None:  # hooks called without prepare (direct use)
            self.prepare(ctx)
        p = self.params
        start = random_start(self._generator, x, p["beta"], p["norm"])
        noise = None
        if p["omega"]:
            noise = p["omega"] * torch.randn((p["steps"], *x.shape), generator=self._generator, device=x.device,
                                             dtype=x.dtype)
        tau = self.tau(ctx.epoch)
        with ctx.eval_forward(x) as forward:
            x_adv, taken, stopped = adversarial_examples(
                forward, x, y, beta=p["beta"], alpha=self.alpha, steps=p["steps"], norm=p["norm"],
                tau=tau, start=start, noise=noise, early_exit=True, compact=compacts(x.device))
        # torch.full, not torch.tensor: a tensor made from host data is a blocking copy to a GPU
        self._count(ctx, tau, torch.stack([taken.sum().double(), stopped.sum().double(),
                                           torch.full((), float(len(y)), dtype=torch.float64, device=x.device),
                                           distance(x_adv - x, p["norm"]).sum().double()]))
        return x_adv, y

    # --- the record: per-epoch figures accumulated on the device, read once an epoch ------------------------------

    def _count(self, ctx: TrainContext, tau: int | None, values: torch.Tensor) -> None:
        if self._totals is None or self._totals_epoch != ctx.epoch:
            self._close_epoch()
            self._totals, self._totals_epoch = torch.zeros_like(values), ctx.epoch
        self._totals += values
        self._totals_tau = tau

    def _epoch_figures(self) -> dict | None:
        if self._totals is None:
            return None
        steps, stopped, examples, dist = self._totals.tolist()
        return {"epoch": self._totals_epoch, "tau": self._totals_tau, "examples": int(examples),
                "mean_steps": steps / examples, "stopped_early_fraction": stopped / examples,
                "mean_distance": dist / examples}

    def _close_epoch(self) -> None:
        figures = self._epoch_figures()
        if figures is not None:
            self.epochs.append(figures)
        self._totals = self._totals_epoch = self._totals_tau = None

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"generator": self._generator.get_state()}
        if self._totals is not None:
            tensors["totals"] = self._totals
        return tensors, {"epochs": self.epochs, "totals_epoch": self._totals_epoch, "totals_tau": self._totals_tau}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self._generator.set_state(tensors["generator"])
        self.epochs = list(state["epochs"])
        self._totals_epoch = state["totals_epoch"]
        self._totals_tau = state["totals_tau"]  # (a checkpoint is tied to the code that wrote it: the key is there)
        self._totals = tensors["totals"].to(ctx.device) if "totals" in tensors else None

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        p = self.params
        current = self._epoch_figures()
        epochs = self.epochs + ([current] if current is not None else [])
        out: dict[str, Any] = {"method": self.name, "variant": p["variant"], "norm": p["norm"], "beta": p["beta"],
                               "steps": p["steps"], "alpha": self.alpha, "epochs": epochs,
                               "last_epoch": epochs[-1] if epochs else None}
        if p["variant"] == "fat":
            out["tau"] = p["tau"] if p["tau"] is not None else {"dynamic_from_epochs": list(tau_bounds(
                self.recipe.epochs))}
        return out
