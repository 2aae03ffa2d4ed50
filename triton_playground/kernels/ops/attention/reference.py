"""The PyTorch reference of attention (same signature as ``api.py``) and the mask it applies."""

import math

import torch

from .api import check_args


def visible_mask(q_len, kv_len, causal, window, device):
    """(q_len, kv_len) bool, True where query row i sees key j (positions as in ``api.py``'s docstring)."""
    pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device=device)[None, :]
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= pos
        if window is not None:
            visible &= j > pos - window
    return visible


def attention_reference(q, k, v, *, causal=True, window=None, scale=None):
    """Eager attention with an explicit mask, in the inputs' dtype (float64 in the tests; the softmax runs in
    float32 at least). GQA repeats each KV head over its query group, so its gradient sums over the group."""
    check_args(q, k, v, causal, window, scale, reference=True)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    softmax_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(q.dtype) @ v


def attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                               causal=True, window=None, scale=None):
    """Packed variable-length attention as a loop over the sequences, each through :func:`attention_reference`
    (shapes as ``varlen.py``'s: q (total_q, q_heads, head_dim), k, v (total_k, kv_heads, head_dim))."""
    from .varlen import check_varlen_args

    check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale,
                      reference=True)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()  # (torch.compile: a graph break)
    outs = [q[:0]]  # (0, q_heads, head_dim): keeps torch.cat defined when every sequence is empty
    for q0, q1, k0, k1 in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
        if q1 == q0:
            continue
        per_head = [t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1])]  # (1, heads, len, d)
        out = attention_reference(*per_head, causal=causal, window=window, scale=scale)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs, 0)
