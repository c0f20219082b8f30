"""poisonbench.influence: closed forms against autograd, the three iHVP solvers, batched I_pert against the
official per-example double backward, and I_up against actual retraining on a convex model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench import influence as inf


class TinyNet(nn.Module):
    """features → head, with BatchNorm (so eval mode matters) and a smooth nonlinearity."""

    def __init__(self, c_in=1, side=6, d=8, classes=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, 4, 3), nn.BatchNorm2d(4), nn.Tanh())
        self.fc = nn.Linear(4 * (side - 2) ** 2, d)
        self.head = nn.Linear(d, classes)

    def features(self, x):
        return torch.tanh(self.fc(self.conv(x).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


class LogReg(nn.Module):
    """Multinomial logistic regression: features are the raw inputs."""

    def __init__(self, d, classes):
        super().__init__()
        self.head = nn.Linear(d, classes)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, n=40, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet().to(dtype)
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    model.train()
    model(x)  # populate BN running stats
    model.eval()
    return model, x, y


def test_closed_form_head_gradients_equal_autograd():
    model, x, y = tiny()
    h, logits = inf.head_inputs(model, x)
    closed = inf.head_gradients(h, logits, y)
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        auto = torch.cat([model.head.weight.grad, model.head.bias.grad[:, None]], 1)
        torch.testing.assert_close(closed[i], auto, rtol=1e-10, atol=1e-12)
    # the mean gradient without per-example tensors
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    auto = torch.cat([model.head.weight.grad, model.head.bias.grad[:, None]], 1)
    torch.testing.assert_close(inf.loss_gradient(h, logits, y), auto, rtol=1e-10, atol=1e-12)


def test_hessian_and_hvp_equal_autograd():
    model, x, y = tiny()
    h, logits = inf.head_inputs(model, x)
    probs = F.softmax(logits, 1)
    w0 = inf.head_matrix(model.head).detach()
    phi = h[:, :-1]

    def loss(theta):
        return F.cross_entropy(phi @ theta[:, :-1].T + theta[:, -1], y)

    auto = torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), w0.numel())
    torch.testing.assert_close(inf.hessian(h, probs), auto, rtol=1e-9, atol=1e-12)
    v = torch.randn_like(w0)
    torch.testing.assert_close(inf.hvp(h, probs, v).flatten(), auto @ v.flatten(), rtol=1e-9, atol=1e-12)


def test_solvers_agree():
    model, x, y = tiny(n=200)
    h, logits = inf.head_inputs(model, x)
    probs = F.softmax(logits, 1)
    v = torch.randn(3, h.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s_exact, _ = inf.solve_exact(h, probs, v, 0.5)
    s_cg, info = inf.solve_cg(h, probs, v, 0.5)
    assert info["relative_residual"] < 1e-7 and info["converged"]
    _, stopped = inf.solve_cg(h, probs, v, 0.5, max_iter=1)
    assert not stopped["converged"] and stopped["iterations"] == 1
    torch.testing.assert_close(s_cg, s_exact, rtol=1e-6, atol=1e-8)
    # the official LiSSA recursion converges to the same (H + 0.5 I)⁻¹ v; a long run with large batches
    s_l, _ = inf.solve_lissa(h, probs, v, 0.5, steps=2000, batch_size=200,
                             generator=torch.Generator().manual_seed(0))
    assert (s_l - s_exact).norm() / s_exact.norm() < 0.02
    # with the official 980 × 50 it is a noisy estimate of the same vector
    s_o, _ = inf.solve_lissa(h, probs, v, 0.5, generator=torch.Generator().manual_seed(0))
    assert (s_o - s_exact).norm() / s_exact.norm() < 0.2
    assert torch.nn.functional.cosine_similarity(s_o.flatten(), s_exact.flatten(), 0) > 0.98


def test_lissa_converges_to_the_damping_it_is_given():
    """damp = λ / scale, so the recursion's fixed point is (H + λI)⁻¹ v for any λ, not only the official 0.5."""
    model, x, y = tiny(n=200)
    h, logits = inf.head_inputs(model, x)
    probs = F.softmax(logits, 1)
    v = torch.randn(3, h.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for damping in (0.5, 2.0):
        s_exact, _ = inf.solve_exact(h, probs, v, damping)
        s_l, info = inf.solve_lissa(h, probs, v, damping, steps=2000, batch_size=200,
                                    generator=torch.Generator().manual_seed(0))
        assert info["damp"] == pytest.approx(damping / inf.LISSA_SCALE)
        assert (s_l - s_exact).norm() / s_exact.norm() < 0.02


def official_pert_loop(model, x, y, s):
    """The official computational pattern (HINT:grad_functions.py:L55-76, influence_functions.py:L334-356):
    per example, head gradient with create_graph, dot with s_test, backward to the input, negate."""
    out = torch.empty_like(x)
    params = [model.head.weight, model.head.bias]
    for i in range(len(y)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, params, create_graph=True)
        dot = (gw * s[:, :-1]).sum() + (gb * s[:, -1]).sum()
        (gx,) = torch.autograd.grad(dot, xi)
        out[i] = -gx[0]
    return out


def test_batched_pert_equals_double_backward_loop():
    model, x, y = tiny(n=30)
    s = torch.randn(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batched = inf.influence_pert(model, x, y, s, batch_size=7)
    loop = official_pert_loop(model, x, y, s)
    torch.testing.assert_close(batched, loop, rtol=1e-9, atol=1e-12)
    assert not model.training
    model.train()
    inf.influence_pert(model, x, y, s)
    assert model.training  # mode restored


def test_influence_up_matches_per_example_formula():
    model, x, y = tiny(n=25)
    h, logits = inf.head_inputs(model, x)
    s = torch.randn(3, 9, dtype=torch.float64)
    grads = inf.head_gradients(h, logits, y)
    expected = -(grads * s).sum((1, 2))
    torch.testing.assert_close(inf.influence_up(h, logits, y, s, batch_size=4), expected)


def test_top_abs_count_and_order():
    vals = torch.tensor([0.1, -3.0, 2.0, 0.0, -2.0, 0.5])
    assert inf.top_abs(vals, 0.5).tolist() == [1, 2, 4]
    assert len(inf.top_abs(torch.zeros(3900), 0.1)) == 390  # ⌈0.1·3900⌉ despite float error
    assert inf.selected_count(1e-12, 3900) == 1  # ⌈r·n⌉ ≥ 1 for any r > 0 (it was 0, and HINT divided by it)
    assert inf.selected_count(1.0, 3900) == 3900 and inf.selected_count(0.0, 3900) == 0
    assert len(inf.top_abs(torch.zeros(7), 0.3)) == 3
    assert len(inf.top_abs(torch.zeros(7), 1.0)) == 7


def _fit(model, x, y, lam, weights, iters=100):
    """Minimise Σ w_i ℓ_i / n + λ/2 ‖θ‖² (the objective whose Hessian is H + λI) with L-BFGS in float64."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=iters, tolerance_grad=1e-13,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        per = F.cross_entropy(model(x), y, reduction="none")
        loss = (weights * per).sum() / len(y) + lam / 2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)


def test_influence_up_predicts_retraining_on_logistic_regression():
    g = torch.Generator().manual_seed(0)
    n, d, c, lam = 80, 5, 3, 0.05
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    yv = torch.randint(0, c, (60,), generator=g)
    xv = centers[yv] + 1.3 * torch.randn(60, d, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = LogReg(d, c).double()
    _fit(model, x, y, lam, torch.ones(n))
    theta0 = [p.detach().clone() for p in model.parameters()]
    iv = inf.influence_vector(model, x, y, xv, yv, method="exact", damping=lam)
    predicted = inf.influence_up_model(model, x, y, iv.s)
    base = F.cross_entropy(model(xv), yv).item()
    eps = 0.02  # up-weight one example by ε (in units of the mean loss: weight 1 + nε)
    subset = list(range(0, n, 5))
    actual = []
    for i in subset:
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), theta0, strict=True):
                p.copy_(p0)
        w = torch.ones(n, dtype=torch.float64)
        w[i] += n * eps
        _fit(model, x, y, lam, w)
        actual.append((F.cross_entropy(model(xv), yv).item() - base) / eps)
    pred = predicted[subset].numpy()
    rho = _spearman(pred, np.array(actual))
    assert rho >= 0.9, rho
    # the first-order prediction is also close in value
    assert np.corrcoef(pred, actual)[0, 1] > 0.95


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_influence_vector_rejects_empty_val():
    from poisonbench.errors import PoisonbenchError

    model, x, y = tiny()
    with pytest.raises(PoisonbenchError):
        inf.influence_vector(model, x, y, x[:0], y[:0])
