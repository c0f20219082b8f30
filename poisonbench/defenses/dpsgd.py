"""DP-SGD as gradient shaping (Hong et al. 2020, "On the Effectiveness of Mitigating Data Poisoning Attacks with
Gradient Shaping", arXiv 2002.11497 §5-6; official code: Sanghyun-Hong/Gradient-Shaping, which trains with
TensorFlow-Privacy's `DPGradientDescentGaussianOptimizer`, utils/optims.py). The DP-SGD step is Abadi et al. 2016,
Algorithm 1 (arXiv 1607.00133): for a batch B,

    g_i  = ∇θ ℓ(x_i, y_i)                               per example, over all trainable parameters jointly
    ĝ_i  = g_i · C / max(‖g_i‖₂, C)                     clipped to ℓ2 norm ≤ C (TF-Privacy's clip_by_global_norm)
    g    = (Σ_i ĝ_i + N(0, (σC)² I)) / |B|              Gaussian noise of std σ·C per coordinate, one draw per step

and the engine's optimizer steps on g (the recipe's SGD with momentum, weight decay and schedule: TF-Privacy's
DP optimizers likewise wrap the plain optimizer's update; the official code uses plain SGD, or Adam for LR).

Per-example gradients come from layer hooks where every trainable layer is a Conv2d, Linear, GroupNorm or
BatchNorm (`layer_gradients`: each layer's input times its output gradient, Opacus's grad-sample rule, in one
forward and one backward: every model poisonbench builds), else from `torch.func` (`functional_call` +
`vmap(grad)`, `vmap_gradients`: any module torch.func can trace), chunked over the batch where the per-example
gradients would not fit (`per_example_floats`). The two agree to float rounding (tests/test_dpsgd.py); the hooks
cost one epoch of `convnet-gn` on mnist-5k 2.3× `none` on one CPU thread against the vmap's 3.6×
(benchmarks/defense_overhead.py --model convnet-gn). The record names the method.

BatchNorm. Hong et al.'s networks have none (official networks/cnns.py, mlps.py, linears.py: Conv/Dense/ReLU only),
and under BatchNorm an example's gradient is not its own: the batch statistics mix the batch. The victim for DP-SGD
is therefore `--model convnet-gn` (engine/models.py: HINT's ConvNet with GroupNorm in place of BatchNorm, as Opacus's
`ModuleValidator.fix` swaps it), on which every step below is exactly Abadi et al.'s. On a BatchNorm model we keep
its architecture and fix the statistics instead: one train-mode forward without gradient takes each training-mode
BatchNorm's batch mean and (biased) variance and updates the running statistics exactly as the plain step does; the
per-example pass then normalises every example with those detached batch statistics. Each g_i is then the gradient
of example i's own loss with the statistics held constant (what `--method none` differentiates through them is left
out: 13 points of clean accuracy on mnist-5k, experiments/defenses53.md); the statistics themselves are not
privatised, so the record says that no ε is a guarantee for such a model.

Sampling and accounting (privacy.py). `--sampling poisson` draws each step's batch as Opacus's
`UniformWithReplacementSampler` does: every row in use joins independently with probability q = 1 / ⌈n / B⌉, from
the defense's own stream, ⌈n / B⌉ steps an epoch, and the noised sum is divided by the expected batch ⌊n·q⌋ (Opacus
`DPOptimizer` with `expected_batch_size`), so that the step depends on the batch only through the sum. The default
`shuffle` keeps the engine's shuffled partition (Hong et al.'s TF-Privacy code; `--method none`'s order) and
divides by the batch. The record's ε, at δ = min(10⁻⁵, n^-1.1) unless `--delta` is given, comes from dp-accounting's
RDP accountant for the Poisson-subsampled Gaussian at (q, σ, steps), and beside it from its PLD accountant; for
shuffled batches it carries the caveat that it is the Poisson figure, not a proven bound. Hong et al.'s settings
give "no meaningful privacy" (paper abstract; official model names carry ε = inf or ε in the millions), which the ε
now says in numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..core.hashing import derived_seed
from ..core.optional import require
from ..core.params import Param
from ..engine.hooks import Defense
from . import privacy

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

DPSGD_STREAM = "dpsgd"
SAMPLING_STREAM = "dpsgd-sampling"  # Poisson sampling's own stream: the noise draws stay those of `shuffle`
# floats of per-example gradients held at once on the CPU (chunk = this / trainable parameters): 2^28 floats = 1 GiB;
# ConvNet (~117k parameters) takes any batch in one chunk, ResNet-18 (11.2M) 24 rows at a time
PER_EXAMPLE_FLOATS = 2 ** 28
GPU_MEMORY_SHARE = 4  # on a GPU: a quarter of the card's memory (80 GB: ResNet-18 in chunks of about 480 rows, not 24)


def per_example_floats(device: torch.device) -> int:
    """How many floats of per-example gradients one chunk may hold on `device`: `PER_EXAMPLE_FLOATS` on the CPU;
    on a GPU a quarter of the card's total memory (never less than the CPU's), so that ResNet-18's batch of 128
    runs as one vmap instead of six (24-row chunks made DP-SGD 23× `none` on an H200: experiments/gpu.md). Sized by
    the card, not its free memory, so that one card type always sums in the same chunks (the same numbers)."""
    if device.type != "cuda":
        return PER_EXAMPLE_FLOATS
    total = torch.cuda.get_device_properties(device).total_memory
    return max(PER_EXAMPLE_FLOATS, total // (4 * GPU_MEMORY_SHARE))  # 4 bytes a float
BN_HANDLING = ("batch statistics fixed per batch: one train-mode forward (no grad) takes them and updates the "
               "running statistics; each example is normalised with them, detached")

CLIP_PARAM = Param(
    "clip", float, 1.0,
    "C, the ℓ2 norm each example's gradient (all trainable parameters jointly) is clipped to.",
    "Hong et al. 2020 §6; official do_ipoisoning.sh NORMCLP (0.1 1.0 2.0 4.0 8.0), do_tpoisoning.sh clip 0.1/1/4/8 "
    "(TF-Privacy l2_norm_clip)", positive=True)
NOISE_PARAM = Param(
    "noise_multiplier", float, 0.01,
    "σ, the noise multiplier: N(0, (σ·C)²) per coordinate is added to the sum of clipped gradients (0: clipping "
    "only).",
    "Hong et al. 2020 §6; official do_ipoisoning.sh NOISEML (0.1 0.001 0.00001 as σ·C, passed as σ = noise / C) "
    "and do_tpoisoning.sh σ·C = 0.4/0.1/0.01/0.001 at C = 4 (TF-Privacy noise_multiplier)", minimum=0)
SAMPLING_PARAM = Param(
    "sampling", str, "shuffle",
    "How each step's batch is drawn: shuffle (the engine's shuffled partition, each row once an epoch; ε is then "
    "the Poisson figure, not a proven bound) or poisson (each row independently with probability q = 1/⌈n/B⌉, "
    "⌈n/B⌉ steps an epoch: the accounting holds).",
    "shuffle: Hong et al.'s official code (TF-Privacy on shuffled tf.data batches); poisson: Abadi et al. 2016 §3.1 "
    "(lot sampled with probability q), Opacus UniformWithReplacementSampler / DPDataLoader", choices=privacy.SAMPLINGS)
DELTA_PARAM = Param(
    "delta", float, None,
    "δ of the recorded (ε, δ); default min(1e-5, n^-1.1), n the rows trained on (below 1/n at every n).",
    "Abadi et al. 2016 take δ = 10⁻⁵ for MNIST's 60,000 rows (Opacus's tutorials likewise); n^-1.1 keeps δ below "
    "1/n past 35,000 rows (privacy.default_delta)", positive=True, maximum=1.0,
    below_maximum=True)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer trains, by name (frozen ones stay out, as `training.make_optimizer`)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def training_batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules in training mode (frozen ones, in eval mode, normalise with running statistics and
    keep examples independent already)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training}


def batch_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, statistics): a train-mode forward without gradient, which updates the running statistics as the
    plain step does; `statistics` maps each training-mode BatchNorm's `running_mean` / `running_var` buffer name
    to the batch mean / biased variance it normalised with (detached), for `per_example_gradients`."""
    stats: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            inp = args[0].float()
            dims = [d for d in range(inp.dim()) if d != 1]
            var, mean = torch.var_mean(inp, dim=dims, correction=0)
            stats[f"{name}.running_mean" if name else "running_mean"] = mean
            stats[f"{name}.running_var" if name else "running_var"] = var
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in training_batchnorms(model).items()]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, stats


# the layers whose per-example gradients come from the layer's own input and output gradient (`layer_gradients`)
HOOKED_LAYERS = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
HOOKS_METHOD = "layer hooks: per-example input × output gradient (Conv2d, Linear, GroupNorm, BatchNorm)"
VMAP_METHOD = "torch.func vmap(grad)"


class NotHookable(Exception):
    """The forward did something `layer_gradients` cannot read per example (an output changed in place)."""


def hookable(model: nn.Module, params: dict[str, torch.Tensor]) -> bool:
    """Whether `layer_gradients` computes every trainable parameter's per-example gradient: each is the `weight`
    or `bias` of one layer of `HOOKED_LAYERS` (a Conv2d with one group and zero padding given in numbers; a
    BatchNorm that keeps running statistics, so that, in eval mode, it normalises each example alone)."""
    owners: dict[int, str] = {}
    trained = {id(p) for p in trainable(model).values()}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False, remove_duplicate=False):
            full = f"{name}.{pname}" if name else pname
            if id(p) not in trained:
                continue  # frozen
            if id(p) in owners or full not in params or pname not in ("weight", "bias") \
                    or not isinstance(module, HOOKED_LAYERS):
                return False  # shared between layers, or a parameter the hooks cannot read
            if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                                  or isinstance(module.padding, str)):
                return False
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
                return False
            owners[id(p)] = full
    return len(owners) == len(params)


def _layer_inputs(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """What the layer's per-example weight gradient multiplies the output gradient with: a convolution's unfolded
    patches `[rows, C_in·k·k, L]`, a linear layer's input `[rows, *, in]`, a normalisation's normalised input x̂
    (GroupNorm: by each example's own groups; BatchNorm in eval mode: by the statistics it reads now, the batch's
    swapped in by `per_example_gradients` or its running ones)."""
    if isinstance(module, nn.Conv2d):
        return F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(inp, module.num_groups, eps=module.eps)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return F.batch_norm(inp, module.running_mean, module.running_var, None, None, False, 0.0, module.eps)
    return inp


def _layer_gradients(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"weight": [rows, *weight.shape], "bias": ...}: one layer's per-example gradients from `_layer_inputs`'
    `a` and the gradient `g` of the summed loss with respect to the layer's output (row i's: its own loss's)."""
    rows = len(g)
    if isinstance(module, nn.Conv2d):
        g = g.reshape(rows, g.shape[1], -1)
        weight, bias = torch.bmm(g, a.transpose(1, 2)).reshape(rows, *module.weight.shape), g.sum(2)
    elif isinstance(module, nn.Linear):
        g, a = g.reshape(rows, -1, g.shape[-1]), a.reshape(rows, -1, a.shape[-1])
        weight, bias = torch.bmm(g.transpose(1, 2), a), g.sum(1)
    else:  # a normalisation's affine map γ·x̂ + β, per channel (dimension 1)
        dims = [d for d in range(2, g.dim())]
        weight, bias = (g * a).sum(dims) if dims else g * a, g.sum(dims) if dims else g
    return {"weight": weight, "bias": bias}


def layer_gradients(model: nn.Module, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {name: [len(x), *shape]}): each example's cross-entropy gradient alone, in one forward and one
    backward, as Opacus's grad-sample hooks compute it (Goodfellow 2015, "Efficient per-example gradient
    computations"; Opacus `grad_sample/conv.py`, `linear.py`, `group_norm.py`): forward hooks keep each layer's
    input, one `autograd.grad` of the summed loss gives each layer's output gradient, whose row i is example i's
    own (no layer mixes rows: GroupNorm normalises an example by itself, a BatchNorm in eval mode by `stats`),
    and the weight gradient of row i is its output gradient times its input (`_layer_gradients`). The same
    numbers as `vmap_gradients` up to float rounding, at about the cost of one plain step instead of a vmapped
    one (benchmarks/defense_overhead.py). Raises `NotHookable` when an output was changed in place afterwards."""
    layers = {module: name for name, module in model.named_modules()
              if any((f"{name}.{p}" if name else p) in params for p, _ in module.named_parameters(recurse=False))}
    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int]] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen.append((module, _layer_inputs(module, args[0].detach()), output, output._version))

    handles = [m.register_forward_hook(keep) for m in layers]
    batchnorms = training_batchnorms(model)
    for m in batchnorms.values():
        m.training = False  # eval-mode BatchNorm reads the (swapped-in) statistics: no mixing, no update
    try:
        logits = functional_call(model, stats, (x,)) if stats else model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m in batchnorms.values():
            m.training = True
    if any(out._version != version for _, _, out, version in seen):
        raise NotHookable("a layer's output was changed in place")
    outputs = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), [o for _, _, o, _ in seen])
    grads: dict[str, torch.Tensor] = {}
    for (module, a, _, _), g in zip(seen, outputs, strict=True):
        prefix = f"{layers[module]}." if layers[module] else ""
        for pname, value in _layer_gradients(module, a, g).items():
            name = prefix + pname
            if name in params:  # a module called twice adds its calls' gradients, as autograd does
                grads[name] = grads[name] + value if name in grads else value
    rows = len(y)
    return logits.detach(), {name: grads[name].reshape(rows, *p.shape) if name in grads
                             else p.new_zeros((rows, *p.shape)) for name, p in params.items()}


def vmap_gradients(model: nn.Module, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: [len(x), *shape]}: each example's cross-entropy gradient alone (torch.func `vmap(grad)`), with the
    training-mode BatchNorms normalising by `stats` (the batch's, `batch_forward`) instead of by their input: any
    module torch.func traces, at the cost of a vmapped backward (2-4× `layer_gradients` on the CPU)."""
    batchnorms = training_batchnorms(model)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, stats), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    for m in batchnorms.values():
        m.training = False  # eval-mode BatchNorm reads the (swapped-in) statistics: no mixing, no update
    try:
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    finally:
        for m in batchnorms.values():
            m.training = True


def chunk_gradients(model: nn.Module, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], str]:
    """(logits or None, per-example gradients, the method): `layer_gradients` where the model is `hookable`
    (with its logits), else `vmap_gradients` (no logits)."""
    if hookable(model, params):
        try:
            logits, grads = layer_gradients(model, params, stats, x, y)
            return logits, grads, HOOKS_METHOD
        except NotHookable:
            pass
    return None, vmap_gradients(model, params, stats, x, y), VMAP_METHOD


def per_example_gradients(model: nn.Module, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                          x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: [len(x), *shape]}: each example's cross-entropy gradient alone, the training-mode BatchNorms
    normalising by `stats` (`chunk_gradients`: by layer hooks where it can, else by `vmap(grad)`)."""
    return chunk_gradients(model, params, stats, x, y)[1]


def joint_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each example's ℓ2 norm over all the parameters' gradients together, `[rows]`."""
    return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))


def clip_factors(norms: torch.Tensor, clip: float) -> torch.Tensor:
    """C / max(‖g_i‖, C): 1 for gradients within the clip, else the factor that brings the norm to C."""
    return clip / norms.clamp(min=clip)


class DpSgd(Defense):
    name = "dpsgd"
    summary_text = "DP-SGD (gradient shaping): per-example clipping + Gaussian noise"
    PARAMS = (CLIP_PARAM, NOISE_PARAM, SAMPLING_PARAM, DELTA_PARAM)
    requires = ("dp_accounting",)  # the ε of every run (privacy.py)
    per_example = True  # BatchNorm-free victims by default (experiment/victims.py)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._generator: torch.Generator | None = None
        self._sampler: torch.Generator | None = None
        self._totals: dict[str, torch.Tensor] = {}
        self.rows = 0
        self.batchnorm = False  # whether the model trains a BatchNorm (no ε is then a guarantee)
        self._chunk_floats = PER_EXAMPLE_FLOATS
        self.method = HOOKS_METHOD  # how the per-example gradients were computed (`chunk_gradients`)

    @property
    def poisson(self) -> bool:
        return self.params["sampling"] == "poisson"

    @property
    def sample_rate(self) -> float:
        """q = 1 / ⌈n / B⌉ (privacy.sample_rate)."""
        return privacy.sample_rate(max(self.rows, 1), self.recipe.batch_size)

    def prepare(self, ctx: TrainContext) -> None:
        # its own stream: the engine's order and augmentation stay those of `--method none`
        self._generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, DPSGD_STREAM))
        self._totals = {key: torch.zeros((), device=ctx.device, dtype=dtype) for key, dtype in
                        (("examples", torch.long), ("clipped", torch.long), ("steps", torch.long),
                         ("norm_sum", torch.float64), ("norm_max", torch.float32))}
        self._sampler = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, SAMPLING_STREAM))
        self.rows = len(ctx.train_y) if ctx.active is None else len(ctx.active)
        self.batchnorm = bool(training_batchnorms(ctx.model))
        self._chunk_floats = per_example_floats(ctx.device)
        self.method = HOOKS_METHOD if hookable(ctx.model, trainable(ctx.model)) else VMAP_METHOD
        require("dp_accounting")  # before training, not when the record is written
        return None

    def epoch_batches(self, ctx: TrainContext, epoch: int) -> list[torch.Tensor] | None:
        """Poisson sampling: ⌈n / B⌉ batches, each row in use joining each independently with probability q
        (one uniform draw per row and step from the `dpsgd-sampling` stream, as Opacus's
        `UniformWithReplacementSampler`: `torch.rand(n) < q`); shuffle: None, the engine's partition."""
        if not self.poisson:
            return None
        rows = (torch.arange(len(ctx.train_y), device=ctx.device) if ctx.active is None else ctx.active)
        q, steps = self.sample_rate, math.ceil(len(rows) / self.recipe.batch_size)
        return [rows[torch.rand(len(rows), generator=self._sampler, device=rows.device) < q] for _ in range(steps)]

    def gradient(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor,
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        model, clip, sigma = ctx.model, self.params["clip"], self.params["noise_multiplier"]
        params = {name: p.detach() for name, p in trainable(model).items()}
        # Poisson: the expected batch, so that the step depends on the drawn batch only through the sum (Opacus)
        divisor = privacy.expected_batch(self.rows, self.sample_rate) if self.poisson else len(y)
        if len(y) == 0:  # an empty Poisson sample: the noise alone
            return self._noise_only(ctx, divisor)
        # the logits and the batch statistics: a BatchNorm model (and one the hooks cannot read) takes them from a
        # train-mode forward first; otherwise the per-example pass's own forward gives the logits
        logits, stats = None, {}
        if self.batchnorm or not hookable(model, params):
            with autocast():
                logits, stats = batch_forward(model, x)
        summed = {name: torch.zeros_like(p) for name, p in params.items()}
        chunk = max(1, self._chunk_floats // max(1, sum(p.numel() for p in params.values())))
        pieces = []
        for start in range(0, len(y), chunk):
            with autocast():
                out, grads, self.method = chunk_gradients(model, params, stats, x[start:start + chunk],
                                                          y[start:start + chunk])
            pieces.append(out)
            norms = joint_norms({k: g.float() for k, g in grads.items()})
            factors = clip_factors(norms, clip)
            for name, g in grads.items():
                summed[name] += torch.tensordot(factors, g.float(), dims=1)
            self._note(norms, clip)
        if logits is None and any(piece is None for piece in pieces):  # the vmap fallback gives no logits
            with autocast():
                logits, _ = batch_forward(model, x)
        elif logits is None:
            logits = torch.cat(pieces)
        for name, p in trainable(model).items():
            g = summed[name]
            if sigma > 0:
                g = g + torch.randn(g.shape, generator=self._generator, device=g.device) * (sigma * clip)
            p.grad = (g / divisor).to(p.dtype)
        self._totals["steps"] += 1
        return F.cross_entropy(logits.float(), y), logits

    def _noise_only(self, ctx: TrainContext, divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step of an empty batch: N(0, (σC)²) / divisor (zero without noise), loss 0, no logits."""
        clip, sigma = self.params["clip"], self.params["noise_multiplier"]
        for p in trainable(ctx.model).values():
            g = torch.zeros_like(p)
            if sigma > 0:
                g = torch.randn(g.shape, generator=self._generator, device=g.device) * (sigma * clip)
            p.grad = (g / divisor).to(p.dtype)
        self._totals["steps"] += 1
        return torch.zeros((), device=ctx.device), torch.zeros((0, ctx.num_classes), device=ctx.device)

    def _note(self, norms: torch.Tensor, clip: float) -> None:
        t = self._totals
        t["examples"] += len(norms)
        t["clipped"] += (norms > clip).sum()
        t["norm_sum"] += norms.double().sum()
        torch.maximum(t["norm_max"], norms.max(), out=t["norm_max"])

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        return {"noise_generator": self._generator.get_state(), "sampling_generator": self._sampler.get_state(),
                **self._totals}, {}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self._generator.set_state(tensors["noise_generator"])
        self._sampler.set_state(tensors["sampling_generator"])
        for key in self._totals:
            self._totals[key] = tensors[key].to(ctx.device)

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        """C, σ, the noise std σ·C, how BatchNorm was handled, the per-example gradient norms before clipping
        (share clipped, mean, max: accumulated on the device, read here once) and the privacy accounting."""
        if not self._totals:
            return {}
        t = {key: value.item() for key, value in self._totals.items()}
        clip, sigma = self.params["clip"], self.params["noise_multiplier"]
        examples = max(t["examples"], 1)
        return {
            "clip": clip, "noise_multiplier": sigma, "noise_std": sigma * clip,
            "per_example_gradients": self.method,
            "batchnorm": BN_HANDLING if self.batchnorm else "none (no BatchNorm in training mode)",
            "grad_norms": {"examples": t["examples"], "clipped_share": t["clipped"] / examples,
                           "mean_before_clip": t["norm_sum"] / examples, "max_before_clip": t["norm_max"]},
            "accounting": self.accounting(t["steps"]),
        }

    def accounting(self, steps: int) -> dict:
        """What the record says of privacy: the accountant, the sampling, (q, σ, steps), δ and ε (None when
        infinite: σ = 0), and whether ε is a guarantee (Poisson sampling and no BatchNorm), with the caveat."""
        sigma, q = self.params["noise_multiplier"], self.sample_rate
        delta = self.params["delta"] if self.params["delta"] is not None else privacy.default_delta(self.rows)
        notes = [privacy.POISSON_NOTE if self.poisson else privacy.SHUFFLE_NOTE]
        if self.batchnorm:
            notes.append(privacy.BATCHNORM_NOTE)
        eps = privacy.epsilon(q, sigma, steps, delta)
        pld = privacy.pld_epsilon(q, sigma, steps, delta)
        if math.isinf(eps) and sigma == 0:
            notes.insert(0, "ε = ∞: σ = 0 adds no noise")
        return {"accountant": privacy.accountant_text(), "accountant_pld": privacy.pld_accountant_text(),
                "sampling": self.params["sampling"], "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
                "rows": self.rows, "delta": delta,
                "delta_rule": privacy.DELTA_RULE if self.params["delta"] is None else "given",
                "epsilon": None if math.isinf(eps) else eps,
                "epsilon_pld": None if pld is None or math.isinf(pld) else pld,
                "epsilon_pld_note": privacy.pld_note(sigma),
                "guarantee": self.poisson and not self.batchnorm and not math.isinf(eps),
                "epsilon_note": "; ".join(notes)}
