"""The PyTorch reference of partial RoPE (same signature as ``api.partial_rope``), HF's ``inv_freq`` (which the
kernel is given too, so both start from the same fp32 frequencies), and HF's own eager path as a peer."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=64)
def inv_freq(rotary_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """HF's ``inv_freq`` (fp32, computed on the CPU as HF's __init__ does): the kernel and the reference share it."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # cached: a real table even when first asked for under fake tensors (counting)
        exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
        return (1.0 / (theta ** exponent)).to(device)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def partial_rope_reference(x, positions, *, rotary_dim=None, theta=10000.0):
    """HF Persimmon's path: cos/sin from the fp32 angle (float64 for a float64 x), cast to x's dtype, then
    ``x_rot * cos + rotate_half(x_rot) * sin`` on the first ``rotary_dim`` channels, the rest concatenated back."""
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    angle = positions.float()[..., None] * inv_freq(rotary_dim, float(theta), x.device)  # (b?, seq, R/2)
    emb = torch.cat((angle, angle), dim=-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    cos, sin = (cos[None, None], sin[None, None]) if positions.dim() == 1 else (cos[:, None], sin[:, None])
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def hf_apply_factory():
    """HF's eager ``apply_rotary_pos_emb`` path with cos/sin computed ahead (as a model does, once per forward):
    transformers' own ``rotate_half`` on the rotary slice, the pass-through concatenated back."""
    try:
        import transformers.models.persimmon.modeling_persimmon as hf
    except Exception:  # noqa: BLE001  (transformers missing or incompatible: the peer is unavailable)
        return None
    cache = {}

    def call(x, positions, *, rotary_dim=None, theta=10000.0):
        rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
        key = (positions.data_ptr(), tuple(positions.shape), rotary_dim, theta, x.dtype)
        if key not in cache:
            angle = positions.float()[..., None] * inv_freq(rotary_dim, float(theta), x.device)
            emb = torch.cat((angle, angle), dim=-1)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            cache.clear()
            cache[key] = (cos[None], sin[None]) if positions.dim() == 1 else (cos, sin)
        cos, sin = cache[key]
        x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
        q_rot, _ = hf.apply_rotary_pos_emb(x_rot, x_rot[:, :0], cos, sin)  # k: an empty slice, no work
        return torch.cat((q_rot, x_pass), dim=-1)

    return call
