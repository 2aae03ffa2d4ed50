"""Attention's torch peers, for the sweeps (``spec.py``'s ``peers``): PyTorch's SDPA and FlexAttention, dense and
packed (sequence by sequence; FlexAttention with a document mask). The Triton peer (FLA) is in ``peers.py``."""

from __future__ import annotations

import functools

import torch

from ... import _runtime as rt
from .reference import visible_mask


def _sdpa_peer():
    def sdpa(q, k, v, *, causal=True, window=None, scale=None):
        q_len, kv_len = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if not causal:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        if window is None and q_len == kv_len:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                    enable_gqa=gqa)
        # is_causal aligns the diagonal top-left; ours is bottom-right (queries are the last positions): a mask.
        mask = visible_mask(q_len, kv_len, causal, window, q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    return sdpa


def _flex():
    """(create_block_mask, compiled flex_attention), or None without a GPU or FlexAttention."""
    if not rt.GPU or rt.INTERPRET:
        return None  # compiled FlexAttention needs a GPU (its CPU path compiles C++ for minutes)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return create_block_mask, torch.compile(flex_attention)


def _flex_peer():
    if _flex() is None:
        return None
    create_block_mask, compiled = _flex()

    @functools.lru_cache(maxsize=32)
    def block_mask(q_len, kv_len, causal, window, device):
        offset = kv_len - q_len

        def mask_mod(b, h, q_idx, kv_idx):
            pos = q_idx + offset
            visible = kv_idx <= pos if causal else kv_idx >= 0
            if window is not None:  # W keys, itself included: FlexAttention's examples' "<= W" would keep W + 1
                visible = visible & (pos - kv_idx < window)
            return visible

        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)

    def flex(q, k, v, *, causal=True, window=None, scale=None):
        mask = block_mask(q.shape[2], k.shape[2], causal, window, str(q.device))
        return compiled(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

    return flex


def _sequences(cu_seqlens_q, cu_seqlens_k):
    """[(q0, q1, k0, k1)] of each sequence, from the prefix sums."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return list(zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]))


def _sdpa_varlen_peer():
    """PyTorch's SDPA sequence by sequence (what a model without a varlen kernel does)."""
    sdpa = _sdpa_peer()

    def per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None, causal=True,
                     window=None, scale=None):
        outs = [q[:0]]
        for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
            if q1 > q0:
                heads = [t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1])]
                outs.append(sdpa(*heads, causal=causal, window=window, scale=scale)[0].transpose(0, 1))
        return torch.cat(outs, 0)

    return per_sequence


def document_mask_mod(cu_seqlens_q, cu_seqlens_k, causal, window):
    """FlexAttention's ``mask_mod`` over the packed rows: query row ``q_idx`` sees key row ``kv_idx`` iff both lie
    in the same sequence and, inside it, the positions pass kernels.attention's mask (bottom-right causal,
    window W: its W latest keys)."""
    device = cu_seqlens_q.device
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
    # each row's sequence: the last s with cu[s] <= row (empty sequences are skipped over)
    doc_q = torch.searchsorted(cu_q, torch.arange(total_q, device=device), right=True) - 1
    doc_k = torch.searchsorted(cu_k, torch.arange(total_k, device=device), right=True) - 1
    # a query's position among its sequence's keys: kv_len - q_len + (row - q0)
    pos_q = torch.arange(total_q, device=device) - cu_q[doc_q] + (cu_k[doc_q + 1] - cu_k[doc_q]) - (
        cu_q[doc_q + 1] - cu_q[doc_q])
    pos_k = torch.arange(total_k, device=device) - cu_k[doc_k]

    def mask_mod(b, h, q_idx, kv_idx):
        visible = doc_q[q_idx] == doc_k[kv_idx]
        if causal:
            visible = visible & (pos_k[kv_idx] <= pos_q[q_idx])
            if window is not None:
                visible = visible & (pos_q[q_idx] - pos_k[kv_idx] < window)
        return visible

    return mask_mod


def _flex_varlen_peer():
    if _flex() is None:
        return None
    create_block_mask, compiled = _flex()

    def flex(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None, causal=True,
             window=None, scale=None):
        # the block mask is built per call (the sweep times it too: a document mask changes with every batch)
        mask = create_block_mask(document_mask_mod(cu_seqlens_q, cu_seqlens_k, causal, window), B=None, H=None,
                                 Q_LEN=q.shape[0], KV_LEN=k.shape[0], device=str(q.device))
        heads = [t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)]  # (1, heads, total, head_dim)
        out = compiled(*heads, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        return out[0].transpose(0, 1)

    return flex
