"""spectral: SpectralConv2d equals nn.Conv2d (outputs, input and weight gradients) up to float rounding; it is
swapped in only where it pays off, for inference copies and for training on the CPU, and training hands the
caller its nn.Conv2d modules back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.data import load_dataset
from poisonbench.engine.kernels import inference_copy
from poisonbench.engine.kernels.input_grad import StemConv2d
from poisonbench.engine.kernels.spectral import SpectralConv2d, swap_spectral
from poisonbench.engine.models import build_model


@pytest.mark.parametrize("cin,cout,kernel,padding,size", [(40, 100, 5, 0, (12, 12)), (3, 4, 5, 2, (9, 6)),
                                                          (2, 3, (5, 7), (1, 3), (8, 11))])
def test_spectral_conv_equals_conv2d_forward_and_input_gradient(cin, cout, kernel, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=padding).double().requires_grad_(False)
    spectral = SpectralConv2d.from_conv(conv, size)
    x = torch.rand(3, cin, *size, dtype=torch.float64)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        outs, grads = [], []
        for module in (conv, spectral):
            xi = x.contiguous(memory_format=memory_format).requires_grad_(True)
            out = module(xi)
            upstream = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
            (g,) = torch.autograd.grad((out * upstream).sum(), xi)
            outs.append(out)
            grads.append(g)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)
    other = torch.rand(2, cin, size[0] + 1, size[1] + 2, dtype=torch.float64)  # another size: direct fallback
    torch.testing.assert_close(spectral(other), conv(other), rtol=0, atol=0)


def test_spectral_swap_only_where_it_pays_off():
    data = load_dataset("mnist-5k")
    model = build_model("convnet", data, seed=0)
    x = data.train.x[:8].float() / 255
    copy = inference_copy(model, x[:1])
    assert isinstance(copy.conv[0], StemConv2d)  # 1→40 on 28×28: the DFT would cost 35× the direct convolution
    assert isinstance(copy.conv[4], SpectralConv2d)  # 40→100 k5 on 12×12: about half
    assert not any(isinstance(m, SpectralConv2d) for m in inference_copy(model).modules())  # no sample, no swap
    torch.testing.assert_close(copy(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    assert not SpectralConv2d.pays_off(nn.Conv2d(256, 256, 3, padding=1), (8, 8))  # 3×3 stays direct
    assert not SpectralConv2d.pays_off(nn.Conv2d(40, 100, 5, stride=2), (12, 12))
    assert not SpectralConv2d.pays_off(nn.Conv2d(100, 1000, (3, 9)), (12, 12))  # both sides >= 5 (cost alone: yes)
    wide = nn.Conv2d(40, 100, 5)
    assert SpectralConv2d.pays_off(wide, (12, 12))
    assert not SpectralConv2d.pays_off(wide.half(), (12, 12))  # half precision stays direct
    normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(40, 100, 5))  # weight recomputed: not a Parameter
    hooked = nn.Conv2d(40, 100, 5)
    hooked.register_forward_hook(lambda *_: None)
    for conv in (normed, hooked):
        assert not SpectralConv2d.pays_off(conv, (12, 12))
        assert not swap_spectral(nn.Sequential(conv), torch.rand(1, 40, 12, 12))
    spectral = SpectralConv2d.from_conv(nn.Conv2d(40, 100, 5), (12, 12))
    unbatched = torch.rand(40, 12, 12)
    torch.testing.assert_close(spectral(unbatched), nn.functional.conv2d(unbatched, spectral.weight, spectral.bias))


def test_spectral_input_gradient_eager_and_compiled_match_the_direct_path():
    from poisonbench.attacks.pgd import signed_step
    from poisonbench.core.device import compile_static

    data = load_dataset("mnist-5k")
    model = build_model("convnet", data, seed=0)
    x = (data.train.x[:16].float() / 255).contiguous(memory_format=torch.channels_last)
    y = data.train.y[:16]
    spectral, direct = inference_copy(model, x), inference_copy(model)
    assert isinstance(spectral.conv[4], SpectralConv2d) and type(direct.conv[4]) is nn.Conv2d

    def input_grad(m):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(m(xi), y, reduction="sum"), xi)
        return g

    reference = input_grad(direct)
    torch.testing.assert_close(input_grad(spectral), reference, rtol=1e-3, atol=1e-5)
    delta = torch.zeros_like(x)
    eager = signed_step(spectral, x, delta, y, 0.3, 0.01)
    compiled = compile_static(signed_step)(spectral, x, delta, y, 0.3, 0.01)
    assert (compiled != eager).float().mean() < 0.01  # float rounding may flip the sign of a near-zero gradient


def test_spectral_weight_and_bias_gradients_equal_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 5, padding=1).double()
    spectral = SpectralConv2d.from_conv(conv, (9, 9))
    assert spectral.weight is conv.weight and spectral.bias is conv.bias  # shared: an optimizer keeps working
    assert list(spectral.state_dict()) == ["weight", "bias"]  # the DFT matrices are not part of the state
    x = torch.rand(4, 6, 9, 9, dtype=torch.float64)
    reference = torch.autograd.grad(nn.functional.conv2d(x, conv.weight, conv.bias, padding=1).square().sum(),
                                    [conv.weight, conv.bias])
    ours = torch.autograd.grad(spectral(x).square().sum(), [spectral.weight, spectral.bias])
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_training_on_the_cpu_uses_the_spectral_layer_and_returns_plain_convolutions(monkeypatch):
    from dataclasses import replace

    import poisonbench.engine.kernels.spectral as spectral_module
    from poisonbench.core.device import to_float
    from poisonbench.engine.recipes import resolve_recipe
    from poisonbench.engine.training import train

    data = load_dataset("mnist-5k")
    rows = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:512]  # every class
    x, y = to_float(data.train.x[rows], torch.device("cpu")), data.train.y[rows]
    recipe = replace(resolve_recipe(data.family, "paper"), epochs=2)
    calls = []
    original_forward = SpectralConv2d.forward
    monkeypatch.setattr(spectral_module.SpectralConv2d, "forward",
                        lambda self, t: calls.append(t.shape[0]) or original_forward(self, t))
    results = {}
    for mode in ("spectral", "direct"):
        if mode == "direct":
            monkeypatch.setattr(spectral_module, "MAX_COST_FRACTION", 0.0)  # nothing pays off
        model = build_model("convnet", data, seed=0)
        out = train(model, x, y, x[:64], y[:64], recipe, seed=0, device=torch.device("cpu"), num_classes=10,
                    compile="off")
        assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
        results[mode] = (out.history, model.state_dict())
    assert calls and sum(calls) == 2 * 512  # the 40→100 layer ran spectrally, every training row, both epochs
    (h_s, sd_s), (h_d, sd_d) = results["spectral"], results["direct"]
    assert list(sd_s) == list(sd_d)
    for a, b in zip(h_s, h_d, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    for k in sd_s:
        torch.testing.assert_close(sd_s[k].float(), sd_d[k].float(), rtol=1e-3, atol=1e-4)


def test_dilated_and_strided_convolutions_stay_direct():
    assert SpectralConv2d.pays_off(nn.Conv2d(40, 100, 5), (12, 12))  # the same layer undilated qualifies
    assert not SpectralConv2d.pays_off(nn.Conv2d(40, 100, 5, dilation=2), (12, 12))
    assert not SpectralConv2d.pays_off(nn.Conv2d(40, 100, 5, groups=2), (12, 12))


def test_only_non_conjugate_frequencies_are_computed():
    """x, w and y are real, so in the real DFT's self-conjugate columns half the frequencies repeat others; the
    layer computes 74 of the 84 at 12×12 (and the float64 equalities above hold with the folded inverse)."""
    spectral = SpectralConv2d.from_conv(nn.Conv2d(40, 100, 5), (12, 12))
    assert spectral.freqs == 74 and spectral.dft.shape == (2 * 74, 144) and spectral.inverse.shape == (64, 2 * 74)
    odd = SpectralConv2d.from_conv(nn.Conv2d(2, 3, 5), (9, 11))  # no Nyquist column: only k2 = 0 pairs up
    assert odd.freqs == 9 * 6 - 4
