"""What the model families share to run: the pieces every model is built from, the KV cache, packed documents,
generation.

:class:`CausalLM` is the base of every model (``forward(input_ids, cache=None, *, cu_seqlens=None,
position_ids=None) -> logits`` and ``generate``: greedy or sampled, batched prompts with left padding);
:class:`RotaryLM` and :class:`PreNormLayer` are the Llama-style model and layer that Persimmon and OLMoE share.
Packed documents (:class:`Documents`, for training) reach every attention as ``docs``: :func:`attend` then runs
``kernels.attention_varlen``. How logits become tokens: ``sampling.py``.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch import nn

from triton_playground import kernels

from ._common import token_ids
from .sampling import check_sampling, left_padding, next_tokens


class LayerNorm(nn.Module):
    """A LayerNorm whose forward is ``kernels.layer_norm`` (weight/bias None when the checkpoint has none)."""

    def __init__(self, dim, eps=1e-5, affine=True, bias=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim)) if affine else None
        self.bias = nn.Parameter(torch.empty(dim)) if affine and bias else None

    def forward(self, x):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """HF OLMoE's RMSNorm (``weight * normalised x rounded to x's dtype``), forward by ``kernels.rms_norm``."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)


def heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim), a view (the kernels take strides)."""
    b, s, _ = x.shape
    return x.view(b, s, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads * head_dim)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``update(layer, k, v)`` writes the new positions after the ``length`` already held and returns views of all
    positions so far: the attention kernel takes them with ``q_len < kv_len`` (queries are the last positions).
    The model calls ``advance(n)`` once all its layers have seen the ``n`` new positions.

    ``pads``: left padding, the count of pad tokens that start each row (None: no row has any). A row's pads are
    never attended to (:func:`attend`) and its positions count from its first real token (:func:`positions`), as
    HF's ``generate`` counts them from the attention mask.
    """

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device, pads=None):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0
        self.pads = list(pads) if pads is not None and any(pads) else None
        self.pad_counts = torch.tensor(self.pads, device=device) if self.pads else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


def attend(q, k, v, cache: KVCache | None, layer: int, window, scale=None, docs: Documents | None = None):
    """Causal attention of the new positions' queries over the cached + new keys: one kernel launch, or one per
    distinct count of left pads when the cache has some (:func:`attend_left_padded`); for packed documents
    (``docs``, no cache), one ``kernels.attention_varlen`` launch in which no query sees another document's keys.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, q_len, head_dim), the new positions only (batch 1
    and q_len = total tokens when ``docs`` is given). Returns q's shape."""
    if docs is not None:
        return attend_packed(q, k, v, docs, window, scale)
    if cache is not None:
        k, v = cache.update(layer, k, v)
        if cache.pads is not None:
            return attend_left_padded(q, k, v, cache.pads, window, scale)
    return kernels.attention(q, k, v, causal=True, window=window, scale=scale)


def attend_packed(q, k, v, docs: Documents, window, scale=None):
    """Causal attention within each packed document (a ``window`` counts the document's own keys only).

    q: (1, heads, total, head_dim); k, v: (1, kv_heads, total, head_dim). Returns q's shape. The varlen kernel
    takes tokens first, (total, heads, head_dim): views of the same tensors."""
    out = kernels.attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                   docs.cu_seqlens, docs.cu_seqlens, max_seqlen_q=docs.longest,
                                   max_seqlen_k=docs.longest, causal=True, window=window, scale=scale)
    return out.transpose(0, 1)[None]


def attend_left_padded(q, k, v, pads: list[int], window, scale=None):
    """Rows whose first ``pads[b]`` positions are padding: each group of rows with the same count attends over its
    keys from the first real one on (the kernel never sees a pad key), for its queries that are real tokens.
    Outputs at pad positions are 0: they feed nothing but pad positions.

    q: (batch, heads, q_len, head_dim), the last q_len positions; k, v: (batch, kv_heads, kv_len, head_dim)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    out = torch.zeros_like(q)
    for pad in sorted(set(pads)):
        rows = [b for b, p in enumerate(pads) if p == pad]
        select = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else torch.tensor(
            rows, device=q.device)
        first = max(0, pad - (kv_len - q_len))  # the first query that is a real token
        if first < q_len:
            out[select, :, first:] = kernels.attention(q[select, :, first:], k[select, :, pad:], v[select, :, pad:],
                                                       causal=True, window=window, scale=scale)
    return out


def positions(cache: KVCache | None, seq: int, device) -> torch.Tensor:
    """Positions of ``seq`` new tokens, after whatever the cache already holds: ``(seq,)``; ``(batch, seq)`` when
    rows are left-padded (each counts from its first real token; pads get 0)."""
    start = cache.length if cache is not None else 0
    pos = torch.arange(start, start + seq, device=device)
    if cache is not None and cache.pads is not None:
        return (pos[None, :] - cache.pad_counts[:, None]).clamp(min=0)
    return pos


class Documents(NamedTuple):
    """Documents packed end to end in one row of ``total`` tokens (:func:`packed_documents` builds it)."""

    cu_seqlens: torch.Tensor  # (n_docs + 1,) int32 prefix sums: document d is tokens cu_seqlens[d]:cu_seqlens[d+1]
    longest: int  # the longest document's length (the varlen kernel's max_seqlen)
    positions: torch.Tensor  # (total,) int64: each token's position (in its own document: from 0 with cu_seqlens)
    last_position: int  # positions.max()


def packed_documents(total: int, device, cu_seqlens=None, position_ids=None) -> Documents:
    """The documents of a packed row of ``total`` tokens, given by one of:

    ``cu_seqlens``: ``(n_docs + 1,)`` integer prefix sums, 0, then each document's end, the last one ``total``
    (every document at least one token); each token's position counts from 0 in its document.
    ``position_ids``: ``(1, total)`` or ``(total,)``, HF's convention for packed rows (its
    ``DataCollatorWithFlattening``, its ``find_packed_sequence_indices``): a document starts wherever a position
    is not the previous one + 1, and the positions are used as given.

    One host read, for the checks and the varlen kernel's ``max_seqlen``."""
    if (cu_seqlens is None) == (position_ids is None):
        raise ValueError("packed documents take cu_seqlens or position_ids, not both")
    if cu_seqlens is not None:
        if not _integer_tensor(cu_seqlens) or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"cu_seqlens must be a 1-D integer tensor of n_docs + 1 >= 2 prefix sums, got "
                             f"{cu_seqlens!r}")
        bounds = cu_seqlens.to(device=device, dtype=torch.long)
        lengths = bounds.diff()
        first, last, shortest, longest = torch.stack([bounds[0], bounds[-1], lengths.min(), lengths.max()]).tolist()
        if first != 0 or last != total or shortest < 1:
            raise ValueError(f"cu_seqlens must start at 0, end at the {total} packed tokens and grow by at least 1 "
                             f"per document, got {cu_seqlens.tolist()}")
        token = torch.arange(total, device=device)
        document = torch.searchsorted(bounds[1:], token, right=True)  # the document each token belongs to
        return Documents(bounds.to(torch.int32), longest, token - bounds[document], longest - 1)
    if not _integer_tensor(position_ids) or position_ids.shape not in ((total,), (1, total)):
        raise ValueError(f"position_ids must be an integer tensor of shape (1, {total}) or ({total},) like the "
                         f"packed input_ids, got {position_ids!r}")
    pos = position_ids.to(device=device, dtype=torch.long).reshape(total)
    starts = torch.ones(total, dtype=torch.bool, device=device)
    starts[1:] = pos.diff() != 1
    bounds = torch.cat([starts.nonzero().flatten(), torch.tensor([total], device=device)])
    smallest, last_position, longest = torch.stack([pos.min(), pos.max(), bounds.diff().max()]).tolist()
    if smallest < 0:
        raise ValueError(f"position_ids must be >= 0, got {position_ids.tolist()}")
    return Documents(bounds.to(torch.int32), longest, pos, last_position)


def _integer_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


class CausalLM(nn.Module):
    """Base of every model: ``forward(input_ids, cache=None, *, cu_seqlens=None, position_ids=None)`` and
    :meth:`generate`.

    ``forward``: ``input_ids (batch, seq)`` -> logits ``(batch, seq, vocab)``, differentiable (``from_pretrained``
    freezes the weights: ``model.requires_grad_(True)`` to train). ``cu_seqlens``: ``input_ids`` of shape
    ``(1, total)`` holds documents laid end to end, ``cu_seqlens`` their int32 prefix sums ``(n_docs + 1,)``
    (``[0, len_0, len_0 + len_1, ..., total]``): each document's positions count from 0 and its tokens attend
    only to its own (``kernels.attention_varlen``), so its logits are those of the document run alone.
    ``position_ids`` ``(1, total)`` instead: HF's packed rows, a document starting wherever a position is not the
    previous one + 1 (positions as given).

    Subclasses set ``n_layers``, ``n_kv_heads``, ``head_dim``, ``max_positions`` (None: unbounded) and
    ``window`` (None: the model's own full causal attention). ``from_pretrained`` sets ``eos_token_id`` (a list,
    [] for none) and ``pad_token_id`` from the checkpoint, which :meth:`generate` uses as HF's would.
    """

    max_positions = None
    window = None
    eos_token_id: list[int] = []  # assigned per model by from_pretrained, never mutated
    pad_token_id: int | None = None

    def check_ids(self, input_ids, cache, cu_seqlens=None, position_ids=None) -> Documents | None:
        """Check a forward's inputs; for packed documents (``cu_seqlens`` or ``position_ids``) return their
        :class:`Documents`."""
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids (batch, seq), got "
                            f"{type(input_ids).__name__}")
        # nn.Embedding indexes with int64 or int32 only; anything else would fail deep inside it
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids (torch.long or torch.int32), got "
                            f"{input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per row")
        if cu_seqlens is None and position_ids is None:
            end = input_ids.shape[1] + (cache.length if cache is not None else 0)
            if self.max_positions is not None and end > self.max_positions:
                raise ValueError(f"sequence of {end} tokens is longer than the model's {self.max_positions} "
                                 f"positions")
            return None
        if cache is not None:
            raise ValueError("packed documents (cu_seqlens, position_ids) cannot be combined with a KV cache")
        if input_ids.shape[0] != 1:
            raise ValueError(f"packed documents (cu_seqlens, position_ids) come as one row, input_ids of shape "
                             f"(1, total), got {tuple(input_ids.shape)}")
        docs = packed_documents(input_ids.shape[1], input_ids.device, cu_seqlens, position_ids)
        if self.max_positions is not None and docs.last_position >= self.max_positions:
            raise ValueError(f"a packed document reaches position {docs.last_position}: longer than the model's "
                             f"{self.max_positions} positions")
        return docs

    def new_cache(self, batch: int, max_len: int, pads=None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.n_layers, batch, self.n_kv_heads, max_len, self.head_dim, p.dtype, p.device, pads)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, attention_mask=None, eos_token_id=None,
                 pad_token_id=None, do_sample=False, temperature=1.0, top_k=None, top_p=None,
                 generator=None) -> torch.Tensor:
        """Decoding with a KV cache, token for token HF's ``generate`` (greedy, or sampling with the same RNG).

        ``input_ids: (batch, prompt_len)``; returns ``(batch, prompt_len + n)``, ``n <= max_new_tokens``: the prompt
        followed by the new tokens. ``attention_mask`` (same shape, 1 = token, 0 = pad) lets prompts of different
        lengths share a batch, LEFT-padded as HF's ``generate`` wants them: a row's pads are never attended to and
        its positions count from its first real token, so each row continues as if it were alone (greedy: HF's
        tokens for the same padded batch). Other masks (right padding, holes) are a ValueError.

        ``do_sample=False``: argmax. ``do_sample=True``: the logits (fp32) are divided by ``temperature``, cut to the
        ``top_k`` largest (ties kept; None or 0: no cut), then to the smallest set whose probability reaches
        ``top_p`` (None or 1.0: no cut), in HF's order (Temperature, TopK, TopP warpers; unlike HF's generation
        config, top_k has no default of 50), and a token is drawn with ``torch.multinomial(probs, 1,
        generator=generator)``: the same ``generator`` state gives the same tokens; None draws from torch's global
        RNG, as HF does (same seed, same logits: HF's tokens).

        A row that emits one of the ``eos_token_id`` (an int or a list; None: the checkpoint's; []: none) is
        finished: it keeps its eos and is padded with ``pad_token_id`` (None: the checkpoint's, else the first eos
        id, as HF falls back) while the other rows go on; decoding stops once every row has finished.
        """
        if isinstance(max_new_tokens, bool) or not hasattr(type(max_new_tokens), "__index__"):
            raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
        max_new_tokens = operator.index(max_new_tokens)  # numpy / 0-d tensor ints too
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.check_ids(input_ids, None)
        pads = left_padding(attention_mask, input_ids)
        check_sampling(do_sample, temperature, top_k, top_p, generator)
        eos = token_ids(eos_token_id, "eos_token_id") if eos_token_id is not None else self.eos_token_id
        if pad_token_id is None:
            pad_token_id = self.pad_token_id
        elif not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
            raise TypeError(f"pad_token_id must be an int or None, got {pad_token_id!r}")
        elif pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id}")
        if pad_token_id is None and eos:
            pad_token_id = eos[0]
        eos_ids = torch.tensor(eos, dtype=input_ids.dtype, device=input_ids.device)

        cache = self.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens, pads)
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        out = [input_ids]
        step = input_ids  # the prompt in one pass (prefill), then one token per step
        for _ in range(max_new_tokens):
            logits = self(step, cache=cache)
            step = next_tokens(logits[:, -1], do_sample, temperature, top_k, top_p, generator).to(input_ids.dtype)
            # a finished row shows pad, but the model is fed its own token: always inside the vocabulary (a pad id
            # need not be), and finished rows' outputs are never read, while the other rows do not see them
            out.append(torch.where(unfinished[:, None], step, pad_token_id) if eos else step)
            unfinished &= ~torch.isin(step[:, 0], eos_ids)
            if not unfinished.any():
                break
        return torch.cat(out, dim=1)


class PreNormLayer(nn.Module):
    """``x + self_attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``: the layer of the
    Llama-style families (under the names their checkpoints use), attention taking positions for RoPE."""

    def __init__(self, input_layernorm, self_attn, post_attention_layernorm, mlp):
        super().__init__()
        self.input_layernorm, self.self_attn = input_layernorm, self_attn
        self.post_attention_layernorm, self.mlp = post_attention_layernorm, mlp

    def forward(self, x, pos, cache, window, docs):
        x = x + self.self_attn(self.input_layernorm(x), pos, cache, window, docs)
        return x + self.mlp(self.post_attention_layernorm(x))


class RotaryLM(CausalLM):
    """``lm_head(final_norm(layers(embed_tokens[ids])))``, each layer ``layer(x, pos, cache, window, docs)`` with RoPE
    positions: the Llama-style model. The final norm is stored as the attribute ``norm_name`` (the checkpoint's
    name for it); the LM head is untied unless the checkpoint ties it."""

    def __init__(self, c, layers, norm: nn.Module, *, norm_name: str, kv_heads: int):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(layers)
        self.norm_name = norm_name
        self.add_module(norm_name, norm)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.n_layers, self.n_kv_heads, self.head_dim = c.layers, kv_heads, c.hidden // c.heads

    def forward(self, input_ids, cache=None, *, cu_seqlens=None, position_ids=None):
        docs = self.check_ids(input_ids, cache, cu_seqlens, position_ids)
        pos = docs.positions if docs is not None else positions(cache, input_ids.shape[1], input_ids.device)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, pos, cache, self.window, docs)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(getattr(self, self.norm_name)(x))
