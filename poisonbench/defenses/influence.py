"""Head-only influence functions (Koh & Liang 2017; HINT eqs. 8-9), batched and exact.

Everything here treats the model as `head(features(x))` with `head` an `nn.Linear` and restricts the influence
parameters θ to the head (W, b), as the HINT paper (§IV-B: "only the top layers") and its official code do.
Notation (docs/metrics.md, "HINT"; the closed forms are those of TracIn's appendix F and of Koh & Liang's
explicit top-layer Hessian):

- `h̃ = [φ(x); 1]` (features with a 1 appended, so the bias is column `d` of `S`), `p = softmax(W φ + b)`,
  `r = p − onehot(y)`. The per-example head gradient of the cross-entropy is `r ⊗ h̃` (C × (d+1)); it is
  never materialised for more than one batch (`head_gradients` exists for tests and small batches).
- `H = (1/n) Σ_i A_i ⊗ h̃_i h̃_iᵀ`, `A_i = diag(p_i) − p_i p_iᵀ`: the exact head Hessian of the mean training
  cross-entropy (logits are linear in the head, so this is not a Gauss-Newton approximation).
- `v = ∇_head L(D_val)` (mean loss over the validation set) and `s = (H + λI)⁻¹ v`, stored as a C × (d+1)
  matrix `S`. λ = 0.5 is the limit of the official LiSSA estimator (damp 0.01 × scale 50).

Sign conventions (documented in docs/fidelity.md):

- `influence_up` returns the paper's eq. 8 exactly: `I_up,loss(z, D_val) = −vᵀ(H+λI)⁻¹∇_θℓ(z) = −rᵀ S h̃`
  (the predicted d L_val / dε when z is up-weighted by ε). The official code computes `+∇_θℓ(z)·s / n`, i.e.
  `−I_up / n`; HINT selects by |I|, so the sign and the 1/n are irrelevant there.
- `influence_pert` returns eq. 9 exactly: `I_pert,loss(z, D_val) = −∇_x [ sᵀ ∇_θ ℓ(x, y) ]`, the same value
  (and sign) as the official `-grad_x(grad_head(ℓ)·s_test)`. Moving x along −I_pert lowers the validation loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import intra_op_threads
from ..core.errors import PoisonbenchError, unknown_choice
from ..engine.chunking import chunk_rows
from ..engine.kernels import inference_copy

SOLVERS = ("exact", "cg", "lissa")
DEFAULT_DAMPING = 0.5  # λ: official LiSSA damp 0.01 × scale 50 (HINT:hessian_functions.py:L192-210)
LISSA_DAMP, LISSA_SCALE, LISSA_STEPS, LISSA_BATCH = 0.01, 50.0, 980, 50  # official defaults (HINT args)


# ---------------------------------------------------------------------------------------------------------------
# features and closed-form head gradients


@torch.no_grad()
def head_inputs(model: nn.Module, x: torch.Tensor, batch_size: int = 0,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(h̃, logits)` for every row of `x` in eval mode, computed on `inference_copy(model)` (`model` is untouched).
    h̃ = [φ; 1] in `dtype` (default: the model's dtype; the solvers are accurate in float32 except `exact`, which
    factors in float64).
    `batch_size` 0: up to 1024 rows, fewer on the CPU when activations would be large (`chunk_rows`)."""
    frozen = inference_copy(model, x[:1])  # the run's accel mode; auto: BatchNorm folded, the same features, faster
    batch_size = batch_size or chunk_rows(frozen, x[:1], 1024)
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        phi = frozen.features(x[i:i + batch_size])
        logits.append(frozen.head(phi).to(dtype or phi.dtype))
        feats.append(phi.to(dtype or phi.dtype))
    phi = torch.cat(feats)
    return with_bias_column(phi), torch.cat(logits)


def with_bias_column(phi: torch.Tensor) -> torch.Tensor:
    """`h̃ = [φ; 1]` per row: the penultimate features with a column of ones, so that the head's bias is one more
    weight column and its per-example gradients are `r ⊗ h̃` (docs/metrics.md, "HINT")."""
    return torch.cat([phi, phi.new_ones(len(phi), 1)], 1)


def residuals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`softmax(logits) − onehot(y)` = ∂ℓ/∂logits of the cross-entropy."""
    r = F.softmax(logits, 1)
    return r - F.one_hot(y, r.shape[1]).to(r.dtype)


def head_gradients(h: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example head gradients `r_i ⊗ h̃_i`, shape (B, C, d+1) (column d is the bias). One batch only."""
    return residuals(logits, y)[:, :, None] * h[:, None, :]


def head_matrix(head: nn.Linear) -> torch.Tensor:
    """The head's parameters as one C × (d+1) matrix `[W | b]` (the layout of `S` and of the gradients)."""
    return torch.cat([head.weight, head.bias[:, None]], 1)


def loss_gradient(h: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`∇_head` of the *mean* cross-entropy over the rows: `Rᵀ H̃ / n` (C × (d+1)), without per-example tensors."""
    return residuals(logits, y).T @ h / len(y)


# ---------------------------------------------------------------------------------------------------------------
# the head Hessian and the three iHVP solvers


def hvp(h: torch.Tensor, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`H v` for the mean cross-entropy over rows (h̃, p), v and result C × (d+1). Two GEMMs, no Hessian."""
    u = h @ v.T  # (n, C): V h̃_i
    ju = probs * u - probs * (probs * u).sum(1, keepdim=True)  # A_i u_i
    return ju.T @ h / len(h)


def hessian(h: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The exact head Hessian (D × D, D = C(d+1), class-major like `S.flatten()`), from C(C+1)/2 GEMMs."""
    n, dd = h.shape
    c = probs.shape[1]
    out = h.new_zeros(c * dd, c * dd)
    for a in range(c):
        for b in range(a, c):
            w = probs[:, a] * ((1.0 if a == b else 0.0) - probs[:, b])
            block = (h * w[:, None]).T @ h / n
            out[a * dd:(a + 1) * dd, b * dd:(b + 1) * dd] = block
            if a != b:
                out[b * dd:(b + 1) * dd, a * dd:(a + 1) * dd] = block.T
    return out


def solve_exact(h: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, damping: float) -> tuple[torch.Tensor, dict]:
    """`(H + λI)⁻¹ v` by forming H and a Cholesky factorisation (O(D³): fine for D ≈ 5k, slow for 16k on CPU)."""
    mat = hessian(h.double(), probs.double())
    mat.diagonal().add_(damping)
    chol = torch.linalg.cholesky(mat)
    s = torch.cholesky_solve(v.double().reshape(-1, 1), chol).reshape(v.shape)
    return s.to(v.dtype), {"dim": mat.shape[0]}


def solve_cg(h: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, damping: float, rtol: float | None = None,
             max_iter: int = 1000) -> tuple[torch.Tensor, dict]:
    """`(H + λI)⁻¹ v` by conjugate gradients with closed-form HVPs; stops at ‖residual‖ ≤ rtol·‖v‖
    (default 1e-6 in float32, 1e-10 in float64)."""
    if rtol is None:
        rtol = 1e-10 if v.dtype == torch.float64 else 1e-6
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rr = (r * r).sum()
    target = (rtol * v.norm()) ** 2
    it = 0
    while it < max_iter and rr > target:
        ap = hvp(h, probs, p) + damping * p
        alpha = rr / (p * ap).sum()
        x += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    return x, {"iterations": it, "relative_residual": (rr.sqrt() / v.norm().clamp_min(1e-300)).item(),
               "converged": bool(rr <= target)}  # False: stopped at max_iter (float32 can stall above rtol)


def solve_lissa(h: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, damping: float = DEFAULT_DAMPING,
                scale: float = LISSA_SCALE, steps: int = LISSA_STEPS, batch_size: int = LISSA_BATCH,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The official LiSSA estimator (HINT:hessian_functions.py:L165-219), on cached head inputs.

    `h_0 = v; h_j = v + (1 − damp)·h_{j−1} − H_{B_j} h_{j−1} / scale` with `B_j` `batch_size` rows drawn with
    replacement, `s = h_T / scale`; damp = λ / scale (0.01 for λ = 0.5), so the fixed point is (H + λI)⁻¹ v.
    Stochastic; converges only while λ_max(H) + λ < 2·scale (the iteration matrix is (1 − damp)I − H/scale), a
    property of the official estimator.
    """
    damp = damping / scale
    est = v.clone()
    n = len(h)
    idx = torch.randint(n, (steps, batch_size), device=h.device, generator=generator)
    # 50-row products: threading costs more than it gives on the CPU (10× on a loaded CPU)
    with intra_op_threads(1 if h.device.type == "cpu" else None):
        for j in range(steps):
            b = idx[j]
            est = v + (1 - damp) * est - hvp(h[b], probs[b], est) / scale
    s = est / scale
    return s, {"steps": steps, "batch_size": batch_size, "scale": scale, "damp": damp,
               "finite": bool(torch.isfinite(s).all())}


def solve(method: str, h: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, damping: float = DEFAULT_DAMPING,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    if method == "exact":
        return solve_exact(h, probs, v, damping)
    if method == "cg":
        return solve_cg(h, probs, v, damping)
    if method == "lissa":
        return solve_lissa(h, probs, v, damping, generator=generator)
    raise unknown_choice("ihvp solver", method, SOLVERS)


@dataclass
class InfluenceVector:
    """`S = (H + λI)⁻¹ ∇_head L(D_val)` as a C × (d+1) matrix, plus how it was obtained."""

    s: torch.Tensor
    method: str
    damping: float
    seconds: float
    info: dict
    val_loss: float

    def stats(self) -> dict:
        return {"method": self.method, "damping": self.damping, "seconds": round(self.seconds, 4),
                "s_norm": self.s.norm().item(), "val_loss": self.val_loss,
                **{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in self.info.items()}}


def influence_vector(model: nn.Module, hessian_x: torch.Tensor, hessian_y: torch.Tensor, val_x: torch.Tensor,
                     val_y: torch.Tensor, method: str = "cg", damping: float = DEFAULT_DAMPING,
                     generator: torch.Generator | None = None, train_inputs=None) -> InfluenceVector:
    """Solve for `S` with H the head Hessian of the mean loss over (hessian_x, hessian_y) and v the head
    gradient of the mean validation loss. `train_inputs` = precomputed `(h̃, logits)` of hessian_x (optional)."""
    if len(val_y) == 0:
        raise PoisonbenchError("influence needs a non-empty validation split")
    if model.head.bias is None:  # h̃ = [φ; 1] and S's last column are the bias: without one they would be made up
        raise PoisonbenchError("head influence needs a head with a bias (nn.Linear(..., bias=True))")
    start = time.perf_counter()
    h, logits = train_inputs if train_inputs is not None else head_inputs(model, hessian_x)
    hv, lv = head_inputs(model, val_x)
    v = loss_gradient(hv, lv, val_y)
    s, info = solve(method, h, F.softmax(logits, 1), v, damping, generator)
    if not torch.isfinite(s).all():
        raise PoisonbenchError(f"the {method} inverse-Hessian-vector product diverged (non-finite); "
                               "use --ihvp exact or cg")
    val_loss = F.cross_entropy(lv, val_y).item()
    return InfluenceVector(s, method, damping, time.perf_counter() - start, info, val_loss)


# ---------------------------------------------------------------------------------------------------------------
# the two influences of the paper


def influence_up(h: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
                 batch_size: int = 8192) -> torch.Tensor:
    """Eq. 8 for every row: `I_up,loss(z_i, D_val) = −r_iᵀ S h̃_i` (one batched pass; no per-example grads)."""
    s = s.to(h.dtype)
    out = []
    for i in range(0, len(y), batch_size):
        r = residuals(logits[i:i + batch_size], y[i:i + batch_size])
        out.append(-(r * (h[i:i + batch_size] @ s.T)).sum(1))
    return torch.cat(out) if out else h.new_zeros(0)


def influence_up_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    h, logits = head_inputs(model, x)
    return influence_up(h, logits, y, s)


def influence_pert(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, batch_size: int = 0,
                   input_std: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9 for every row: `I_pert,loss(z_i, D_val) = −∇_x [ r(x_i)ᵀ S h̃(x_i) ]`, shape of `x`.

    Computed on `inference_copy(model)` (eval mode, the run's accel mode; `model` itself is untouched), so examples
    are independent and one backward of the *sum* over a batch yields every example's input gradient: no
    `create_graph`, no double backward, no per-example loop. Exact, because
    `sᵀ∇_head ℓ(x) = r(x)ᵀ S h̃(x)` in closed form. The gradient is w.r.t. the [0, 1] pixel input; pass
    `input_std` (C,) to get the official CIFAR behaviour (gradient w.r.t. the normalised input, i.e. × std).
    `batch_size` 0: up to 512 rows, fewer on the CPU when activations would be large (`chunk_rows`).
    """
    frozen = inference_copy(model, x[:1])
    batch_size = batch_size or chunk_rows(frozen, x[:1], 512)
    d = s.shape[1] - 1
    out = torch.empty_like(x)
    with torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xi = x[i:i + batch_size].detach().requires_grad_(True)
            phi = frozen.features(xi)
            logits = frozen.head(phi)
            si = s.to(phi.dtype)
            sh = phi @ si[:, :d].T + si[:, d]
            f = (residuals(logits, y[i:i + batch_size]) * sh).sum()
            (g,) = torch.autograd.grad(f, xi)
            out[i:i + batch_size] = -g
    if input_std is not None:
        out *= input_std.to(out).view(1, -1, 1, 1)
    return out


def top_abs(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the ⌈ratio·n⌉ largest |values|, in descending order (ties: lower index first)."""
    k = selected_count(ratio, len(values))
    order = torch.sort(-values.abs().cpu(), stable=True).indices
    return order[:k].to(values.device)


def selected_count(ratio: float, n: int) -> int:
    """⌈r·n⌉, robust to float error (0.1 · 3900 = 390.00000000000006 → 390); at least one row for r > 0."""
    return min(n, max(math.ceil(ratio * n - 1e-9), 1 if ratio > 0 else 0))
