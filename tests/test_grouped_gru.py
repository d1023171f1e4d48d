"""The grouped CPU GRU kernel against torch.nn.GRU: values, gradients, padding, fallback."""

import logging
import shutil

import pytest
import torch

from ser_modules.models import grouped_gru
from ser_modules.models.rnn import MaskedRNN, run_together
from ser_modules.models.ser import IAAN

needs_kernel = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                  reason="no C++ compiler to build the kernel")


@pytest.fixture
def fused(monkeypatch):
    """Run a callable with the kernel on ("1") or off ("0")."""

    def run(switch, fn):
        monkeypatch.setenv(grouped_gru.ENV_SWITCH, switch)
        return fn()

    return run


def _outputs_and_grads(module, inputs, weights):
    module.zero_grad()
    leaves = [x.detach().requires_grad_(True) if x.is_floating_point() else x for x in inputs]
    out = module(*leaves)
    (out * weights).sum().backward()
    return out.detach(), [x.grad for x in leaves if x.is_floating_point()], [p.grad.clone() for p in module.parameters()]


@needs_kernel
def test_kernel_builds_here():
    assert grouped_gru.kernel() is not None
    assert grouped_gru.usable(torch.zeros(1)) and not grouped_gru.usable(torch.zeros(1, dtype=torch.bfloat16))
    assert not MaskedRNN("lstm", 3, 4).uses_grouped_kernel(torch.zeros(1, 2, 3))  # nn.LSTM runs oneDNN's fused LSTM


@needs_kernel
@pytest.mark.parametrize("bidirectional,merge", [(True, "concat"), (True, "sum"), (False, "concat")])
def test_masked_gru_kernel_equals_nn_gru(fused, bidirectional, merge):
    torch.manual_seed(0)
    layer = MaskedRNN("gru", 20, 16, bidirectional=bidirectional, merge=merge)
    x = torch.randn(5, 13, 20)
    x[1, 7:] = 1e3  # padding garbage must not reach valid frames on either path
    lengths = torch.tensor([13, 7, 1, 13, 4])
    weights = torch.randn(5, 13, layer.output_size)
    assert layer.uses_grouped_kernel(x)
    native = fused("0", lambda: _outputs_and_grads(layer, [x, lengths], weights))
    kernel = fused("1", lambda: _outputs_and_grads(layer, [x, lengths], weights))
    assert torch.allclose(kernel[0], native[0], atol=1e-6)
    assert torch.all(kernel[0][1, 7:] == 0)
    for a, b in zip(kernel[1] + kernel[2], native[1] + native[2]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_recurrence_gradcheck_float64():
    torch.manual_seed(0)
    grus = [torch.nn.GRU(3, 4, batch_first=True).double() for _ in range(2)]
    gi = torch.randn(2, 5, 3, 12, dtype=torch.float64, requires_grad=True)
    w_hh = torch.stack([g.weight_hh_l0 for g in grus]).detach().requires_grad_(True)
    b_hh = torch.stack([g.bias_hh_l0 for g in grus]).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(grouped_gru.GRURecurrence.apply, (gi, w_hh, b_hh))


@needs_kernel
def test_recurrence_by_hand_one_step():
    """One step from h0 = 0: h = (1 - z) n with r, z, n from the input projection and b_hh alone."""
    gru = torch.nn.GRU(2, 3, batch_first=True)
    gi = torch.randn(1, 1, 1, 9)
    h = grouped_gru.recurrence([gi[0]], [gru])[0][0, 0].detach()
    b = gru.bias_hh_l0.detach()
    r = torch.sigmoid(gi[0, 0, 0, :3] + b[:3])
    z = torch.sigmoid(gi[0, 0, 0, 3:6] + b[3:6])
    n = torch.tanh(gi[0, 0, 0, 6:] + r * b[6:])
    assert torch.allclose(h, (1 - z) * n, atol=1e-6)


@needs_kernel
def test_run_together_and_iaan_equal_one_by_one(fused):
    torch.manual_seed(0)
    rnns = [MaskedRNN("gru", 6, 5, bidirectional=False) for _ in range(3)]
    inputs = [(torch.randn(3, t, 6), torch.tensor(lens)) for t, lens in ((9, [9, 5, 2]), (4, [1, 4, 3]), (11, [11, 6, 8]))]
    together = fused("1", lambda: run_together(rnns, inputs))
    alone = fused("0", lambda: [r(x, n) for r, (x, n) in zip(rnns, inputs)])
    for a, b, (x, _) in zip(together, alone, inputs):
        assert a.shape == b.shape == (3, x.shape[1], 5)
        assert torch.allclose(a, b, atol=1e-6)

    net = IAAN(input_size=12, hidden_size=10, attention_size=4, mlp_size=8).eval()  # eval: no dropout draws
    args = [torch.randn(3, 9, 12), torch.tensor([9, 5, 2]), torch.randn(3, 6, 12), torch.tensor([6, 1, 3]),
            torch.randn(3, 11, 12), torch.tensor([4, 11, 7])]
    weights = torch.randn(3, 4)
    native = fused("0", lambda: _outputs_and_grads(net, args, weights))
    kernel = fused("1", lambda: _outputs_and_grads(net, args, weights))
    assert torch.allclose(kernel[0], native[0], atol=1e-6)
    for a, b in zip(kernel[2], native[2]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_switched_off_or_unbuildable_falls_back_to_nn_gru(monkeypatch, caplog):
    monkeypatch.setenv(grouped_gru.ENV_SWITCH, "0")
    assert grouped_gru.kernel() is None and not MaskedRNN("gru", 3, 4).uses_grouped_kernel(torch.zeros(1, 2, 3))

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'ser_grouped_gru'\nc++: command not found")

    monkeypatch.setenv(grouped_gru.ENV_SWITCH, "1")
    monkeypatch.setattr(grouped_gru, "_state", {})
    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with caplog.at_level(logging.WARNING, logger=grouped_gru.__name__):
        layer = MaskedRNN("gru", 3, 4)
        out = layer(torch.randn(2, 5, 3), torch.tensor([5, 2]))
    assert out.shape == (2, 5, 8) and torch.all(out[1, 2:] == 0)
    assert "could not be built (c++: command not found); using nn.GRU" in caplog.text
    caplog.clear()
    layer(torch.randn(2, 5, 3), torch.tensor([5, 2]))
    assert caplog.text == ""  # said once

