"""Partial RoPE beyond the generated tests: bit-exact pass-through, both positions layouts, the q/k entry point,
agreement with Hugging Face's Persimmon and OLMoE rotary code, and argument errors."""

import pytest
import torch

from triton_playground import kernels
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.ops.rope.reference import partial_rope_reference
from tests.checks import rel_err

DEV = rt.DEVICE


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEV, dtype)


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pass_through_is_bit_exact(dtype):
    """Channels past rotary_dim come back bit for bit (inf, NaN payloads, subnormals included), forward and
    backward; the rotated channels do change."""
    x = _x((2, 3, 9, 20), dtype)
    x[..., 12] = float("inf")
    x[..., 13] = float("nan")
    x[..., 14] = torch.finfo(dtype).tiny / 4  # subnormal
    x[0, 0, :, 19] = -0.0
    x.requires_grad_(True)
    pos = torch.arange(100, 109, device=DEV)
    y = kernels.partial_rope(x, pos, rotary_dim=10)
    assert torch.equal(_bits(y[..., 10:]), _bits(x.detach()[..., 10:]))
    assert not torch.equal(y[..., :10], x.detach()[..., :10])
    dy = _x((2, 3, 9, 20), dtype, seed=1)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(_bits(dx[..., 10:]), _bits(dy[..., 10:]))


def test_positions_seq_and_batch_seq_agree():
    """(seq,) positions, the same row expanded to (batch, seq) (stride 0), and a materialised copy agree exactly;
    per-batch positions equal per-batch calls."""
    x = _x((3, 2, 11, 16))
    pos = torch.randint(0, 5000, (11,), generator=torch.Generator().manual_seed(3)).to(DEV)
    y1 = kernels.partial_rope(x, pos, rotary_dim=8)
    y2 = kernels.partial_rope(x, pos.expand(3, 11), rotary_dim=8)
    y3 = kernels.partial_rope(x, pos.expand(3, 11).contiguous(), rotary_dim=8)
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    per_batch = torch.stack([pos, pos + 7, pos * 2]).to(torch.int32)  # int32 positions too
    y = kernels.partial_rope(x, per_batch, rotary_dim=8)
    for b in range(3):
        assert torch.equal(y[b:b + 1], kernels.partial_rope(x[b:b + 1], per_batch[b].long(), rotary_dim=8))
    assert rel_err(y, partial_rope_reference(x.double(), per_batch, rotary_dim=8)) < 1e-6


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_qk_entry_point_matches_two_calls(kv_heads):
    """partial_rope_qk on HF-style views (q, k transposed out of (batch, seq, heads, head_dim)), GQA included,
    equals two partial_rope calls bit for bit, forward and backward; a gradient through only one of q, k works."""
    b, s, h, d = 2, 13, 4, 24
    q = _x((b, s, h, d)).transpose(1, 2).requires_grad_(True)
    k = _x((b, s, kv_heads, d), seed=1).transpose(1, 2).requires_grad_(True)
    pos = torch.arange(40, 40 + s, device=DEV)
    qr, kr = kernels.partial_rope_qk(q, k, pos, rotary_dim=12, theta=500.0)
    assert torch.equal(qr, kernels.partial_rope(q, pos, rotary_dim=12, theta=500.0))
    assert torch.equal(kr, kernels.partial_rope(k, pos, rotary_dim=12, theta=500.0))
    dq_out, dk_out = _x(qr.shape, seed=2), _x(kr.shape, seed=3)
    dq, dk = torch.autograd.grad((qr, kr), (q, k), (dq_out, dk_out))
    dq1, = torch.autograd.grad(kernels.partial_rope(q, pos, rotary_dim=12, theta=500.0), q, dq_out)
    dk1, = torch.autograd.grad(kernels.partial_rope(k, pos, rotary_dim=12, theta=500.0), k, dk_out)
    assert torch.equal(dq, dq1) and torch.equal(dk, dk1)
    # only k's rotation used (q's output gradient is None inside the backward), then only q's
    qr, kr = kernels.partial_rope_qk(q, k, pos, rotary_dim=12, theta=500.0)
    gq, gk = torch.autograd.grad(kr, (q, k), dk_out, allow_unused=True)
    assert gq is None or not gq.any()
    assert torch.equal(gk, dk1)
    qr, kr = kernels.partial_rope_qk(q, k, pos, rotary_dim=12, theta=500.0)
    gq, gk = torch.autograd.grad(qr, (q, k), dq_out, allow_unused=True)
    assert torch.equal(gq, dq1) and (gk is None or not gk.any())


def test_backward_is_the_inverse_rotation():
    """The rotation is orthogonal: the backward of y = R x maps R x back to x (fp32 rounding only)."""
    x = _x((1, 2, 17, 32)).requires_grad_(True)
    pos = torch.arange(3000, 3017, device=DEV)
    y = kernels.partial_rope(x, pos, rotary_dim=24)
    (back,) = torch.autograd.grad(y, x, y.detach())
    assert rel_err(back, x) < 1e-6


def test_backward_leaves_a_shared_gradient_alone():
    """Autograd may hand one gradient tensor to several consumers: here ``q_rot + residual`` gives q_rot's and the
    residual's branches the same tensor. A backward that rotates its incoming gradient in place (as Liger's does,
    to move only the rotary channels) corrupts the residual's gradient; ours writes a new dx and must leave it
    alone (so the backward's bytes are a full read and write, not the rotary channels only; docs/peers.md)."""
    b, h, s, d = 1, 2, 8, 16
    q = _x((b, s, h, d), seed=1).transpose(1, 2).requires_grad_(True)  # (b, h, s, d) views of (b, s, h, d) memory
    residual = _x((b, s, h, d), seed=2).transpose(1, 2).requires_grad_(True)
    w = _x((b, s, h * d), seed=3)
    pos = torch.arange(s, device=DEV)

    def loss(rot):
        return ((rot(q) + residual).transpose(1, 2).reshape(b, s, h * d) * w).sum()

    got = torch.autograd.grad(loss(lambda t: kernels.partial_rope(t, pos, rotary_dim=8)), (q, residual))
    want = torch.autograd.grad(loss(lambda t: partial_rope_reference(t, pos, rotary_dim=8)), (q, residual))
    assert rel_err(got[0], want[0]) < 1e-6
    assert torch.equal(got[1], want[1])  # the residual's gradient is the shared one, untouched


def test_matches_hf_persimmon_and_olmoe():
    """Against transformers' own code: Persimmon (partial_rotary_factor 0.5, its rope_theta) and OLMoE (full)."""
    from transformers import OlmoeConfig, PersimmonConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeRotaryEmbedding
    from transformers.models.olmoe.modeling_olmoe import apply_rotary_pos_emb as olmoe_apply
    from transformers.models.persimmon.modeling_persimmon import PersimmonRotaryEmbedding
    from transformers.models.persimmon.modeling_persimmon import apply_rotary_pos_emb as persimmon_apply

    b, heads, s, d = 2, 3, 21, 32
    pos = torch.stack([torch.arange(s), torch.arange(1000, 1000 + s)]).to(DEV)
    q, k = _x((b, heads, s, d)), _x((b, heads, s, d), seed=1)

    cfg = PersimmonConfig(hidden_size=heads * d, num_attention_heads=heads, partial_rotary_factor=0.5,
                          rope_theta=25000.0)
    cos, sin = PersimmonRotaryEmbedding(cfg).to(DEV)(q, pos)
    r = d // 2
    q_rot, k_rot = persimmon_apply(q[..., :r], k[..., :r], cos, sin)
    hf_q, hf_k = torch.cat((q_rot, q[..., r:]), -1), torch.cat((k_rot, k[..., r:]), -1)
    ours_q, ours_k = kernels.partial_rope_qk(q, k, pos, rotary_dim=r, theta=25000.0)
    assert rel_err(ours_q, hf_q) < 1e-6 and rel_err(ours_k, hf_k) < 1e-6

    cfg = OlmoeConfig(hidden_size=heads * d, num_attention_heads=heads, rope_theta=10000.0)
    cos, sin = OlmoeRotaryEmbedding(cfg).to(DEV)(q, pos)
    hf_q, hf_k = olmoe_apply(q, k, cos, sin)
    ours_q, ours_k = kernels.partial_rope_qk(q, k, pos)  # rotary_dim defaults to head_dim
    assert rel_err(ours_q, hf_q) < 1e-6 and rel_err(ours_k, hf_k) < 1e-6


def test_empty_sequence():
    x = _x((2, 3, 0, 8))
    y = kernels.partial_rope(x, torch.zeros(0, dtype=torch.int64, device=DEV))
    assert y.shape == x.shape


@pytest.mark.parametrize("call,error,match", [
    (lambda q, k, p: kernels.partial_rope_qk(q, k[:, :, :4], p), ValueError, r"k must have shape \(batch, kv_heads"),
    (lambda q, k, p: kernels.partial_rope_qk(q, k[..., :6], p), ValueError, "k must have shape"),
    (lambda q, k, p: kernels.partial_rope_qk(q, k.half(), p), TypeError, "k has dtype"),
    (lambda q, k, p: kernels.partial_rope_qk(q, k[0], p), ValueError, "k must have shape"),
    (lambda q, k, p: kernels.partial_rope_qk(q[0], k, p), ValueError, "q must have rank 4"),
    (lambda q, k, p: kernels.partial_rope_qk(q, k, p, rotary_dim=5), ValueError, "rotary_dim must be even"),
    (lambda q, k, p: kernels.partial_rope_qk(q, k, p.double()), TypeError, "positions must be an integer"),
    (lambda q, k, p: kernels.partial_rope(q, p[None, None]), ValueError, "positions must have shape"),
    (lambda q, k, p: kernels.partial_rope(q, p, rotary_dim=True), TypeError, "rotary_dim must be an int"),
    (lambda q, k, p: kernels.partial_rope(q, p, theta=-1.0), ValueError, "theta must be a positive"),
])
def test_errors_name_the_argument(call, error, match):
    q, k, p = _x((2, 3, 5, 8)), _x((2, 1, 5, 8)), torch.arange(5, device=DEV)
    with pytest.raises(error, match=match):
        call(q, k, p)
