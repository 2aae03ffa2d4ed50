"""The fused MLP beyond the generated tests: each activation against transformers' and torch's own, biases None in
every combination, leading dims, partial requires_grad, zero tokens, the two-stage column sum, argument errors."""

import pytest
import torch

from triton_playground import kernels
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.ops.mlp import api, kernel
from triton_playground.kernels.ops.mlp.api import column_sums
from triton_playground.kernels.ops.mlp.reference import mlp_reference
from tests.checks import rel_err

DEV = rt.DEVICE


def _t(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(DEV, dtype)


def _weights(hidden, inner, seed=0):
    return (_t(inner, hidden, seed=seed, scale=hidden ** -0.5), _t(inner, seed=seed + 1, scale=0.5),
            _t(hidden, inner, seed=seed + 2, scale=inner ** -0.5), _t(hidden, seed=seed + 3, scale=0.5))


def _hf_activation(name):
    from transformers.activations import ACT2FN

    return ACT2FN[{"relu2": "relu2", "relu": "relu", "gelu_tanh": "gelu_new"}[name]]


# gelu_tanh is computed as x / (1 + exp(-2u)) (kernels/ops/mlp/kernel.py): at x near -30, exp overflows fp32 to inf
# and x / inf = 0 is the right value (the test checks it); numpy, running the interpreter's exp, warns of it.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("activation", ["relu2", "relu", "gelu_tanh"])
def test_activation_matches_transformers(activation):
    """With identity weights and no biases the MLP is the activation alone (an fp32 dot with an identity matrix is
    exact): compare it, and its derivative, with transformers' ACT2FN (relu2, relu, gelu_new) over [-30, 30]."""
    n = 48
    x = torch.linspace(-30, 30, 7 * n).view(7, n).to(DEV)
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0])
    x.requires_grad_(True)
    eye = torch.eye(n, device=DEV)
    y = kernels.mlp(x, eye, None, eye, None, activation=activation)
    xr = x.detach().double().requires_grad_(True)
    ref = _hf_activation(activation)(xr)
    assert rel_err(y, ref) < 1e-6
    assert (y.detach().double() - ref.detach()).abs().max() <= 1e-6 * (1 + ref.detach().abs().max())
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEV)
    (dx,) = torch.autograd.grad(y, x, g)
    (dref,) = torch.autograd.grad(ref, xr, g.double())
    assert rel_err(dx, dref) < 1e-6


def test_gelu_tanh_is_gpt2_gelu_new():
    """The reference's gelu_tanh is transformers' NewGELUActivation, which is torch's gelu(approximate='tanh')."""
    from transformers.activations import NewGELUActivation

    h = _t(5, 40, dtype=torch.float64, scale=4.0)
    ref = mlp_reference(h, torch.eye(40, dtype=torch.float64, device=DEV), None,
                        torch.eye(40, dtype=torch.float64, device=DEV), None, activation="gelu_tanh")
    assert torch.allclose(ref, NewGELUActivation()(h), rtol=1e-12, atol=1e-12)
    assert torch.allclose(ref, torch.nn.functional.gelu(h, approximate="tanh"), rtol=1e-12, atol=1e-12)


def _check_against_reference(x, w_in, b_in, w_out, b_out, activation, tol=1e-5):
    args = (x, w_in, b_in, w_out, b_out)
    y = kernels.mlp(*args, activation=activation)
    ref_args = [a.detach().double().requires_grad_(a.requires_grad) if a is not None else None for a in args]
    ref = mlp_reference(*ref_args, activation=activation)
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert rel_err(y, ref) < tol
    inputs = [a for a in args if a is not None and a.requires_grad]
    if inputs:
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(DEV)
        grads = torch.autograd.grad(y, inputs, g)
        ref_grads = torch.autograd.grad(ref, [a for a in ref_args if a is not None and a.requires_grad], g.double())
        for got, want in zip(grads, ref_grads):
            assert rel_err(got, want) < tol


@pytest.mark.parametrize("with_b_in,with_b_out", [(False, True), (True, False)])
def test_one_bias_none(with_b_in, with_b_out):
    w_in, b_in, w_out, b_out = (t.requires_grad_(True) for t in _weights(19, 37))
    x = _t(11, 19, seed=9).requires_grad_(True)
    _check_against_reference(x, w_in, b_in if with_b_in else None, w_out, b_out if with_b_out else None, "relu2")


@pytest.mark.parametrize("lead", [(), (2, 3), (2, 1, 3)])
def test_leading_dims(lead):
    w_in, b_in, w_out, b_out = (t.requires_grad_(True) for t in _weights(13, 29))
    x = _t(*lead, 13, seed=4).requires_grad_(True)
    _check_against_reference(x, w_in, b_in, w_out, b_out, "gelu_tanh")


@pytest.mark.parametrize("which", ["x", "w_in", "b_in", "w_out", "b_out"])
def test_gradient_of_one_input(which):
    """Only one input requires grad: the backward runs just the GEMMs it needs (h is stored only for x, w_in, b_in)."""
    names = ["x", "w_in", "b_in", "w_out", "b_out"]
    args = [_t(9, 21, seed=5), *_weights(21, 35)]
    args[names.index(which)].requires_grad_(True)
    _check_against_reference(*args, "relu")


def test_squared_relu_mlp_is_mlp_relu2():
    args = (_t(2, 7, 24, seed=2), *_weights(24, 50))
    assert torch.equal(kernels.squared_relu_mlp(*args), kernels.mlp(*args, activation="relu2"))
    assert torch.equal(kernels.mlp(*args), kernels.mlp(*args, activation="relu2"))  # relu2 is the default


def test_no_grad_and_inference():
    args = (_t(5, 16, seed=3), *_weights(16, 40))
    with torch.no_grad():
        y = kernels.mlp(*[a.requires_grad_(True) for a in args], activation="gelu_tanh")
    assert not y.requires_grad
    assert rel_err(y, mlp_reference(*[a.detach().double() for a in args], activation="gelu_tanh")) < 1e-5


def test_zero_tokens():
    w_in, b_in, w_out, b_out = (t.requires_grad_(True) for t in _weights(8, 12))
    x = _t(0, 8).requires_grad_(True)
    y = kernels.mlp(x, w_in, b_in, w_out, b_out)
    assert y.shape == (0, 8)
    grads = torch.autograd.grad(y, (x, w_in, b_in, w_out, b_out), torch.ones_like(y))
    assert grads[0].shape == (0, 8)
    assert all(not g.any() for g in grads[1:])


@pytest.mark.parametrize("index", range(len(kernel.gemm.configs)))
def test_every_config_where_tma_fits(index, monkeypatch):
    """Each gemm config on a shape whose operands fit TMA descriptors (16-byte aligned rows, 67 tokens so boxes
    overhang the edges), forward and backward in fp32 and fp16: the TMA configs take their descriptor path here
    (the generated config test's odd widths send them down the pointer path), transposed operands included (fp16;
    fp32 takes TMA on untransposed ones only), and the persistent ones walk several tiles per program (dw_in's
    five 128-row tiles on the interpreter's four programs)."""
    fits = []
    monkeypatch.setattr(api, "tma_fits", lambda *a: fits.append(kernel.tma_fits(*a)) or fits[-1])
    activation = sorted(kernel.ACTIVATIONS)[index % 3]
    for dtype in (torch.float32, torch.float16):
        fits.clear()
        w_in, b_in, w_out, b_out = (t.to(dtype).requires_grad_(True) for t in _weights(64, 576, seed=index))
        x = _t(67, 64, seed=index + 9).to(dtype).requires_grad_(True)
        with kernels.force_config(kernel.gemm, index):
            _check_against_reference(x, w_in, b_in, w_out, b_out, activation, tol=kernels.OPS["mlp"].tolerance[dtype])
        assert fits == ([True] * 6 if dtype == torch.float16 else [False, False, True, True, False, False])


@pytest.mark.parametrize("shape", [(300, 50), (1, 130), (45, 1)])
def test_column_sums_two_stage(shape):
    """The bias-gradient reduction: many rows take the split path (partial sums, then a second call)."""
    x = _t(*shape, seed=6)
    strided = _t(shape[1], shape[0], seed=6).t()  # unit stride along rows
    for t in (x, strided):
        got = column_sums(t, torch.float32)
        assert rel_err(got, t.double().sum(0)) < 1e-6


@pytest.mark.parametrize("call,error,match", [
    (lambda x, wi, bi, wo, bo: kernels.mlp(x[0, 0, 0], wi, bi, wo, bo), ValueError, "x must have rank >= 1"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi[None], bi, wo, bo), ValueError, "w_in must have rank 2"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi, wo[None], bo), ValueError, "w_out must have rank 2"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi[None], wo, bo), ValueError, "b_in must have shape"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi, wo.t(), bo), ValueError, r"w_out must have shape \(hidden"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi.half(), wo, bo), TypeError, "b_in has dtype"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi, wo, bo, activation=None), ValueError, "activation must be"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi, wo, bo, activation="gelu"), ValueError, "activation must be"),
    (lambda x, wi, bi, wo, bo: kernels.squared_relu_mlp(x.half(), wi, bi, wo, bo), TypeError, "w_in has dtype"),
    (lambda x, wi, bi, wo, bo: kernels.mlp(x, wi, bi, wo, [0.0]), TypeError, "b_out must be a torch.Tensor"),
])
def test_errors_name_the_argument(call, error, match):
    x = _t(3, 4, 8)
    w_in, b_in, w_out, b_out = _weights(8, 12)
    with pytest.raises(error, match=match):
        call(x, w_in, b_in, w_out, b_out)
